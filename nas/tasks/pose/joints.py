"""Joint sets: names in dataset order, the left/right pairs a horizontal flip swaps, torso size.

Left and right are person-centric (the person's own right), as in every pose dataset.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COCO_FLIP_PAIRS", "COCO_JOINTS", "JOINT_SETS", "LSP_FLIP_PAIRS", "LSP_JOINTS",
           "MPII_FLIP_PAIRS", "MPII_JOINTS", "flip_pairs_for", "torso_size"]

LSP_JOINTS: tuple[str, ...] = (
    "r-ankle", "r-knee", "r-hip", "l-hip", "l-knee", "l-ankle",
    "r-wrist", "r-elbow", "r-shoulder", "l-shoulder", "l-elbow", "l-wrist",
    "neck", "head-top",
)

MPII_JOINTS: tuple[str, ...] = (
    "r-ankle", "r-knee", "r-hip", "l-hip", "l-knee", "l-ankle", "pelvis", "thorax",
    "upper-neck", "head-top", "r-wrist", "r-elbow", "r-shoulder", "l-shoulder", "l-elbow",
    "l-wrist",
)

# COCO's 17 person keypoints in file order (nose, left_eye, right_eye, ...), renamed to this
# module's l-/r- style so that flip pairs and the torso size work as for the other sets.
COCO_JOINTS: tuple[str, ...] = (
    "nose", "l-eye", "r-eye", "l-ear", "r-ear", "l-shoulder", "r-shoulder", "l-elbow",
    "r-elbow", "l-wrist", "r-wrist", "l-hip", "r-hip", "l-knee", "r-knee", "l-ankle", "r-ankle",
)


def flip_pairs_for(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Index pairs (right, left) of joints whose names differ only in the ``r-``/``l-`` prefix."""
    return tuple((i, names.index("l-" + n[2:])) for i, n in enumerate(names)
                 if n.startswith("r-") and "l-" + n[2:] in names)


LSP_FLIP_PAIRS = flip_pairs_for(LSP_JOINTS)
MPII_FLIP_PAIRS = flip_pairs_for(MPII_JOINTS)
COCO_FLIP_PAIRS = flip_pairs_for(COCO_JOINTS)

# Joint sets by count, for data that can produce any of them (the synthetic figures).
JOINT_SETS: dict[int, tuple[str, ...]] = {len(LSP_JOINTS): LSP_JOINTS,
                                          len(MPII_JOINTS): MPII_JOINTS}


def torso_size(joints: np.ndarray, names: tuple[str, ...] = LSP_JOINTS) -> np.ndarray:
    """PCK's normaliser: the mean of the two torso diagonals (r-shoulder to l-hip, l-shoulder to
    r-hip), from the labelled ones; 0 where neither diagonal is labelled.

    Averaging both diagonals keeps the size stable when the body turns (one diagonal shortens
    as the other lengthens in a side view). ``joints`` is (..., J, 3): x, y, labelled.
    """
    joints = np.asarray(joints, dtype=np.float64)
    sizes, counts = 0.0, 0.0
    for a, b in (("r-shoulder", "l-hip"), ("l-shoulder", "r-hip")):
        ja, jb = joints[..., names.index(a), :], joints[..., names.index(b), :]
        ok = (ja[..., 2] > 0) & (jb[..., 2] > 0)
        sizes = sizes + np.where(ok, np.linalg.norm(ja[..., :2] - jb[..., :2], axis=-1), 0.0)
        counts = counts + ok
    return np.where(counts > 0, sizes / np.maximum(counts, 1), 0.0)
