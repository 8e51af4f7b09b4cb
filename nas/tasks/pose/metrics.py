"""From heatmaps to joints in the original image, and PCK.

PCK@t: a joint is correct when its distance to the ground truth is at most t x the sample's
normaliser (``norm``: for LSP and the synthetic data the torso size, the mean of the two
shoulder-to-opposite-hip distances, see ``nas.tasks.pose.joints.torso_size``, from ground truth).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nas.tasks.pose.transforms import apply_affine, heatmap_to_input, invert_affine

__all__ = ["decode_heatmaps", "flip_heatmaps", "pck", "to_image_coords"]


def decode_heatmaps(heatmaps: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, h, w) -> heatmap coordinates (N, J, 2) x, y and peak values (N, J).

    The argmax, moved a quarter pixel towards the higher of its two neighbours along each axis
    (where it has both): the usual cheap sub-pixel refinement.
    """
    hm = heatmaps.detach().float().cpu().numpy() if isinstance(heatmaps, Tensor) \
        else np.asarray(heatmaps, dtype=np.float32)
    n, j, h, w = hm.shape
    flat = hm.reshape(n, j, h * w)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    x, y = idx % w, idx // w
    coords = np.stack([x, y], axis=-1).astype(np.float64)

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return np.take_along_axis(flat, (yy * w + xx)[..., None], axis=2)[..., 0]

    inner_x, inner_y = (x > 0) & (x < w - 1), (y > 0) & (y < h - 1)
    dx = at(y, np.clip(x + 1, 0, w - 1)) - at(y, np.clip(x - 1, 0, w - 1))
    dy = at(np.clip(y + 1, 0, h - 1), x) - at(np.clip(y - 1, 0, h - 1), x)
    coords[..., 0] += np.where(inner_x, 0.25 * np.sign(dx), 0.0)
    coords[..., 1] += np.where(inner_y, 0.25 * np.sign(dy), 0.0)
    return coords, maxvals


def to_image_coords(coords_hm: np.ndarray, affine: np.ndarray | Tensor,
                    input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> np.ndarray:
    """Heatmap coordinates (N, J, 2) -> original-image pixels, back through each sample's
    (N, 2, 3) original -> crop ``affine``."""
    affine = affine.cpu().numpy() if isinstance(affine, Tensor) else np.asarray(affine)
    points = heatmap_to_input(coords_hm, input_size, heatmap_size)
    return np.stack([apply_affine(invert_affine(a), p) for a, p in zip(affine, points)])


def flip_heatmaps(heatmaps: Tensor, flip_pairs, *, shift: bool = False) -> Tensor:
    """Heatmaps predicted on a mirrored input, mirrored back with left/right channels swapped.

    ``shift`` moves them one pixel right, the fix HRNet/SimpleBaseline need because their
    targets put heatmap pixel i at input pixel 4i, which is not mirror-symmetric. Our targets
    align pixel centres (``nas.tasks.pose.transforms``), where mirroring is exact, so the default is
    no shift.
    """
    flipped = heatmaps.flip(-1)
    order = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    flipped = flipped[:, order]
    if shift:
        flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=-1)
    return flipped


def pck(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray, threshold: float = 0.2,
        joint_names: tuple[str, ...] | None = None) -> dict:
    """PCK in percent: ``mean`` over all counted joints, ``per_joint`` {name: PCK}, ``count``
    (joints counted) and ``per_joint_count``.

    ``pred`` (N, J, 2) and ``gt`` (N, J, 3: x, y, labelled) in the same pixels, ``norm`` (N,).
    Joints with labelled == 0, and samples with norm <= 0, are not counted; a joint never
    counted has PCK NaN.
    """
    pred, gt, norm = np.asarray(pred), np.asarray(gt), np.asarray(norm, dtype=np.float64)
    n, j = gt.shape[:2]
    names = joint_names or tuple(f"joint{i}" for i in range(j))
    if len(names) != j:
        raise ValueError(f"pck: {len(names)} joint names for {j} joints")
    counted = (gt[..., 2] > 0) & (norm[:, None] > 0)
    scale = np.where(norm > 0, norm, 1.0)[:, None]
    dist = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1) / scale
    correct = (dist <= threshold) & counted
    per_count = counted.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = 100.0 * correct.sum(axis=0) / per_count
    total = int(counted.sum())
    return {
        "threshold": threshold,
        "mean": float(100.0 * correct.sum() / total) if total else float("nan"),
        "per_joint": {name: float(v) for name, v in zip(names, per_joint)},
        "count": total,
        "per_joint_count": {name: int(c) for name, c in zip(names, per_count)},
    }
