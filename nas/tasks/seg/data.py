"""Segmentation data: readers for CamVid, Cityscapes and Pascal VOC 2012, and ``SegDataset``.

A reader turns a folder and a split into ``SegRecord`` s (image path, label path) and checks, before
any training starts, that every file it names is there. Pixels are checked when a sample is read
(``SegDataset.__getitem__``): decoding every label map up front would take minutes on Cityscapes,
and a bad map is reported by name whenever it is met.

Labels: a dataset stores *raw* values; ``DatasetSpec.lut`` (256 entries, uint8) maps them to train
ids 0..C-1, or to 255, which loss and metrics ignore. A raw value the dataset never uses is an
error, not ignored: a label map from another dataset, or a colour map saved as grey, would
otherwise train on noise without a word.

- CamVid, SegNet's version (``camvid``): ``<split>.txt`` lines
  ``/SegNet/CamVid/<split>/<name>.png /SegNet/CamVid/<split>annot/<name>.png``, resolved by their
  last two components against the root (the lists are used unchanged). 11 classes; raw 11 is
  void -> 255. Splits train, val, test.
- Cityscapes (``cityscapes``): ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``; raw label ids 0..33 map to the 19 train
  ids of cityscapesScripts' ``labels.py``, the other ids to 255. Splits train, val, test (test's
  public label maps hold no classes).
- Pascal VOC 2012 (``voc``): ``ImageSets/Segmentation/<split>.txt`` ids, ``JPEGImages/<id>.jpg``,
  ``SegmentationClass/<id>.png``: palette PNGs whose pixel values are the class indices 0..20,
  255 marking object boundaries (ignored). Splits train, val, trainval.

Samples (``SegDataset``), sizes (height, width): with ``augment``, scale by s ~ U[0.5, 2.0]
(image bilinear, label nearest), take a random ``crop`` window, pad at the bottom and right where
the scaled image is smaller (label 255; image the ImageNet mean, i.e. 0 after normalisation), then
flip left-right with probability 0.5. The draws come from a generator seeded by (seed, epoch,
index), as in ``nas.tasks.pose``: a sample is the same whichever DataLoader worker makes it, and
``set_epoch`` varies it per epoch. Without ``augment``: resized to ``crop`` if given (aspect not
kept; a fixed network input), else kept at its size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# ImageNet normalisation is the same for every task; it lives with pose, the first task.
from nas.tasks.images import normalize_image
from supernets.errors import NasError

__all__ = [
    "CAMVID", "CITYSCAPES", "DATASETS", "IGNORE_INDEX", "SCALE_RANGE", "SPLITS", "VOC",
    "DatasetSpec",
    "SegDataset", "SegRecord", "camvid_records", "cityscapes_records", "dataset_kind",
    "open_seg_dataset", "voc_records",
]

IGNORE_INDEX = 255
# Keeps the augmentation stream apart from any other stream derived from the seed.
_AUGMENT_STREAM = 0x5E6
SCALE_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class SegRecord:
    """One sample on disk: an RGB image and its label map of the same size."""

    image: Path
    label: Path


def _value_ranges(values: Iterable[int]) -> str:
    """[0, 1, 2, 255] -> '0..2, 255': how an error states the valid raw values."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and its metrics need to know about a dataset's labels.

    ``raw_to_train`` lists every raw value the dataset uses and its train id (255: ignored); the
    lookup table and the set of valid raw values are both derived from it.
    """

    name: str
    class_names: tuple[str, ...]
    raw_to_train: dict[int, int] = field(repr=False, compare=False)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def lut(self) -> np.ndarray:
        """(256,) uint8: raw value -> train id; 255 for ignored and for unused raw values."""
        lut = np.full(256, self.ignore_index, dtype=np.uint8)
        lut[list(self.raw_to_train)] = list(self.raw_to_train.values())
        return lut

    @property
    def valid_raw(self) -> np.ndarray:
        """(256,) bool: the raw values this dataset's label maps may hold."""
        valid = np.zeros(256, dtype=bool)
        valid[list(self.raw_to_train)] = True
        return valid

    def raw_values(self) -> str:
        return _value_ranges(self.raw_to_train)

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        return self.lut[raw]


CAMVID = DatasetSpec(
    "camvid",
    ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
     "Pedestrian", "Bicyclist"),
    {**{i: i for i in range(11)}, 11: IGNORE_INDEX})

# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                         23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES = DatasetSpec(
    "cityscapes",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
     "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
     "motorcycle", "bicycle"),
    {i: _CITYSCAPES_TRAIN_IDS.get(i, IGNORE_INDEX) for i in range(34)})

