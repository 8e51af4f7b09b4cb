"""The proof for segmentation: searched network vs mobilenetv2-lraspp vs random ones, CamVid.

On CamVid (SegNet's 11 classes, void ignored) at CamVid's preset input (176x240), in the space
``seg-mbv2`` (MobileNetV2's stage table with every block a choice and the segmentation heads, so
that the baseline is one of its networks; ``--space seg-a`` for ``efficientpose-a``'s backbone,
which does not contain it, ``--space seg-small`` for the smallest), with this machine's latency
table for it (``results/lut/<device>/seg-mbv2-176x240-b1-fp32.parquet``, built by stage 0 when
missing, as ``nas lut build --space seg-mbv2`` builds it; or ``--lut``):

1. ``mobilenetv2-lraspp`` (MobileNetV2 backbone, LR-ASPP head) is measured end to end: its median
   latency (batch 1, fp32, the table's threads) is the budget; it is retrained with the recipe
   below;
2. ``nas search --task seg`` (its defaults: differentiable) on CamVid's training split with that
   budget; the network it selects is retrained with the identical recipe (and, when the
   supernet ranking picked another network than derivation alone, the derivation's network as
   row ``searched-derivation-only``, outside the verdict). On the 2-core AMD EPYC (family 23)
   machine of the smoke run the budget (51 ms) is above seg-small's slowest network (46 ms
   predicted), so a search of seg-small is for accuracy alone there; seg-a spans the budget but
   not the baseline's shape (at its latency seg-a's networks have 0.8-1.3M parameters to the
   baseline's 1.9M); seg-mbv2 contains the baseline, so the search can at worst find it;
3. random networks of the space whose *predicted* latency is within [0.85, 1.0] x budget,
   drawn with a seeded generator, are retrained likewise;
4. every model's last epoch is scored on CamVid's test split (mIoU, per-class IoU, pixel
   accuracy), and all are measured side by side (interleaved rounds, one fresh process) at
   batch 1 and at batch 16 (per image);
5. the search's proxy against retraining: each model that is a network of the space scored by
   the search's final supernet as its ranking scores candidates (held-out loss and mIoU),
   beside its test mIoU, with the Kendall tau between the two; and, when the baseline is in the
   space, the baseline and the searched network with their heads swapped.

``--extra ARCH.json`` (repeatable) adds networks of the space to retrain with the same recipe,
measure side by side and score with the proxies, reported beside the others as
``extra-<name>`` rows outside the verdict: e.g. hand-made neighbours of the baseline, to ask
whether the space holds a network above it at its latency at all. Given to a finished workdir,
only the new networks are trained and scored (the side-by-side stage measures all again).

Score = mIoU x W(T), W(T) = max(0, 1 - max(0, T - 3 ms) / 7 ms) (``nas.tasks.seg.score``), with T
measured at batch 1 and per image at batch 16, and beside them the FLOPs-proportional T
(DDRNet-39's 140.6 GFLOPs taken as 9.1453 ms) with its W and Score, so that the guess's error
shows.

Target: searched >= mobilenetv2-lraspp + 1.0 mIoU at no more measured latency, and above the
best random network. The recipe is the same for every model and is not tuned per model.

    python benchmarks/seg_proof.py [--epochs 60] [--search-epochs 40] [--randoms 5] [--seed 0] \\
        [--threads N] [--search-threads N] [--jobs N] [--workers N] [--val-every N] \\
        [--input HxW] [--search-option KEY=VALUE ...] [--extra ARCH.json ...] [--lut PATH] \\
        [--json] \\
        [--workdir runs/seg_proof] [--out results/benchmarks/seg_proof.md]

Resume: every stage writes its output into ``--workdir`` (``budget.json``, ``search/report.json``,
``randoms.json``, ``train/<model>/metrics.json`` and ``test.json``, ``latency.json``,
``proxy.json``) and is
skipped when that output exists; a stage killed half-way (the table build, a search or a
training run) continues where it stopped. So after Ctrl-C or a crash, the same command continues.
``settings.json`` pins the settings a workdir was started with; a different setting is refused
rather than mixed in.

On a GPU machine, ``--device cuda`` builds (or ``--lut`` names) the CUDA table and runs the
search, every training run and every measurement there; with a ``--cuda-graphs`` table the
latencies are CUDA-graph replays, as the table's. Networks this small leave a GPU mostly idle:
``--jobs 8`` retrains the eight models at once, and ``--workers 0`` loads CamVid's small images
in each training process (on an H100 host with 16 cores, one loader process per model, started
again every epoch, and validation every epoch took 10 s and 7 s of each model's epoch with 8
models at once; the search took 139 s)::

    python benchmarks/seg_proof.py --device cuda --jobs 8 --workers 0 --threads 2 --space seg-a \
        --lut results/lut/cuda-nvidia-h100-80gb-hbm3-0883209b/seg-a-176x240-b1-fp32.parquet

Smoke run (numbers meaningless, checks the plumbing; stage 0 builds this machine's table first
when it is missing, about 3 minutes here)::

    python benchmarks/seg_proof.py --epochs 1 --search-epochs 2 --limit 16 --randoms 2 \\
        --threads 1 --workdir /tmp/seg_proof_smoke --out /tmp/seg_proof_smoke/report.md
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import lut as lutlib
from lut.device import canonical_device
from nas.argtypes import input_size
from nas.bench.proof import (
    ABLATION,
    WINDOW,
    Stages,
    add_search_threads,
    check_camvid,
    check_positive,
    compare,
    derivation_only,
    machine,
    predicted_latency,
    read_json,
    recipe_of,
    run_main,
    search_option,
    search_seconds,
    search_threads,
    verdict_lines,
    write_json,
)
from nas.search import SearchConfig
from nas.tasks import get_task
from nas.tasks.seg import open_seg_dataset
from nas.tasks.seg.score import FLOPS_REFERENCE, flops_latency_ms, latency_weight, score
from nas.train import TrainConfig
from supernets.errors import NasError
from supernets.flops import complexity
from supernets.named import load_arch
from supernets.ops import parse_seg_head
from supernets.space import SearchSpace, get_space, space_names
from supernets.spec import ArchSpec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"                # where the table goes: results/lut/<device>/
DEFAULT_DATA = (REPO / ".." / "shared/data/camvid").resolve()
DEFAULT_OUT = "results/benchmarks/seg_proof.md"
SPACE = "seg-mbv2"          # contains the baseline itself (seg-a spans its latency, not its shape)
PRESET = "camvid"
BASELINE = "mobilenetv2-lraspp"
MIOU_TARGET = 1.0             # searched - mobilenetv2-lraspp, mIoU points
SCORE_BATCH = 16              # T is also measured per image at this batch (nas eval --score)
# A batch of 16 runs 16x as long as one image, so fewer rounds give as tight a median: 25
# rounds of the 7 models at 176x240 take about 2 minutes here, 100 would take 8
SCORE_BATCH_TIMING = lutlib.TimingConfig(rounds=25)
NAME = "seg_proof"
EXTRA = "extra-"              # the --extra networks' rows: outside the verdict
# SearchConfig fields the proof sets itself (--search-option cannot)
RESERVED = ("budget_ms", "task", "space", "input_size", "num_joints", "data", "epochs", "seed",
            "threads")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="CamVid folder, SegNet's layout (default %(default)s)")
    ap.add_argument("--space", default=SPACE, choices=space_names("seg"),
                    help="the segmentation space searched (default %(default)s)")
    ap.add_argument("--input", type=input_size, metavar="HxW",
                    help="network input, for every model and the table (default: CamVid's "
                         "176x240; smaller for smoke runs)")
    # 60 epochs at batch 8: 2760 steps on CamVid's 367 training images; at one thread, two
    # models at once on a 2-core machine: 1 to 1.7 h per model on the family-23 AMD EPYC
    # (mobilenetv2-lraspp ~100 s an epoch), ~25 min on the family-25 one (~25 s an epoch)
    ap.add_argument("--epochs", type=int, default=60,
                    help="retraining epochs, the same for every model (default %(default)s)")
    ap.add_argument("--search-epochs", type=int,
                    help="default: nas search's for the data (40 on CamVid)")
    ap.add_argument("--search-option", action="append", default=[], metavar="KEY=VALUE",
                    type=search_option(RESERVED),
                    help="a SearchConfig field for the search, repeatable, e.g. rank_samples=32, "
                         "objective=score, mode=reinforce (values as JSON, else strings)")
    ap.add_argument("--randoms", type=int, default=5, help="random networks (default %(default)s)")
    ap.add_argument("--extra", action="append", default=[], metavar="ARCH.json",
                    help="a network of the space to retrain and report beside the others, "
                         "outside the verdict (repeatable)")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="retraining batch (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the search, of every training run and of the random draws")
    ap.add_argument("--device",
                    help="cpu (default) or cuda[:N]: where the table is built, the search and "
                         "every training run, and where latency is measured (default with "
                         "--lut: the table's device)")
    ap.add_argument("--threads", type=int, help="CPU threads for search, training and "
                    "evaluation (latency is always measured with the table's thread count)")
    add_search_threads(ap)
    ap.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    ap.add_argument("--val-every", type=int, default=10, metavar="N",
                    help="validate every N epochs while retraining (0: only after the last; "
                         "scores use the test split either way; default %(default)s)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="retrain up to N models at once, each in its own process (a GPU "
                         "that these small networks leave idle; default 1)")
    ap.add_argument("--limit", type=int, help="at most N images per split in retraining and "
                    "testing (smoke runs; the search uses the whole training split)")
    ap.add_argument("--lut", help="latency table of the space at the input (default: this "
                    "machine's, built first when missing)")
    ap.add_argument("--workdir", default="runs/seg_proof", help="runs and stage outputs")
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help="markdown report; the JSON goes beside it (.json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--json", action="store_true",
                    help="print the report as one JSON object instead of the markdown")
    args = ap.parse_args(argv)
    check_positive(ap, args, ("epochs", "search_epochs", "randoms", "batch_size", "threads",
                              "search_threads", "limit", "jobs"))
    for name in ("workers", "val_every"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected 0 or more")
    return args


# -- inputs -----------------------------------------------------------------------------------
def check_data(data: str) -> dict:
    """Images per split and the size (HxW) of the first test image; one line naming the path
    when ``data`` is no CamVid folder or misses a split's list or files. Checked before anything
    is measured or written."""
    check_camvid(data, "this proof")
    records = {split: open_seg_dataset(data, split)[0] for split in ("train", "val", "test")}
    if not records["test"]:
        raise NasError(f"--data {data}: test.txt lists no images")
    with Image.open(records["test"][0].image) as image:
        size = [image.height, image.width]
    return {**{split: len(r) for split, r in records.items()}, "image_size": size}


def the_space(args: argparse.Namespace) -> SearchSpace:
    return get_space(args.space, preset=PRESET, input_size=args.input)


def table_path(space: SearchSpace, lut: str | None, device: str) -> Path:
    """``--lut``, else this machine's table of the space at its input on ``device``
    (``results/lut/...``)."""
    return Path(lut) if lut else lutlib.default_table_path(space, device, root=RESULTS)


def stage_table(stages: Stages, space: SearchSpace, path: Path, given: bool,
                device: str) -> Path:
    """Stage 0: the latency table; this machine's is built (or its killed build continued)
    when missing, as ``nas lut build --space SPACE --device DEVICE`` builds it."""
    if path.is_file():
        return path
    if given:
        raise NasError(f"--lut {path}: no such table")
    h, w = space.skeleton.input_size
    stages.log(f"stage 0: building the latency table of {space.name} at {h}x{w} into {path} "
               "(resumed if killed)")
    return lutlib.build_table(space, device, out=path, progress=stages.progress)


def table_device(path: Path, device: str | None) -> str:
    """The device of the table given with ``--lut``: the proof runs where its latency was
    measured; a different ``--device`` is refused."""
    if not path.is_file():
        raise NasError(f"--lut {path}: no such table")
    table_dev = lutlib.LatencyTable.load(path).device
    if device is not None and canonical_device(device) != canonical_device(table_dev):
        raise NasError(f"--device {device}: the table {path} was measured on {table_dev}; "
                       f"pass --device {table_dev} or a table of {device}")
    return table_dev


def settings_of(args: argparse.Namespace, space: SearchSpace, lut_path: Path) -> dict:
    """The settings the results depend on (``Stages.pin``)."""
    return {"space": space.name, "input_size": list(space.skeleton.input_size),
            "device": args.device,
            "baseline": BASELINE,
            "data": str(Path(args.data).resolve()), "epochs": args.epochs,
            "search_epochs": args.search_epochs, "search_options": dict(args.search_option),
            "randoms": args.randoms, "batch_size": args.batch_size, "seed": args.seed,
            "limit": args.limit, "lut": str(lut_path.resolve())}


def search_config(budget_ms: float, space: SearchSpace, args: argparse.Namespace
                  ) -> SearchConfig:
    """``nas search --task seg``'s defaults, with the budget, data, epochs and seed."""
    sk = space.skeleton
    return SearchConfig(budget_ms=budget_ms, task="seg", space=space.name,
                        input_size=tuple(sk.input_size), num_joints=sk.num_joints,
                        data=args.data, epochs=args.search_epochs, seed=args.seed,
                        threads=search_threads(args), device=args.device,
                        **dict(args.search_option))


