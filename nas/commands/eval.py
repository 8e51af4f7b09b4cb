"""``nas eval CKPT --data PATH [--split S] [--flip] [--json]``: a checkpoint's metric per joint.

The metric is the dataset's: PCK@0.2 (torso) for LSP and the synthetic figures, PCKh@0.5 for
MPII, OKS AP for COCO (``--detections`` for person boxes from a detector instead of the
ground truth). The default split is the one results are usually reported on (LSP and synthetic:
test; MPII and COCO: val).
"""

from __future__ import annotations

import argparse

import torch

from nas.argtypes import non_negative_int, positive_int
from nas.checkpoint import load_model_checkpoint
from nas.commands import Result
from nas.tasks import get_task


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
    return Result(header + "\n" + task.format_result(result),
                  {"checkpoint": str(args.checkpoint), "arch": spec.name, "data": data,
                   "split": split, **result})
