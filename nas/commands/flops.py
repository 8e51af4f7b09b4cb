"""``nas flops SPEC [--input HxW] [--joints N] [--json]``: parameters, MACs and FLOPs."""

from __future__ import annotations

from nas.argtypes import input_size, positive_int
from nas.commands import Result
from supernets.flops import complexity
from supernets.named import load_arch


def register(sub) -> None:
    p = sub.add_parser("flops", help="parameters, MACs and FLOPs of an architecture",
                       description=__doc__)
    p.add_argument("spec", help="arch JSON file or a named architecture (e.g. mobilenetv2)")
    p.add_argument("--input", type=input_size, metavar="HxW", help="override the input size")
    p.add_argument("--joints", "--classes", dest="joints", type=positive_int,
                   metavar="N", help="override the number of joints (pose) or classes (seg)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args):
    spec = load_arch(args.spec, input_size=args.input, num_joints=args.joints)
    c = complexity(spec)
    h, w = c.input_size
    text = (f"{spec.name} at {h}x{w}, {spec.skeleton.outputs}\n"
            f"  params  {c.params / 1e6:10.3f} M  ({c.params:,})\n"
            f"  MACs    {c.macs / 1e9:10.3f} G  ({c.macs:,})  multiply-accumulates, "
            "what papers call 'FLOPs'\n"
            f"  FLOPs   {c.flops / 1e9:10.3f} G  ({c.flops:,})  = 2 x MACs\n"
            "  counted by torch.utils.flop_counter (convolutions; BN, ReLU, adds not counted)")
    return Result(text, {"arch": spec.name, **c.to_dict()})