def load_extras(paths: list[str], space: SearchSpace) -> dict[str, ArchSpec]:
    """``--extra``'s arch files as ``extra-<name>`` models; one line naming the file when one
    is unreadable, not a network of ``space`` or a second network of one name. Checked before
    anything is measured or written."""
    extras: dict[str, ArchSpec] = {}
    for path in paths:
        spec = ArchSpec.load(path)
        try:
            space.check(spec)
        except NasError as e:
            raise NasError(f"{path}: --extra takes networks of the space {space.name} at "
                           f"{space.skeleton.input_size[0]}x{space.skeleton.input_size[1]} "
                           f"({e})") from None
        key = f"{EXTRA}{spec.name}"
        if not re.fullmatch(r"[A-Za-z0-9._-]+", spec.name):
            raise NasError(f"{path}: name {spec.name!r} names the network's run folder; "
                           "expected letters, digits, '.', '_' or '-'")
        if key in extras:
            raise NasError(f"{path}: a second --extra network named {spec.name!r}; expected "
                           "one name per network")
        extras[key] = spec
    return extras


def train_config(spec: ArchSpec, args: argparse.Namespace) -> TrainConfig:
    """The one recipe every model is retrained with (nas.train's defaults otherwise)."""
    return TrainConfig(arch=spec.to_dict(), task="seg", data=args.data, epochs=args.epochs,
                       batch_size=args.batch_size, seed=args.seed, limit=args.limit,
                       threads=args.threads, workers=args.workers, device=args.device,
                       val_every=args.val_every)


