"""MPII Human Pose (Andriluka et al., CVPR 2014) in the JSON form of HRNet and mmpose.

An annotation file is a list of person records, one person each (several records may share an
image)::

    {"image": "015601864.jpg", "center": [x, y], "scale": s, "joints": [[x, y] x 16],
     "joints_vis": [0/1 x 16]}

``scale`` is the person's height / 200 px; coordinates are MATLAB's, 1-based; a joint that is
not labelled is at (-1, -1) with ``joints_vis`` 0. Joint order: ``MPII_JOINTS`` (r-ankle ...
l-wrist). ``joints_vis`` may be left out (then every joint not at (-1, -1) is labelled).

Layouts (``MPII.paths``):

- HRNet: ``ROOT/annot/{train,valid,test}.json``, head boxes in ``ROOT/annot/gt_valid.mat``;
- mmpose: ``ROOT/annotations/mpii_{train,val,test}.json``, head boxes in
  ``ROOT/annotations/mpii_gt_val.mat``;
- or the JSON file itself; head boxes then come from ``gt_<name>.mat`` (``mpii_gt_<split>.mat``
  for ``mpii_<split>.json``) beside it, when present.

Images are in ``ROOT/images/`` (``images/`` beside the JSON file or one folder up).

The crop follows HRNet/mmpose: centre moved down by 15 x scale px (MPII's centre sits high on
the body), a box 200 x scale px tall, padded by 1.25 and widened to the input's aspect.

PCKh (``MPII.score``): a joint is correct within 0.5 x the head size, which is 0.6 x the
diagonal of the head box (MPII's definition) when the ``*.mat`` of head boxes
(``headboxes_src``, (2, 2, N) like the official ``gt_valid.mat``) is found. Without it, the
head box is approximated by a square whose side is the upper-neck to head-top distance, so the
head size is 0.6 x sqrt(2) x |head-top - upper-neck|; results say which was used. The mean
leaves out pelvis and thorax, as the official evaluation and HRNet do.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from nas.tasks.pose.dataset import PoseDataset
from nas.tasks.pose.joints import MPII_JOINTS
from nas.tasks.pose.metrics import pck
from nas.tasks.pose.records import check_image, check_joints_in_image, read_json
from nas.tasks.pose.transforms import Augmentation
from supernets.errors import NasError

__all__ = ["HEAD_SIZE_APPROXIMATION", "MPII", "MPII_SPLITS", "is_mpii_root"]

MPII_SPLITS = ("train", "val", "test")
# File names per split: HRNet's, then mmpose's.
_SPLIT_FILES = {"train": (("annot", "train.json"), ("annotations", "mpii_train.json")),
                "val": (("annot", "valid.json"), ("annotations", "mpii_val.json")),
                "test": (("annot", "test.json"), ("annotations", "mpii_test.json"))}
_PIXEL_PER_SCALE = 200.0
_CENTER_SHIFT = 15.0   # px per unit of scale (HRNet/mmpose)
_SC_BIAS = 0.6         # MPII: head size = 0.6 x head box diagonal
_IGNORED_IN_MEAN = ("pelvis", "thorax")
# The official table: joint groups, each the mean of its joints.
_GROUPS = {"Head": ("head-top",), "Shoulder": ("r-shoulder", "l-shoulder"),
           "Elbow": ("r-elbow", "l-elbow"), "Wrist": ("r-wrist", "l-wrist"),
           "Hip": ("r-hip", "l-hip"), "Knee": ("r-knee", "l-knee"),
           "Ankle": ("r-ankle", "l-ankle")}
HEAD_SIZE_APPROXIMATION = ("approximate: no head boxes given, head size = 0.6 x sqrt(2) x "
                           "|head-top - upper-neck|")


def is_mpii_root(path: Path) -> bool:
    """Whether ``path`` is a folder in HRNet's or mmpose's MPII layout."""
    return path.is_dir() and any((path / d / f).is_file()
                                 for files in _SPLIT_FILES.values() for d, f in files)


class MPII(PoseDataset):
    """The records of one MPII annotation file, at most ``limit`` (the first ones).

    Opening checks everything before any training: each record's fields, 16 joints, labelled
    joints inside their image, each image present and decodable, the head boxes' count.
    """

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike,
                 input_size: int | tuple[int, int] = 256, heatmap_size: int | tuple[int, int] = 64,
                 *, seed: int, augment: bool, sigma: float = 2.0, limit: int | None = None,
                 head_boxes: str | os.PathLike | None = None,
                 augmentation: Augmentation = Augmentation()):
        super().__init__(input_size, heatmap_size, joint_names=MPII_JOINTS, seed=seed,
                         augment=augment, sigma=sigma, augmentation=augmentation)
        self.annotations, self.images = Path(annotations), Path(images)
        if not self.images.is_dir():
            raise NasError(f"{self.images}: missing (the MPII image folder for "
                           f"{self.annotations})")
        records = read_json(self.annotations, "MPII annotation file")
        if not isinstance(records, list) or not records:
            raise NasError(f"{self.annotations}: expected a non-empty JSON list of person "
                           "records (MPII as HRNet/mmpose write it)")
        total = len(records)
        if limit is not None:
            if limit < 1:
                raise NasError(f"limit must be at least 1, not {limit}")
            records = records[:limit]
        parsed = [self._parse(i, r) for i, r in enumerate(records)]
        self.image_names = [p[0] for p in parsed]
        self.centers = np.array([p[1] for p in parsed])
        self.scales = np.array([p[2] for p in parsed])
        self._joints = np.stack([p[3] for p in parsed])
        sizes: dict[str, tuple[int, int]] = {}
        for i, name in enumerate(self.image_names):
            if name not in sizes:
                sizes[name] = check_image(self.images / name, f"record {i} of "
                                          f"{self.annotations}")
            check_joints_in_image(self._joints[i], MPII_JOINTS, sizes[name],
                                  f"{self.annotations}: record {i} ({name})")
        self.head_boxes = Path(head_boxes) if head_boxes else None
        if self.head_boxes is not None:
            self.head_sizes = _read_head_sizes(self.head_boxes, total)[:len(parsed)]
            self.normaliser_note = f"head boxes from {self.head_boxes.name}"
        else:
            self.head_sizes = _approximate_head_sizes(self._joints)
            self.normaliser_note = HEAD_SIZE_APPROXIMATION

    @staticmethod
    def paths(data: str | os.PathLike, split: str) -> tuple[Path, Path, Path | None]:
        """(annotation file, image folder, head-box file or None) for ``data`` (a root folder
        in either layout, or an annotation file, which then is the split whatever ``split``)."""
        data = Path(data)
        if data.is_dir():
            if split not in MPII_SPLITS:
                raise NasError(f"unknown MPII split {split!r}; expected one of "
                               f"{', '.join(MPII_SPLITS)}")
            found = [data / d / f for d, f in _SPLIT_FILES[split] if (data / d / f).is_file()]
            if not found:
                wanted = " or ".join(f"{d}/{f}" for d, f in _SPLIT_FILES[split])
                raise NasError(f"{data}: no MPII {split} annotations (expected {wanted})")
            annotations = found[0]
            images = data / "images"
        else:
            annotations = data
            images = next((p for p in (data.parent / "images", data.parent.parent / "images")
                           if p.is_dir()), data.parent / "images")
        stem = annotations.stem
        boxes = [annotations.parent / f"gt_{stem}.mat"]
        if stem.startswith("mpii_"):
            boxes.append(annotations.parent / f"mpii_gt_{stem[5:]}.mat")
        return annotations, images, next((p for p in boxes if p.is_file()), None)

    def _parse(self, i: int, r) -> tuple[str, tuple[float, float], float, np.ndarray]:
        where = f"{self.annotations}: record {i}"
        if not isinstance(r, dict):
            raise NasError(f"{where}: expected an object with image, center, scale, joints")
        for key in ("image", "center", "scale", "joints"):
            if key not in r:
                raise NasError(f"{where}: missing field {key!r}")
        if not isinstance(r["image"], str) or not r["image"]:
            raise NasError(f"{where}: field 'image' = {r['image']!r}: expected a file name")
        where = f"{where} ({r['image']})"
        center = _numbers(r["center"], (2,), f"{where}: field 'center'", "[x, y]")
        scale = _numbers(r["scale"], (), f"{where}: field 'scale'", "a number")
        if not scale > 0:
            raise NasError(f"{where}: field 'scale' = {r['scale']!r}: expected a positive "
                           "number (person height / 200 px)")
        n = len(r["joints"]) if isinstance(r["joints"], list) else 0
        if n != len(MPII_JOINTS):
            raise NasError(f"{where}: field 'joints' has {n} joints, expected "
                           f"{len(MPII_JOINTS)} [x, y] pairs")
        joints = _numbers(r["joints"], (len(MPII_JOINTS), 2), f"{where}: field 'joints'",
                          "16 [x, y] pairs")
        unlabelled = (joints == -1).all(axis=1)
        if "joints_vis" in r:
            vis = _numbers(r["joints_vis"], (len(MPII_JOINTS),), f"{where}: field 'joints_vis'",
                           "16 values 0 or 1")
            if not np.isin(vis, (0, 1)).all():
                raise NasError(f"{where}: field 'joints_vis' holds "
                               f"{vis[~np.isin(vis, (0, 1))][0]:g}, expected 0 or 1")
            labelled = (vis > 0) & ~unlabelled
        else:
            labelled = ~unlabelled
        # MATLAB's pixel (1, 1) is our (0, 0).
        out = np.column_stack([joints - 1.0, labelled.astype(np.float64)])
        return r["image"], (center[0] - 1.0, center[1] - 1.0), float(scale), out

    def __len__(self) -> int:
        return len(self.image_names)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        with Image.open(self.images / self.image_names[index]) as im:
            return im.convert("RGB"), self._joints[index]

    def crop_box(self, index: int, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.input_size
        cx, cy = self.centers[index]
        s = self.scales[index]
        height = s * _PIXEL_PER_SCALE * self.padding
        return np.array([cx, cy + _CENTER_SHIFT * s]), np.array([height * w / h, height])

    def normaliser(self, index: int, joints: np.ndarray) -> float:
        return float(self.head_sizes[index])

    def score(self, predictions) -> dict:
        """PCKh@0.5: per joint, the official groups, and the mean without pelvis and thorax."""
        result = pck(predictions.coords, predictions.joints, predictions.norm, 0.5,
                     self.joint_names)
        counted = {n: c for n, c in result["per_joint_count"].items()
                   if n not in _IGNORED_IN_MEAN}
        total = sum(counted.values())
        correct = sum(result["per_joint"][n] * c for n, c in counted.items() if c)
        result["mean_all_joints"] = result["mean"]
        result["mean"] = correct / total if total else float("nan")
        result["groups"] = {g: float(np.mean([result["per_joint"][n] for n in names]))
                            for g, names in _GROUPS.items()}
        result.update(metric="PCKh@0.5", normaliser=self.normaliser_note,
                      mean_excludes=list(_IGNORED_IN_MEAN))
        return result


def _numbers(value, shape: tuple[int, ...], where: str, expected: str) -> np.ndarray | float:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise NasError(f"{where} = {value!r}: expected {expected}") from None
    if array.shape != shape or not np.isfinite(array).all():
        raise NasError(f"{where} = {value!r}: expected {expected}")
    return float(array) if shape == () else array


def _read_head_sizes(path: Path, count: int) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # noqa: BLE001  scipy raises several types for a damaged file
        raise NasError(f"{path}: not a readable MATLAB file ({e})") from None
    boxes = np.asarray(mat.get("headboxes_src", np.zeros(0)))
    if boxes.ndim != 3 or boxes.shape[:2] != (2, 2):
        raise NasError(f"{path}: no 'headboxes_src' of shape (2, 2, N) (MPII head boxes)")
    if boxes.shape[2] != count:
        raise NasError(f"{path}: {boxes.shape[2]} head boxes for {count} records in the "
                       "annotation file")
    boxes = boxes.astype(np.float64)
    return _SC_BIAS * np.linalg.norm(boxes[1] - boxes[0], axis=0)


def _approximate_head_sizes(joints: np.ndarray) -> np.ndarray:
    top, neck = joints[:, MPII_JOINTS.index("head-top")], joints[:, MPII_JOINTS.index("upper-neck")]
    ok = (top[:, 2] > 0) & (neck[:, 2] > 0)
    length = np.linalg.norm(top[:, :2] - neck[:, :2], axis=1)
    return np.where(ok, _SC_BIAS * math.sqrt(2) * length, 0.0)
