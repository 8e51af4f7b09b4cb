"""The proof for the pose issue: searched network vs mobilenetv2 vs random ones, LSP, this CPU.

On Leeds Sports Pose at LSP's preset input (128x128, 14 joints), in a space whose range contains
mobilenetv2's latency (``efficientpose-a``: 1.8 to 10.7 ms predicted on this machine, mobilenetv2
8 ms; ``cpu-small`` tops out at 5.9 ms, below the budget, which turns the search into an
accuracy-only search), with this machine's latency table for that space
(``results/lut/<device>/<space>-128x128-b1-fp32.parquet``, built with
``nas lut build --space efficientpose-a --preset lsp``):

1. ``mobilenetv2`` (slim EfficientPose head) is measured end to end: its median latency is the
   budget; it is retrained with the recipe below;
2. ``nas search`` on LSP's training split with that budget; the network it selects is
   retrained with the identical recipe; when the supernet ranking (``nas.search.rank``) picked
   another network than derivation alone, the derivation's network is retrained as well (row
   ``searched-derivation-only``, an ablation outside the verdict);
3. random networks of the space whose *predicted* latency is within [0.85, 1.0] x budget (the
   window the search promises), drawn with a seeded generator, are retrained likewise;
4. all networks are measured side by side (interleaved rounds, one fresh process) and tabled:
   PCK@0.2 on LSP's test split, measured latency, predicted latency, MACs, parameters.

Target: searched >= mobilenetv2 + 1.0 PCK@0.2 at no more measured latency, and above the best
random network. The recipe is the same for every model and is not tuned per model.

    python benchmarks/pose_proof.py [--space efficientpose-a] [--epochs 100] [--search-epochs 10] \
        [--randoms 5] [--seed 0] [--threads N] [--search-threads N] [--jobs N] \\
        [--search-option KEY=VALUE ...] [--workdir runs/proof] \\
        [--out results/benchmarks/pose_proof.md]

Resume: every stage writes its output into ``--workdir`` (``budget.json``, ``search/report.json``,
``randoms.json``, ``train/<model>/metrics.json``, ``latency.json``) and is skipped when that output
exists; a stage killed half-way (a search or a training run) continues from its checkpoint. So
after Ctrl-C or a crash, the same command continues where it stopped. ``settings.json`` pins the
settings a workdir was started with; a different setting is refused rather than mixed in.

Smoke run (numbers meaningless, checks the plumbing)::

    python benchmarks/pose_proof.py --epochs 1 --search-epochs 2 --limit 32 --randoms 2 \
        --threads 1 --workdir /tmp/proof_smoke --out /tmp/proof_smoke/report.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import lut as lutlib
from lut.probe import PROBE_TOLERANCE
from nas.bench.proof import (
    ABLATION,
    WINDOW,
    Stages,
    add_search_threads,
    check_positive,
    compare,
    derivation_only,
    machine,
    predicted_latency,
    recipe_of,
    run_main,
    search_option,
    search_seconds,
    search_threads,
    verdict_lines,
)
from nas.search import SearchConfig
from nas.train import TrainConfig
from supernets.errors import NasError
from supernets.flops import complexity
from supernets.named import load_arch
from supernets.space import PRESETS, SPACES, get_space
from supernets.spec import ArchSpec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared/data/lsp").resolve()
SPACE = "efficientpose-a"      # default; always at the LSP preset (128x128, 14 joints)
PRESET = "lsp"
BASELINE = "mobilenetv2"
PCK_TARGET = 1.0              # searched - mobilenetv2, PCK@0.2 points
NAME = "pose_proof"
# SearchConfig fields the proof sets itself (--search-option cannot)
RESERVED = ("budget_ms", "space", "input_size", "num_joints", "data", "epochs", "rank_samples",
            "seed", "threads")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LSP folder (default %(default)s)")
    ap.add_argument("--space", default=SPACE, choices=sorted(SPACES),
                    help="search space, at the LSP preset 128x128, 14 joints (default %(default)s)")
    # 100, not EfficientPose's 200: LSP's 1000 training images on a 2-core CPU, 7 models
    ap.add_argument("--epochs", type=int, default=100,
                    help="retraining epochs, the same for every model (default %(default)s)")
    ap.add_argument("--search-epochs", type=int, default=10,
                    help="default %(default)s, nas search's")
    ap.add_argument("--rank-samples", type=int,
                    default=SearchConfig.__dataclass_fields__["rank_samples"].default,
                    help="the search's --rank-samples (default %(default)s, nas search's; the "
                         "first proof run used 32; 0: derivation alone)")
    ap.add_argument("--search-option", action="append", default=[], metavar="KEY=VALUE",
                    type=search_option(RESERVED),
                    help="a SearchConfig field for the search, repeatable, e.g. strategy=optuna, "
                         "mode=reinforce, lam_control=expected, trials=300, "
                         "supernet=runs/proxies/uniform/supernet-e20.pt (values as JSON, else "
                         "strings)")
    ap.add_argument("--randoms", type=int, default=5, help="random networks (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="retraining batch (default 32)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of every training run and of the random draws, and of the search "
                         "unless --search-seed")
    ap.add_argument("--search-seed", type=int, default=None,
                    help="seed of the search alone (default --seed): the proof's second seed "
                         "searches again and retrains its network against the same baseline and "
                         "random networks, trained as before")
    ap.add_argument("--threads", type=int, help="CPU threads for search and training "
                    "(latency is always measured with the table's thread count)")
    add_search_threads(ap)
    ap.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="retrain up to N models at once, each in its own process (default 1)")
    ap.add_argument("--limit", type=int, help="at most N training and test images per "
                    "retraining run (smoke runs; the search uses the whole training split)")
    ap.add_argument("--lut", help="latency table (default: this machine's table of the space at "
                    "LSP's input)")
    ap.add_argument("--allow-foreign-lut", action="store_true",
                    help="take --lut although its fingerprint is not this machine's (the proof's "
                         "table from before the fingerprint's CPU fields; the latencies reported "
                         "are measured here either way)")
    ap.add_argument("--workdir", default="runs/proof", help="runs and stage outputs")
    ap.add_argument("--out", default="results/benchmarks/pose_proof.md",
                    help="markdown report; the JSON goes beside it (.json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    check_positive(ap, args, ("epochs", "search_epochs", "randoms", "batch_size", "threads",
                              "search_threads", "limit", "jobs"))
    if args.rank_samples < 0:
        ap.error(f"--rank-samples {args.rank_samples}: expected 0 or more")
    return args


def settings_of(args: argparse.Namespace, lut_path: Path) -> dict:
    """The settings the results depend on (``Stages.pin``)."""
    return {"space": args.space, "baseline": BASELINE, "data": str(Path(args.data).resolve()),
            "epochs": args.epochs, "search_epochs": args.search_epochs,
            "rank_samples": args.rank_samples,
            "search_options": dict(args.search_option),
            "randoms": args.randoms, "batch_size": args.batch_size, "seed": args.seed,
            "search_seed": search_seed(args),
            "limit": args.limit, "lut": str(lut_path.resolve())}


def search_seed(args: argparse.Namespace) -> int:
    return args.seed if args.search_seed is None else args.search_seed


def search_config(budget_ms: float, args: argparse.Namespace) -> SearchConfig:
    input_size, joints = PRESETS[PRESET]
    return SearchConfig(budget_ms=budget_ms, space=args.space, input_size=input_size,
                        num_joints=joints, data=args.data, epochs=args.search_epochs,
                        rank_samples=args.rank_samples, seed=search_seed(args),
                        threads=search_threads(args),
                        **dict(args.search_option))


def train_config(spec: ArchSpec, args: argparse.Namespace) -> TrainConfig:
    """The one recipe every model is retrained with (nas.train's defaults otherwise)."""
    return TrainConfig(arch=spec.to_dict(), data=args.data, epochs=args.epochs,
                       batch_size=args.batch_size, seed=args.seed, limit=args.limit,
                       threads=args.threads, workers=args.workers)


# -- report ---------------------------------------------------------------------------------
def summarise(models: dict[str, ArchSpec], trained: dict[str, dict], latency: dict,
              predicted: dict[str, float | None]) -> tuple[list[dict], dict]:
    rows = []
    for key, spec in models.items():
        c, t, m = complexity(spec), latency["timings"][key], trained[key]
        epochs = m["history"]
        rows.append({"model": key, "arch": spec.name, "pck": m["final"]["mean"],
                     "pck_flip": m["final_flip"]["mean"], "metric": m["final"]["metric"],
                     "test_samples": m["final"]["samples"], "per_joint": m["final"]["per_joint"],
                     "latency_ms": t["median_ms"], "latency_p10_ms": t["p10_ms"],
                     "latency_p90_ms": t["p90_ms"], "predicted_ms": predicted[key],
                     "macs": c.macs, "params": c.params,
                     "train_seconds": sum(h["seconds"] for h in epochs),
                     "seconds_per_epoch": float(np.mean([h["seconds"] for h in epochs]))})
    return rows, compare(rows, BASELINE, "pck", PCK_TARGET)


def _setup_paragraphs(report: dict) -> list[str]:
    """How the numbers were obtained, one paragraph per ingredient."""
    s, recipe, search_r = report["settings"], report["recipe"], report["search"]
    randoms, lat, machine = report["randoms"], report["latency"], report["machine"]
    metric = report["rows"][0]["metric"]
    limit = f", at most {s['limit']} images per split in retraining" if s["limit"] else ""
    accuracy_only = (", budget above the space's slowest network: searched for accuracy alone"
                     if search_r.get("accuracy_only") else "")
    milestones = ", ".join(str(m) for m in recipe["milestones"])
    low, high = search_r["config"]["window"]
    (_, slowest_ms) = randoms["space_bounds_ms"]
    fallback = ("; the budget is above the space's slowest network, so the window's bottom is "
                f"{WINDOW[0]:g} x the slowest network's {slowest_ms:.3f} ms"
                if report["budget_ms"] > slowest_ms else "")
    return [
        f"Command: `{report['command']}`",
        (f"Machine: {machine['device']}; Python {machine['python']}, torch {machine['torch']}. "
         f"Compute, summed from the stage outputs (a resumed run counts each stage once): "
         f"search {report['compute']['search_seconds'] / 60:.1f} min (ranking included), "
         f"retraining {report['compute']['train_seconds'] / 3600:.2f} h for "
         f"{len(report['rows'])} models; wall clock of this invocation "
         f"{report['seconds'] / 3600:.2f} h."),
        (f"Data: {s['data']} (LSP: train split = first 1000 images, test split = last "
         f"1000){limit}."),
        (f"Recipe, identical for every model, not tuned per model: {recipe['epochs']} epochs, "
         f"batch {recipe['batch_size']}, Adam lr {recipe['lr']:g} x{recipe['decay_factor']:g} "
         f"after epochs {milestones} (lr per epoch: {recipe['lr_schedule']}), weight decay "
         f"{recipe['weight_decay']:g}, Gaussian targets sigma {recipe['sigma']:g}, augmentation "
         f"scale +-25%, rotation +-30 deg, flip; no pretraining; seed {recipe['seed']}. "
         f"{metric} is that of the last epoch's model on the test split, single pass (the "
         "latency measured is a single pass too); with flip test in the next column."),
        (f"Budget: {BASELINE}'s measured latency, {report['budget_ms']:.3f} ms. Search: "
         f"{s['search_epochs']} epochs on the train split, seed {search_r['config']['seed']}, "
         f"mode {search_r['config']['mode']}, "
         f"window {low:g} to {high:g} x budget; derived `{search_r['arch']['name']}`"
         f" predicted {search_r['predicted_ms']:.3f} ms{accuracy_only}, selected by "
         f"{search_r.get('selected_by') or 'derivation'}"
         + (f" (`nas search --rank-samples {len(search_r['ranking']) - 1}`: the derived "
            "network and networks drawn from the learned probabilities, "
            + ("each fitted into the window"
               if search_r["config"].get("rank_draw", "fit") == "fit"
               else "among the networks of the window")
            + ", ranked by the supernet's loss on held-out training images; the row "
            f"{ABLATION} is what derivation alone gave, retrained with the same recipe)"
            if search_r.get("ranking") else "") + "."),
        (f"Random networks: seed {randoms['seed']}, predicted latency within "
         f"{randoms['window_ms'][0]:.3f} to {randoms['window_ms'][1]:.3f} ms ({WINDOW[0]:g} to "
         f"{WINDOW[1]:g} x budget; the space spans {randoms['space_bounds_ms'][0]:.3f} to "
         f"{slowest_ms:.3f} ms{fallback}), the first {len(randoms['randoms'])} of "
         f"{randoms['draws']} draws."),
        (f"Latency: all {len(report['rows'])} networks measured side by side in one fresh "
         f"process, batch {lat['batch']}, {lat['dtype']}, {lat['threads']} thread(s), median of "
         f"{lat['timing']['rounds']} interleaved rounds (p10 to p90); predicted by the table "
         f"{s['lut']}." + _machine_drift(report)),
    ]


def _machine_drift(report: dict) -> str:
    """A sentence when the baseline, measured side by side, is off the budget it set by more
    than the speed probe's tolerance: the budget (and the table) then describe a machine other
    than the one the latencies were measured on, and only the side-by-side ratios compare."""
    base = next(r for r in report["rows"] if r["model"] == BASELINE)
    ratio = base["latency_ms"] / report["budget_ms"]
    if abs(ratio - 1.0) <= PROBE_TOLERANCE:
        return ""
    return (f" {BASELINE} measured {base['latency_ms']:.3f} ms in these rounds, {ratio:.2f} x "
            f"the {report['budget_ms']:.3f} ms budget it set when the work folder was started: "
            "the budget and the table describe another machine (or this one in another "
            "state); the verdict's latency compares the networks side by side here.")


def _table_lines(rows: list[dict]) -> list[str]:
    metric = rows[0]["metric"]
    header = (f"| model | {metric} test | {metric} flip test | latency ms median (p10-p90) "
              "| predicted ms | MACs (M) | params (M) |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        pred = "n/a (not in table)" if r["predicted_ms"] is None else f"{r['predicted_ms']:.3f}"
        name = r["model"] if r["model"] == r["arch"] else f"{r['model']} (`{r['arch']}`)"
        latency = f"{r['latency_ms']:.3f} ({r['latency_p10_ms']:.3f}-{r['latency_p90_ms']:.3f})"
        lines.append(f"| {name} | {r['pck']:.2f} | {r['pck_flip']:.2f} | {latency} | {pred} | "
                     f"{r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.3f} |")
    return lines


def render_markdown(report: dict) -> str:
    lines = ["# Proof: searched network vs mobilenetv2 vs random networks (LSP, this CPU)", ""]
    if report["settings"]["limit"]:
        lines += [(f"**Smoke run (--limit {report['settings']['limit']}): the numbers below "
                   "say nothing about the method.**"), ""]
    for paragraph in _setup_paragraphs(report):
        lines += [paragraph, ""]
    lines += _table_lines(report["rows"])
    lines += ["", "## Verdict", ""] + verdict_lines(
        report["rows"], report["verdict"], key="pck", label=report["rows"][0]["metric"],
        baseline=BASELINE, target=PCK_TARGET)
    lines += ["", f"**Target {'met' if report['verdict']['target_met'] else 'NOT met'}.**", ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    stages = Stages(Path(args.workdir), NAME, progress=not args.no_progress)
    workdir = stages.workdir
    space = get_space(args.space, preset=PRESET)
    lut_path = Path(args.lut) if args.lut else lutlib.default_table_path(
        space, "cpu", root=REPO / "results")
    if not lut_path.is_file():
        raise NasError(f"{lut_path}: no latency table for {args.space} at {PRESET}'s input on "
                       f"this machine; build it with: nas lut build --space {args.space} "
                       f"--preset {PRESET}")
    table = lutlib.LatencyTable.load(lut_path, allow_foreign=args.allow_foreign_lut)
    predictor = lutlib.LatencyPredictor(table)
    # workdirs from before --search-option have no search_options
    settings = stages.pin(settings_of(args, lut_path), defaults={"search_options": {},
                                                                  "search_seed": args.seed})
    sk = space.skeleton
    baseline = load_arch(BASELINE, input_size=sk.input_size, num_joints=sk.num_joints)

    budget = stages.budget(baseline, table)
    budget_ms = budget["budget_ms"]
    stages.log(f"budget: {BASELINE} measured {budget_ms:.3f} ms")
    search_report = stages.search(search_config(budget_ms, args), lut_path,
                                  allow_foreign=args.allow_foreign_lut)
    randoms = stages.randoms(space, predictor, budget_ms, args.randoms, args.seed)

    models = {BASELINE: baseline,
              "searched": ArchSpec.from_dict(search_report["arch"], where="search report")}
    ablation = derivation_only(space, search_report)
    if ablation is not None:
        models[ABLATION] = ablation
    models.update({f"random-{i + 1}": ArchSpec.from_dict(r["arch"], where="randoms.json")
                   for i, r in enumerate(randoms["randoms"])})
    trained, _ = stages.train_all({key: train_config(spec, args)
                                   for key, spec in models.items()}, None, jobs=args.jobs)
    latency = stages.latency(models, table)

    predicted = {key: predicted_latency(predictor, spec) for key, spec in models.items()}
    rows, verdict = summarise(models, trained, latency, predicted)
    return {
        "what": "searched network vs mobilenetv2 vs random networks of the space, LSP, this CPU",
        "target": f"searched >= {BASELINE} + {PCK_TARGET} PCK@0.2 at no more measured latency, "
                  "and above the best random network",
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(table),
        "settings": settings,
        "recipe": recipe_of(train_config(baseline, args)),
        "budget_ms": budget_ms,
        "budget": budget,
        "search": {k: search_report.get(k) for k in (
            "arch", "budget_ms", "window_ms", "accuracy_only", "predicted_ms", "measured_ms",
            "measured", "in_window", "space_bounds_ms", "layers", "lam_trajectory",
            "final_entropy", "config", "selected_by", "proxy_loss", "ranking", "ranking_seconds",
            "measure_checks")},
        "randoms": randoms,
        "latency": {k: v for k, v in latency.items() if k != "choices"},
        "rows": rows,
        "verdict": verdict,
        "compute": {"search_seconds": search_seconds(workdir / "search", search_report),
                    "train_seconds": sum(r["train_seconds"] for r in rows)},
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    return run_main(NAME, run, parse_args(argv), render_markdown)


if __name__ == "__main__":
    sys.exit(main())
