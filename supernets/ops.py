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

Segmentation heads (``seg_*``; ``out_chs`` is the number of classes, ``stride`` the output stride
of the backbone feature ``x`` they take, ``low_chs`` the channels of the low-level feature
``low`` at twice ``x``'s resolution; ``forward(x, low)``). Each ends in a 1x1 classifier (with
bias) and bilinear upsampling by ``stride`` to the input's resolution. ``<w>`` is the head's
width:
    ``seg_tc{1,2}_<up>_w<w>``   1 or 2 upsampling stages of head op ``<up>`` (above, e.g.
                            ``up_dw_sic``) at width ``w``: output stride /2 or /4 before the
                            classifier (16 -> 8 or 4); ``low`` is not used.
    ``seg_lraspp_w<w>``     MobileNetV3's LR-ASPP: 1x1 conv + BN + ReLU gated by a sigmoid of a
                            1x1 conv of the global average, upsampled to ``low``'s size, plus a
                            1x1 conv + BN of ``low`` (the low-level skip; MobileNetV3 adds the
                            two branches' class scores, the same sum through one linear
                            classifier).
    ``seg_aspp_w<w>``       depthwise-separable ASPP-lite (1x1, two 3x3 depthwise-separable
                            branches at dilation 2 and 4, image pooling; concat, 1x1 to ``w``)
                            with DeepLabV3+'s decoder: upsampled to ``low``'s size, concat with
                            a 1x1 reduction of ``low`` to 24 channels, 3x3 depthwise-separable
                            conv to ``w``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKBONE_OPS",
    "HEAD_OPS",
    "OPS",
    "SEG_HEAD_KINDS",
    "build_op",
    "op_kind",
    "parse_seg_head",
    "seg_head_name",
]

OpFactory = Callable[[int, int, int], nn.Module]

STEM_HIDDEN = 32
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
HEAD_EXPANSIONS = (3,)