VOC = DatasetSpec(
    "voc",
    ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
     "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
     "train", "tvmonitor"),
    {**{i: i for i in range(21)}, 255: IGNORE_INDEX})

SPLITS = {"camvid": ("train", "val", "test"), "cityscapes": ("train", "val", "test"),
          "voc": ("train", "val", "trainval")}


def _check_split(kind: str, split: str) -> None:
    if split not in SPLITS[kind]:
        raise NasError(f"unknown {kind} split {split!r}; expected one of "
                       f"{', '.join(SPLITS[kind])}")


def _check_files(records: Sequence[SegRecord], source: str | os.PathLike) -> list[SegRecord]:
    """``records`` if every image and label map is there; NasError naming the first missing."""
    if not records:
        raise NasError(f"{source}: no records (expected at least one image/label pair)")
    for r in records:
        if not r.image.is_file():
            raise NasError(f"{r.image}: missing image for label map {r.label} (from {source})")
        if not r.label.is_file():
            raise NasError(f"{r.label}: missing label map for image {r.image} (from {source})")
    return list(records)


def _read_list(path: Path, what: str) -> list[tuple[int, str]]:
    if not path.is_file():
        raise NasError(f"{path}: missing (the list of {what})")
    lines = path.read_text().splitlines()
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def camvid_records(root: str | os.PathLike, split: str) -> list[SegRecord]:
    root = Path(root)
    _check_split("camvid", split)
    listing = root / f"{split}.txt"
    records = []
    for n, line in _read_list(listing, f"CamVid's {split} image/label pairs"):
        paths = line.split()
        if len(paths) != 2:
            raise NasError(f"{listing}:{n}: {line!r}, expected two paths (image, label map)")
        image, label = (root.joinpath(*PurePosixPath(p).parts[-2:]) for p in paths)
        records.append(SegRecord(image, label))
    return _check_files(records, listing)


_CS_IMAGE, _CS_LABEL = "_leftImg8bit.png", "_gtFine_labelIds.png"


def cityscapes_records(root: str | os.PathLike, split: str) -> list[SegRecord]:
    root = Path(root)
    _check_split("cityscapes", split)
    if not (root / "leftImg8bit").is_dir():
        raise NasError(f"{root}: no leftImg8bit/ (Cityscapes' images, leftImg8bit_trainvaltest)")
    if not (root / "gtFine").is_dir():
        raise NasError(f"{root}: has leftImg8bit/ but no gtFine/ (Cityscapes' fine label maps, "
                       "gtFine_trainvaltest)")
    images_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise NasError(f"{folder}: missing (Cityscapes' {split} split, one folder per city)")
    images = sorted(images_dir.glob(f"*/*{_CS_IMAGE}"))
    labels = sorted(labels_dir.glob(f"*/*{_CS_LABEL}"))
    # The reverse of _check_files: a label map whose image is missing.
    have = set(images)
    for label in labels:
        image = images_dir / label.parent.name / (label.name[:-len(_CS_LABEL)] + _CS_IMAGE)
        if image not in have:
            raise NasError(f"{image}: missing image for label map {label}")
    records = [SegRecord(p, labels_dir / p.parent.name / (p.name[:-len(_CS_IMAGE)] + _CS_LABEL))
               for p in images]
    return _check_files(records, images_dir)


def voc_records(root: str | os.PathLike, split: str) -> list[SegRecord]:
    root = Path(root)
    _check_split("voc", split)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    records = []
    for n, line in _read_list(listing, f"Pascal VOC's {split} segmentation ids"):
        if len(line.split()) != 1:
            raise NasError(f"{listing}:{n}: {line!r}, expected one image id per line")
        records.append(SegRecord(root / "JPEGImages" / f"{line}.jpg",
                                 root / "SegmentationClass" / f"{line}.png"))
    return _check_files(records, listing)


DATASETS = {"camvid": (camvid_records, CAMVID), "cityscapes": (cityscapes_records, CITYSCAPES),
            "voc": (voc_records, VOC)}


def dataset_kind(root: str | os.PathLike) -> str:
    """``camvid``, ``cityscapes`` or ``voc``, by the folder's layout (see the module doc)."""
    root = Path(root)
    if (root / "train.txt").is_file() and (root / "trainannot").is_dir():
        return "camvid"
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    what = "no such folder" if not root.exists() else "expected"
    raise NasError(f"{root}: not a segmentation dataset ({what}: CamVid's train.txt + "
                   "trainannot/, Cityscapes' leftImg8bit/ or Pascal VOC's JPEGImages/ + "
                   "SegmentationClass/)")


