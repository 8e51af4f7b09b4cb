"""Architecture specs: a network as a frozen value that round-trips through JSON.

A spec is the skeleton (the fixed parts shared with its search space) plus one choice per label.
``spec.layers()`` is the one walk over the network: every consumer (the standalone model, the
latency predictor, FLOP counting) uses it, so input shapes and channel counts are derived once.

JSON format, schema ``nas.arch/1`` (write one by hand, or let ``nas search`` write it)::

    {
      "schema": "nas.arch/1",
      "name": "my-net",                    # free text
      "space": "efficientpose-a",          # optional: the search space it came from
      "input_size": [256, 256],            # H, W of the network input
      "num_joints": 16,                    # heatmaps out (one per joint)
      "stem_width": 16,                    # channels out of the fixed stem (output stride 2)
      "stages": [                          # backbone stages, each `layers` choice layers;
        {"width": 24, "layers": 4, "stride": 2},   # the first layer of a stage carries `stride`
        {"width": 32, "layers": 6, "stride": 2},
        {"width": 64, "layers": 8, "stride": 2},
        {"width": 96, "layers": 8, "stride": 1}
      ],
      "head_stages": 2,                    # upsampling stages (each doubles H and W)
      "choices": {                         # exactly one per label, nothing else
        "stage1.block0": "mb_k3_e6",       # backbone: mb_k{3,5,7}_e{3,6} or skip
        "stage1.block1": "skip",           # skip: never on block0 of a stage
        ...
        "head.up1": "up_plain_sic_c64",    # head: <head op>_c<width>, head ops in supernets.ops
        "head.up2": "up_dw_sic_c32"
      }
    }

Labels are ``stage{i}.block{j}`` (stages from 1, blocks from 0) and ``head.up{k}`` (from 1); the
fixed layers are ``stem`` and ``heatmap``. Loading validates everything and names the label at
fault.

A segmentation network (``"task": "seg"``) has ``"num_classes"`` instead of ``num_joints`` and no
``head_stages``: one choice ``"head"`` takes the backbone's last feature and the low-level one
(the output of the last block at twice its resolution) and gives class scores at the input's
resolution, e.g. ``"head": "seg_lraspp_w64"`` (the heads are in ``supernets.ops``)::

    {"schema": "nas.arch/1", "name": "seg-net", "task": "seg", "input_size": [176, 240],
     "num_classes": 11, "stem_width": 16, "stages": [...],
     "choices": {"stage1.block0": "mb_k3_e6", ..., "head": "seg_lraspp_w64"}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.ops import BACKBONE_OPS, HEAD_OPS, parse_seg_head

__all__ = [
    "SCHEMA",
    "ArchSpec",
    "Layer",
    "Skeleton",
    "Slot",
    "Stage",
    "head_choice",
    "parse_head_choice",
]

SCHEMA = "nas.arch/1"
TASKS = ("pose", "seg")
_HEAD_CHOICE = re.compile(r"^(?P<op>up_[a-z0-9_]+?)_c(?P<width>[1-9][0-9]*)$")


def head_choice(op: str, width: int) -> str:
    return f"{op}_c{width}"


def parse_head_choice(choice: str) -> tuple[str, int]:
    """``'up_dw_sic_c64'`` -> ``('up_dw_sic', 64)``; ValueError if malformed or unknown op."""
    m = _HEAD_CHOICE.match(choice)
    if not m or m["op"] not in HEAD_OPS:
        raise ValueError(
            f"{choice!r} is not a head choice; expected <op>_c<width> with op one of "
            f"{', '.join(HEAD_OPS)} (e.g. 'up_plain_sic_c64')")
    return m["op"], int(m["width"])


@dataclass(frozen=True)
class Stage:
    width: int
    layers: int
    stride: int


@dataclass(frozen=True)
class Slot:
    """A position in the skeleton: what is fixed about a layer before its op is chosen."""

    label: str
    kind: str  # 'stem' | 'backbone' | 'head' | 'heatmap' | 'seghead'
    stride: int
    in_hw: tuple[int, int]
    out_chs: int | None  # None where the choice sets the width (head)
    first_of_stage: bool = False
    low_from: str | None = None      # seghead: the layer whose output is the low-level feature
    low_chs: int = 0                 # ... its channels and size
    low_hw: tuple[int, int] | None = None


@dataclass(frozen=True)
class Layer:
    """One concrete layer of a spec: an op and the shapes it sees."""

    label: str
    op: str
    in_chs: int
    out_chs: int
    stride: int
    in_hw: tuple[int, int]
    low_from: str | None = None      # a segmentation head's low-level feature: from this layer,
    low_chs: int = 0                 # with these channels and size
    low_hw: tuple[int, int] | None = None


@dataclass(frozen=True)
class Skeleton:
    """The fixed parts of a network: shared by a search space and every spec drawn from it.
    ``num_joints`` is the number of output maps: joints for pose, classes for ``task`` seg."""

    input_size: tuple[int, int]
    num_joints: int
    stem_width: int
    stages: tuple[Stage, ...]
    head_stages: int = 2
    task: str = "pose"

    def __post_init__(self):
        h, w = self.input_size
        stride = 2 * _prod(s.stride for s in self.stages)
        if h % stride or w % stride:
            raise NasError(f"input_size {h}x{w} must be divisible by the output stride {stride}")
        if self.task not in TASKS:
            raise NasError(f"task {self.task!r}: expected one of {', '.join(TASKS)}")

    @property
    def num_classes(self) -> int:
        return self.num_joints

    @property
    def outputs(self) -> str:
        """What the network predicts, in words: ``"14 joints"``, ``"11 classes"``."""
        return f"{self.num_joints} {'classes' if self.task == 'seg' else 'joints'}"

    @property
    def output_stride(self) -> int:
        return 2 * _prod(s.stride for s in self.stages)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """The output's size: heatmaps for pose, the input's size for seg."""
        if self.task == "seg":
            return tuple(self.input_size)
        f = self.output_stride // 2 ** self.head_stages
        return self.input_size[0] // f, self.input_size[1] // f

    def slots(self) -> list[Slot]:
        h, w = self.input_size
        slots = [Slot("stem", "stem", 2, (h, w), self.stem_width)]
        h, w = h // 2, w // 2
        for i, stage in enumerate(self.stages, start=1):
            for j in range(stage.layers):
                stride = stage.stride if j == 0 else 1
                slots.append(Slot(f"stage{i}.block{j}", "backbone", stride, (h, w), stage.width,
                                  first_of_stage=j == 0))
                h, w = h // stride, w // stride
        if self.task == "seg":
            # the low-level feature: the last layer whose output has twice the final size
            low = next(s for s in reversed(slots)
                       if (s.in_hw[0] // s.stride, s.in_hw[1] // s.stride) == (2 * h, 2 * w))
            slots.append(Slot("head", "seghead", self.output_stride, (h, w), self.num_joints,
                              low_from=low.label, low_chs=low.out_chs,
                              low_hw=(2 * h, 2 * w)))
            return slots
        for k in range(1, self.head_stages + 1):
            slots.append(Slot(f"head.up{k}", "head", 2, (h, w), None))
            h, w = h * 2, w * 2
        slots.append(Slot("heatmap", "heatmap", 1, (h, w), self.num_joints))
        return slots

    def choice_labels(self) -> list[str]:
        return [s.label for s in self.slots() if s.kind in ("backbone", "head", "seghead")]

    def with_input(self, input_size: tuple[int, int] | None = None,
                   num_joints: int | None = None) -> Skeleton:
        return dataclasses.replace(
            self,
            input_size=tuple(input_size) if input_size else self.input_size,
            num_joints=num_joints or self.num_joints)


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


@dataclass(frozen=True)
class ArchSpec:
    """A concrete architecture: a skeleton plus one op per choice label."""

    name: str
    skeleton: Skeleton
    choices: Mapping[str, str]
    space: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "choices", MappingProxyType(dict(self.choices)))
        self.validate()

    def __reduce__(self):
        # A mappingproxy cannot be pickled or deep-copied (copy.deepcopy of a PoseNet, worker
        # processes): rebuild from a plain dict instead.
        return ArchSpec, (self.name, self.skeleton, dict(self.choices), self.space)

    # -- the walk --------------------------------------------------------------------------
    def layers(self) -> list[Layer]:
        out: list[Layer] = []
        chs = 3
        for slot in self.skeleton.slots():
            if slot.kind == "stem":
                op, width = "stem", slot.out_chs
            elif slot.kind == "heatmap":
                op, width = "heatmap", slot.out_chs
            elif slot.kind == "backbone":
                op, width = self.choices[slot.label], slot.out_chs
            elif slot.kind == "seghead":
                op, width = self.choices[slot.label], slot.out_chs
            else:
                op, width = parse_head_choice(self.choices[slot.label])
            out.append(Layer(slot.label, op, chs, width, slot.stride, slot.in_hw,
                             slot.low_from, slot.low_chs, slot.low_hw))
            chs = width
        return out

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        labels = self.skeleton.choice_labels()
        missing = [lb for lb in labels if lb not in self.choices]
        extra = [lb for lb in self.choices if lb not in set(labels)]
        if extra:
            raise NasError(
                f"choices: unknown label {extra[0]!r} (this skeleton has {len(labels)} choice "
                f"layers: {labels[0]} ... {labels[-1]}; check stage 'layers' and 'head_stages')")
        if missing:
            raise NasError(f"choices: no choice for label {missing[0]!r} "
                           f"({len(missing)} of {len(labels)} missing)")
        for slot in self.skeleton.slots():
            if slot.kind == "backbone":
                op = self.choices[slot.label]
                if op not in BACKBONE_OPS:
                    raise NasError(f"choices[{slot.label!r}]: unknown backbone op {op!r}; "
                                   f"expected one of {', '.join(BACKBONE_OPS)}")
                if op == "skip" and slot.first_of_stage:
                    raise NasError(f"choices[{slot.label!r}]: skip is not allowed on the first "
                                   f"block of a stage (it changes stride or width)")
            elif slot.kind == "head":
                try:
                    parse_head_choice(self.choices[slot.label])
                except ValueError as e:
                    raise NasError(f"choices[{slot.label!r}]: {e}") from None
            elif slot.kind == "seghead":
                try:
                    kind, _, _ = parse_seg_head(self.choices[slot.label])
                except ValueError as e:
                    raise NasError(f"choices[{slot.label!r}]: {e}") from None
                if kind == "tc2" and self.skeleton.output_stride < 4:
                    raise NasError(f"choices[{slot.label!r}]: two upsampling stages overshoot "
                                   f"output stride {self.skeleton.output_stride}")

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        sk = self.skeleton
        d = {
            "schema": SCHEMA,
            "name": self.name,
            "space": self.space,
            "input_size": list(sk.input_size),
            "num_joints": sk.num_joints,
            "stem_width": sk.stem_width,
            "stages": [dataclasses.asdict(s) for s in sk.stages],
            "head_stages": sk.head_stages,
            "choices": {lb: self.choices[lb] for lb in sk.choice_labels()},
        }
        if sk.task == "seg":
            d = {"schema": SCHEMA, "name": self.name, "task": "seg", "space": self.space,
                 "input_size": list(sk.input_size), "num_classes": sk.num_classes,
                 "stem_width": sk.stem_width,
                 "stages": [dataclasses.asdict(s) for s in sk.stages],
                 "choices": {lb: self.choices[lb] for lb in sk.choice_labels()}}
        if self.space is None:
            del d["space"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, d: object, where: str = "spec") -> ArchSpec:
        try:
            return _from_dict(d)
        except NasError as e:
            raise NasError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "spec") -> ArchSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise NasError(f"{where}: not valid JSON ({e})") from None
        return cls.from_dict(d, where)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ArchSpec:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise NasError(f"{path}: cannot read arch spec ({e.strerror})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NasError(f"{path}: not an arch spec, expected UTF-8 JSON (byte "
                           f"{data[e.start]:#04x} at offset {e.start} is not UTF-8)") from None
        return cls.from_json(text, str(path))

    def with_input(self, input_size: tuple[int, int] | None = None,
                   num_joints: int | None = None) -> ArchSpec:
        return dataclasses.replace(self, skeleton=self.skeleton.with_input(input_size, num_joints))


_KEYS = {"schema", "name", "space", "input_size", "num_joints", "stem_width", "stages",
         "head_stages", "choices"}
_SEG_KEYS = {"schema", "name", "task", "space", "input_size", "num_classes", "stem_width",
             "stages", "choices"}


def _field(d: dict, key: str, kind, check=None, expected: str = ""):
    if key not in d:
        raise NasError(f"missing field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (check and not check(value)):
        raise NasError(f"field {key!r} = {value!r}: expected {expected}")
    return value


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _from_dict(d: object) -> ArchSpec:
    if not isinstance(d, dict):
        raise NasError("expected a JSON object")
    schema = d.get("schema")
    if schema != SCHEMA:
        raise NasError(f"field 'schema' = {schema!r}: expected {SCHEMA!r}")
    task = d.get("task", "pose")
    if task not in TASKS:
        raise NasError(f"field 'task' = {task!r}: expected one of {', '.join(TASKS)}")
    keys = _SEG_KEYS if task == "seg" else _KEYS | {"task"}
    unknown = sorted(set(d) - keys)
    if unknown:
        raise NasError(f"unknown field {unknown[0]!r} for task {task}; expected fields: "
                       f"{', '.join(sorted(keys))}")
    input_size = _field(d, "input_size", list,
                        lambda v: len(v) == 2 and all(_positive_int(x) for x in v),
                        "[H, W] with positive integers")
    stages_raw = _field(d, "stages", list, lambda v: len(v) > 0, "a non-empty list of stages")
    stages = []
    for i, s in enumerate(stages_raw, start=1):
        if not isinstance(s, dict) or set(s) != {"width", "layers", "stride"}:
            raise NasError(f"stages[{i - 1}] (stage{i}) = {s!r}: expected "
                           "{\"width\": int, \"layers\": int, \"stride\": 1 or 2}")
        if not (_positive_int(s["width"]) and _positive_int(s["layers"])
                and _positive_int(s["stride"]) and s["stride"] in (1, 2)):
            raise NasError(f"stages[{i - 1}] (stage{i}) = {s!r}: width and layers must be "
                           "positive integers and stride 1 or 2")
        stages.append(Stage(s["width"], s["layers"], s["stride"]))
    outputs = "num_classes" if task == "seg" else "num_joints"
    skeleton = Skeleton(
        input_size=tuple(input_size),
        num_joints=_field(d, outputs, int, lambda v: v > 0, "a positive integer"),
        stem_width=_field(d, "stem_width", int, lambda v: v > 0, "a positive integer"),
        stages=tuple(stages),
        head_stages=(_field(d, "head_stages", int, lambda v: v > 0, "a positive integer")
                     if task == "pose" else 2),
        task=task,
    )
    choices = _field(d, "choices", dict, None, "an object mapping each label to an op name")
    for label, op in choices.items():
        if not isinstance(op, str):
            raise NasError(f"choices[{label!r}] = {op!r}: expected an op name (a string)")
    space = d.get("space")
    if space is not None and not isinstance(space, str):
        raise NasError(f"field 'space' = {space!r}: expected a space name or null")
    name = _field(d, "name", str, None, "a string")
    return ArchSpec(name=name, skeleton=skeleton, choices=choices, space=space)
