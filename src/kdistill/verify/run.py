"""Verify every answer of a generations directory, exactly once per (record, verifier, what it reads).

`verify_rows` runs the verifiers whose verdict is not stored yet (`store.verdict_key`), `concurrency` at a
time on threads (python_tests runs code in subprocesses, judge waits on a server: both release the GIL),
committing verdicts in small fsynced groups as they come: a kill loses at most the verdicts in flight, and
the rerun computes only what is missing. A verifier that cannot decide (the judge's server gone after its
retries) leaves that record unverified and named in `failures`, never a verdict; a verifier that says the
data is wrong (a column missing) stops the run with a `VerificationError` naming the record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.verify.store import VerdictStore, verdict_key

Progress = Callable[[int, int], None]  # (records verified, records)
GROUP = 64  # verdicts per fsynced commit at most
GROUP_S = 0.5  # ... or this many seconds after the first uncommitted one


class VerificationError(ValueError):
    """Data a verifier cannot work with (a missing reference, a prompt absent from the prompt file)."""


@dataclass(frozen=True)
class RecordVerdict:
    """Every verifier's verdict on one answer, and the decision they make together."""

    record_id: str
    prompt_id: str
    sample_index: int
    ok: bool
    verdicts: dict[str, dict[str, Any]]  # verifier name -> {ok, reason, extracted, detail}

    @property
    def reason(self) -> str:
        """`ok`, or the failing verifiers' reasons (`answer_match:mismatch`)."""
        if self.ok:
            return "ok"
        return ",".join(f"{n}:{v['reason']}" for n, v in self.verdicts.items() if not v["ok"])

    @property
    def extracted(self) -> str | None:
        """The first verifier's extracted answer (answer_match: the final answer it compared)."""
        return next(iter(self.verdicts.values())).get("extracted")


@dataclass
class VerificationResult:
    out_dir: Path
    records: dict[str, RecordVerdict]  # by record id; records with a failure are absent
    computed: int = 0  # verdicts computed by this run
    reused: int = 0  # verdicts found stored
    failures: list[dict[str, str]] = field(default_factory=list)  # {record_id, verifier, error}
    verifiers: tuple[str, ...] = ()

    @property
    def accepted(self) -> int:
        return sum(r.ok for r in self.records.values())

    def reasons(self) -> dict[str, Counter]:
        """Per verifier, how often each reason code was given."""
        counts: dict[str, Counter] = {name: Counter() for name in self.verifiers}
        for record in self.records.values():
            for name, verdict in record.verdicts.items():
                counts[name][verdict["reason"]] += 1
        return counts

    def per_prompt(self) -> dict[str, tuple[int, int]]:
        """prompt id -> (answers verified, answers accepted): the (n, c) of pass@k."""
        counts: dict[str, list[int]] = {}
        for record in self.records.values():
            n_c = counts.setdefault(record.prompt_id, [0, 0])
            n_c[0] += 1
            n_c[1] += int(record.ok)
        return {p: (n, c) for p, (n, c) in counts.items()}

    def pass_at(self, k: int, prompts: Sequence[str] | None = None) -> float | None:
        """Mean unbiased pass@k over the prompts (all, or `prompts`) with at least k verified answers."""
        from kdistill.evaluation.pass_at_k import mean_pass_at_k

        per_prompt = self.per_prompt()
        chosen = per_prompt if prompts is None else {p: per_prompt[p] for p in prompts if p in per_prompt}
        usable = [(n, c) for n, c in chosen.values() if n >= k]
        return mean_pass_at_k(usable, k) if usable else None

    def to_dict(self) -> dict[str, Any]:
        samples = max((n for n, _ in self.per_prompt().values()), default=0)
        return {
            "verdicts_dir": str(self.out_dir),
            "records": len(self.records),
            "accepted": self.accepted,
            "computed": self.computed,
            "reused": self.reused,
            "failures": self.failures,
            "reasons": {name: dict(c) for name, c in self.reasons().items()},
            "pass_at_k": {str(k): self.pass_at(k) for k in (1, 2, 4, 8, 16) if k <= max(samples, 1)},
        }


