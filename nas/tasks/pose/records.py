"""Checks shared by the readers of annotation files: images that decode, joints in range.

Every reader checks the whole split when it is opened, so a broken record stops a command
before any training starts, with the file and record named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from supernets.errors import NasError

__all__ = ["JOINT_MARGIN", "check_image", "check_joints_in_image", "read_json"]

# How far (as a share of the image size) a labelled joint may lie outside its image. Annotators
# mark joints of people cut by the border a little outside it; a joint far outside means the
# coordinates are in another frame (normalised, another image, swapped x/y).
JOINT_MARGIN = 0.25


def read_json(path: str | os.PathLike, what: str):
    """The parsed JSON of ``path``; NasError naming the file when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise NasError(f"{path}: missing ({what})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NasError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise NasError(f"{path}: cannot read ({e.strerror})") from None


def check_image(path: Path, record: str) -> tuple[int, int]:
    """(h, w) of the image at ``path`` after decoding it; NasError naming the record if the file
    is missing or does not decode.

    JPEGs are decoded in draft mode (DCT scaled to 1/8): every byte of the compressed stream is
    still read, so truncation and corruption show, at a fraction of a full decode's cost.
    """
    if not path.is_file():
        raise NasError(f"{path}: missing ({record})")
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except Exception as e:  # noqa: BLE001  PIL raises several types for a broken image
        raise NasError(f"{path}: does not decode as an image ({record}): {e}") from None
    return h, w


def check_joints_in_image(joints: np.ndarray, names: tuple[str, ...], size: tuple[int, int],
                          where: str) -> None:
    """NasError naming the joint when a labelled joint (``joints`` (J, 3): x, y, labelled) is
    not finite or lies more than ``JOINT_MARGIN`` of the image size outside the image."""
    h, w = size
    labelled = joints[:, 2] > 0
    xy = joints[:, :2]
    bad = labelled & ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise NasError(f"{where}: {names[int(np.argmax(bad))]} has a non-finite coordinate")
    margin = JOINT_MARGIN * np.array([w, h])
    lo, hi = -0.5 - margin, np.array([w, h]) - 0.5 + margin
    outside = labelled & ((xy < lo) | (xy > hi)).any(axis=1)
    if outside.any():
        j = int(np.argmax(outside))
        raise NasError(f"{where}: {names[j]} at ({xy[j, 0]:.1f}, {xy[j, 1]:.1f}) lies outside "
                       f"the {w}x{h} image (more than {JOINT_MARGIN:.0%} of its size beyond the "
                       "border)")
