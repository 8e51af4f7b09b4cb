"""Crops, heatmap targets and augmentation for top-down pose data.

Coordinate convention, everywhere in ``nas.tasks.pose``: continuous pixel coordinates with pixel
*centres* at integers (pixel (0, 0) covers [-0.5, 0.5]^2). In it, an input crop of width W and
its heatmap of width w line up as ``x_hm = (x_in + 0.5) * w / W - 0.5``, and a horizontal flip is
``x -> W - 1 - x`` at both resolutions, so flipping the input and flipping the heatmap agree
exactly (no half-pixel fudge at decode time).

Sizes are (height, width), as in ``ArchSpec.input_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from nas.tasks.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Augmentation", "apply_affine", "crop_affine",
    "gaussian_heatmaps", "heatmap_to_input", "input_to_heatmap", "invert_affine",
    "normalize_image", "person_box", "warp_image",
]



def _homogeneous(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The (2, 3) inverse of a (2, 3) affine map."""
    return np.linalg.inv(_homogeneous(np.asarray(affine, dtype=np.float64)))[:2]


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a (2, 3) affine."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(affine)[:, :2].T + np.asarray(affine)[:, 2]


def person_box(joints: np.ndarray, aspect: float, padding: float = 1.25,
               min_size: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and size (w, h) of the crop around the labelled joints.

    The joints' bounding box, widened to ``aspect`` (= w / h of the network input) and padded:
    joints mark bone ends, the padding keeps head, hands and feet in view.
    """
    labelled = joints[:, 2] > 0
    xy = joints[labelled, :2] if labelled.any() else joints[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    center = (lo + hi) / 2
    w, h = np.maximum(hi - lo, min_size)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h]) * padding


def crop_affine(center: np.ndarray, box: np.ndarray, output_size: tuple[int, int],
                rotation: float = 0.0, flip: bool = False) -> np.ndarray:
    """The (2, 3) map from original-image pixels to a crop of ``output_size`` (h, w).

    ``box`` (w, h) around ``center`` fills the crop; the content turns by ``rotation`` degrees
    about the centre (counter-clockwise on screen) and is mirrored left-right if ``flip``.
    """
    out_h, out_w = output_size
    cx, cy = center
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    r = math.radians(rotation)
    # y points down, so this matrix turns content counter-clockwise as seen on screen.
    rotate = np.array([[math.cos(r), math.sin(r), 0], [-math.sin(r), math.cos(r), 0], [0, 0, 1]])
    scale = np.diag([out_w / box[0], out_h / box[1], 1.0])
    to_crop = np.array([[1, 0, (out_w - 1) / 2], [0, 1, (out_h - 1) / 2], [0, 0, 1]])
    m = to_crop @ scale @ rotate @ to_origin
    if flip:
        m = np.array([[-1, 0, out_w - 1], [0, 1, 0], [0, 0, 1]]) @ m
    return m[:2]


def warp_image(image: Image.Image, affine: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The (h, w, 3) uint8 crop of an RGB image under ``affine``; outside the image is black."""
    inv = invert_affine(affine)
    # PIL puts pixel centres at +0.5 (corner convention); convert the inverse map to it.
    offset = inv[:, 2] - inv[:, :2] @ [0.5, 0.5] + 0.5
    data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    out_h, out_w = output_size
    crop = image.transform((out_w, out_h), Image.Transform.AFFINE, data,
                           resample=Image.Resampling.BILINEAR)
    return np.asarray(crop)


def input_to_heatmap(points: np.ndarray, input_size: tuple[int, int],
                     heatmap_size: tuple[int, int]) -> np.ndarray:
    """(..., 2) x, y from input-crop pixels to heatmap pixels (centres aligned, see module doc)."""
    scale = np.array([heatmap_size[1] / input_size[1], heatmap_size[0] / input_size[0]])
    return (np.asarray(points) + 0.5) * scale - 0.5


def heatmap_to_input(points: np.ndarray, input_size: tuple[int, int],
                     heatmap_size: tuple[int, int]) -> np.ndarray:
    """Inverse of ``input_to_heatmap``."""
    scale = np.array([input_size[1] / heatmap_size[1], input_size[0] / heatmap_size[0]])
    return (np.asarray(points) + 0.5) * scale - 0.5


def gaussian_heatmaps(points: np.ndarray, labelled: np.ndarray, heatmap_size: tuple[int, int],
                      sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Targets (J, h, w) float32 with a peak-1 Gaussian at each joint's sub-pixel position, and
    weights (J,) float32: 0 for a joint that is unlabelled or whose centre lies outside the map.
    """
    h, w = heatmap_size
    x, y = points[:, 0:1], points[:, 1:2]
    inside = (x[:, 0] >= -0.5) & (x[:, 0] <= w - 0.5) & (y[:, 0] >= -0.5) & (y[:, 0] <= h - 0.5)
    weight = (inside & (np.asarray(labelled) > 0)).astype(np.float32)
    gx = np.exp(-((np.arange(w) - x) ** 2) / (2 * sigma**2))
    gy = np.exp(-((np.arange(h) - y) ** 2) / (2 * sigma**2))
    target = (gy[:, :, None] * gx[:, None, :]).astype(np.float32) * weight[:, None, None]
    return target, weight


@dataclass(frozen=True)
class Augmentation:
    """Random scale, rotation and flip for training, as in the common top-down recipes
    (EfficientPose/SimpleBaseline: scale +-25%, rotation +-30 deg with probability 0.6, flip 0.5).
    """

    scale: float = 0.25
    rotation: float = 30.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5

    def sample(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        """(box scale factor, rotation in degrees, flip) for one sample, each uniform in range."""
        scale = float(rng.uniform(1 - self.scale, 1 + self.scale))
        turn = rng.random() < self.rotation_prob
        rotation = float(rng.uniform(-self.rotation, self.rotation)) if turn else 0.0
        flip = bool(rng.random() < self.flip_prob)
        return scale, rotation, flip