def prompt_question(row: Mapping[str, Any]) -> str:
    """The question a verifier sees: the plain prompt, or the last user message of a chat."""
    if row.get("prompt") is not None:
        return str(row["prompt"])
    users = [m["content"] for m in row.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else ""


def verify_rows(
    rows: Sequence[Mapping[str, Any]],
    references: Mapping[str, Mapping[str, Any]],
    checks: Sequence[tuple[Any, Any]],
    out_dir: str | Path,
    *,
    require: str = "all",
    concurrency: int = 4,
    progress: Progress | None = None,
) -> VerificationResult:
    """Verify `rows` (generation rows) with `checks` ((spec, options) pairs), reading each row's prompt
    columns from `references` (prompt id -> {column: value}); verdicts in `out_dir` (see the module)."""
    named = [(spec.name, spec, options, spec.build(options)) for spec, options in checks]
    if len({n for n, *_ in named}) != len(named):
        raise VerificationError("a verifier is listed twice: give each once")
    identities = {
        name: {
            "name": name,
            "version": spec.version,
            "options": options.model_dump(mode="json", by_alias=True),
        }
        for name, spec, options, _ in named
    }
    result = VerificationResult(Path(out_dir), {}, verifiers=tuple(n for n, *_ in named))
    with VerdictStore(out_dir) as store:
        tasks: list[
            tuple[str, dict[str, Any], str, Any, Mapping[str, Any]]
        ] = []  # key, line, name, check, row
        keys_of: dict[str, dict[str, str]] = {}
        for row in rows:
            record_id, prompt_id = str(row["record_id"]), str(row["prompt_id"])
            if prompt_id not in references:
                raise VerificationError(
                    f"record {record_id}: prompt id {prompt_id!r} is not in the prompt file with the references"
                )
            prompt_row = {"prompt": prompt_question(row), **references[prompt_id]}
            keys_of[record_id] = {}
            for name, spec, options, check in named:
                inputs = {c: prompt_row.get(c) for c in spec.columns(options)}
                key = verdict_key(record_id, identities[name], inputs)
                keys_of[record_id][name] = key
                if store.get(key) is not None:
                    result.reused += 1
                    continue
                line = {
                    "key": key,
                    "record_id": record_id,
                    "prompt_id": prompt_id,
                    "sample_index": int(row["sample_index"]),
                    "verifier": name,
                    "version": spec.version,
                }
                tasks.append((key, line, name, check, {"answer": row["completion"], "row": prompt_row}))
        done_records = len(rows) - len({t[1]["record_id"] for t in tasks})
        if progress is not None:
            progress(done_records, len(rows))
        _run_tasks(tasks, store, result, concurrency, progress, done_records, len(rows))

    failed = {f["record_id"] for f in result.failures}
    for row in rows:
        record_id = str(row["record_id"])
        if record_id in failed:
            continue
        verdicts = {}
        for name, key in keys_of[record_id].items():
            line = store.verdicts[key]
            verdicts[name] = {k: line[k] for k in ("ok", "reason", "extracted", "detail")}
        oks = [v["ok"] for v in verdicts.values()]
        result.records[record_id] = RecordVerdict(
            record_id,
            str(row["prompt_id"]),
            int(row["sample_index"]),
            all(oks) if require == "all" else any(oks),
            verdicts,
        )
    return result


def _run_tasks(
    tasks: list[tuple[str, dict[str, Any], str, Any, Mapping[str, Any]]],
    store: VerdictStore,
    result: VerificationResult,
    concurrency: int,
    progress: Progress | None,
    done_records: int,
    total_records: int,
) -> None:
    """Run the pending verifications; commit verdicts in groups as they come (and what came, on a kill)."""
    from kdistill.generate.store import utc_now

    remaining = Counter(t[1]["record_id"] for t in tasks)  # verifications left per record
    pending: list[dict[str, Any]] = []
    first_pending = 0.0

    def commit() -> None:
        if pending:
            store.append(pending)
            result.computed += len(pending)
            pending.clear()

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kdistill-verify") as pool:
        queue = iter(tasks)
        running: dict[Future, tuple[str, dict[str, Any], str]] = {}
        try:
            while True:
                while len(running) < concurrency * 2:
                    task = next(queue, None)
                    if task is None:
                        break
                    key, line, name, check, job = task
                    running[pool.submit(check, job["answer"], job["row"])] = (key, line, name)
                if not running:
                    break
                finished, _ = wait(running, timeout=GROUP_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    key, line, name = running.pop(future)
                    record_id = line["record_id"]
                    try:
                        verdict = future.result()
                    except ValueError as err:  # the data: a missing or malformed reference
                        raise VerificationError(f"record {record_id}: {name}: {err}") from None
                    except Exception as err:  # noqa: BLE001 - a verifier that could not decide (network)
                        result.failures.append(
                            {
                                "record_id": record_id,
                                "verifier": name,
                                "error": f"{type(err).__name__}: {err}",
                            }
                        )
                    else:
                        if not pending:
                            first_pending = time.monotonic()
                        pending.append({**line, **verdict.to_dict(), "created": utc_now()})
                    remaining[record_id] -= 1
                    if remaining[record_id] == 0:
                        done_records += 1
                if len(pending) >= GROUP or (pending and time.monotonic() - first_pending >= GROUP_S):
                    commit()
                if progress is not None and finished:
                    progress(done_records, total_records)
        finally:
            for future in running:
                future.cancel()
            commit()  # what finished is kept, on a kill (Ctrl-C) or an error too


def verify_generations(
    gen_dir: str | Path | Sequence[str | Path],
    cfg: Any,
    *,
    prompts: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> VerificationResult:
    """`verify_rows` over a generations directory (or several), with the references of `cfg.prompts`
    (or `prompts`), into `cfg.out` (or `out_dir`; default `<gen_dir>/verdicts`)."""
    from kdistill.generate.prompts import load_prompts
    from kdistill.generate.store import load_generations

    prompt_file = prompts or cfg.prompts
    if prompt_file is None:
        raise VerificationError("verify.prompts: required (the prompt file that holds the references)")
    references = {p.id: p.extra for p in load_prompts(prompt_file, columns=cfg.columns())}
    target = out_dir or cfg.out
    if target is None:
        if not isinstance(gen_dir, str | Path):
            raise VerificationError("verify.out: required with several generations directories")
        target = Path(gen_dir) / "verdicts"
    rows = [dict(r) for r in load_generations(gen_dir)]
    return verify_rows(
        rows,
        references,
        cfg.checks(),
        target,
        require=cfg.require,
        concurrency=cfg.concurrency,
        progress=progress,
    )
