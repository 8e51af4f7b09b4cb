"""The COCO keypoints reader (pycocotools) and OKS AP: tiny files written here, good and bad."""

import json

import numpy as np
import pytest
from PIL import Image

from nas.tasks.pose import COCO_JOINTS, COCOKeypoints, make_dataset
from nas.tasks.pose.coco import keypoint_similarity
from nas.tasks.pose.evaluation import Predictions
from supernets.errors import NasError

W, H = 64, 48
KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]


def _annotation(ann_id, image_id, rng, box=(10, 5, 30, 36)):
    x, y, w, h = box
    kp = np.column_stack([rng.uniform(x + 2, x + w - 2, 17), rng.uniform(y + 2, y + h - 2, 17),
                          rng.choice([1, 2], 17)])
    kp[0] = 0                    # nose not labelled
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": list(box), "area": float(w * h * 0.6), "num_keypoints": 16,
            "keypoints": [round(float(v), 2) for v in kp.ravel()]}


def _coco(n_images=3):
    rng = np.random.default_rng(0)
    images = [{"id": 100 + i, "file_name": f"{i:012d}.jpg", "width": W, "height": H}
              for i in range(n_images)]
    anns = [_annotation(i + 1, 100 + i, rng) for i in range(n_images)]
    # a second person in the first image, a crowd and one without keypoints: both skipped
    anns.append(_annotation(50, 100, rng, box=(30, 10, 20, 30)))
    anns.append({**_annotation(51, 101, rng), "iscrowd": 1})
    anns.append({**_annotation(52, 101, rng), "keypoints": [0] * 51, "num_keypoints": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES,
                            "skeleton": []}]}


def _write_coco(root, data=None, split="val2017"):
    data = data or _coco()
    rng = np.random.default_rng(1)
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    for img in data["images"]:
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / img["file_name"])
    (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(data))
    return root


def _open(root, split="val", **kw):
    args = dict(seed=0, augment=False, num_joints=17)
    args.update(kw)
    return make_dataset(root, split, (32, 24), (8, 6), **args)


def _perfect(ds):
    """Predictions equal to the ground truth, peaks 0.9."""
    joints = np.stack([ds[i]["joints"].numpy() for i in range(len(ds))]).astype(np.float64)
    return Predictions(coords=joints[..., :2].copy(), maxvals=np.full(joints.shape[:2], 0.9),
                       joints=joints, norm=np.ones(len(ds)), index=np.arange(len(ds)), loss=0.0)


def test_reads_a_small_valid_file(tmp_path):
    ds = _open(_write_coco(tmp_path / "coco"))
    assert isinstance(ds, COCOKeypoints) and ds.joint_names == COCO_JOINTS
    assert len(ds) == 4                      # 3 + the second person; crowd and empty skipped
    s = ds[0]
    assert s["image"].shape == (3, 32, 24) and s["target"].shape == (17, 8, 6)
    raw = _coco()["annotations"][0]["keypoints"]
    assert np.allclose(s["joints"].numpy()[:, :2], np.reshape(raw, (17, 3))[:, :2], atol=1e-4)
    # v = 1 (occluded) and 2 (visible) are both labelled; v = 0 is not
    assert s["joints"][0, 2] == 0 and s["target_weight"][0] == 0
    assert (s["joints"][1:, 2] == 1).all()
    assert set(np.unique(ds.visibility[0, 1:])) <= {1, 2}


def test_crop_is_the_box_widened_to_the_aspect_and_padded(tmp_path):
    ds = _open(_write_coco(tmp_path / "coco"))
    affine = ds[0]["affine"].numpy().astype(np.float64)
    x, y, w, h = ds.boxes[0]
    centre = np.array([x + w / 2, y + h / 2])
    assert np.allclose(affine[:, :2] @ centre + affine[:, 2], [11.5, 15.5], atol=1e-4)
    # box 29x35 (clipped as HRNet does), widened to aspect 24/32: 29 x 38.7, padded by 1.25
    assert (w, h) == (29, 35)
    assert affine[0, 0] == pytest.approx(24 / (29 * 1.25), rel=1e-5)
    assert affine[1, 1] == pytest.approx(32 / (29 / 0.75 * 1.25), rel=1e-5)


