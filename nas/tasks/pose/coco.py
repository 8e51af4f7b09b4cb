"""COCO person keypoints (Lin et al., ECCV 2014), top-down: one person box per sample.

The annotation file is COCO's JSON (``images``, ``annotations``, ``categories``), read with
pycocotools; each person annotation has ``keypoints``, 17 x (x, y, v) in ``COCO_JOINTS`` order,
v = 0 not labelled, 1 labelled but occluded, 2 visible. Occluded and visible joints are both
labelled (target weight 1); ``COCOKeypoints.visibility`` keeps v.

Samples come from boxes:

- ground-truth boxes (training, and evaluation "with GT boxes"): every annotation that is not a
  crowd and has at least one labelled keypoint, its box clipped to the image (as HRNet does);
- or a detections file: a JSON list of ``{"image_id", "bbox": [x, y, w, h], "score"}``
  (``category_id``, if present, must be the person category), each box one sample, kept when
  its score is at least ``det_score_threshold``. Evaluation on detections is the COCO protocol;
  no OKS-NMS is applied to the predictions.

The crop is the box, widened to the input's aspect and padded by 1.25 (HRNet's ``_box2cs``).
Coordinates are used as given (COCO's convention is within half a pixel of ours).

Layouts (``COCOKeypoints.paths``): ``ROOT/annotations/person_keypoints_<split>*.json`` (e.g.
``person_keypoints_val2017.json``) with images in ``ROOT/<split>2017/`` or
``ROOT/images/<split>2017/`` (the folder named like the file's suffix); or the annotation file
itself, its image folder looked for beside it, one folder up, or in ``images/`` there.

``limit`` counts images: all boxes of the first ``limit`` images (by position in the file), so
that AP on a subset still compares every prediction with every person of its images.

Metric (``score``): OKS AP by pycocotools' ``COCOeval`` on keypoints (AP, AP50, AP75, APm, APl,
AR...), restricted to the images of the dataset, each prediction scored as the box score x the
mean of its heatmap peaks above 0.2 (HRNet's rescoring). Per joint, with ground-truth boxes:
the mean keypoint similarity exp(-d^2 / (2 area (2 sigma_j)^2)), the per-joint term of OKS.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from nas.tasks.pose.dataset import PoseDataset
from nas.tasks.pose.joints import COCO_JOINTS
from nas.tasks.pose.records import check_image, check_joints_in_image, read_json
from nas.tasks.pose.transforms import Augmentation
from supernets.errors import NasError

__all__ = ["COCO_STATS", "COCOKeypoints", "is_coco_root"]

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
_PREFIX = "person_keypoints_"
_PEAK_THRESHOLD = 0.2   # HRNet: joints whose heatmap peak passes this score the person


def is_coco_root(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``annotations/person_keypoints_*.json``."""
    return path.is_dir() and any((path / "annotations").glob(f"{_PREFIX}*.json"))


