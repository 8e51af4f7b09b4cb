"""Leeds Sports Pose (Johnson & Everingham, BMVC 2010): 2000 images, 14 joints, one person each.

Layout of ``root``: ``joints.mat`` holding ``joints``, float (3, 14, N): x, y and a flag per joint
and image, and ``images/im0001.jpg`` ... (record i is ``im{i+1:04d}.jpg``).

The flag: the original README only says "joint visibility". In the 2000-image file 7.3% of the
flags are 1, nearly never on the head (0.4%) and most on the arms (10-16%); looking at images
confirms it: on im1070 (a jockey seen from the side) the legs and arm on the horse's far side
are flagged 1, on im1114 (a person seen from behind, arms in front) the arms are. So flag 1 means
*occluded*, 0 visible. Every joint is annotated, occluded or not, so every joint is *labelled*
here (target weight 1, counted by PCK, as in the standard LSP evaluation); the flags stay
available as ``LSP.occluded``.

Coordinates are used as given, with pixel centres at integers; the file does not say whether
they are 0- or 1-based (smallest x is 1.008, smallest y 0.247): at most a pixel, far below PCK's
tolerance (0.2 torso, about 10 px). Split: the usual convention, the first 1000 records for
training and the last 1000 for testing (first/second half when the file holds fewer than 2000).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from nas.tasks.pose.dataset import PoseDataset
from nas.tasks.pose.joints import LSP_JOINTS
from nas.tasks.pose.transforms import Augmentation
from supernets.errors import NasError

__all__ = ["LSP", "LSP_SPLITS", "image_name", "read_joints"]

LSP_SPLITS = ("train", "test", "all")
_SPLIT_SIZE = 1000
# Annotators click on the edge pixel: LSP has one joint 0.04 px past the border (im0126).
_EDGE_TOLERANCE = 1.0


def image_name(record: int) -> str:
    return f"im{record + 1:04d}.jpg"


def read_joints(path: str | os.PathLike) -> np.ndarray:
    """``joints.mat`` -> float64 (N, 14, 3): x, y, flag; NasError if it is not LSP's layout."""
    path = Path(path)
    if not path.is_file():
        raise NasError(f"{path}: missing (LSP needs joints.mat with the annotations)")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:   # scipy raises several types for a damaged or non-MAT file
        raise NasError(f"{path}: not a readable MATLAB file ({e})") from None
    if "joints" not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise NasError(f"{path}: no variable 'joints' (found: {found})")
    joints = np.asarray(mat["joints"])
    if joints.ndim != 3 or joints.shape[0] != 3 or joints.shape[2] < 1:
        raise NasError(f"{path}: 'joints' has shape {joints.shape}, expected (3, 14, N): "
                       "x, y, flag for 14 joints in N images")
    if joints.shape[1] != len(LSP_JOINTS):
        raise NasError(f"{path}: 'joints' has {joints.shape[1]} joints, expected "
                       f"{len(LSP_JOINTS)} (shape (3, 14, N))")
    if not np.issubdtype(joints.dtype, np.number):
        raise NasError(f"{path}: 'joints' holds {joints.dtype}, expected numbers")
    joints = joints.astype(np.float64).transpose(2, 1, 0)
    bad = np.argwhere(~np.isfinite(joints[..., :2]))
    if len(bad):
        record, j = bad[0][:2]
        raise NasError(f"{path}: record {record} ({image_name(record)}) {LSP_JOINTS[j]} "
                       "has a non-finite coordinate")
    bad = np.argwhere(~np.isin(joints[..., 2], (0, 1)))
    if len(bad):
        record, j = bad[0]
        raise NasError(f"{path}: record {record} ({image_name(record)}) {LSP_JOINTS[j]} "
                       f"flag is {joints[record, j, 2]:g}, expected 0 or 1")
    return joints


def split_records(n: int, split: str) -> range:
    if split not in LSP_SPLITS:
        raise NasError(f"unknown LSP split {split!r}; expected one of {', '.join(LSP_SPLITS)}")
    train = min(_SPLIT_SIZE, n // 2)
    test = min(_SPLIT_SIZE, n - n // 2)
    return {"train": range(train), "test": range(n - test, n), "all": range(n)}[split]


class LSP(PoseDataset):
    """LSP records of ``split``, at most ``limit`` of them (the first ones of the split).

    Every file the split needs is checked here, before any training starts: joints.mat's layout,
    each image present and decodable, each joint inside its image. Errors name file and record.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 input_size: int | tuple[int, int] = 128, heatmap_size: int | tuple[int, int] = 32,
                 *, seed: int, augment: bool, sigma: float = 2.0, limit: int | None = None,
                 augmentation: Augmentation = Augmentation()):
        super().__init__(input_size, heatmap_size, joint_names=LSP_JOINTS, seed=seed,
                         augment=augment, sigma=sigma, augmentation=augmentation)
        self.root = Path(root)
        if not self.root.is_dir():
            raise NasError(f"{self.root}: not a directory (expected LSP: joints.mat + images/)")
        all_joints = read_joints(self.root / "joints.mat")
        records = split_records(len(all_joints), split)
        if limit is not None:
            if limit < 1:
                raise NasError(f"limit must be at least 1, not {limit}")
            records = records[:limit]
        self.split = split
        self.records = np.array(records)
        self.occluded = all_joints[self.records, :, 2] > 0
        self.image_sizes = [self._check_image(r, all_joints[r]) for r in self.records]
        self._joints = all_joints[self.records].copy()
        self._joints[..., 2] = 1.0   # all annotated: labelled, whatever the occlusion flag

    def _check_image(self, record: int, joints: np.ndarray) -> tuple[int, int]:
        path = self.root / "images" / image_name(record)
        if not path.is_file():
            raise NasError(f"{path}: missing (record {record} of joints.mat)")
        try:
            with Image.open(path) as im:
                im.load()
                w, h = im.size
        except Exception as e:   # PIL raises several types for a broken image
            raise NasError(f"{path}: does not decode as an image (record {record}): {e}") from None
        xy = joints[:, :2]
        # The image spans [-0.5, size - 0.5] with pixel centres at integers.
        lo, hi = -0.5 - _EDGE_TOLERANCE, np.array([w, h]) - 0.5 + _EDGE_TOLERANCE
        outside = ((xy < lo) | (xy > hi)).any(axis=1)
        if outside.any():
            j = int(np.argmax(outside))
            raise NasError(f"{self.root / 'joints.mat'}: record {record} ({path.name}) "
                           f"{LSP_JOINTS[j]} at ({xy[j, 0]:.1f}, {xy[j, 1]:.1f}) lies outside "
                           f"the {w}x{h} image")
        return h, w

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        path = self.root / "images" / image_name(int(self.records[index]))
        with Image.open(path) as im:
            return im.convert("RGB"), self._joints[index]
