"""Search spaces as data: a skeleton plus the candidates offered at each choice layer.

``space.layers()`` is the space-level walk: for each layer, the input widths it can see (a head
stage after a width choice sees several) and its candidates. The supernet builds one module per
(input width, candidate) from it; the latency-table builder measures one row per distinct
(op, in, out, stride, H, W) from it. Both call ``supernets.ops.build_op``.

Shipped spaces (``SPACES``)::

    name              stem  stages (width x layers, first stride)      input    joints  heads
    efficientpose-a   16    24x4 s2, 32x6 s2, 64x8 s2, 96x8 s1          256x256  16      2
    efficientpose-bc  24    32x6 s2, 64x8 s2, 96x10 s2, 160x10 s1       256x256  16      2
    cpu-small         16    24x2 s2, 32x3 s2, 64x3 s2, 96x2 s1          128x128  14      2
    cpu-base          8     16x4 s2, 64x16 s2                           64x64    14      1
    seg-small         16    24x2 s2, 32x3 s2, 64x3 s2, 96x2 s1          176x240  11 cls  seg
    seg-a             16    24x4 s2, 32x6 s2, 64x8 s2, 96x8 s1          176x240  11 cls  seg
    seg-mbv2          16    24x2 s2, 32x3 s2, 64x4 s2, 96x3 s1,         176x240  11 cls  seg
                            160x3 s1, 320x1 s1

A head stage chooses an upsampling op (plain, depthwise-separable or inverted residual, each with
or without SIC) and a width: 32/64/96 in the first three spaces (two head stages, output stride
16 -> 4), 16/32/64/128/192 in ``cpu-base`` (one head stage, output stride 8 -> 4).

``seg-small`` (semantic segmentation, CamVid's 11 classes by default; presets in
``SEG_PRESETS``) has one head choice among 42 segmentation heads (``supernets.ops``): one or two
transposed-conv stages of each of the six head ops (output stride 16 -> 8 or 4), LR-ASPP and
ASPP-lite with the DeepLabV3+ decoder, each at width 32/64/96; the two last take the output of
``stage2`` (output stride 8) as their low-level feature. ``seg-a`` is ``efficientpose-a``'s
backbone with the same heads at widths 32/64/96/128: its range contains the segmentation
baseline ``mobilenetv2-lraspp`` (LR-ASPP at 128), which is slower than every network of
``seg-small`` (51 ms against 46 ms at most at 176x240 on the 2-core AMD EPYC machine), so that
its latency is a real budget there (``benchmarks/seg_proof.py --space seg-a``). But ``seg-a``
does not contain the baseline: its backbone ends at 96 channels where MobileNetV2's goes on to
160 and 320, so at the baseline's latency its networks have fewer parameters (0.8-1.3M against
1.9M) and spend their time on resolution instead. ``seg-mbv2`` is MobileNetV2's own stage table
(``supernets.named``: 24x2, 32x3, 64x4, 96x3, 160x3, 320x1 after the stem, output stride 16)
with every block a choice (k3/5/7, e3/e6, skip where the block keeps its width and stride) and
``seg-a``'s 56 heads, so ``mobilenetv2-lraspp`` is one of its networks (every block ``mb_k3_e6``,
``seg_lraspp_w128``): a search of it at the baseline's latency can always find the baseline.

``cpu-base`` is the default of ``nas search``: a CPU-scale space whose range is wide at both
ends, so that one budget (the README's 3 ms) lies inside it on slow and fast CPUs alike. Its
fastest network is the minimum a network of this family needs (stem, the first block of each of
two stages, one head stage, the heatmap layer: 1.9 ms on the slow 2-core AMD EPYC (family 23)
machine it was measured on, quiet), its slowest (16 blocks of 64 channels, k7 e6, a 192-wide
inverted-residual head) 7.7x that (15 ms there).
``PRESETS`` gives the dataset input sizes: ``mpii`` 256x256 with 16 joints, ``coco`` 256x192 with
17 joints, ``lsp`` 128x128 with 14 joints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from supernets.errors import NasError
from supernets.ops import BACKBONE_OPS, HEAD_OPS, parse_seg_head, seg_head_name
from supernets.spec import ArchSpec, Skeleton, Stage, head_choice

__all__ = ["PRESETS", "SEG_PRESETS", "SPACES", "Candidate", "SearchSpace", "SpaceLayer",
           "get_space", "seg_heads", "space_names"]

PRESETS: dict[str, tuple[tuple[int, int], int]] = {
    "mpii": ((256, 256), 16),
    "coco": ((256, 192), 17),
    "lsp": ((128, 128), 14),
}
# segmentation: (input H x W, classes); CamVid's 180x240 images are cropped to 176x240 (a
# multiple of the output stride 16) in training
SEG_PRESETS: dict[str, tuple[tuple[int, int], int]] = {
    "camvid": ((176, 240), 11),
    "cityscapes": ((512, 1024), 19),
    "voc": ((512, 512), 21),
}


@dataclass(frozen=True)
class Candidate:
    name: str     # the value written in a spec's choices
    op: str       # key into supernets.ops.OPS
    out_chs: int


@dataclass(frozen=True)
class SpaceLayer:
    label: str
    kind: str
    in_widths: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    stride: int
    in_hw: tuple[int, int]
    low_from: str | None = None          # a segmentation head's low-level feature (spec.Slot)
    low_chs: int = 0
    low_hw: tuple[int, int] | None = None

    @property
    def searchable(self) -> bool:
        return len(self.candidates) > 1

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def index(self, name: str) -> int:
        for i, c in enumerate(self.candidates):
            if c.name == name:
                return i
        raise NasError(f"choices[{self.label!r}] = {name!r} is not offered by this space; "
                       f"expected one of {', '.join(self.names)}")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    skeleton: Skeleton
    backbone_ops: tuple[str, ...] = tuple(BACKBONE_OPS)
    head_ops: tuple[str, ...] = tuple(HEAD_OPS)
    head_widths: tuple[int, ...] = (32, 64, 96)
    seg_heads: tuple[str, ...] = ()      # task seg: the head candidates (supernets.ops names)

    def layers(self) -> list[SpaceLayer]:
        out: list[SpaceLayer] = []
        widths: tuple[int, ...] = (3,)
        for slot in self.skeleton.slots():
            if slot.kind == "stem":
                cands = (Candidate("stem", "stem", slot.out_chs),)
            elif slot.kind == "heatmap":
                cands = (Candidate("heatmap", "heatmap", slot.out_chs),)
            elif slot.kind == "backbone":
                cands = tuple(Candidate(op, op, slot.out_chs) for op in self.backbone_ops
                              if not (op == "skip" and slot.first_of_stage))
            elif slot.kind == "seghead":
                cands = tuple(Candidate(op, op, slot.out_chs) for op in self.seg_heads)
            else:
                cands = tuple(Candidate(head_choice(op, w), op, w)
                              for op in self.head_ops for w in self.head_widths)
            out.append(SpaceLayer(slot.label, slot.kind, widths, cands, slot.stride, slot.in_hw,
                                  slot.low_from, slot.low_chs, slot.low_hw))
            widths = tuple(sorted({c.out_chs for c in cands}))
        return out

    def choice_layers(self) -> list[SpaceLayer]:
        return [layer for layer in self.layers() if layer.searchable]

    def spec(self, choices: dict[str, str], name: str | None = None) -> ArchSpec:
        """The spec for ``choices``; every choice must be one this space offers. Layers with a
        single candidate need no choice."""
        fixed = {layer.label: layer.candidates[0].name for layer in self.layers()
                 if layer.kind in ("backbone", "head", "seghead") and not layer.searchable}
        spec = ArchSpec(name=name or f"{self.name}-arch", skeleton=self.skeleton,
                        choices={**fixed, **choices}, space=self.name)
        self.check(spec)
        return spec

    def head_families(self) -> tuple[str | None, dict[str, tuple[str, ...]]]:
        """A segmentation space's head layer and its heads by family (``tc1``, ``tc2``,
        ``lraspp``, ``aspp``: structurally different heads, which a supernet trained for a few
        hundred steps ranks by how fast they learn rather than where they end;
        ``nas.search.rank``); ``(None, {})`` for a pose space, whose head stages are one family."""
        for layer in self.choice_layers():
            if layer.kind == "seghead":
                families: dict[str, list[str]] = {}
                for name in layer.names:
                    families.setdefault(parse_seg_head(name)[0], []).append(name)
                return layer.label, {f: tuple(v) for f, v in families.items()}
        return None, {}

    def check(self, spec: ArchSpec) -> None:
        if spec.skeleton != self.skeleton:
            raise NasError(f"arch {spec.name!r} does not have the skeleton of space {self.name!r}")
        for layer in self.choice_layers():
            layer.index(spec.choices[layer.label])

    def sample(self, rng: np.random.Generator, name: str = "random") -> ArchSpec:
        choices = {layer.label: layer.candidates[rng.integers(len(layer.candidates))].name
                   for layer in self.choice_layers()}
        return self.spec(choices, name)

    def largest(self) -> ArchSpec:
        """Every layer at its most expensive candidate (by MACs): the space's upper bound."""
        return self._extreme(max, "largest")

    def smallest(self) -> ArchSpec:
        """Every layer at its cheapest candidate (by MACs; a skip where the layer has one, the
        narrowest head): the sandwich rule's lower path."""
        return self._extreme(min, "smallest")

    def _extreme(self, pick, what: str) -> ArchSpec:
        from supernets.flops import op_macs  # local: flops imports model code

        choices = {}
        for layer in self.choice_layers():
            w_in = max(layer.in_widths)
            choices[layer.label] = pick(
                layer.candidates,
                key=lambda c: (op_macs(c.op, w_in, c.out_chs, layer.stride, layer.in_hw,
                                       layer.low_chs, layer.low_hw),
                               c.out_chs)).name
        return self.spec(choices, f"{self.name}-{what}")

    def with_input(self, input_size: tuple[int, int] | None = None,
                   num_joints: int | None = None) -> SearchSpace:
        return dataclasses.replace(self, skeleton=self.skeleton.with_input(input_size, num_joints))


