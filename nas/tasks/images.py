"""Image normalisation that every task's readers share (ImageNet statistics, as the backbones'
usual pretraining), kept apart from any one task so that importing one task's readers does not
import another's (``nas.tasks.seg`` needs neither the pose readers nor pycocotools)."""

from __future__ import annotations

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_image"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize_image(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, h, w) float32 with ImageNet mean and std."""
    x = pixels.astype(np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()
