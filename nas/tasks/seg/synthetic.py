"""Embedded synthetic segmentation data: shapes on textures, seeded, nothing to download.

Sample ``i`` of a split is drawn from a generator seeded by (seed, split stream, i): a textured
background (class 0: smooth colour gradients with noise) and 3 to 6 filled shapes, each of class
1..C-1, drawn in turn so later ones occlude earlier ones. A class is told by its shape and its
texture, not by colour alone: class k is a disc, a box or a triangle ((k - 1) mod 3) filled with
stripes at the class's own angle and period in a colour drawn around the class's hue, so a
network has to look at shape and texture, as in real scenes. Augmentation (training): a random
left-right flip drawn from (seed, epoch, index), as the real readers do.

Samples are the dicts of ``nas.tasks.seg.SegDataset``: ``image`` (3, H, W) normalised with
ImageNet's mean and std, ``label`` (H, W) int64 class ids, ``index``.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from torch.utils.data import Dataset

from nas.tasks.images import normalize_image
from nas.tasks.seg.data import DatasetSpec
from supernets.errors import NasError

__all__ = ["SHAPES", "SYNTHETIC_SPLITS", "SyntheticSeg", "synthetic_spec"]

SYNTHETIC_SPLITS = {"train": 0, "val": 1, "test": 2}
SHAPES = ("disc", "box", "triangle")
_FLIP_STREAM = 0xF11B


def synthetic_spec(num_classes: int) -> DatasetSpec:
    """Class names of the synthetic data with ``num_classes`` classes (background first)."""
    if num_classes < 2:
        raise NasError(f"synthetic segmentation data needs at least 2 classes, not {num_classes}")
    names = ("background",) + tuple(f"{SHAPES[(k - 1) % 3]}-{k}" for k in range(1, num_classes))
    return DatasetSpec("synthetic shapes", names, {k: k for k in range(num_classes)})


def _class_style(k: int, num_classes: int) -> tuple[np.ndarray, float, float]:
    """Class ``k``'s base colour (RGB 0..1), stripe angle (radians) and period (pixels)."""
    hue = (k * 0.618034) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.65, 0.85))
    angle = np.pi * ((k * 0.381966) % 1.0)
    period = 3.0 + 5.0 * ((k * 0.7548777) % 1.0)
    return rgb, angle, period


class SyntheticSeg(Dataset):
    """``n`` synthetic scenes of ``size`` (H, W) with ``num_classes`` classes (see module doc)."""

    def __init__(self, n: int, size: tuple[int, int], num_classes: int, *, stream: int = 0,
                 seed: int = 0, augment: bool = False):
        if n < 1:
            raise NasError(f"synthetic segmentation data: {n} samples, expected at least 1")
        self.n, self.size, self.num_classes = n, (int(size[0]), int(size[1])), num_classes
        self.spec = synthetic_spec(num_classes)
        self.stream, self.seed, self.augment, self.epoch = stream, seed, augment, 0
        h, w = self.size
        self._yy, self._xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H, W, 3), label uint8 (H, W)) of sample ``index``, before augmentation."""
        rng = np.random.default_rng([self.seed, self.stream, index])
        h, w = self.size
        yy, xx = self._yy, self._xx
        # background: a smooth two-colour gradient plus noise
        a, b = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.8, 3)
        t = (np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        image = a * (1 - t[..., None]) + b * t[..., None]
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(3, 7))):
            k = int(rng.integers(1, self.num_classes))
            mask = self._shape(SHAPES[(k - 1) % 3], rng)
            rgb, angle, period = _class_style(k, self.num_classes)
            colour = np.clip(rgb + rng.normal(0, 0.06, 3), 0, 1)
            phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period + rng.uniform(0, 1)
            stripes = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * phase))
            image[mask] = colour * stripes[mask][:, None]
            label[mask] = k
        image = image + rng.normal(0, 0.04, image.shape)
        return (np.clip(image, 0, 1) * 255).astype(np.uint8), label

    def _shape(self, shape: str, rng: np.random.Generator) -> np.ndarray:
        h, w = self.size
        yy, xx = self._yy, self._xx
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.08, 0.25) * min(h, w)
        if shape == "disc":
            return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if shape == "box":
            ry, rx = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
            return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        # triangle: three points around the centre, inside all three edges
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        py, px = cy + r * 1.3 * np.sin(angles), cx + r * 1.3 * np.cos(angles)
        inside = np.ones((h, w), bool)
        for i in range(3):
            j = (i + 1) % 3
            edge = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
            inside &= edge * ((px[j] - px[i]) * (cy - py[i]) - (py[j] - py[i]) * (cx - px[i])) >= 0
        return inside

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        image, label = self.scene(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, _FLIP_STREAM, self.epoch, index])
            if rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
        return {"image": torch.from_numpy(normalize_image(np.ascontiguousarray(image))),
                "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
                "index": index}

