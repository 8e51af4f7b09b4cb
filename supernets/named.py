"""Hand-designed architectures by name, accepted wherever an arch spec file is.

``mobilenetv2``: MobileNetV2's backbone (t, c, n, s table; every block k3 e6, the stem being its
first t=1 block) with the last stride-2 stage made stride 1 for output stride 16, and
EfficientPose's slim head: two plain 4x4 transposed convs, 64 then 32 channels, each with SIC.

``mobilenetv2-lraspp``: segmentation (CamVid's 176x240 and 11 classes): the same backbone with
MobileNetV3's segmentation head, LR-ASPP at width 128 fed by the output-stride-8 feature
(``seg_lraspp_w128``), the hand-designed baseline of the segmentation proof.
"""

from __future__ import annotations

import os
from pathlib import Path

from supernets.errors import NasError
from supernets.ops import seg_head_name
from supernets.space import PRESETS, SEG_PRESETS
from supernets.spec import ArchSpec, Skeleton, Stage, head_choice

__all__ = ["NAMED_ARCHS", "load_arch"]

# MobileNetV2 (t, c, n, s) after its first t=1 block (our stem): the 160-channel stage's
# stride 2 is made 1 so that the backbone ends at output stride 16.
_MBV2_TABLE = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1),
               (6, 320, 1, 1)]


def _mobilenetv2() -> ArchSpec:
    input_size, joints = PRESETS["mpii"]
    skeleton = Skeleton(input_size=input_size, num_joints=joints, stem_width=16,
                        stages=tuple(Stage(c, n, s) for _, c, n, s in _MBV2_TABLE))
    choices = {label: "mb_k3_e6" for label in skeleton.choice_labels()}
    choices["head.up1"] = head_choice("up_plain_sic", 64)
    choices["head.up2"] = head_choice("up_plain_sic", 32)
    return ArchSpec(name="mobilenetv2", skeleton=skeleton, choices=choices)


def _mobilenetv2_lraspp() -> ArchSpec:
    input_size, classes = SEG_PRESETS["camvid"]
    skeleton = Skeleton(input_size=input_size, num_joints=classes, stem_width=16,
                        stages=tuple(Stage(c, n, s) for _, c, n, s in _MBV2_TABLE), task="seg")
    choices = {label: "mb_k3_e6" for label in skeleton.choice_labels()}
    choices["head"] = seg_head_name("lraspp", 128)
    return ArchSpec(name="mobilenetv2-lraspp", skeleton=skeleton, choices=choices)


NAMED_ARCHS = {"mobilenetv2": _mobilenetv2, "mobilenetv2-lraspp": _mobilenetv2_lraspp}


def load_arch(ref: str | os.PathLike, *, input_size: tuple[int, int] | None = None,
              num_joints: int | None = None) -> ArchSpec:
    """A named architecture or the path of an arch JSON, optionally at another input size."""
    ref = str(ref)
    if ref in NAMED_ARCHS:
        spec = NAMED_ARCHS[ref]()
    elif Path(ref).suffix == ".json" or Path(ref).exists():
        spec = ArchSpec.load(ref)
    else:
        raise NasError(f"{ref}: not an arch JSON file nor a named architecture "
                       f"({', '.join(NAMED_ARCHS)})")
    if input_size or num_joints:
        spec = spec.with_input(input_size, num_joints)
    return spec