def _quiet(fn, *args):
    """pycocotools prints progress to stdout; keep it off a ``--json`` output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


class COCOKeypoints(PoseDataset):
    """Person boxes of a COCO keypoints file (see module doc), checked when opened: the file's
    structure, 17 keypoints per person, labelled keypoints inside their image, each image used
    present, decodable and of the size the file says; the detections file's records."""

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike,
                 input_size: int | tuple[int, int] = (256, 192),
                 heatmap_size: int | tuple[int, int] = (64, 48), *, seed: int, augment: bool,
                 sigma: float = 2.0, limit: int | None = None,
                 detections: str | os.PathLike | None = None, det_score_threshold: float = 0.0,
                 augmentation: Augmentation = Augmentation()):
        super().__init__(input_size, heatmap_size, joint_names=COCO_JOINTS, seed=seed,
                         augment=augment, sigma=sigma, augmentation=augmentation)
        self.annotations, self.images = Path(annotations), Path(images)
        if limit is not None and limit < 1:
            raise NasError(f"limit must be at least 1, not {limit}")
        data = read_json(self.annotations, "COCO keypoints annotation file")
        self.person_id = _check_structure(data, self.annotations)
        self.coco = COCO()
        self.coco.dataset = data
        _quiet(self.coco.createIndex)
        if not self.images.is_dir():
            raise NasError(f"{self.images}: missing (the image folder for {self.annotations})")
        self.detections = Path(detections) if detections else None
        boxes = (self._detection_boxes(det_score_threshold) if self.detections
                 else self._ground_truth_boxes())
        order = {img["id"]: i for i, img in enumerate(data["images"])}
        boxes.sort(key=lambda b: order[b[0]])
        if limit is not None:
            keep = sorted({b[0] for b in boxes}, key=order.get)[:limit]
            boxes = [b for b in boxes if b[0] in set(keep)]
        self.image_ids = np.array([b[0] for b in boxes], dtype=np.int64)
        self.boxes = np.array([b[1] for b in boxes], dtype=np.float64).reshape(-1, 4)
        self.box_scores = np.array([b[2] for b in boxes], dtype=np.float64)
        self.areas = np.array([b[3] for b in boxes], dtype=np.float64)
        keypoints = np.array([b[4] for b in boxes], dtype=np.float64).reshape(-1, 17, 3)
        self.visibility = keypoints[..., 2].astype(np.int64)
        self._joints = keypoints.copy()
        self._joints[..., 2] = (self.visibility > 0).astype(np.float64)
        self._check_images()

    @staticmethod
    def paths(data: str | os.PathLike, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) for a root folder and ``split`` (``val`` finds
        ``person_keypoints_val2017.json``) or for an annotation file (the split itself)."""
        data = Path(data)
        if data.is_dir():
            found = sorted((data / "annotations").glob(f"{_PREFIX}{split}*.json"))
            if len(found) != 1:
                what = "no" if not found else f"{len(found)}"
                raise NasError(f"{data}: {what} COCO {split} annotation files (expected one "
                               f"annotations/{_PREFIX}{split}*.json)")
            annotations = found[0]
        else:
            annotations = data
        name = annotations.stem[len(_PREFIX):] if annotations.stem.startswith(_PREFIX) else ""
        here, up = annotations.parent, annotations.parent.parent
        candidates = ([here / name, up / name, up / "images" / name, here / "images" / name]
                      if name else []) + [here / "images", up / "images"]
        images = next((p for p in candidates if p.is_dir()), candidates[0])
        return annotations, images

    def _ground_truth_boxes(self) -> list[tuple]:
        boxes = []
        for ann in self.coco.dataset["annotations"]:
            if ann["category_id"] != self.person_id or ann.get("iscrowd", 0):
                continue
            if not any(v > 0 for v in ann["keypoints"][2::3]):
                continue
            box = self._clip_box(ann["image_id"], ann["bbox"])
            if box is not None:
                boxes.append((ann["image_id"], box, 1.0, float(ann["area"]), ann["keypoints"]))
        if not boxes:
            raise NasError(f"{self.annotations}: no person annotation with a labelled keypoint")
        return boxes

    def _detection_boxes(self, threshold: float) -> list[tuple]:
        records = read_json(self.detections, "detections file")
        if not isinstance(records, list):
            raise NasError(f"{self.detections}: expected a JSON list of {{image_id, bbox, "
                           "score}} records")
        boxes = []
        for i, r in enumerate(records):
            where = f"{self.detections}: record {i}"
            if not isinstance(r, dict):
                raise NasError(f"{where}: expected an object with image_id, bbox, score")
            for key in ("image_id", "bbox", "score"):
                if key not in r:
                    raise NasError(f"{where}: missing field {key!r}")
            if r["image_id"] not in self.coco.imgs:
                raise NasError(f"{where}: image_id {r['image_id']!r} is not in "
                               f"{self.annotations}")
            if not _is_box(r["bbox"]):
                raise NasError(f"{where}: field 'bbox' = {r['bbox']!r}: expected [x, y, w, h] "
                               "with positive w and h")
            if not isinstance(r["score"], int | float) or not np.isfinite(r["score"]):
                raise NasError(f"{where}: field 'score' = {r['score']!r}: expected a number")
            if r.get("category_id", self.person_id) != self.person_id or r["score"] < threshold:
                continue
            box = self._clip_box(r["image_id"], r["bbox"])
            if box is not None:
                boxes.append((r["image_id"], box, float(r["score"]), 0.0, [0.0] * 51))
        if not boxes:
            raise NasError(f"{self.detections}: no person detection with score >= {threshold:g}")
        return boxes

    def _clip_box(self, image_id: int, bbox) -> list[float] | None:
        """HRNet's clean-up: the box clipped to its image; None if nothing is left."""
        img = self.coco.imgs[image_id]
        x, y, w, h = bbox
        x1, y1 = max(0.0, x), max(0.0, y)
        x2 = min(img["width"] - 1.0, x1 + max(0.0, w - 1))
        y2 = min(img["height"] - 1.0, y1 + max(0.0, h - 1))
        if x2 < x1 or y2 < y1 or w * h <= 0:
            return None
        return [x1, y1, x2 - x1, y2 - y1]

    def _check_images(self) -> None:
        checked: set[int] = set()
        for i, image_id in enumerate(self.image_ids):
            img = self.coco.imgs[int(image_id)]
            where = f"{self.annotations}: image {image_id} ({img['file_name']})"
            if image_id not in checked:
                size = check_image(self.images / img["file_name"], f"image {image_id} of "
                                   f"{self.annotations}")
                if size != (img["height"], img["width"]):
                    raise NasError(f"{where}: the file is {size[1]}x{size[0]}, the annotation "
                                   f"says {img['width']}x{img['height']}")
                checked.add(int(image_id))
            check_joints_in_image(self._joints[i], COCO_JOINTS, (img["height"], img["width"]),
                                  where)

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        img = self.coco.imgs[int(self.image_ids[index])]
        with Image.open(self.images / img["file_name"]) as im:
            return im.convert("RGB"), self._joints[index]

    def crop_box(self, index: int, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y, w, h = self.boxes[index]
        center = np.array([x + w / 2, y + h / 2])
        aspect = self.input_size[1] / self.input_size[0]
        if w > aspect * h:
            h = w / aspect
        else:
            w = h * aspect
        return center, np.array([w, h]) * self.padding

    def normaliser(self, index: int, joints: np.ndarray) -> float:
        """sqrt(area): OKS's scale (not a PCK normaliser; COCO is scored by ``score``)."""
        return float(np.sqrt(self.areas[index]))

    def score(self, predictions) -> dict:
        """OKS AP over the dataset's images, and per-joint keypoint similarity (GT boxes)."""
        results = []
        for coords, peaks, index in zip(predictions.coords, predictions.maxvals,
                                        predictions.index):
            good = peaks > _PEAK_THRESHOLD
            quality = float(peaks[good].mean()) if good.any() else 0.0
            keypoints = np.column_stack([coords, peaks]).ravel()
            results.append({"image_id": int(self.image_ids[index]),
                            "category_id": self.person_id,
                            "keypoints": [float(v) for v in keypoints],
                            "score": float(self.box_scores[index]) * quality})
        stats = dict.fromkeys(COCO_STATS, float("nan"))
        if results:
            detections = _quiet(self.coco.loadRes, results)
            evaluation = COCOeval(self.coco, detections, "keypoints")
            evaluation.params.imgIds = sorted({int(i) for i in self.image_ids})
            _quiet(evaluation.evaluate)
            _quiet(evaluation.accumulate)
            _quiet(evaluation.summarize)
            stats = {k: (100.0 * float(v) if v >= 0 else float("nan"))
                     for k, v in zip(COCO_STATS, evaluation.stats)}
        result = {"metric": "AP", "mean": stats["AP"], "stats": stats,
                  "normaliser": "OKS, boxes from " + (self.detections.name if self.detections
                                                      else "the ground truth")}
        if self.detections is None:
            result.update(keypoint_similarity(predictions.coords, predictions.joints,
                                              self.areas[predictions.index]))
        else:
            result.update(per_joint={}, per_joint_count={})
        return result


def keypoint_similarity(pred: np.ndarray, gt: np.ndarray, area: np.ndarray) -> dict:
    """Per joint, the mean over labelled joints of COCO's keypoint similarity (percent):
    exp(-d^2 / (2 area (2 sigma_j)^2)) with COCOeval's per-keypoint sigmas."""
    sigmas = np.asarray(Params(iouType="keypoints").kpt_oks_sigmas)
    d2 = ((pred[..., :2] - gt[..., :2]) ** 2).sum(-1)
    ks = np.exp(-d2 / ((2 * sigmas) ** 2 * 2 * (np.asarray(area)[:, None] + np.spacing(1))))
    labelled = gt[..., 2] > 0
    counts = labelled.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = 100.0 * (ks * labelled).sum(axis=0) / counts
    return {"per_joint": {n: float(v) for n, v in zip(COCO_JOINTS, per_joint)},
            "per_joint_count": {n: int(c) for n, c in zip(COCO_JOINTS, counts)},
            "per_joint_metric": "OKS/joint"}


def _is_box(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, int | float) and np.isfinite(v) for v in value)
            and value[2] > 0 and value[3] > 0)


