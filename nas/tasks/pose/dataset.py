"""The base of every pose reader: original image + joints in, network-ready sample out.

A reader only says how to get record ``index`` (``load``), and optionally where the person is
(``crop_box``, default: around the labelled joints) and what PCK divides by (``normaliser``);
this class crops the person, applies augmentation and draws the targets, so every dataset yields
exactly the same sample layout.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from nas.tasks.pose.joints import flip_pairs_for, torso_size
from nas.tasks.pose.transforms import (
    Augmentation,
    apply_affine,
    crop_affine,
    gaussian_heatmaps,
    input_to_heatmap,
    normalize_image,
    person_box,
    warp_image,
)

__all__ = ["PoseDataset", "as_size"]

# Keeps the augmentation stream apart from any other stream a reader derives from the seed.
_AUGMENT_STREAM = 0xA06


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``128`` or ``(128, 96)`` -> (h, w)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class PoseDataset(Dataset):
    """Single-person top-down samples. ``__getitem__`` returns a dict:

    - ``image``: float32 (3, H, W), the person crop normalised with ImageNet mean/std;
    - ``target``: float32 (J, h, w), a Gaussian per joint (peak 1, ``sigma`` heatmap pixels);
    - ``target_weight``: float32 (J,), 0 for joints unlabelled or outside the crop;
    - ``joints``: float32 (J, 3), x, y, labelled, in ORIGINAL image pixels (with a flip, the
      left/right pairs are swapped here as in ``target``, so channel j always matches joints[j]);
    - ``affine``: float32 (2, 3), original image -> input crop;
    - ``norm``: float32 scalar, PCK's normaliser in original pixels (``normaliser``: the torso
      size; MPII: the head size);
    - ``index``: int.

    Augmentation (if ``augment``) draws from a generator seeded by (seed, epoch, index): a sample
    is the same whichever DataLoader worker makes it. Call ``set_epoch`` to vary it per epoch.
    """

    def __init__(self, input_size: int | tuple[int, int], heatmap_size: int | tuple[int, int], *,
                 joint_names: tuple[str, ...], seed: int, augment: bool, sigma: float = 2.0,
                 augmentation: Augmentation = Augmentation(), padding: float = 1.25):
        self.input_size = as_size(input_size)
        self.heatmap_size = as_size(heatmap_size)
        self.joint_names = tuple(joint_names)
        self.flip_pairs = flip_pairs_for(self.joint_names)
        self.seed = seed
        self.augment = augment
        self.sigma = sigma
        self.augmentation = augmentation
        self.padding = padding
        self.epoch = 0
        self._flip_order = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            self._flip_order[a], self._flip_order[b] = b, a

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """Record ``index``: the RGB image and its joints (J, 3) x, y, labelled in its pixels."""
        raise NotImplementedError

    def crop_box(self, index: int, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre (x, y) and size (w, h) of record ``index``'s crop before augmentation: by
        default around its labelled joints; readers with a person box (MPII, COCO) use that."""
        h, w = self.input_size
        return person_box(joints, aspect=w / h, padding=self.padding)

    def normaliser(self, index: int, joints: np.ndarray) -> float:
        """PCK's normaliser for record ``index`` (``norm``): the torso size unless the reader
        says otherwise (MPII: the head size, for PCKh)."""
        return float(torso_size(joints, self.joint_names))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, joints = self.load(index)
        joints = np.asarray(joints, dtype=np.float64)
        norm = self.normaliser(index, joints)
        center, box = self.crop_box(index, joints)
        scale, rotation, flip = 1.0, 0.0, False
        if self.augment:
            rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, self.epoch, index])
            scale, rotation, flip = self.augmentation.sample(rng)
        affine = crop_affine(center, box * scale, self.input_size, rotation, flip)
        if flip:
            joints = joints[self._flip_order]
        points = input_to_heatmap(apply_affine(affine, joints[:, :2]), self.input_size,
                                  self.heatmap_size)
        target, weight = gaussian_heatmaps(points, joints[:, 2], self.heatmap_size, self.sigma)
        return {
            "image": torch.from_numpy(normalize_image(warp_image(image, affine, self.input_size))),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "joints": torch.from_numpy(joints.astype(np.float32)),
            "affine": torch.from_numpy(affine.astype(np.float32)),
            "norm": torch.tensor(norm, dtype=torch.float32),
            "index": index,
        }