# -- report -----------------------------------------------------------------------------------
def score_of(miou: float, t_ms: float) -> dict:
    return {"t_ms": t_ms, "w": latency_weight(t_ms), "score": score(miou, t_ms)}


def stage_proxy(stages: Stages, space: SearchSpace, models: dict[str, ArchSpec]) -> dict:
    """Stage 6: every model that is a network of the space scored by the search's final supernet
    as its ranking scores candidates (``nas.search.oneshot.PathScorer``: BatchNorm recomputed on
    the search's number of weight-part batches, held-out loss and mIoU on its number of
    architecture-split images; a fresh draw of both), to set beside the test mIoU retraining
    gives; and, when the baseline is a network of the space with another head than the searched
    one, both with their heads swapped: does the proxy rank networks or their heads?"""
    path = stages.workdir / "proxy.json"
    done = read_json(path) if path.exists() else None
    if done is not None and set(models) <= set(done["models"]):
        return done
    import torch

    from nas.search.family import FAMILY_FILE
    from nas.search.oneshot import PathScorer
    from nas.search.searcher import load_checkpoint

    state = load_checkpoint(stages.workdir / "search" / "checkpoint.pt")
    c = state["config"]
    scorer = PathScorer.from_search(state, bn_batches=c["rank_bn_batches"],
                                    images=c["rank_images"])
    stages.log(f"stage 6: scoring the models with the search's supernet "
               f"({c['rank_images']} held-out images)")

    def in_space(spec: ArchSpec) -> bool:
        try:
            space.check(spec)
        except NasError:
            return False
        return True

    steps = c.get("rank_finetune") or get_task("seg").rank_finetune_steps
    # the family stage's supernet (nas.search.family), when the search ran one
    family_path = stages.workdir / "search" / FAMILY_FILE
    family, family_scorer = None, None
    if family_path.is_file():
        fam = torch.load(family_path, map_location="cpu", weights_only=True)
        family = {"family": fam["family"], "epochs": fam["epoch"]}
        family_scorer = PathScorer.from_search({**state, "supernet": fam["supernet"]},
                                               bn_batches=c["rank_bn_batches"],
                                               images=c["rank_images"])

    def both(spec: ArchSpec) -> dict:
        tuned = scorer.score_finetuned(spec, steps, epochs=c["epochs"], images=c["rank_images"],
                                       lr=c["weight_lr"], weight_decay=c["weight_decay"])
        out = {**scorer.score(spec), "finetune_loss": tuned["loss"],
               "finetune_seconds": tuned["seconds"]}
        if family_scorer is not None:
            out["family_loss"] = family_scorer.score(spec)["loss"]
        return out

    known = done["models"] if done is not None else {}   # models added since (--extra)
    if known:
        stages.log(f"stage 6: scoring {', '.join(k for k in models if k not in known)}")
    scores = {key: known[key] if key in known else both(spec) if in_space(spec) else None
              for key, spec in models.items()}
    if done is not None:       # the rest as scored before, swaps included
        result = {**done, "models": scores}
        write_json(path, result)
        return result
    swaps = {}
    base, found = models[BASELINE], models["searched"]
    if scores[BASELINE] is not None and base.choices["head"] != found.choices["head"]:
        for what, backbone, head in (("baseline backbone, searched head", base, found),
                                     ("searched backbone, baseline head", found, base)):
            spec = space.spec({**backbone.choices, "head": head.choices["head"]}, what)
            swaps[what] = {"head": head.choices["head"], **both(spec)}
    result = {"images": c["rank_images"], "bn_batches": c["rank_bn_batches"],
              "finetune_steps": steps, "family": family, "models": scores, "swaps": swaps}
    write_json(path, result)
    return result