def open_seg_dataset(root: str | os.PathLike, split: str) -> tuple[list[SegRecord], DatasetSpec]:
    """The records of ``split`` of the dataset in ``root`` (kind found by layout) and its spec."""
    read, spec = DATASETS[dataset_kind(root)]
    return read(root, split), spec


def _decode(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except Exception as e:   # PIL raises several types for a broken file
        raise NasError(f"{path}: does not decode as {what}: {e}") from None


def _as_crop(crop: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    h, w = (crop, crop) if isinstance(crop, int) else crop
    if int(h) < 1 or int(w) < 1:
        raise NasError(f"crop {h}x{w}: expected a height and width of at least 1")
    return int(h), int(w)


class SegDataset(Dataset):
    """``records`` as network samples; ``__getitem__`` returns a dict:

    - ``image``: float32 (3, H, W), normalised with ImageNet mean and std;
    - ``label``: int64 (H, W), train ids 0..C-1 and ``spec.ignore_index`` (255);
    - ``index``: int.

    Missing files are refused here; a label map's mode, size and values are checked when it is
    read. See the module doc for augmentation and resizing.
    """

    def __init__(self, records: Sequence[SegRecord], spec: DatasetSpec,
                 crop: int | tuple[int, int] | None = None, augment: bool = False, seed: int = 0):
        self.records = _check_files(list(records), f"{spec.name} records")
        self.spec = spec
        self.crop = _as_crop(crop)
        if augment and self.crop is None:
            raise NasError("augmentation needs a crop size (random scaling changes the image "
                           "size, and a batch needs one)")
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """Record ``index``: the RGB image and its train-id map ('L'), checked."""
        record = self.records[index]
        image = _decode(record.image, "an image").convert("RGB")
        label = _decode(record.label, "a label map")
        if label.mode not in ("L", "P"):
            raise NasError(f"{record.label}: label map has mode {label.mode}, expected one "
                           "class index per pixel (8-bit 'L' or palette 'P' PNG)")
        if label.size != image.size:
            raise NasError(f"{record.label}: label map is {label.height}x{label.width}, its image "
                           f"{record.image.name} is {image.height}x{image.width} (HxW)")
        raw = np.asarray(label)
        bad = ~self.spec.valid_raw[raw]
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise NasError(f"{record.label}: label value {raw[r, c]} at row {r}, col {c}; "
                           f"{self.spec.name} label maps hold {self.spec.raw_values()}")
        return image, Image.fromarray(self.spec.to_train_ids(raw))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label = self.load(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, self.epoch, index])
            pixels, labels = _augment(image, label, self.crop, self.spec.ignore_index, rng)
        else:
            if self.crop is not None and (image.height, image.width) != self.crop:
                size = (self.crop[1], self.crop[0])
                image = image.resize(size, Image.Resampling.BILINEAR)
                label = label.resize(size, Image.Resampling.NEAREST)
            pixels, labels = normalize_image(np.asarray(image)), np.asarray(label)
        return {"image": torch.from_numpy(pixels),
                "label": torch.from_numpy(labels.astype(np.int64)),
                "index": index}


def _augment(image: Image.Image, label: Image.Image, crop: tuple[int, int], ignore: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scale, crop (padding where smaller) and flip: normalised (3, h, w) image, (h, w) uint8.

    Every draw is made, in a fixed order, whatever the image size: a sample depends only on its
    generator.
    """
    s = rng.uniform(*SCALE_RANGE)
    h, w = max(1, round(image.height * s)), max(1, round(image.width * s))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    label = label.resize((w, h), Image.Resampling.NEAREST)
    ch, cw = crop
    top = int(rng.integers(0, max(h - ch, 0) + 1))
    left = int(rng.integers(0, max(w - cw, 0) + 1))
    flip = bool(rng.random() < 0.5)
    window = (slice(top, top + ch), slice(left, left + cw))
    pixels = np.zeros((3, ch, cw), dtype=np.float32)      # 0 = the mean after normalisation
    labels = np.full((ch, cw), ignore, dtype=np.uint8)
    part = normalize_image(np.asarray(image)[window])
    pixels[:, :part.shape[1], :part.shape[2]] = part
    part = np.asarray(label)[window]
    labels[:part.shape[0], :part.shape[1]] = part
    if flip:
        pixels, labels = pixels[:, :, ::-1].copy(), labels[:, ::-1].copy()
    return pixels, labels
