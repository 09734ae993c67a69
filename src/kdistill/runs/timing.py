"""One timing phase after training: every model timed alike, in turns, with the machine's load recorded.

Speed figures from separate measurements mislead: a teacher timed while other work shared the cores looked
318x slower than its student instead of 115x. So each task times its teacher and students together, after
training, as the benchmarks do: under a fixed thread count, a discarded warm-up round, then several rounds in
which every model runs in turn (the order reversed every other round, so no model always runs right after
another), each model's median and spread kept. How much CPU other processes used meanwhile is measured from
/proc/stat (machine) minus os.times() (this process); a phase taken on a busy machine says so, and the report
marks its figures instead of printing them as facts.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kdistill.runs.threads import torch_threads

__all__ = [
    "CpuSample",
    "MachineLoad",
    "ModelTiming",
    "TimingPhase",
    "cpu_sample",
    "machine_load",
    "time_models",
]

PROC_STAT = "/proc/stat"
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...; idle and iowait are not busy
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuSample:
    """One reading of the machine's and this process's CPU time (seconds)."""

    wall_s: float
    machine_busy_s: float | None  # every core's busy time since boot; None without /proc/stat
    own_cpu_s: float  # this process, all its threads (not its children)


def _machine_busy_seconds(path: str = PROC_STAT) -> float | None:
    try:
        with open(path) as stat:
            first = stat.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [int(value) for value in first[1:]]
    return sum(ticks[i] for i in _BUSY_FIELDS if i < len(ticks)) / os.sysconf("SC_CLK_TCK")


def cpu_sample() -> CpuSample:
    """Now: wall clock, the machine's busy CPU time (/proc/stat) and this process's CPU time (os.times())."""
    own = os.times()
    return CpuSample(time.monotonic(), _machine_busy_seconds(), own.user + own.system)


@dataclass(frozen=True)
class MachineLoad:
    """How busy the machine was with other work while the models were timed."""

    cores: int
    load_average_1m: float | None
    others_cores: float | None  # cores' worth of CPU other processes used; None when unknown
    busy: bool
    # how others_cores was found: "cpu time" (/proc/stat minus os.times()), "load average" (no /proc/stat:
    # the 1-minute load average at the start minus this process's threads) or "unknown"
    method: str = "cpu time"

    def describe(self) -> str:
        """e.g. "other processes used 1.9 of 2 cores (load average 3.9) while timing: BUSY"."""
        verdict = "BUSY" if self.busy else "quiet"
        if self.others_cores is None:
            return f"the load of the machine ({self.cores} cores) while timing is unknown"
        used = f"{self.others_cores:.1f} of {self.cores} cores"
        if self.method == "load average":
            source = (
                f"1-minute load average {self.load_average_1m:.1f} less this process's threads, no /proc/stat"
            )
            return f"other processes used about {used} ({source}): {verdict}"
        average = f" (load average {self.load_average_1m:.1f})" if self.load_average_1m is not None else ""
        return f"other processes used {used}{average} while timing: {verdict}"

    def record(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "load_average_1m": self.load_average_1m,
            "others_cores": self.others_cores,
            "busy": self.busy,
            "method": self.method,
            "description": self.describe(),
        }


@dataclass(frozen=True)
class ModelTiming:
    """Seconds per call of one model, one entry per kept (non-warm-up) round."""

    seconds: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min_s(self) -> float:
        return min(self.seconds)

    @property
    def max_s(self) -> float:
        return max(self.seconds)


@dataclass(frozen=True)
class TimingPhase:
    """Every model's timing from one phase, with how it was taken and how busy the machine was."""

    models: dict[str, ModelTiming]
    rounds: int
    warmup_rounds: int
    repeats: int
    threads: int
    load: MachineLoad

    def record(self, **settings: Any) -> dict[str, Any]:
        """metrics["timing"]: how the phase ran, the task's `settings` (batch_size, max_seq_length, ...),
        the machine's load, and per model the median, min, max and every kept round in ms per call."""
        return {
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "repeats": self.repeats,
            "threads": self.threads,
            **settings,
            "load": self.load.record(),
            "busy": self.load.busy,
            "models": {
                name: {
                    "median_ms": 1000 * timing.median_s,
                    "min_ms": 1000 * timing.min_s,
                    "max_ms": 1000 * timing.max_s,
                    "rounds_ms": [1000 * s for s in timing.seconds],
                }
                for name, timing in self.models.items()
            },
        }


def machine_load(
    before: CpuSample,
    after: CpuSample,
    load_average: float | None,
    *,
    cores: int,
    own_threads: int,
    busy_share: float,
) -> MachineLoad:
    """Other processes' CPU use between two samples; the load average where /proc/stat is missing."""
    wall = after.wall_s - before.wall_s
    if before.machine_busy_s is not None and after.machine_busy_s is not None and wall > 0:
        others = (after.machine_busy_s - before.machine_busy_s) - (after.own_cpu_s - before.own_cpu_s)
        others_cores, method = max(0.0, others / wall), "cpu time"
    elif load_average is not None:
        others_cores, method = max(0.0, load_average - own_threads), "load average"
    else:
        others_cores, method = None, "unknown"
    busy = others_cores is not None and others_cores > busy_share * cores
    return MachineLoad(cores, load_average, others_cores, busy, method)


def time_models(
    calls: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    repeats: int = 1,
    warmup_rounds: int = 1,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sample: Callable[[], CpuSample] = cpu_sample,
    loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
    cores: int | None = None,
    busy_share: float = 0.25,
    min_window_s: float = 0.25,
) -> TimingPhase:
    """Time every call in turns: `warmup_rounds` discarded rounds, then `rounds` kept ones; in each round
    every call runs `repeats` times back to back (its time / repeats is one entry), the order reversed every
    other round. Under `threads` torch threads (None: as now). A call must finish its work before it
    returns (synchronize CUDA). Busy: other processes used more than `busy_share` of the `cores`, measured
    from the first round on over at least `min_window_s` (CPU time counts in 10 ms ticks: a phase of a few
    ms alone would say little), waiting out the rest of that window after the last round."""
    if rounds < 1 or repeats < 1 or warmup_rounds < 0:
        raise ValueError(
            f"need rounds >= 1, repeats >= 1 and warmup_rounds >= 0, got rounds={rounds}, repeats={repeats}, "
            f"warmup_rounds={warmup_rounds}"
        )
    try:
        load_average: float | None = loadavg()[0]
    except OSError:  # no load average on this platform
        load_average = None
    order = list(calls.items())
    measured: dict[str, list[float]] = {name: [] for name in calls}
    with torch_threads(threads) if threads is not None else contextlib.nullcontext():
        used_threads = torch.get_num_threads()
        before = sample()
        window_start = time.monotonic()  # after the sample: the two samples end up >= min_window_s apart
        for r in range(warmup_rounds + rounds):
            for name, call in order if r % 2 == 0 else order[::-1]:
                start = clock()
                for _ in range(repeats):
                    call()
                if r >= warmup_rounds:
                    measured[name].append((clock() - start) / repeats)
        while (left := min_window_s - (time.monotonic() - window_start)) > 0:
            time.sleep(left)  # sleep may return a little early: loop until the window is over
        after = sample()
    load = machine_load(
        before,
        after,
        load_average,
        cores=cores or os.cpu_count() or 1,
        own_threads=used_threads,
        busy_share=busy_share,
    )
    return TimingPhase(
        models={name: ModelTiming(seconds) for name, seconds in measured.items()},
        rounds=rounds,
        warmup_rounds=warmup_rounds,
        repeats=repeats,
        threads=used_threads,
        load=load,
    )