def proxy_lines(proxy: dict, rows: list[dict]) -> list[str]:
    """The report's section on the search's proxy (stage 6) against retraining."""
    from scipy import stats

    scored = [r for r in rows if proxy["models"].get(r["model"]) is not None]
    steps = proxy.get("finetune_steps")  # absent in a report scored before that column
    family = proxy.get("family")          # the family stage's supernet, when the search ran it
    tuned = (f" | loss after {steps} own steps" if steps else "") + (
        f" | {family['family']} supernet loss" if family else "")
    lines = ["", "## The search's proxy against retraining", "",
             (f"Each model that is a network of the space, scored by the search's final supernet "
              f"as its ranking scores candidates (BatchNorm recomputed on {proxy['bn_batches']} "
              f"weight-part batches; loss and mIoU on {proxy['images']} held-out images of the "
              "architecture split; the ranking picks the lowest loss)"
              + (f", and after {steps} steps of its own from the supernet's weights exactly as "
                 "the search's shortlist is scored (`nas.search.rank`: the weight step's Adam, "
                 "lr and batch, the same batches for each; loss on the search's held-out "
                 "crops of the architecture split)" if steps else "")
             + (f", and by the supernet after the search's family stage ({family['epochs']} "
                f"more epochs with the head among the {family['family']} heads, "
                "`nas.search.family`), scored as the first column." if family else ".")), "",
             f"| model | head | proxy loss | proxy mIoU{tuned} | test mIoU |",
             "|---|---|---|---|---|" + ("---|" if steps else "") + ("---|" if family else "")]

    def cells(p: dict) -> str:
        return (f"{p['loss']:.3f} | {p['metric']:.2f}"
                + (f" | {p['finetune_loss']:.3f}" if steps else "")
                + (f" | {p['family_loss']:.3f}" if family else ""))

    for r in sorted(scored, key=lambda r: proxy["models"][r["model"]]["loss"]):
        lines.append(f"| {r['model']} | `{r['choices_head']}` | "
                     f"{cells(proxy['models'][r['model']])} | {r['miou']:.2f} |")
    for what, p in proxy["swaps"].items():
        lines.append(f"| {what} | `{p['head']}` | {cells(p)} | - |")
    outside = [r["model"] for r in rows if proxy["models"].get(r["model"]) is None]
    if outside:
        lines += ["", f"Not networks of the space (no proxy): {', '.join(outside)}."]
    if len(scored) >= 3:
        truth = [r["miou"] for r in scored]
        tau = stats.kendalltau([-proxy["models"][r["model"]]["loss"] for r in scored],
                               truth).statistic
        line = (f"Kendall tau between the proxy's ranking (lowest loss first) and the test mIoU "
                f"over these {len(scored)} networks: {tau:.2f}")
        if steps:
            tau_tuned = stats.kendalltau(
                [-proxy["models"][r["model"]]["finetune_loss"] for r in scored], truth).statistic
            line += f"; after {steps} own steps: {tau_tuned:.2f}"
        lines += ["", line + "."]
    if family:
        members = [r for r in scored if parse_seg_head(r["choices_head"])[0] == family["family"]]
        if len(members) >= 2:
            lines += ["", f"Among the {len(members)} networks with {family['family']} heads, "
                      "lowest loss first: "
                      + "; ".join(f"{what} "
                                  + ", ".join(r["model"] for r in sorted(
                                      members, key=lambda r: proxy["models"][r["model"]][key]))
                                  for what, key in (("the search's supernet", "loss"),
                                                    (f"{steps} own steps", "finetune_loss"),
                                                    ("the family supernet", "family_loss")))
                      + "; test mIoU "
                      + ", ".join(r["model"] for r in sorted(members, key=lambda r: -r["miou"]))
                      + "."]
    return lines