def _space(name: str, stem: int, stages: list[tuple[int, int, int]], preset: str, *,
           input_size: tuple[int, int] | None = None, head_stages: int = 2,
           head_widths: tuple[int, ...] = (32, 64, 96)) -> SearchSpace:
    preset_size, joints = PRESETS[preset]
    skeleton = Skeleton(input_size=input_size or preset_size, num_joints=joints, stem_width=stem,
                        stages=tuple(Stage(w, n, s) for w, n, s in stages),
                        head_stages=head_stages)
    return SearchSpace(name, skeleton, head_widths=head_widths)


def seg_heads(widths: tuple[int, ...] = (32, 64, 96)) -> tuple[str, ...]:
    """Every segmentation head at every width: 1 or 2 transposed-conv stages of each pose head
    op, LR-ASPP, ASPP-lite with the DeepLabV3+ decoder."""
    return (tuple(seg_head_name(kind, w, up) for kind in ("tc1", "tc2") for up in HEAD_OPS
                  for w in widths)
            + tuple(seg_head_name(kind, w) for kind in ("lraspp", "aspp") for w in widths))


def _seg_space(name: str, stem: int, stages: list[tuple[int, int, int]], preset: str, *,
               head_widths: tuple[int, ...] = (32, 64, 96)) -> SearchSpace:
    input_size, classes = SEG_PRESETS[preset]
    skeleton = Skeleton(input_size=input_size, num_joints=classes, stem_width=stem,
                        stages=tuple(Stage(w, n, s) for w, n, s in stages), task="seg")
    return SearchSpace(name, skeleton, head_widths=head_widths, seg_heads=seg_heads(head_widths))


