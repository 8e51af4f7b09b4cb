"""``nas eval CKPT --data PATH [--split S] [--flip] [--score] [--json]``: a checkpoint's metric.

The metric is the dataset's. Pose: PCK@0.2 (torso) for LSP and the synthetic figures, PCKh@0.5
for MPII, OKS AP for COCO (``--detections`` for person boxes from a detector instead of the
ground truth), per joint. Seg: mIoU, pixel accuracy and IoU per class. The default split is the
one results are usually reported on (LSP, CamVid and synthetic: test; MPII, COCO, Cityscapes and
VOC: val).

``--score`` (seg): the latency-weighted score, Score = mIoU x W(T) with W(T) = max(0, 1 - max(0,
T - 3 ms) / 7 ms), with T measured here (``nas bench``: median of interleaved rounds) at batch 1
and at batch 16 (per image), and beside them the T that scaling GFLOPs from DDRNet-39 (140.6
GFLOPs taken as 9.1453 ms) would give the same model, with the ratio of the two.
"""

from __future__ import annotations

import argparse

import torch

from nas.argtypes import non_negative_int, positive_int
from nas.checkpoint import load_model_checkpoint
from nas.commands import Result
from nas.tasks import get_task
from supernets.errors import NasError


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained checkpoint", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="nas.model/1 checkpoint (e.g. best.pt)")
    p.add_argument("--task", help="task (default: the checkpoint's, else pose)")
    p.add_argument("--data", help="dataset: an LSP, MPII or COCO folder or an MPII/COCO JSON "
                   "file (default: embedded synthetic figures)")
    p.add_argument("--split", help="split to score (default: test for LSP/synthetic, val for "
                   "MPII/COCO)")
    p.add_argument("--detections", help="COCO: person boxes (JSON list of {image_id, bbox, "
                   "score}) instead of the ground-truth boxes")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirror")
    p.add_argument("--score", action="store_true",
                   help="seg: latency-weighted score, T measured here at batch 1 and 16 and "
                        "the FLOPs-scaled T beside it")
    p.add_argument("--rounds", type=positive_int,
                   help="--score: timing rounds (default: nas bench's)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--limit", type=positive_int, metavar="N", help="score at most N images")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="data loading processes (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> Result:
    if args.threads:
        torch.set_num_threads(args.threads)
    spec, model, meta = load_model_checkpoint(args.checkpoint)
    task = get_task(args.task or meta.get("task") or "pose")
    sk = spec.skeleton
    split = args.split or task.evaluation_split(args.data)
    options = {"detections": args.detections} if args.detections else {}
    dataset = task.make_dataset(args.data, split, sk, seed=0, augment=False, limit=args.limit,
                                **options)
    model = model.to(torch.device(args.device), memory_format=torch.channels_last)
    result = task.evaluate_model(model, dataset, flip=args.flip, batch_size=args.batch_size,
                                 device=args.device, num_workers=args.workers,
                                 progress=not args.no_progress)
    h, w = sk.input_size
    data = args.data or "synthetic"
    header = (f"{spec.name} ({h}x{w}, {sk.outputs}) from {args.checkpoint}, "
              f"on {data} split {split}")
    text = header + "\n" + task.format_result(result)
    payload = {"checkpoint": str(args.checkpoint), "arch": spec.name, "data": data,
               "split": split, **result}
    if args.score:
        if task.name != "seg":
            raise NasError(f"--score: the latency-weighted score is for segmentation, not "
                           f"{task.name}")
        payload["score"] = latency_score(spec, model, result["mean"], args)
        text += "\n" + format_score(payload["score"])
    return Result(text, payload)


SCORE_BATCHES = (1, 16)


def latency_score(spec, model, miou: float, args) -> dict:
    """Score = mIoU x W(T) with T measured here at each of ``SCORE_BATCHES`` (per image), and
    with the FLOPs-proportional T of the same model."""
    from lut.bench import BenchModel, bench
    from lut.fingerprint import describe
    from lut.timing import TimingConfig
    from nas.tasks.seg.score import FLOPS_REFERENCE, flops_latency_ms, latency_weight, score
    from supernets.flops import complexity

    timing = TimingConfig(rounds=args.rounds) if args.rounds else None
    m = BenchModel(spec.name, "checkpoint", spec, tuple(spec.skeleton.input_size),
                   torch_model=model)
    measured = []
    for batch in SCORE_BATCHES:
        r = bench(m, args.device, batch=batch, threads=args.threads, timing=timing,
                  fillers=False, memory_runs=1)
        t = r["median_ms"] / batch
        measured.append({"batch": batch, "batch_ms": r["median_ms"], "t_ms": t,
                         "w": latency_weight(t), "score": score(miou, t),
                         "p10_ms": r["p10_ms"] / batch, "p90_ms": r["p90_ms"] / batch})
    gflops = complexity(spec).flops / 1e9
    guess = flops_latency_ms(gflops)
    name, ref_gflops, ref_ms = FLOPS_REFERENCE
    return {"miou": miou, "measured": measured, "device": r["device"],
            "machine": describe(r["fingerprint"]), "threads": r["threads"],
            "flops": {"gflops": gflops, "t_ms": guess, "w": latency_weight(guess),
                      "score": score(miou, guess),
                      "reference": {"name": name, "gflops": ref_gflops, "ms": ref_ms}},
            "measured_over_flops_guess": measured[0]["t_ms"] / guess}


def format_score(s: dict) -> str:
    f = s["flops"]
    lines = ["latency-weighted score: Score = mIoU x W(T), W(T) = max(0, 1 - max(0, T - 3 ms) "
             "/ 7 ms)",
             f"  {'T from':<34} {'T ms':>9} {'W':>6} {'Score':>7}"]
    for m in s["measured"]:
        what = f"measured here, batch {m['batch']}" + (" (per image)" if m["batch"] > 1 else "")
        lines.append(f"  {what:<34} {m['t_ms']:9.3f} {m['w']:6.3f} {m['score']:7.2f}")
    ref = f["reference"]
    lines.append(f"  {'FLOPs guess (' + format(f['gflops'], '.3f') + ' GFLOPs)':<34} "
                 f"{f['t_ms']:9.3f} {f['w']:6.3f} {f['score']:7.2f}")
    lines.append(f"  the guess scales {ref['name']}'s {ref['gflops']} GFLOPs = {ref['ms']} ms; "
                 f"measured / guess at batch 1: {s['measured_over_flops_guess']:.1f}x "
                 f"({s['machine']}, {s['threads']} thread(s))")
    return "\n".join(lines)