def summarise(models: dict[str, ArchSpec], trained: dict[str, dict], tested: dict[str, dict],
              latency: dict, predicted: dict[str, float | None]) -> tuple[list[dict], dict]:
    rows = []
    per_batch = latency["batches"][str(SCORE_BATCH)]["timings"]
    for key, spec in models.items():
        c, t, m, test = complexity(spec), latency["timings"][key], trained[key], tested[key]
        epochs = m["history"]
        miou, gflops = test["mean"], c.flops / 1e9
        t16 = per_batch[key]["median_ms"] / SCORE_BATCH
        rows.append({"model": key, "arch": spec.name, "choices_head": spec.choices.get("head"),
                     "miou": miou, "metric": test["metric"],
                     "pixel_accuracy": test["pixel_accuracy"], "per_class": test["per_class"],
                     "test_samples": test["samples"], "val_miou": m["final"]["mean"],
                     "latency_ms": t["median_ms"], "latency_p10_ms": t["p10_ms"],
                     "latency_p90_ms": t["p90_ms"], "latency_b16_ms": t16,
                     "predicted_ms": predicted[key], "macs": c.macs, "params": c.params,
                     "gflops": gflops,
                     "score": {"batch1": score_of(miou, t["median_ms"]),
                               f"batch{SCORE_BATCH}": score_of(miou, t16),
                               "flops": score_of(miou, flops_latency_ms(gflops))},
                     "train_seconds": sum(h["seconds"] for h in epochs),
                     "seconds_per_epoch": float(np.mean([h["seconds"] for h in epochs]))})
    return rows, compare(rows, BASELINE, "miou", MIOU_TARGET)