def conv_bn(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
            relu: bool = True, dilation: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel, stride, dilation * (kernel // 2), dilation=dilation,
                  groups=groups, bias=False),
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


# -- segmentation heads -------------------------------------------------------------------------
SEG_HEAD_KINDS = ("tc1", "tc2", "lraspp", "aspp")
ASPP_RATES = (2, 4)        # dilations of ASPP-lite's 3x3 branches (feature maps of ~8-16 px)
DECODER_LOW_CHS = 24       # DeepLabV3+ reduces the low-level feature to 48 channels; slim: 24


def _upsample(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dw_separable(in_chs: int, out_chs: int, dilation: int = 1) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU, 1x1 conv + BN + ReLU."""
    return nn.Sequential(conv_bn(in_chs, in_chs, 3, groups=in_chs, dilation=dilation),
                         conv_bn(in_chs, out_chs, 1))


class SegHead(nn.Module):
    """A segmentation head: ``forward(x, low)`` -> class scores at ``stride`` x ``x``'s size."""

    def __init__(self, out_chs: int, width: int, stride: int):
        super().__init__()
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"a segmentation head's stride is the backbone's output stride, a "
                             f"power of 2 from 2, got {stride}")
        self.stride = stride
        self.classifier = nn.Conv2d(width, out_chs, 1, bias=True)

    def features(self, x: Tensor, low: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        size = (x.shape[-2] * self.stride, x.shape[-1] * self.stride)
        return _upsample(self.classifier(self.features(x, low)), size)


class TransposedConvHead(SegHead):
    """``depth`` upsampling stages of a pose head op at ``width``, then the classifier."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, *, up: str, depth: int,
                 width: int):
        super().__init__(out_chs, width, stride)
        if 2 ** depth > stride:
            raise ValueError(f"{depth} upsampling stages overshoot output stride {stride}")
        self.up = nn.Sequential(*(HEAD_OPS[up](in_chs if i == 0 else width, width, 2)
                                  for i in range(depth)))

    def features(self, x: Tensor, low: Tensor | None) -> Tensor:
        return self.up(x)


class LRASPP(SegHead):
    """MobileNetV3's Lite R-ASPP with its low-level skip (see the module doc)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, *, width: int, low_chs: int):
        super().__init__(out_chs, width, stride)
        self.branch = conv_bn(in_chs, width, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_chs, width, 1),
                                  nn.Sigmoid())
        self.low = conv_bn(low_chs, width, 1, relu=False)

    def features(self, x: Tensor, low: Tensor | None) -> Tensor:
        if low is None:
            raise ValueError("seg_lraspp needs the low-level feature")
        y = self.branch(x) * self.gate(x)
        return _upsample(y, low.shape[-2:]) + self.low(low)


class ASPPLite(SegHead):
    """Depthwise-separable ASPP-lite with DeepLabV3+'s decoder (see the module doc)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, *, width: int, low_chs: int):
        super().__init__(out_chs, width, stride)
        self.branches = nn.ModuleList(
            [conv_bn(in_chs, width, 1)] + [dw_separable(in_chs, width, r) for r in ASPP_RATES])
        # no BatchNorm on the pooled 1x1 map: a batch of one has no variance to normalise
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_chs, width, 1),
                                  nn.ReLU(inplace=True))
        self.project = conv_bn(width * (len(ASPP_RATES) + 2), width, 1)
        self.reduce = conv_bn(low_chs, DECODER_LOW_CHS, 1)
        self.fuse = dw_separable(width + DECODER_LOW_CHS, width)

    def features(self, x: Tensor, low: Tensor | None) -> Tensor:
        if low is None:
            raise ValueError("seg_aspp needs the low-level feature")
        pooled = self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        y = self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))
        y = _upsample(y, low.shape[-2:])
        return self.fuse(torch.cat([y, self.reduce(low)], dim=1))


_SEG_HEAD = re.compile(r"^seg_(?:(?P<tc>tc[12])_(?P<up>up_[a-z0-9_]+?)|(?P<kind>lraspp|aspp))"
                       r"_w(?P<width>[1-9][0-9]*)$")


def seg_head_name(kind: str, width: int, up: str | None = None) -> str:
    """``seg_head_name("tc2", 64, "up_dw_sic")`` -> ``"seg_tc2_up_dw_sic_w64"``."""
    if kind in ("tc1", "tc2"):
        return f"seg_{kind}_{up}_w{width}"
    return f"seg_{kind}_w{width}"


def parse_seg_head(name: str) -> tuple[str, int, str | None]:
    """``"seg_tc2_up_dw_sic_w64"`` -> ``("tc2", 64, "up_dw_sic")``, ``"seg_lraspp_w96"`` ->
    ``("lraspp", 96, None)``; ValueError for anything else."""
    m = _SEG_HEAD.match(name)
    if not m or (m["up"] is not None and m["up"] not in HEAD_OPS):
        raise ValueError(f"{name!r} is not a segmentation head; expected seg_tc1_<up>_w<W>, "
                         f"seg_tc2_<up>_w<W> (<up> one of {', '.join(HEAD_OPS)}), "
                         "seg_lraspp_w<W> or seg_aspp_w<W>")
    return (m["tc"] or m["kind"]), int(m["width"]), m["up"]


def is_seg_head(name: str) -> bool:
    try:
        parse_seg_head(name)
    except ValueError:
        return False
    return True


def build_seg_head(name: str, in_chs: int, out_chs: int, stride: int,
                   low_chs: int | None) -> SegHead:
    kind, width, up = parse_seg_head(name)
    if kind in ("tc1", "tc2"):
        return TransposedConvHead(in_chs, out_chs, stride, up=up, depth=int(kind[2]),
                                  width=width)
    if not low_chs:
        raise ValueError(f"{name} needs the channels of the low-level feature (low_chs)")
    head = LRASPP if kind == "lraspp" else ASPPLite
    return head(in_chs, out_chs, stride, width=width, low_chs=low_chs)


BACKBONE_OPS: dict[str, OpFactory] = _backbone_ops()
HEAD_OPS: dict[str, OpFactory] = _head_ops()
FIXED_OPS: dict[str, OpFactory] = {"stem": Stem, "heatmap": _heatmap}
OPS: dict[str, OpFactory] = {**BACKBONE_OPS, **HEAD_OPS, **FIXED_OPS}


def op_kind(name: str) -> str:
    """'backbone', 'head', 'seghead' or 'fixed'; KeyError for a name outside the vocabulary."""
    if name in BACKBONE_OPS:
        return "backbone"
    if name in HEAD_OPS:
        return "head"
    if name in FIXED_OPS:
        return "fixed"
    if is_seg_head(name):
        return "seghead"
    raise KeyError(name)


def build_op(name: str, in_chs: int, out_chs: int, stride: int,
             low_chs: int | None = None) -> nn.Module:
    """Build op ``name``; the one factory every consumer uses. ``low_chs``: the channels of the
    low-level feature a segmentation head takes (``seg_lraspp_*``, ``seg_aspp_*``)."""
    if name.startswith("seg_"):
        return build_seg_head(name, in_chs, out_chs, stride, low_chs)
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OPS)}, and segmentation heads "
                       "seg_tc{1,2}_<up>_w<W>, seg_lraspp_w<W>, seg_aspp_w<W>") from None
    return factory(in_chs, out_chs, stride)