SPACES: dict[str, SearchSpace] = {
    s.name: s for s in [
        _space("efficientpose-a", 16, [(24, 4, 2), (32, 6, 2), (64, 8, 2), (96, 8, 1)], "mpii"),
        _space("efficientpose-bc", 24, [(32, 6, 2), (64, 8, 2), (96, 10, 2), (160, 10, 1)], "mpii"),
        _space("cpu-small", 16, [(24, 2, 2), (32, 3, 2), (64, 3, 2), (96, 2, 1)], "lsp"),
        _space("cpu-base", 8, [(16, 4, 2), (64, 16, 2)], "lsp", input_size=(64, 64),
               head_stages=1, head_widths=(16, 32, 64, 128, 192)),
        _seg_space("seg-small", 16, [(24, 2, 2), (32, 3, 2), (64, 3, 2), (96, 2, 1)], "camvid"),
        _seg_space("seg-a", 16, [(24, 4, 2), (32, 6, 2), (64, 8, 2), (96, 8, 1)], "camvid",
                   head_widths=(32, 64, 96, 128)),
        _seg_space("seg-mbv2", 16, [(24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 1),
                                    (320, 1, 1)], "camvid", head_widths=(32, 64, 96, 128)),
    ]
}


def space_names(task: str) -> tuple[str, ...]:
    """The shipped spaces of one task (``"pose"`` or ``"seg"``)."""
    return tuple(name for name, space in SPACES.items() if space.skeleton.task == task)


def get_space(name: str, *, preset: str | None = None,
              input_size: tuple[int, int] | None = None,
              num_joints: int | None = None) -> SearchSpace:
    """A shipped space, optionally at a dataset preset's input, or an explicit input/joints
    (classes for a segmentation space)."""
    try:
        space = SPACES[name]
    except KeyError:
        raise NasError(f"unknown space {name!r}; expected one of {', '.join(SPACES)}") from None
    if preset is not None:
        presets = SEG_PRESETS if space.skeleton.task == "seg" else PRESETS
        if preset not in presets:
            raise NasError(f"unknown preset {preset!r} for space {name} "
                           f"({space.skeleton.task}); expected one of {', '.join(presets)}")
        space = space.with_input(*presets[preset])
    return space.with_input(input_size, num_joints)