def _name(r: dict) -> str:
    return r["model"] if r["model"] == r["arch"] else f"{r['model']} (`{r['arch']}`)"


def _setup_paragraphs(report: dict) -> list[str]:
    """How the numbers were obtained, one paragraph per ingredient."""
    s, recipe, search_r = report["settings"], report["recipe"], report["search"]
    randoms, lat, host, data = (report["randoms"], report["latency"], report["machine"],
                                report["data"])
    (h, w), (ih, iw) = s["input_size"], data["image_size"]
    limit = f", at most {s['limit']} images per split in retraining and testing" \
        if s["limit"] else ""
    accuracy_only = (" (the budget is above the space's slowest network: searched for "
                     "accuracy alone)" if search_r.get("accuracy_only") else "")
    window = search_r.get("window_ms")
    window_text = (f"window {window[0]:.3f} to {window[1]:.3f} ms predicted" if window
                   else "no window")
    (_, slowest_ms) = randoms["space_bounds_ms"]
    fallback = ("; the budget is above the space's slowest network, so the window's bottom is "
                f"{WINDOW[0]:g} x the slowest network's {slowest_ms:.3f} ms"
                if report["budget_ms"] > slowest_ms else "")
    milestones = ", ".join(str(m) for m in recipe["milestones"])
    b16 = lat["batches"][str(SCORE_BATCH)]["timing"]["rounds"]
    return [
        f"Command: `{report['command']}`",
        (f"Machine: {host['device']}; Python {host['python']}, torch {host['torch']}. "
         f"Compute, summed from the stage outputs (a resumed run counts each stage once): "
         f"search {report['compute']['search_seconds'] / 60:.1f} min, retraining "
         f"{report['compute']['train_seconds'] / 3600:.2f} h for {len(report['rows'])} models; "
         f"wall clock of this invocation {report['seconds'] / 3600:.2f} h."),
        (f"Data: {s['data']} (CamVid, SegNet's 11 classes, void ignored: train "
         f"{data['train']}, val {data['val']}, test {data['test']} images of "
         f"{ih}x{iw}){limit}. Training samples are random {h}x{w} crops of images scaled by "
         "0.5 to 2 and flipped; evaluation scores each image whole, at its own size."),
        (f"Recipe, identical for every model, not tuned per model: {recipe['epochs']} epochs, "
         f"batch {recipe['batch_size']}, Adam lr {recipe['lr']:g} x{recipe['decay_factor']:g} "
         f"after epochs {milestones} (lr per epoch: {recipe['lr_schedule']}), weight decay "
         f"{recipe['weight_decay']:g}, per-pixel cross-entropy; no pretraining; seed "
         f"{recipe['seed']}. mIoU is that of the last epoch's model on the test split, single "
         "pass (the latency measured is a single pass too); the validation split's mIoU, "
         "which training reports, is in the JSON."),
        (f"Budget: {BASELINE}'s measured latency, {report['budget_ms']:.3f} ms. Search: "
         f"`nas search --task seg` defaults, {s['search_epochs']} epochs on the train split, "
         f"mode {search_r['config']['mode']}, objective {search_r['config']['objective']}, "
         f"{window_text}{accuracy_only}; selected `{search_r['arch']['name']}`, predicted "
         f"{search_r['predicted_ms']:.3f} ms, by {search_r.get('selected_by') or 'derivation'}"
         + (f" (the row {ABLATION} is what derivation alone gave, retrained with the same "
            "recipe)" if search_r.get("ranking") else "")
         + (f"; search options {s['search_options']}" if s["search_options"] else "") + "."),
        (f"Random networks: seed {randoms['seed']}, predicted latency within "
         f"{randoms['window_ms'][0]:.3f} to {randoms['window_ms'][1]:.3f} ms ({WINDOW[0]:g} to "
         f"{WINDOW[1]:g} x budget; the space spans {randoms['space_bounds_ms'][0]:.3f} to "
         f"{slowest_ms:.3f} ms{fallback}), the first {len(randoms['randoms'])} of "
         f"{randoms['draws']} draws."
         + (" Outside the verdict (--extra), retrained with the same recipe: "
            + ", ".join(f"{key} (`{path}`)" for key, path in report["extras"].items()) + "."
            if report.get("extras") else "")),
        (f"Latency: all {len(report['rows'])} networks measured side by side in one fresh "
         f"process, {lat['dtype']}, {lat['threads']} thread(s): batch {lat['batch']}, median "
         f"of {lat['timing']['rounds']} interleaved rounds (p10 to p90); batch {SCORE_BATCH}, "
         f"{b16} rounds, per image. Predicted by the table {s['lut']}."),
    ]


