"""The timing phase: models in turns, warm-up discarded, median and spread, and the machine's load judged."""

from __future__ import annotations

import statistics

import pytest
import torch

from kdistill.runs.timing import CpuSample, MachineLoad, ModelTiming, cpu_sample, time_models


class FakeClock:
    """A clock that only moves when a fake model runs; it records which model ran when."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def model(self, name: str, costs_s: list[float]):
        """A call that advances the clock by the next of `costs_s` each time it runs."""
        remaining = iter(costs_s)

        def run() -> None:
            self.calls.append(name)
            self.now += next(remaining)

        return run


def quiet_samples():
    """Before and after: in 10 s the machine was busy 12 CPU seconds, 10 of them ours: 0.2 cores of others."""
    samples = iter([CpuSample(100.0, 1000.0, 5.0), CpuSample(110.0, 1012.0, 15.0)])
    return lambda: next(samples)


def test_models_take_turns_reversed_every_other_round_and_warm_up_is_dropped() -> None:
    clock = FakeClock()
    # warm-up round costs 9 s a call (lazy initialisation); the kept rounds are what counts
    a = clock.model("a", [9, 9] + [1, 1] * 3)
    b = clock.model("b", [9, 9] + [2, 4, 3, 3, 5, 1])
    c = clock.model("c", [9, 9] + [1] * 6)
    phase = time_models(
        {"a": a, "b": b, "c": c},
        rounds=3,
        repeats=2,
        warmup_rounds=1,
        clock=clock,
        sample=quiet_samples(),
        loadavg=lambda: (0.5, 0.5, 0.5),
        cores=8,
    )
    # round 0 (warm-up) a b c, round 1 reversed, round 2 forward, round 3 reversed; each turn 2 calls
    turns = ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert clock.calls == [name for name in turns for _ in range(2)]
    assert phase.rounds == 3 and phase.warmup_rounds == 1 and phase.repeats == 2
    # per call: the turn's time / repeats; no 9 s warm-up in any of them
    assert phase.models["a"].seconds == [1.0, 1.0, 1.0]
    assert phase.models["b"].seconds == [3.0, 3.0, 3.0]
    assert phase.models["c"].seconds == [1.0, 1.0, 1.0]


def test_median_min_max_and_record_match_a_hand_computation() -> None:
    clock = FakeClock()
    costs = [0.010, 0.030, 0.020, 0.050, 0.040]  # per kept round, no warm-up
    phase = time_models(
        {"teacher": clock.model("teacher", costs)},
        rounds=5,
        warmup_rounds=0,
        clock=clock,
        sample=quiet_samples(),
        loadavg=lambda: (0.5, 0.5, 0.5),
        cores=8,
    )
    timing = phase.models["teacher"]
    assert timing.seconds == pytest.approx(costs)
    assert (timing.median_s, timing.min_s, timing.max_s) == pytest.approx((0.030, 0.010, 0.050))
    record = phase.record(batch_size=1, max_seq_length=64)
    assert record["rounds"] == 5 and record["warmup_rounds"] == 0 and record["repeats"] == 1
    assert record["batch_size"] == 1 and record["max_seq_length"] == 64
    assert record["threads"] == torch.get_num_threads()
    assert record["busy"] is False and record["load"]["busy"] is False
    ms = record["models"]["teacher"]
    assert (ms["median_ms"], ms["min_ms"], ms["max_ms"]) == pytest.approx((30.0, 10.0, 50.0))
    assert ms["rounds_ms"] == pytest.approx([10.0, 30.0, 20.0, 50.0, 40.0])
    assert ModelTiming([4.0, 1.0, 2.0, 3.0]).median_s == statistics.median([4.0, 1.0, 2.0, 3.0]) == 2.5


@pytest.mark.parametrize(
    ("machine_busy_after", "own_after", "busy"),
    [
        (1012.0, 15.0, False),  # 12 s busy, 10 s ours: others used 2 s / 10 s = 0.2 cores of 2
        (1029.0, 15.0, True),  # 29 s busy, 10 s ours: others used 1.9 cores of 2
    ],
)
def test_busy_when_other_processes_use_more_than_a_quarter_of_the_cores(
    machine_busy_after, own_after, busy
) -> None:
    samples = iter([CpuSample(100.0, 1000.0, 5.0), CpuSample(110.0, machine_busy_after, own_after)])
    phase = time_models(
        {"m": lambda: None},
        rounds=2,
        sample=lambda: next(samples),
        loadavg=lambda: (3.9, 2.0, 1.0),
        cores=2,
    )
    assert phase.load.busy is busy and phase.load.method == "cpu time"
    assert phase.load.others_cores == pytest.approx((machine_busy_after - 1000.0 - 10.0) / 10.0)
    assert phase.load.load_average_1m == 3.9
    assert phase.record()["busy"] is busy


def test_own_cpu_time_is_not_counted_as_others_and_never_goes_negative() -> None:
    # this process used more than /proc/stat moved (tick rounding): others clamp to 0, not -0.1 cores
    samples = iter([CpuSample(0.0, 50.0, 1.0), CpuSample(10.0, 60.0, 12.0)])
    phase = time_models(
        {"m": lambda: None}, sample=lambda: next(samples), loadavg=lambda: (9.0, 9.0, 9.0), cores=2
    )
    assert phase.load.others_cores == 0.0 and not phase.load.busy


def test_without_proc_stat_the_load_average_less_our_threads_decides() -> None:
    def no_proc_stat() -> CpuSample:
        return CpuSample(0.0, None, 0.0)

    busy = time_models(
        {"m": lambda: None}, threads=1, sample=no_proc_stat, loadavg=lambda: (2.5, 1.0, 1.0), cores=2
    )
    assert busy.threads == 1 and busy.load.method == "load average"
    assert busy.load.others_cores == pytest.approx(1.5) and busy.load.busy
    assert busy.record()["load"]["method"] == "load average"
    assert "no /proc/stat" in busy.load.describe()
    quiet = time_models(
        {"m": lambda: None}, threads=1, sample=no_proc_stat, loadavg=lambda: (1.2, 1.0, 1.0), cores=2
    )
    assert quiet.load.others_cores == pytest.approx(0.2) and not quiet.load.busy

    def no_load_average() -> tuple[float, float, float]:
        raise OSError("no load average here")

    unknown = time_models({"m": lambda: None}, sample=no_proc_stat, loadavg=no_load_average, cores=2)
    assert unknown.load.others_cores is None and not unknown.load.busy and unknown.load.method == "unknown"
    assert "unknown" in unknown.load.describe()


def test_threads_are_set_for_the_phase_and_restored() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    phase = time_models(
        {"m": lambda: seen.append(torch.get_num_threads())},
        rounds=1,
        threads=1,
        sample=quiet_samples(),
        cores=8,
    )
    assert set(seen) == {1} and phase.threads == 1 and torch.get_num_threads() == before


def test_describe_says_how_much_others_used_and_the_verdict() -> None:
    busy = MachineLoad(cores=2, load_average_1m=3.9, others_cores=1.9, busy=True)
    assert busy.describe() == "other processes used 1.9 of 2 cores (load average 3.9) while timing: BUSY"
    quiet = MachineLoad(cores=16, load_average_1m=None, others_cores=0.04, busy=False)
    assert quiet.describe() == "other processes used 0.0 of 16 cores while timing: quiet"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rounds >= 1"):
        time_models({"m": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_models({"m": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="warmup_rounds >= 0"):
        time_models({"m": lambda: None}, warmup_rounds=-1)


def test_a_phase_of_a_few_microseconds_still_judges_the_load_over_the_minimum_window() -> None:
    taken: list[CpuSample] = []

    def recording_sample() -> CpuSample:
        taken.append(cpu_sample())
        return taken[-1]

    phase = time_models({"m": lambda: None}, sample=recording_sample, cores=2, min_window_s=0.1)
    assert len(taken) == 2 and taken[1].wall_s - taken[0].wall_s >= 0.1  # ~10 ticks of CPU time, not 0
    assert phase.load.method == ("cpu time" if taken[0].machine_busy_s is not None else "load average")


def test_the_real_sample_reads_this_machine() -> None:
    first = cpu_sample()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    second = cpu_sample()
    assert second.wall_s >= first.wall_s and second.own_cpu_s >= first.own_cpu_s
    if first.machine_busy_s is not None:  # Linux
        assert second.machine_busy_s >= first.machine_busy_s
