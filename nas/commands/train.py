"""``nas train ARCH [--task pose|seg] [--data PATH] [--recipe NAME] [--epochs N] [--input HxW]
[--out DIR] [--force] [--resume DIR] [--json]``: train an architecture from scratch.

``--data`` names a dataset by its layout: for pose Leeds Sports Pose, MPII, COCO (see
``nas.tasks.pose.data``), for seg CamVid, Cityscapes, Pascal VOC (``nas.tasks.seg.data``);
omitted, the embedded synthetic figures or shapes. The task is the arch's (a seg arch says
``"task": "seg"``). The recipe is EfficientPose's: Adam lr 1e-3, weight
decay 1e-4, lr x0.1 at 75% and 85% of the epochs, validated every epoch. ``--recipe`` names a
preset of these settings (``efficientpose``: 200 epochs; ``proof``: 30 epochs, the pose proof's;
``posebench``: 12 epochs validated once at the end, the pose ground truth's); flags given beside
it override it. A loss that becomes NaN stops the run with an error naming the epoch and step.
Ctrl-C stops after the current step, writes a checkpoint and prints the command that continues
the run.
"""

from __future__ import annotations

import argparse

from nas.argtypes import input_size, non_negative_int, positive_float, positive_int
from nas.commands import INTERRUPTED, Result, given_flags
from nas.tasks import get_task
from supernets.errors import NasError
from supernets.named import load_arch


def register(sub) -> None:
    p = sub.add_parser("train", help="train an architecture from scratch", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", nargs="?", help="arch JSON file or a named architecture (e.g. "
                   "mobilenetv2); optional with --resume")
    p.add_argument("--task", help="pose or seg (default: the arch's)")
    p.add_argument("--data", help="dataset: an LSP, MPII or COCO folder or an MPII/COCO JSON "
                   "file (default: embedded synthetic figures)")
    p.add_argument("--val-data", help="validate on this dataset instead of --data's "
                   "validation split (needed when --data is a single JSON file)")
    p.add_argument("--detections", help="COCO: validate on these person boxes (JSON list of "
                   "{image_id, bbox, score}) instead of the ground-truth boxes")
    p.add_argument("--recipe", help="named recipe: efficientpose (default), proof, posebench")
    p.add_argument("--epochs", type=positive_int, help="epochs (default 200, as EfficientPose)")
    p.add_argument("--val-every", type=non_negative_int, metavar="N",
                   help="validate every N epochs (default 1; 0: only at the end)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default 32)")
    p.add_argument("--input", type=input_size, metavar="HxW", help="override the arch's input")
    p.add_argument("--joints", "--classes", dest="joints", type=positive_int,
                   metavar="N", help="override the arch's joints or classes (they must "
                   "match the data)")
    p.add_argument("--sigma", type=positive_float,
                   help="Gaussian target sigma in heatmap px (default 2)")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=non_negative_int,
                   help="seed of weights, order, augmentation (default 0)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use at most N training (and validation) images, for quick runs")
    p.add_argument("--workers", type=non_negative_int,
                   help="data loading processes (default 2)")
    p.add_argument("--device", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's; on a "
                   "busy machine fewer threads can be much faster)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/train/ARCH-NAME)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its settings; "
                   "--epochs may extend it)")
    p.add_argument("--force", action="store_true",
                   help="replace the run in --out (its checkpoints, log and metrics)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


_CFG_ARGS = ("task", "data", "val_data", "detections", "epochs", "batch_size", "sigma", "lr",
             "seed", "limit", "workers", "device", "threads", "val_every")
# what a resumed run takes from its checkpoint; --epochs extends it, --workers and the arch
# (checked against the run's) may be given
_FIXED_ON_RESUME = ("out", "force", "recipe",
                    *(k for k in _CFG_ARGS if k not in ("epochs", "workers")))


def run(args) -> Result:
    from nas.train import TrainConfig, recipe, train

    if args.resume:
        fixed = given_flags(args, _FIXED_ON_RESUME)
        if fixed:
            raise NasError(f"--resume {args.resume} continues a run with the settings in its "
                           f"resume.pt; it cannot change {', '.join(fixed)} (only --epochs, to "
                           "extend it, and --workers)")
        arch = load_arch(args.arch, input_size=args.input, num_joints=args.joints) \
            if args.arch else None
        report = train(None, args.resume, resume=True, epochs=args.epochs, arch=arch,
                       workers=args.workers, progress=not args.no_progress)
    else:
        if args.arch is None:
            raise NasError("an architecture is required (arch JSON or a name such as "
                           "mobilenetv2), unless --resume DIR")
        spec = load_arch(args.arch, input_size=args.input, num_joints=args.joints)
        kwargs = recipe(args.recipe) if args.recipe else {}
        kwargs.update({k: getattr(args, k) for k in _CFG_ARGS if getattr(args, k) is not None})
        kwargs.setdefault("task", spec.skeleton.task)   # the arch's task unless --task says
        cfg = TrainConfig(arch=spec.to_dict(), **kwargs)
        report = train(cfg, args.out or f"runs/train/{spec.name}",
                       progress=not args.no_progress, force=args.force)
    if report["status"] == "interrupted":
        return Result(f"training interrupted in epoch {report['epoch'] + 1} after step "
                      f"{report['step']}; checkpoints in {report['out']}; continue with: "
                      f"{report['resume']}", report, status=INTERRUPTED)
    best = report["best"]
    lines = [f"trained {report['arch']} for {report['epochs']} epochs on {report['data']}; "
             f"run in {report['out']} (last.pt{', best.pt' if best else ''}, log.jsonl, "
             "metrics.json)"]
    if best:
        lines.append(f"best epoch {best['epoch']}: {best['metric']} {best['val']:.2f}")
    task = get_task(report.get("task") or "pose")
    lines += [f"final model on {report['val_data']}:", task.format_result(report["final_flip"])]
    return Result("\n".join(lines), report)
