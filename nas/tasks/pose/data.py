"""Pick the dataset a command line names (``--data``), by its layout.

- omitted: synthetic figures (``SyntheticPose``), nothing to download;
- a folder with ``joints.mat``: Leeds Sports Pose (``LSP``; splits train, test, all);
- a folder with ``annot/{train,valid}.json`` (HRNet) or ``annotations/mpii_{train,val}.json``
  (mmpose) and ``images/``: MPII (``MPII``; splits train, val, test);
- a folder with ``annotations/person_keypoints_<split>*.json`` and the images in
  ``<split>2017/`` or ``images/<split>2017/``: COCO (``COCOKeypoints``; splits train, val);
- a ``.json`` file: MPII if it holds a list of records, COCO if it holds an object; the file is
  the split (``split`` is ignored), its images found as the readers describe.

``VALIDATION_SPLIT`` and ``EVALUATION_SPLIT`` give, per kind, the split that training validates
on and the one ``nas eval`` scores by default.
"""

from __future__ import annotations

from pathlib import Path

from nas.tasks.pose.coco import COCOKeypoints, is_coco_root
from nas.tasks.pose.dataset import PoseDataset
from nas.tasks.pose.lsp import LSP
from nas.tasks.pose.mpii import MPII, is_mpii_root
from nas.tasks.pose.synthetic import SyntheticPose
from supernets.errors import NasError

__all__ = ["DATASET_JOINTS", "DEFAULT_SYNTHETIC_SIZE", "EVALUATION_SPLIT", "SYNTHETIC_SPLITS",
           "VALIDATION_SPLIT", "dataset_kind", "make_dataset"]

# One stream per split keeps synthetic train, val and test figures disjoint.
SYNTHETIC_SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SYNTHETIC_SIZE = 2000
VALIDATION_SPLIT = {"synthetic": "val", "lsp": "test", "mpii": "val", "coco": "val"}
EVALUATION_SPLIT = {"synthetic": "test", "lsp": "test", "mpii": "val", "coco": "val"}
DATASET_JOINTS = {"lsp": 14, "mpii": 16, "coco": 17}
_NAMES = {"lsp": "Leeds Sports Pose", "mpii": "MPII", "coco": "COCO"}


def dataset_kind(data: str | Path | None) -> str:
    """``synthetic``, ``lsp``, ``mpii`` or ``coco`` for a ``--data`` value (see module doc)."""
    if data is None:
        return "synthetic"
    path = Path(data)
    if path.is_dir():
        if (path / "joints.mat").is_file():
            return "lsp"
        if is_mpii_root(path):
            return "mpii"
        if is_coco_root(path):
            return "coco"
    elif path.is_file() and path.suffix.lower() == ".json":
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"["):
            return "mpii"
        if head.startswith(b"{"):
            return "coco"
        raise NasError(f"{path}: not a pose annotation file (expected a JSON list of MPII "
                       "records or a COCO keypoints object)")
    elif not path.exists():
        raise NasError(f"{path}: not a pose dataset (no such file or folder)")
    raise NasError(f"{path}: not a pose dataset (expected a Leeds Sports Pose folder with "
                   "joints.mat, an MPII folder with annot/ or annotations/ and images/, a COCO "
                   "folder with annotations/person_keypoints_*.json, or an MPII/COCO JSON file)")


def make_dataset(data: str | Path | None, split: str, input_size, heatmap_size, *, seed: int,
                 augment: bool, num_joints: int = 14, limit: int | None = None,
                 synthetic_size: int = DEFAULT_SYNTHETIC_SIZE, sigma: float = 2.0,
                 detections: str | Path | None = None) -> PoseDataset:
    """The dataset ``data`` names (see module doc), ``split`` of it, at most ``limit`` records
    (COCO: images). ``num_joints`` is what the model predicts: a dataset with another joint
    count is refused. ``detections``: COCO person boxes to crop instead of the ground truth."""
    kind = dataset_kind(data)
    if detections is not None and kind != "coco":
        raise NasError(f"--detections {detections}: person detections apply to COCO data, "
                       f"not {kind}")
    if kind != "synthetic" and DATASET_JOINTS[kind] != num_joints:
        raise NasError(f"{data}: {_NAMES[kind]} has {DATASET_JOINTS[kind]} joints, the model "
                       f"expects {num_joints} (use an arch with {DATASET_JOINTS[kind]} joints "
                       f"or --joints {DATASET_JOINTS[kind]})")
    common = dict(seed=seed, augment=augment, sigma=sigma)
    if kind == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise NasError(f"unknown split {split!r} for synthetic data; expected one of "
                           f"{', '.join(SYNTHETIC_SPLITS)}")
        if limit is not None and limit < 1:
            raise NasError(f"limit must be at least 1, not {limit}")
        n = min(synthetic_size, limit) if limit is not None else synthetic_size
        return SyntheticPose(n, input_size, heatmap_size, num_joints=num_joints,
                             stream=SYNTHETIC_SPLITS[split], **common)
    if kind == "lsp":
        return LSP(data, split, input_size, heatmap_size, limit=limit, **common)
    if kind == "mpii":
        annotations, images, head_boxes = MPII.paths(data, split)
        return MPII(annotations, images, input_size, heatmap_size, limit=limit,
                    head_boxes=head_boxes, **common)
    annotations, images = COCOKeypoints.paths(data, split)
    return COCOKeypoints(annotations, images, input_size, heatmap_size, limit=limit,
                         detections=detections, **common)