def _table_lines(rows: list[dict]) -> list[str]:
    lines = ["| model | mIoU test | pixel acc. | latency ms median (p10-p90) | predicted ms "
             "| Score (T batch 1) | MACs (M) | params (M) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pred = "n/a (not in table)" if r["predicted_ms"] is None else f"{r['predicted_ms']:.3f}"
        latency = f"{r['latency_ms']:.3f} ({r['latency_p10_ms']:.3f}-{r['latency_p90_ms']:.3f})"
        lines.append(f"| {_name(r)} | {r['miou']:.2f} | {r['pixel_accuracy']:.2f} | {latency} | "
                     f"{pred} | {r['score']['batch1']['score']:.2f} | {r['macs'] / 1e6:.1f} | "
                     f"{r['params'] / 1e6:.3f} |")
    return lines


def _class_lines(rows: list[dict]) -> list[str]:
    names = list(rows[0]["per_class"])
    lines = ["| model | " + " | ".join(names) + " | mIoU |",
             "|---|" + "---|" * (len(names) + 1)]
    for r in rows:
        cells = ["-" if r["per_class"][n] is None else f"{r['per_class'][n]:.1f}" for n in names]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['miou']:.2f} |")
    return lines


def _score_lines(rows: list[dict]) -> list[str]:
    b = f"batch{SCORE_BATCH}"
    lines = [f"| model | mIoU | T batch 1 ms | W | Score | T batch {SCORE_BATCH} ms/image | W | "
             "Score | GFLOPs | T FLOPs guess ms | W | Score | measured / guess |",
             "|---|" + "---|" * 12]
    for r in rows:
        s1, s16, sf = r["score"]["batch1"], r["score"][b], r["score"]["flops"]
        lines.append(f"| {r['model']} | {r['miou']:.2f} | {s1['t_ms']:.3f} | {s1['w']:.3f} | "
                     f"{s1['score']:.2f} | {s16['t_ms']:.3f} | {s16['w']:.3f} | "
                     f"{s16['score']:.2f} | {r['gflops']:.3f} | {sf['t_ms']:.3f} | "
                     f"{sf['w']:.3f} | {sf['score']:.2f} | {s1['t_ms'] / sf['t_ms']:.1f}x |")
    return lines


def extra_lines(rows: list[dict]) -> list[str]:
    """The ``--extra`` networks against the baseline, outside the verdict."""
    base = next(r for r in rows if r["model"] == BASELINE)
    return [f"- outside the verdict (--extra): {r['model']} {r['miou']:.2f} at "
            f"{r['latency_ms']:.3f} ms (x{r['latency_ms'] / base['latency_ms']:.3f}), "
            f"{r['miou'] - base['miou']:+.2f} over {BASELINE}"
            for r in rows if r["model"].startswith(EXTRA)]


