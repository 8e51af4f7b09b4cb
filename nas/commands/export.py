"""``nas export ARCH --format onnx|torchscript|pytorch [--weights CKPT] --out FILE [--input HxW]
[--json]``: write an architecture, with trained weights or fresh ones, for deployment or retraining.

The exported file is checked against PyTorch on a random input before it is put in place (ONNX
with onnxruntime: max abs difference at most 1e-4); a failed check writes nothing.
"""

from __future__ import annotations

import torch

from nas.argtypes import input_size
from nas.checkpoint import load_model_checkpoint
from nas.commands import Result
from nas.export import FORMATS, export_model
from supernets.model import PoseNet
from supernets.named import load_arch

INIT_SEED = 0  # fresh weights (no --weights) are drawn from this seed: the same file every time


def register(sub) -> None:
    p = sub.add_parser("export", help="export an architecture to ONNX, TorchScript or a checkpoint",
                       description=__doc__)
    p.add_argument("arch", help="arch JSON file or a named architecture (e.g. mobilenetv2)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (deployment), torchscript (deployment), pytorch (a nas.model/1 "
                        "checkpoint, for retraining)")
    p.add_argument("--weights", metavar="CKPT",
                   help="nas.model/1 checkpoint holding weights for ARCH (default: freshly "
                        "initialised weights, e.g. for latency tests or training from scratch)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file")
    p.add_argument("--input", type=input_size, metavar="HxW",
                   help="override the input size the graph is exported for")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args):
    spec = load_arch(args.arch, input_size=args.input)
    if args.weights:
        spec, model, _ = load_model_checkpoint(args.weights, arch=spec)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(INIT_SEED)
            model = PoseNet(spec)
    report = export_model(spec, model, args.format, args.out)
    h, w = spec.skeleton.input_size
    check = report["check"]
    runner = {"onnx": "onnxruntime", "torchscript": "torch.jit.load",
              "pytorch": "load_model_checkpoint"}[args.format]
    lines = [
        f"exported {spec.name} ({h}x{w}, {spec.skeleton.outputs}) as {args.format} "
        f"to {report['path']} ({report['bytes'] / 1e6:.2f} MB"
        + (f", opset {report['opset']})" if "opset" in report else ")"),
        f"  weights  {args.weights or f'freshly initialised (seed {INIT_SEED})'}",
        f"  check    {runner} vs PyTorch on a random {'x'.join(map(str, check['input_shape']))} "
        f"batch: max abs diff {check['max_abs_diff']:.2e} (<= {check['tolerance']:g}) ok",
    ]
    return Result("\n".join(lines), {"arch": spec.name, "weights": args.weights, **report})
