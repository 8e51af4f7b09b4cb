"""The op vocabulary: every candidate layer, declared once, built by one factory.

Every op is built as ``build_op(name, in_chs, out_chs, stride)``. The supernet's mixed layers,
the latency-table builder and the standalone model built from a spec all call this one function,
so the layer that is timed is the layer that runs.

Backbone ops (MobileNetV2 inverted residual, "MBConv"):
    ``mb_k{3,5,7}_e{3,6}``  1x1 expand + BN + ReLU, kxk depthwise (carries the stride) + BN + ReLU,
                            1x1 projection + BN; residual when stride is 1 and in == out channels.
    ``skip``                identity; legal only where stride is 1 and in == out channels.

Head ops (upsampling by 2 with a 4x4 transposed conv, stride 2, padding 1; ``stride`` is the
upsampling factor and must be 2):
    ``up_plain``            ConvTranspose2d(in, out) + BN + ReLU (SimpleBaseline's deconv, slim).
    ``up_dw``               MobileNetV1 style: depthwise transposed conv + BN + ReLU,
                            1x1 pointwise + BN + ReLU.
    ``up_ir_e3``            MobileNetV2 style: 1x1 expand (x3) + BN + ReLU, depthwise transposed
                            conv + BN + ReLU, 1x1 linear projection + BN.
    ``<any>_sic``           the same, followed by SIC: 3x3 depthwise conv (groups = channels,
                            with bias, no BN) + ReLU, which removes checkerboard artifacts.

Fixed parts:
    ``stem``                3x3 s2 conv 3->32 + BN + ReLU, 3x3 depthwise 32 + BN + ReLU,
                            1x1 conv to ``out_chs`` + BN.
    ``heatmap``             1x1 conv with bias to one heatmap per joint.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = [
    "BACKBONE_OPS",
    "HEAD_OPS",
    "OPS",
    "build_op",
    "op_kind",
]

OpFactory = Callable[[int, int, int], nn.Module]

STEM_HIDDEN = 32
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
HEAD_EXPANSIONS = (3,)


def conv_bn(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def deconv_bn(in_chs: int, out_chs: int, groups: int = 1) -> nn.Sequential:
    """4x4 transposed conv, stride 2, padding 1: doubles H and W exactly."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_chs, out_chs, 4, 2, 1, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class MBConv(nn.Module):
    """MobileNetV2 inverted residual block."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, *, kernel_size: int,
                 exp_ratio: int):
        super().__init__()
        hidden = in_chs * exp_ratio
        self.has_residual = stride == 1 and in_chs == out_chs
        self.expand = conv_bn(in_chs, hidden, 1) if exp_ratio != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = conv_bn(hidden, out_chs, 1, relu=False)

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.has_residual else y


class Skip(nn.Identity):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        if stride != 1 or in_chs != out_chs:
            raise ValueError(
                f"skip needs stride 1 and in == out channels, got stride {stride}, "
                f"{in_chs} -> {out_chs} channels")
        super().__init__()


class SIC(nn.Sequential):
    """3x3 depthwise conv (bias, no BN) + ReLU after an upsampling."""

    def __init__(self, chs: int):
        super().__init__(nn.Conv2d(chs, chs, 3, 1, 1, groups=chs, bias=True), nn.ReLU(inplace=True))


def up_plain(in_chs: int, out_chs: int) -> nn.Module:
    return deconv_bn(in_chs, out_chs)


def up_dw(in_chs: int, out_chs: int) -> nn.Module:
    return nn.Sequential(deconv_bn(in_chs, in_chs, groups=in_chs), conv_bn(in_chs, out_chs, 1))


def up_ir(in_chs: int, out_chs: int, exp_ratio: int) -> nn.Module:
    hidden = in_chs * exp_ratio
    return nn.Sequential(
        conv_bn(in_chs, hidden, 1),
        deconv_bn(hidden, hidden, groups=hidden),
        conv_bn(hidden, out_chs, 1, relu=False),
    )


class Stem(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        if stride != 2:
            raise ValueError(f"stem has stride 2, got {stride}")
        super().__init__(
            conv_bn(in_chs, STEM_HIDDEN, 3, 2),
            conv_bn(STEM_HIDDEN, STEM_HIDDEN, 3, groups=STEM_HIDDEN),
            conv_bn(STEM_HIDDEN, out_chs, 1, relu=False),
        )


def _up_factory(base: Callable[[int, int], nn.Module], sic: bool) -> OpFactory:
    def factory(in_chs: int, out_chs: int, stride: int) -> nn.Module:
        if stride != 2:
            raise ValueError(f"upsampling ops double the resolution (stride 2), got {stride}")
        block = base(in_chs, out_chs)
        return nn.Sequential(block, SIC(out_chs)) if sic else block
    return factory


def _mb_factory(kernel_size: int, exp_ratio: int) -> OpFactory:
    def factory(in_chs: int, out_chs: int, stride: int) -> nn.Module:
        return MBConv(in_chs, out_chs, stride, kernel_size=kernel_size, exp_ratio=exp_ratio)
    return factory


def _heatmap(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride != 1:
        raise ValueError(f"heatmap conv has stride 1, got {stride}")
    return nn.Conv2d(in_chs, out_chs, 1, bias=True)


def _backbone_ops() -> dict[str, OpFactory]:
    ops: dict[str, OpFactory] = {f"mb_k{k}_e{e}": _mb_factory(k, e)
                                 for k in KERNELS for e in EXPANSIONS}
    ops["skip"] = Skip
    return ops


def _head_ops() -> dict[str, OpFactory]:
    bases: dict[str, Callable[[int, int], nn.Module]] = {"up_plain": up_plain, "up_dw": up_dw}
    for e in HEAD_EXPANSIONS:
        bases[f"up_ir_e{e}"] = lambda i, o, e=e: up_ir(i, o, e)
    ops: dict[str, OpFactory] = {}
    for name, base in bases.items():
        ops[name] = _up_factory(base, sic=False)
        ops[f"{name}_sic"] = _up_factory(base, sic=True)
    return ops


BACKBONE_OPS: dict[str, OpFactory] = _backbone_ops()
HEAD_OPS: dict[str, OpFactory] = _head_ops()
FIXED_OPS: dict[str, OpFactory] = {"stem": Stem, "heatmap": _heatmap}
OPS: dict[str, OpFactory] = {**BACKBONE_OPS, **HEAD_OPS, **FIXED_OPS}


def op_kind(name: str) -> str:
    """'backbone', 'head' or 'fixed'; KeyError for a name outside the vocabulary."""
    if name in BACKBONE_OPS:
        return "backbone"
    if name in HEAD_OPS:
        return "head"
    if name in FIXED_OPS:
        return "fixed"
    raise KeyError(name)


def build_op(name: str, in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Build op ``name``; the one factory every consumer uses."""
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OPS)}") from None
    return factory(in_chs, out_chs, stride)