def test_flip_swaps_left_and_right(tmp_path):
    ds = _open(_write_coco(tmp_path / "coco"), split="val", augment=True)
    plain = _open(tmp_path / "coco")
    for epoch in range(10):
        ds.set_epoch(epoch)
        flipped = [i for i in range(len(ds)) if ds[i]["affine"][0, 0] < 0]
        if flipped:
            break
    i = flipped[0]
    left, right = COCO_JOINTS.index("l-wrist"), COCO_JOINTS.index("r-wrist")
    assert np.allclose(ds[i]["joints"][right].numpy(), plain[i]["joints"][left].numpy())


def test_limit_counts_images(tmp_path):
    ds = _open(_write_coco(tmp_path / "coco"), limit=1)
    assert len(ds) == 2 and set(ds.image_ids) == {100}


def test_annotation_file_given_directly(tmp_path):
    root = _write_coco(tmp_path / "coco")
    ds = make_dataset(root / "annotations" / "person_keypoints_val2017.json", "x", (32, 24),
                      (8, 6), seed=0, augment=False, num_joints=17)
    assert len(ds) == 4 and ds.images == root / "val2017"


def test_perfect_predictions_score_ap_100(tmp_path):
    ds = _open(_write_coco(tmp_path / "coco"))
    result = ds.score(_perfect(ds))
    assert result["metric"] == "AP" and result["mean"] == pytest.approx(100)
    assert result["stats"]["AP50"] == pytest.approx(100)
    assert result["per_joint"]["l-eye"] == pytest.approx(100)
    assert np.isnan(result["per_joint"]["nose"]) and result["per_joint_count"]["nose"] == 0


def test_ap_counts_missed_people(tmp_path):
    """Predicting far off for one of the four people: at every OKS threshold, 3 of 4 are
    found with higher scores than the miss, so precision is 1 up to recall 0.75: AP = 76/101
    (COCO interpolates precision at 101 recall points, 0 to 0.75 inclusive)."""
    ds = _open(_write_coco(tmp_path / "coco"))
    p = _perfect(ds)
    p.coords[3] += 30
    p.maxvals[3] = 0.5
    assert ds.score(p)["mean"] == pytest.approx(100 * 76 / 101, abs=1e-6)


def test_keypoint_similarity_by_hand():
    """One joint at distance d with area a: exp(-d^2 / (2 a (2 sigma)^2))."""
    gt = np.zeros((1, 17, 3))
    gt[..., 2] = 1
    pred = gt[..., :2].copy()
    pred[0, COCO_JOINTS.index("l-hip"), 0] = 5.0
    r = keypoint_similarity(pred, gt, np.array([400.0]))
    sigma = 1.07 / 10
    expected = 100 * np.exp(-25 / (2 * 400 * (2 * sigma) ** 2))
    assert r["per_joint"]["l-hip"] == pytest.approx(expected)
    assert r["per_joint"]["nose"] == pytest.approx(100)


