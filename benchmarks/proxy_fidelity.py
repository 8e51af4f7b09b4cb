"""Proxy fidelity: how well proxies computed without retraining rank the pose ground truth.

Scores every finished network of ``results/posebench`` with cheap proxies (parameters, MACs,
predicted and measured latency), zero-cost proxies at initialisation (synflow, NASWOT,
jacob_cov) and trained supernets (rules ``uniform``, ``sandwich``, ``sandwich-kd`` at several
training lengths; PCK@0.2 and heatmap loss of each network's path on held-out training images),
and writes Kendall tau, Spearman and the top-10% overlap of each against the ground truth's
PCK@0.2 to ``results/posebench/proxies.md`` (and ``proxies.json``). See ``nas.bench.proxies``.

    python benchmarks/proxy_fidelity.py [--rules uniform,sandwich,sandwich-kd] [--epochs 20] \\
        [--snapshots 5,10,20] [--threads 1] [--no-supernets] [--json]

Resumable: supernets checkpoint every epoch in ``--workdir`` and every score is cached per
network under ``results/posebench/proxies/``; the same command continues. A rerun after more
networks of the table have finished scores just those.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from nas.bench import proxies as px
from nas.bench.posebench import write_json
from nas.search.oneshot import RULES
from supernets.errors import NasError
from supernets.fileio import write_atomic

REPO = Path(__file__).resolve().parents[1]


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def _rules(text: str) -> tuple[str, ...]:
    rules = tuple(text.split(","))
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad)}: expected rules among "
                                         f"{', '.join(RULES)}")
    return rules


def _finetune(text: str) -> tuple[str, int, int]:
    parts = text.split(":")
    try:
        rule, epoch, steps = parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected RULE:EPOCH:STEPS, e.g. "
                                         "uniform:5:60") from None
    if len(parts) != 3 or rule not in RULES or epoch < 1 or steps < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected RULE:EPOCH:STEPS with RULE one of "
                                         f"{', '.join(RULES)} and positive EPOCH and STEPS")
    return rule, epoch, steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=str(REPO / "results" / "posebench"),
                    help="the posebench folder (default %(default)s)")
    ap.add_argument("--data", default=str((REPO / ".." / "shared/data/lsp").resolve()),
                    help="LSP folder: training split only (default %(default)s)")
    ap.add_argument("--rules", type=_rules, default=RULES, help="supernet training rules")
    ap.add_argument("--epochs", type=int, default=20, help="supernet epochs (default 20)")
    ap.add_argument("--snapshots", type=_ints, default=(5, 10, 20),
                    help="epochs at which each supernet is scored (default 5,10,20)")
    ap.add_argument("--zerocost-seeds", type=int, default=2,
                    help="initialisations averaged per zero-cost proxy (default 2)")
    ap.add_argument("--bn-batches", type=int, default=8, help="BatchNorm recompute batches")
    ap.add_argument("--images", type=int, default=200, help="held-out images per score")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--finetune", type=_finetune, action="append", default=[],
                    metavar="RULE:EPOCH:STEPS",
                    help="also score each network by its held-out loss after STEPS steps of "
                         "its own from that supernet snapshot, as a search's shortlist "
                         "(--rank-finetune); repeatable, e.g. uniform:5:60")
    ap.add_argument("--no-supernets", action="store_true", help="cheap and zero-cost only")
    ap.add_argument("--limit", type=int, help="at most N training images (smoke runs; needs "
                    "--out and a --cache elsewhere than the committed table)")
    ap.add_argument("--cache", help="score cache folder (default TABLE/proxies)")
    ap.add_argument("--workdir", default="runs/proxies", help="supernet checkpoints")
    ap.add_argument("--out", help="report (default TABLE/proxies.md; JSON beside it)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = ap.parse_args(argv)
    if max(args.snapshots) > args.epochs:
        ap.error(f"--snapshots {','.join(map(str, args.snapshots))}: beyond --epochs "
                 f"{args.epochs}")
    for name in ("epochs", "zerocost_seeds", "bn_batches", "images", "threads", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive "
                     "integer")
    return args


def log(message: str) -> None:
    print(f"[proxy_fidelity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    import torch

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    table = Path(args.table)
    rows, summary = px.ground_truth(table, summary_space(table))
    cache_dir = Path(args.cache) if args.cache else table / "proxies"
    if args.limit and (not args.cache or not args.out):
        raise NasError(f"--limit {args.limit}: a smoke run needs --out and --cache outside the "
                       "committed table")
    scores: dict[str, dict] = {}
    costs: dict[str, str] = {}
    for name, column in px.TABLE_PROXIES.items():
        values = {r["key"]: r[column] for r in rows
                  if r[column] is not None and not _nan(r[column])}
        if values:
            scores[name] = values
            costs[name] = "none (table)" if name != "latency_ms" else \
                "side-by-side measurement"
    zc = px.zerocost_scores(rows, args.data, cache_dir / "zerocost.json",
                            seeds=tuple(range(args.zerocost_seeds)), limit=args.limit,
                            log=log)
    zc_scores, zc_seconds = px.zerocost_columns(zc)
    for name, values in zc_scores.items():
        scores[name] = values
        costs[name] = f"{zc_seconds[name]:.1f} s per network ({args.zerocost_seeds} inits)"
    supernets = {}
    interrupted = False
    if not args.no_supernets:
        for rule in args.rules:
            done = px.supernet_scores(rows, args.data, rule, epochs=args.epochs,
                                      snapshots=args.snapshots, workdir=Path(args.workdir),
                                      cache_dir=cache_dir, bn_batches=args.bn_batches,
                                      images=args.images, threads=args.threads,
                                      progress=not args.no_progress, limit=args.limit,
                                      log=log)
            if not done:
                interrupted = True
                break
            for epoch, cache in done.items():
                per = cache["networks"]
                seconds = np.mean([v["seconds"] for v in per.values()])
                train_h = (cache.get("train_seconds") or 0) / 3600
                for metric, key, sign in (("pck", "metric", 1.0), ("loss", "loss", -1.0)):
                    name = f"supernet {rule} e{epoch} {metric}"
                    # caches written before PathScorer's "metric" hold it under "pck"
                    scores[name] = {k: sign * v.get(key, v.get(metric)) for k, v in per.items()}
                    costs[name] = (f"{train_h:.2f} h supernet training once, then "
                                   f"{seconds:.1f} s per network")
                supernets[f"{rule} e{epoch}"] = {"train_seconds": cache.get("train_seconds")}
    for rule, epoch, steps in ([] if interrupted else args.finetune):
        cache = px.finetune_scores(rows, rule, epoch, steps, workdir=Path(args.workdir),
                                   cache_dir=cache_dir, bn_batches=args.bn_batches,
                                   images=args.images, threads=args.threads, log=log)
        if not cache:
            continue
        plain = cache_dir / f"supernet-{rule}-e{epoch}.json"
        name = f"supernet {rule} e{epoch} loss"
        if name not in scores and plain.exists():  # the same snapshot without own steps
            per = px.read_json(plain, "a proxy score cache")["networks"]
            scores[name] = {k: -v["loss"] for k, v in per.items()}
            costs[name] = f"the e{epoch} supernet ({plain.name})"
        per = cache["networks"]
        name = f"supernet {rule} e{epoch} loss after {steps} own steps"
        scores[name] = {k: -v["loss"] for k, v in per.items()}
        costs[name] = (f"the e{epoch} supernet, then "
                       f"{np.mean([v['seconds'] for v in per.values()]):.1f} s per network")
    lines = px.fidelity(rows, scores, costs)
    in_window_here = [r for r in rows if r.get("latency_ratio_mobilenetv2") is not None
                      and 0.85 <= r["latency_ratio_mobilenetv2"] <= 1.0]
    lines_here = px.fidelity(in_window_here, scores, costs) if len(in_window_here) >= 8 else []
    best = max((x for x in lines if x["proxy"].startswith("supernet")
                and not _nan(x["kendall_tau"])), key=lambda x: x["kendall_tau"], default=None)
    best_any = max((x for x in lines if not _nan(x["kendall_tau"])),
                   key=lambda x: x["kendall_tau"], default=None)
    return {"what": "proxy fidelity against the pose ground truth (posebench)",
            "command": shlex.join(["python", "benchmarks/proxy_fidelity.py", *sys.argv[1:]]),
            "table": str(table), "networks": len(rows),
            "table_status": {"complete": summary["complete"], "networks": summary["networks"]},
            "settings": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in vars(args).items()},
            "rows": lines, "rows_measured_window": lines_here,
            "measured_window_networks": len(in_window_here),
            "best_supernet": best, "best": best_any, "supernets": supernets,
            "interrupted": interrupted, "seconds": time.perf_counter() - t0,
            "finished": px.now()}


def summary_space(table: Path) -> str:
    from nas.bench.posebench import read_json

    return read_json(table / "settings.json", "the posebench settings")["space"]


def _nan(v) -> bool:
    return isinstance(v, float) and np.isnan(v)


def _f(v, fmt=".3f") -> str:
    return "n/a" if v is None or _nan(v) else format(v, fmt)


def render(report: dict) -> str:
    st = report["table_status"]
    s = report["settings"]
    lines = ["# Proxy fidelity: which score ranks the pose ground truth", "",
             f"Command: `{report['command']}` ({report['finished']}).", "",
             (f"Ground truth: `{report['table']}` (posebench: short-recipe PCK@0.2 on LSP's test "
              f"split), {st['complete']} of {st['networks']} networks finished; scored here: "
              f"the {report['networks']} finished networks of the space (all drawn inside the "
              "proof's latency window; mobilenetv2 is not a network of the space and is left "
              "out of every proxy)."
              + (" **Partial: the table is not complete yet; figures will move.**"
                 if st["complete"] < st["networks"] else "")), "",
             ("Proxies, each oriented so that higher means predicted more accurate (tau > 0: "
              "agrees with the ground truth). Supernets: trained on the search's weight split "
              f"(80% of LSP's training split, seed 0), batch 16, Adam 1e-3 constant, "
              f"{s['epochs']} epochs with snapshots at {', '.join(map(str, s['snapshots']))}; "
              f"each network's path with BatchNorm statistics recomputed on {s['bn_batches']} "
              f"weight-split batches, scored on {s['images']} held-out architecture-split "
              "training images (unaugmented) by PCK@0.2 and by -heatmap loss. Rules: uniform "
              "(one uniform path per step), sandwich (largest + smallest + 2 uniform paths per "
              "step), sandwich-kd (the same, the other paths learning the largest path's "
              "heatmaps). Zero-cost proxies at initialisation on 32 held-out training images, "
              f"mean of {s['zerocost_seeds']} initialisations. The test split is never read."
              + ("".join(f" 'loss after {n} own steps' (e{e} {r}): each network trained {n} "
                         "steps on its own from that supernet's weights (Adam 1e-3, decay 1e-4, "
                         "batch 16, the same augmented weight-split batches for each), then its "
                         "heatmap loss on the held-out crops a search's ranking scores, as "
                         "`nas search --rank-finetune` scores its shortlist."
                         for r, e, n in s.get("finetune") or []))),
             "", "| proxy | n | Kendall tau | p | Spearman | top-10% overlap | cost |",
             "|---|---|---|---|---|---|---|"]
    for x in report["rows"]:
        top = x["top"]
        lines.append(f"| {x['proxy']} | {x['n']} | {_f(x['kendall_tau'])} | "
                     f"{_f(x['kendall_p'])} | {_f(x['spearman'])} | "
                     + (f"{top['shared']}/{top['k']} | " if top else "n/a | ") + f"{x['cost']} |")
    if report["rows_measured_window"]:
        lines += ["", (f"Restricted to the {report['measured_window_networks']} networks that "
                       "also measure inside 0.85 to 1.0 x mobilenetv2 on this machine:"), "",
                  "| proxy | n | Kendall tau | Spearman | top-10% overlap |",
                  "|---|---|---|---|---|"]
        for x in report["rows_measured_window"]:
            top = x["top"]
            lines.append(f"| {x['proxy']} | {x['n']} | {_f(x['kendall_tau'])} | "
                         f"{_f(x['spearman'])} | "
                         + (f"{top['shared']}/{top['k']} |" if top else "n/a |"))
    best, best_any = report["best_supernet"], report["best"]
    lines += ["", "## The figure to beat", ""]
    if best:
        lines.append(f"Best supernet proxy: **{best['proxy']}, Kendall tau "
                     f"{best['kendall_tau']:.3f}** (Spearman {best['spearman']:.3f}, n "
                     f"{best['n']}).")
    else:
        lines.append("No supernet proxy scored yet.")
    if best_any:
        lines.append(f"Best of all proxies: {best_any['proxy']}, Kendall tau "
                     f"{best_any['kendall_tau']:.3f}.")
    if report["interrupted"]:
        lines += ["", "**Interrupted: some supernets are not trained yet; run the command again "
                  "to continue.**"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except NasError as e:
        print(f"proxy_fidelity: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log("aborted; cached scores and checkpoints are kept: run the same command again")
        return 130
    out = Path(args.out) if args.out else Path(args.table) / "proxies.md"
    write_json(out.with_suffix(".json"), report)
    write_atomic(out, render(report))
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(render(report))
    return 130 if report["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