def render_markdown(report: dict) -> str:
    device = report["settings"].get("device", "cpu")
    where = "this CPU" if device == "cpu" else f"this machine's {device}"
    lines = [f"# Proof: searched network vs {BASELINE} vs random networks (CamVid, "
             f"space {report['settings']['space']}, {where})", ""]
    if report["settings"]["limit"]:
        lines += [(f"**Smoke run (--limit {report['settings']['limit']}): the numbers below "
                   "say nothing about the method.**"), ""]
    for paragraph in _setup_paragraphs(report):
        lines += [paragraph, ""]
    rows = report["rows"]
    lines += _table_lines(rows)
    lines += ["", "## Per-class IoU (test split, %)", ""] + _class_lines(rows)
    name, gflops, ms = FLOPS_REFERENCE
    lines += ["", "## Score", "",
              ("Score = mIoU x W(T), W(T) = max(0, 1 - max(0, T - 3 ms) / 7 ms). T measured "
               f"here (batch 1; batch {SCORE_BATCH} per image), and the FLOPs-proportional T "
               f"that scaling {name}'s {gflops} GFLOPs = {ms} ms gives the same network: the "
               "last column is how far that guess is off on this machine."), ""]
    lines += _score_lines(rows)
    if report.get("proxy"):
        lines += proxy_lines(report["proxy"], rows)
    lines += ["", "## Verdict", ""] + verdict_lines(
        rows, report["verdict"], key="miou", label="mIoU", baseline=BASELINE, target=MIOU_TARGET)
    lines += extra_lines(rows)
    lines += ["", f"**Target {'met' if report['verdict']['target_met'] else 'NOT met'}.**", ""]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    if args.limit and Path(args.out).resolve() == (REPO / DEFAULT_OUT).resolve():
        raise NasError(f"--limit {args.limit}: a smoke run cannot write the proof's report "
                       f"{DEFAULT_OUT}; give --out")
    stages = Stages(Path(args.workdir), NAME, progress=not args.no_progress)
    data = check_data(args.data)
    space = the_space(args)
    extras = load_extras(args.extra, space)
    if args.search_epochs is None:   # nas search's default for the data and search options
        args.search_epochs = search_config(1.0, space, args).epochs
    lut_path = table_path(space, args.lut, args.device or "cpu")
    args.device = table_device(lut_path, args.device) if args.lut else (args.device or "cpu")
    settings = stages.pin(settings_of(args, space, lut_path), defaults={"device": "cpu"})
    stage_table(stages, space, lut_path, given=bool(args.lut), device=args.device)
    table = lutlib.LatencyTable.load(lut_path)
    predictor = lutlib.LatencyPredictor(table)
    sk = space.skeleton
    baseline = load_arch(BASELINE, input_size=sk.input_size, num_joints=sk.num_joints)

    budget = stages.budget(baseline, table)
    budget_ms = budget["budget_ms"]
    stages.log(f"budget: {BASELINE} measured {budget_ms:.3f} ms")
    search_report = stages.search(search_config(budget_ms, space, args), lut_path)
    randoms = stages.randoms(space, predictor, budget_ms, args.randoms, args.seed)

    models = {BASELINE: baseline,
              "searched": ArchSpec.from_dict(search_report["arch"], where="search report")}
    ablation = derivation_only(space, search_report)
    if ablation is not None:
        models[ABLATION] = ablation
    models.update({f"random-{i + 1}": ArchSpec.from_dict(r["arch"], where="randoms.json")
                   for i, r in enumerate(randoms["randoms"])})
    models.update(extras)
    trained, tested = stages.train_all({key: train_config(spec, args)
                                        for key, spec in models.items()}, "test", jobs=args.jobs)
    latency = stages.latency(models, table, batches={SCORE_BATCH: SCORE_BATCH_TIMING})
    proxy = stage_proxy(stages, space, models)

    predicted = {key: predicted_latency(predictor, spec) for key, spec in models.items()}
    rows, verdict = summarise(models, trained, tested, latency, predicted)
    return {
        "what": f"searched network vs {BASELINE} vs random networks of {space.name}, CamVid, "
                f"on {args.device}",
        "target": f"searched >= {BASELINE} + {MIOU_TARGET} mIoU at no more measured latency, "
                  "and above the best random network",
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(table),
        "settings": settings,
        "data": data,
        "recipe": recipe_of(train_config(baseline, args)),
        "budget_ms": budget_ms,
        "budget": budget,
        "search": {k: search_report.get(k) for k in (
            "arch", "budget_ms", "window_ms", "accuracy_only", "predicted_ms", "measured_ms",
            "measured", "in_window", "space_bounds_ms", "layers", "lam_trajectory",
            "final_entropy", "config", "selected_by", "proxy_loss", "ranking", "ranking_seconds",
            "finetune_loss", "finetune_seconds", "family_loss", "family_stage",
            "measure_checks", "verdict")},
        "randoms": randoms,
        "extras": {key: str(path) for key, path in zip(extras, args.extra)},
        "latency": {k: v for k, v in latency.items() if k != "choices"},
        "rows": rows,
        "proxy": proxy,
        "verdict": verdict,
        "compute": {"search_seconds": search_seconds(stages.workdir / "search", search_report),
                    "train_seconds": sum(r["train_seconds"] for r in rows)},
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(NAME, run, args, render_markdown, print_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