def test_detections_give_one_sample_per_box(tmp_path):
    root = _write_coco(tmp_path / "coco")
    dets = [{"image_id": 100, "bbox": [10, 5, 30, 36], "score": 0.9, "category_id": 1},
            {"image_id": 102, "bbox": [10, 5, 30, 36], "score": 0.8},
            {"image_id": 101, "bbox": [10, 5, 30, 36], "score": 0.01, "category_id": 2}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ds = _open(root, detections=tmp_path / "dets.json")
    assert len(ds) == 2 and list(ds.box_scores) == [0.9, 0.8]
    assert (ds[0]["target_weight"] == 0).all()        # no ground truth for a detection
    result = ds.score(Predictions(coords=np.zeros((2, 17, 2)), maxvals=np.ones((2, 17)),
                                  joints=np.zeros((2, 17, 3)), norm=np.zeros(2),
                                  index=np.arange(2), loss=0.0))
    assert result["mean"] == pytest.approx(0) and "dets.json" in result["normaliser"]


# -- bad input -----------------------------------------------------------------------------------
def _bad(tmp_path, mutate, *words, **kw):
    data = _coco()
    mutate(data)
    root = _write_coco(tmp_path / "coco", data)
    with pytest.raises(NasError) as e:
        _open(root, **kw)
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


def test_missing_annotation_file(tmp_path):
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    with pytest.raises(NasError, match="not a pose dataset"):
        _open(tmp_path / "coco")


def test_missing_split(tmp_path):
    root = _write_coco(tmp_path / "coco")
    with pytest.raises(NasError, match="no COCO train annotation files"):
        _open(root, split="train")


def test_not_json(tmp_path):
    root = _write_coco(tmp_path / "coco")
    (root / "annotations" / "person_keypoints_val2017.json").write_text("{oops")
    with pytest.raises(NasError, match="person_keypoints_val2017.json: not valid JSON"):
        _open(root)


def test_missing_top_level_field(tmp_path):
    _bad(tmp_path, lambda d: d.pop("categories"), "missing field 'categories'")


def test_wrong_keypoint_count_in_category(tmp_path):
    _bad(tmp_path, lambda d: d["categories"][0].update(keypoints=KEYPOINT_NAMES[:14]),
         "14 keypoints, expected 17")


def test_wrong_keypoint_count_in_annotation(tmp_path):
    def mutate(d):
        d["annotations"][1]["keypoints"] = d["annotations"][1]["keypoints"][:48]
    _bad(tmp_path, mutate, "annotation 2", "16 joints, expected 17")


def test_visibility_out_of_range(tmp_path):
    def mutate(d):
        d["annotations"][0]["keypoints"][5] = 3
    _bad(tmp_path, mutate, "annotation 1", "visibility 3")


def test_keypoint_outside_the_image(tmp_path):
    def mutate(d):
        d["annotations"][2]["keypoints"][3 * 9] = 500.0
    _bad(tmp_path, mutate, "image 102", "l-wrist", "outside the 64x48 image")


def test_missing_image(tmp_path):
    data = _coco()
    root = _write_coco(tmp_path / "coco", data)
    (root / "val2017" / data["images"][1]["file_name"]).unlink()
    with pytest.raises(NasError, match=r"000000000001.jpg: missing \(image 101"):
        _open(root)


def test_image_that_does_not_decode(tmp_path):
    root = _write_coco(tmp_path / "coco")
    (root / "val2017" / "000000000002.jpg").write_bytes(b"not an image")
    with pytest.raises(NasError, match=r"000000000002.jpg: does not decode as an image"):
        _open(root)


def test_image_of_another_size_than_annotated(tmp_path):
    data = _coco()
    root = _write_coco(tmp_path / "coco", data)
    data["images"][0]["width"] = 80
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(data))
    with pytest.raises(NasError, match="image 100 .* the file is 64x48, the annotation says 80x48"):
        _open(root)


def test_joint_count_must_match_the_model(tmp_path):
    with pytest.raises(NasError, match="COCO has 17 joints, the model expects 16"):
        _open(_write_coco(tmp_path / "coco"), num_joints=16)


def _bad_detections(tmp_path, dets, *words):
    root = _write_coco(tmp_path / "coco")
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    with pytest.raises(NasError) as e:
        _open(root, detections=tmp_path / "dets.json")
    for w in ("dets.json", *words):
        assert w in str(e.value), str(e.value)


def test_detections_not_a_list(tmp_path):
    _bad_detections(tmp_path, {"image_id": 100}, "expected a JSON list")


def test_detection_missing_field(tmp_path):
    _bad_detections(tmp_path, [{"image_id": 100, "bbox": [1, 1, 5, 5]}], "record 0",
                    "missing field 'score'")


def test_detection_of_an_unknown_image(tmp_path):
    _bad_detections(tmp_path, [{"image_id": 7, "bbox": [1, 1, 5, 5], "score": 1}], "record 0",
                    "image_id 7 is not in")


def test_detection_with_a_bad_box(tmp_path):
    good = {"image_id": 100, "bbox": [1, 1, 5, 5], "score": 1}
    _bad_detections(tmp_path, [good, {**good, "bbox": [1, 1, 0, 5]}], "record 1", "'bbox'")


def test_detections_are_for_coco_only(tmp_path):
    with pytest.raises(NasError, match="apply to COCO data"):
        make_dataset(None, "val", 32, 8, seed=0, augment=False, detections=tmp_path / "d.json")
