"""Segmentation: how long a supernet must train before its ranking of networks settles.

Trains a uniform supernet of the segmentation space on CamVid's training split (the search's
weight part, the search's optimiser) with snapshots, draws networks uniformly from a budget's
window (by this machine's table; the budget in the middle of the space's range), and scores
every network at every snapshot as the search ranks them (BatchNorm recomputed on weight-part
batches, held-out loss and mIoU), twice: on two halves of the held-out images, with different
BatchNorm batches. Written to ``results/benchmarks/seg_proxy_stability.md`` (and ``.json``):

- reliability: Kendall tau between the two halves' rankings at each snapshot (is the ranking
  measured, or noise?);
- stability: Kendall tau between the rankings of every two snapshots (does it still move?).

There is no segmentation ground truth to score the ranking against; a ranking that still moves
between snapshots ranks something else than the networks that retraining finishes (how fast a
path starts to learn). ``nas search --task seg``'s default length
(``nas.tasks.seg.task.SEARCH_WEIGHT_STEPS``) comes from this report.

    python benchmarks/seg_proxy_stability.py [--epochs 60] [--snapshots 10,20,40,60] \\
        [--networks 24] [--threads 2] [--lut PATH] [--json]

Resumable: the supernet checkpoints every epoch and every score is kept in ``--workdir``; the
same command continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import lut as lutlib
from nas.argtypes import input_size
from nas.bench.proof import check_camvid, check_positive, machine, run_main
from nas.search import SearchConfig
from nas.search.oneshot import (
    OneShotConfig,
    PathScorer,
    load_snapshot,
    snapshot_path,
    split_datasets,
    train_oneshot,
)
from nas.search.window import WindowSampler
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.space import get_space, space_names

REPO = Path(__file__).resolve().parents[1]
NAME = "seg_proxy_stability"
DEFAULT_DATA = (REPO / ".." / "shared/data/camvid").resolve()
DEFAULT_OUT = "results/benchmarks/seg_proxy_stability.md"
PRESET = "camvid"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(x) for x in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="CamVid folder, SegNet's layout (default %(default)s)")
    ap.add_argument("--space", default="seg-a", choices=space_names("seg"))
    ap.add_argument("--input", type=input_size, metavar="HxW",
                    help="network input (default: CamVid's 176x240)")
    ap.add_argument("--epochs", type=int, default=60, help="supernet epochs (default 60)")
    ap.add_argument("--snapshots", type=_ints, default=(10, 20, 40, 60),
                    help="epochs at which the networks are scored (default 10,20,40,60)")
    ap.add_argument("--networks", type=int, default=24,
                    help="window networks drawn and scored (default 24)")
    ap.add_argument("--budget", type=float, metavar="MS",
                    help="the search budget whose window the networks are drawn from (default: "
                         "the middle of the space's range by the table)")
    ap.add_argument("--batch-size", type=int, default=16,
                    help="supernet batch (default 16, the search's)")
    ap.add_argument("--bn-batches", type=int, default=8, help="BatchNorm recompute batches")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="supernet and draws")
    ap.add_argument("--lut", help="latency table of the space at the input (default: this "
                    "machine's; build it with nas lut build --space SPACE --preset camvid)")
    ap.add_argument("--limit", type=int, help="at most N training images (smoke runs; needs "
                    "--out)")
    ap.add_argument("--workdir", default="runs/seg_proxy_stability",
                    help="supernet checkpoints and scores")
    ap.add_argument("--out", default=DEFAULT_OUT, help="report (JSON beside it)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = ap.parse_args(argv)
    check_positive(ap, args, ("epochs", "networks", "batch_size", "bn_batches", "threads", "limit"))
    if args.budget is not None and not args.budget > 0:
        ap.error(f"--budget {args.budget}: expected a positive number of milliseconds")
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: expected 0 or more")
    if args.snapshots[-1] > args.epochs:
        ap.error(f"--snapshots {','.join(map(str, args.snapshots))}: beyond --epochs "
                 f"{args.epochs}")
    if args.networks < 3:
        ap.error(f"--networks {args.networks}: a ranking needs at least 3")
    return args


def log(message: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kendall(a, b) -> float:
    from scipy import stats

    return float(stats.kendalltau(a, b).statistic)


def score_snapshot(path: Path, specs, cache: Path, *, bn_batches: int, threads: int) -> dict:
    """Every network scored on each half of the held-out images (half ``h`` with BatchNorm
    batches of seed ``h``); kept in ``cache`` after each network."""
    import torch

    done = json.loads(cache.read_text()) if cache.exists() else {}
    if len(done) == len(specs):
        return done
    torch.set_num_threads(threads)
    supernet, cfg, _ = load_snapshot(path)
    scorers = []
    for half in (0, 1):
        scorer = PathScorer(supernet, cfg, bn_batches=bn_batches, images=10**9, seed=half)
        held = scorer.held_out
        scorer.held_out = torch.utils.data.Subset(held.dataset, list(held.indices)[half::2])
        scorers.append(scorer)
    for i, spec in enumerate(specs):
        if str(i) in done:
            continue
        done[str(i)] = [scorers[h].score(spec) for h in (0, 1)]
        write_atomic(cache, json.dumps(done, indent=1) + "\n")
    return done


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    if args.limit and Path(args.out).resolve() == (REPO / DEFAULT_OUT).resolve():
        raise NasError(f"--limit {args.limit}: a smoke run cannot write {DEFAULT_OUT}; give --out")
    check_camvid(args.data, "this benchmark")
    space = get_space(args.space, preset=PRESET, input_size=args.input)
    sk = space.skeleton
    lut_path = Path(args.lut) if args.lut else lutlib.default_table_path(space, "cpu",
                                                                         root=REPO / "results")
    if not lut_path.is_file():
        raise NasError(f"{'--lut ' if args.lut else ''}{lut_path}: no such table; build it with "
                       f"nas lut build --space {space.name} --preset {PRESET}"
                       + (f" --input {sk.input_size[0]}x{sk.input_size[1]}" if args.input else ""))
    # the table only places the window: another machine's will do (nothing is timed here)
    table = lutlib.LatencyTable.load(lut_path, allow_foreign=True)
    predictor = lutlib.LatencyPredictor(table)
    (_, fastest), (_, slowest) = predictor.bounds(space)
    budget_ms = args.budget if args.budget is not None else (fastest + slowest) / 2
    window = next(f.default for f in dataclasses.fields(SearchConfig) if f.name == "window")
    low, high = window[0] * budget_ms, window[1] * budget_ms
    specs = WindowSampler(predictor, space, low, high).draws(
        np.random.default_rng([args.seed, 7]), args.networks)

    workdir = Path(args.workdir)
    cfg = OneShotConfig(space=space.name, preset=PRESET, data=str(Path(args.data).resolve()),
                        rule="uniform", epochs=args.epochs, snapshots=args.snapshots,
                        batch_size=args.batch_size,
                        input_size=tuple(sk.input_size), seed=args.seed, threads=args.threads,
                        limit=args.limit)
    log(f"supernet: {cfg.rule} rule, {cfg.epochs} epochs into {workdir / 'supernet'}")
    trained = train_oneshot(cfg, workdir / "supernet", progress=not args.no_progress)
    if trained["status"] != "complete":
        raise KeyboardInterrupt
    _, weight_part, _ = split_datasets(space, cfg.data, seed=cfg.seed, arch_split=cfg.arch_split,
                                       batch_size=cfg.batch_size, limit=cfg.limit)
    steps_per_epoch = len(weight_part) // cfg.batch_size   # as the supernet trained
    per_snapshot, scores = [], {}
    for epoch in args.snapshots:
        log(f"scoring {len(specs)} networks at epoch {epoch}")
        done = score_snapshot(snapshot_path(workdir / "supernet", epoch), specs,
                              workdir / f"scores-e{epoch}.json", bn_batches=args.bn_batches,
                              threads=args.threads)
        halves = [[done[str(i)][h] for i in range(len(specs))] for h in (0, 1)]
        loss = np.array([[s["loss"] for s in half] for half in halves])
        miou = np.array([[s["metric"] for s in half] for half in halves])
        scores[epoch] = {"loss": loss.mean(0), "miou": miou.mean(0)}
        per_snapshot.append({
            "epoch": epoch, "weight_steps": epoch * steps_per_epoch,
            "loss_mean": float(loss.mean()), "loss_sd": float(loss.mean(0).std()),
            "miou_mean": float(miou.mean()),
            "reliability_loss": kendall(loss[0], loss[1]),
            "reliability_miou": kendall(miou[0], miou[1])})
    stability = {m: [[kendall(scores[a][m], scores[b][m]) for b in args.snapshots]
                     for a in args.snapshots] for m in ("loss", "miou")}
    history = trained["history"]
    return {
        "what": f"ranking stability of a uniform {space.name} supernet over training, CamVid",
        "command": shlex.join(["python", "benchmarks/seg_proxy_stability.py", *sys.argv[1:]]),
        "machine": machine(table),
        "lut": str(lut_path.relative_to(REPO) if lut_path.is_relative_to(REPO) else lut_path),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "supernet": {**cfg.to_dict(), "steps_per_epoch": steps_per_epoch,
                     "final_loss": history[-1].get("loss") if history else None},
        "budget_ms": budget_ms, "space_range_ms": [fastest, slowest], "window_ms": [low, high],
        "networks": [{"choices": s.choices, "predicted_ms": predictor.latency(s)} for s in specs],
        "snapshots": per_snapshot, "stability": stability,
        "seconds": time.perf_counter() - t0}


def render(report: dict) -> str:
    snaps = report["snapshots"]
    epochs = [s["epoch"] for s in snaps]
    sup = report["supernet"]
    lo, hi = report["window_ms"]
    fast, slow = report["space_range_ms"]
    lines = [
        "# Segmentation: when a supernet's ranking settles", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {report['machine']['device']}; torch {report['machine']['torch']}.", "",
        (f"A uniform `{sup['space']}` supernet trained on CamVid's training split (the search's "
         f"weight part: {sup['steps_per_epoch']} steps of batch {sup['batch_size']} an epoch, "
         f"Adam {sup['lr']}), scored at epochs {', '.join(map(str, epochs))}. "
         f"{len(report['networks'])} networks drawn uniformly from the window "
         f"{lo:.2f} - {hi:.2f} ms of a {report['budget_ms']:.2f} ms budget (the space spans "
         f"{fast:.2f} - {slow:.2f} ms by `{report['lut']}`), each scored as the search ranks "
         "them, twice: on two halves of "
         "the held-out images, with BatchNorm statistics recomputed on different batches."),
        "",
        "| epoch | weight steps | held-out loss (mean) | spread (sd) | mIoU (mean, %) | "
        "halves agree: tau loss | tau mIoU |",
        "|---|---|---|---|---|---|---|"]
    for s in snaps:
        lines.append(f"| {s['epoch']} | {s['weight_steps']} | {s['loss_mean']:.3f} | "
                     f"{s['loss_sd']:.3f} | {s['miou_mean']:.2f} | {s['reliability_loss']:.3f} | "
                     f"{s['reliability_miou']:.3f} |")
    for metric, label in (("loss", "held-out loss (the search's score)"), ("miou", "mIoU")):
        lines += ["", f"Kendall tau between the rankings of two snapshots, by {label}:", "",
                  "| epoch | " + " | ".join(map(str, epochs)) + " |",
                  "|---|" + "---|" * len(epochs)]
        for e, row in zip(epochs, report["stability"][metric]):
            lines.append(f"| {e} | " + " | ".join(f"{t:.2f}" for t in row) + " |")
    last = report["stability"]["loss"][-1]
    lines += ["", "## Reading", "",
              ("Where a snapshot's two halves agree, its ranking is measured, not noise; where "
               "it still moves from one snapshot to the next, it ranks the paths by how far "
               "they have got in training rather than by where they end. By loss (the search's "
               f"score), against epoch {epochs[-1]}: "
               + ", ".join(f"epoch {e} {t:.2f}" for e, t in zip(epochs[:-1], last[:-1])) + ". "
               "`nas search --task seg` trains its supernet for at least "
               "`SEARCH_WEIGHT_STEPS` weight steps by default (`nas.tasks.seg.task`). There "
               "is no segmentation ground truth here to score any ranking against."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(NAME, run, args, render, print_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