def _check_structure(data, path: Path) -> int:
    """NasError naming the field or annotation that breaks COCO's layout; the person id."""
    if not isinstance(data, dict):
        raise NasError(f"{path}: expected a COCO JSON object with images, annotations, "
                       "categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise NasError(f"{path}: missing field {key!r} (a list), as in COCO's "
                           f"{_PREFIX}*.json")
    persons = [c for c in data["categories"] if isinstance(c, dict) and "keypoints" in c]
    if not persons:
        raise NasError(f"{path}: no category with 'keypoints' (COCO person keypoints)")
    person = persons[0]
    if len(person["keypoints"]) != len(COCO_JOINTS):
        raise NasError(f"{path}: category {person.get('name', person.get('id'))!r} has "
                       f"{len(person['keypoints'])} keypoints, expected {len(COCO_JOINTS)}")
    for i, img in enumerate(data["images"]):
        for key in ("id", "file_name", "width", "height"):
            if not isinstance(img, dict) or key not in img:
                raise NasError(f"{path}: images[{i}]: missing field {key!r}")
    images = {img["id"] for img in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else i}"
        for key in ("id", "image_id", "category_id", "bbox", "area"):
            if not isinstance(ann, dict) or key not in ann:
                raise NasError(f"{where}: missing field {key!r}")
        if ann["category_id"] != person["id"]:
            continue
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, int | float) for v in bbox)):
            raise NasError(f"{where}: field 'bbox' = {bbox!r}: expected [x, y, w, h]")
        if ann["image_id"] not in images:
            raise NasError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        kp = ann.get("keypoints")
        if not isinstance(kp, list) or len(kp) != 3 * len(COCO_JOINTS):
            n = len(kp) / 3 if isinstance(kp, list) else 0
            raise NasError(f"{where}: 'keypoints' holds {n:g} joints, expected "
                           f"{len(COCO_JOINTS)} (x, y, v) triples")
        if not all(isinstance(v, int | float) for v in kp):
            raise NasError(f"{where}: 'keypoints' holds a value that is not a number")
        bad = [v for v in kp[2::3] if v not in (0, 1, 2)]
        if bad:
            raise NasError(f"{where}: keypoint visibility {bad[0]!r}, expected 0, 1 or 2")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("num_keypoints", sum(v > 0 for v in kp[2::3]))
    return person["id"]
