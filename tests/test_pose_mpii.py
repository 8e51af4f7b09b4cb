"""The MPII reader (HRNet/mmpose JSON) and PCKh: tiny files written here, good and bad."""

import json
import math

import numpy as np
import pytest
import scipy.io
from PIL import Image

from nas.tasks.pose import MPII, MPII_JOINTS, make_dataset
from nas.tasks.pose.evaluation import Predictions
from nas.tasks.pose.mpii import HEAD_SIZE_APPROXIMATION
from supernets.errors import NasError

W, H = 60, 80


def _record(i, rng):
    joints = np.column_stack([rng.uniform(10, W - 10, 16), rng.uniform(10, H - 10, 16)]) + 1
    vis = np.ones(16, dtype=int)
    joints[3] = -1       # l-hip not labelled
    vis[3] = 0
    return {"image": f"im{i}.jpg", "center": [W / 2 + 1, H / 2 + 1], "scale": H / 200,
            "joints": joints.round(2).tolist(), "joints_vis": vis.tolist()}


def _write_mpii(root, n=3, layout="hrnet", records=None):
    """A miniature MPII: n records over n images of W x H, in HRNet's or mmpose's layout."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    records = records if records is not None else [_record(i, rng) for i in range(n)]
    for i in range(n):
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"im{i}.jpg")
    folder, names = (("annot", ("train.json", "valid.json")) if layout == "hrnet"
                     else ("annotations", ("mpii_train.json", "mpii_val.json")))
    (root / folder).mkdir()
    for name in names:
        (root / folder / name).write_text(json.dumps(records))
    return root


def _open(root, split="val", **kw):
    args = dict(seed=0, augment=False, num_joints=16)
    args.update(kw)
    return make_dataset(root, split, 32, 8, **args)


@pytest.mark.parametrize("layout", ["hrnet", "mmpose"])
def test_reads_both_layouts(tmp_path, layout):
    root = _write_mpii(tmp_path / "mpii", layout=layout)
    ds = _open(root)
    assert isinstance(ds, MPII) and len(ds) == 3 and ds.joint_names == MPII_JOINTS
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["target"].shape == (16, 8, 8)


def test_coordinates_become_zero_based_and_unlabelled_joints_weigh_nothing(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    raw = json.loads((root / "annot" / "valid.json").read_text())
    s = _open(root)[1]
    assert np.allclose(s["joints"][:, :2].numpy()[[0, 1, 2, 4]],
                       np.array(raw[1]["joints"])[[0, 1, 2, 4]] - 1, atol=1e-4)
    assert s["joints"][3, 2] == 0 and s["target_weight"][3] == 0
    assert (s["target"][3] == 0).all()
    assert s["target_weight"].sum() == 15


def test_crop_comes_from_center_and_scale(tmp_path):
    """HRNet's crop: centre moved down 15 x scale px, a box 200 x scale x 1.25 px tall."""
    root = _write_mpii(tmp_path / "mpii")
    s = _open(root)[0]
    affine = s["affine"].numpy().astype(np.float64)
    scale = H / 200
    centre = np.array([W / 2, H / 2 + 15 * scale])   # 1-based centre W/2+1 -> 0-based W/2
    assert np.allclose(affine[:, :2] @ centre + affine[:, 2], [15.5, 15.5], atol=1e-4)
    assert affine[0, 0] == pytest.approx(32 / (200 * scale * 1.25), rel=1e-5)


def test_json_file_with_images_one_folder_up(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    ds = make_dataset(root / "annot" / "train.json", "ignored", 32, 8, seed=0, augment=False,
                      num_joints=16)
    assert isinstance(ds, MPII) and len(ds) == 3


def _first_flipped(ds):
    """(epoch, index) of the first augmented sample drawn with a flip (negative x scale)."""
    for epoch in range(10):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            if ds[i]["affine"][0, 0] < 0:
                return epoch, i
    raise AssertionError("no flip drawn")


def test_flip_augmentation_swaps_left_and_right_and_is_seeded(tmp_path):
    root = _write_mpii(tmp_path / "mpii", n=3)
    ds = _open(root, split="train", augment=True)
    epoch, i = _first_flipped(ds)
    ds.set_epoch(epoch)
    s, plain = ds[i], _open(root, split="train")[i]
    # channel r-ankle now holds the l-ankle: joints and weights swapped as pairs
    assert np.allclose(s["joints"][0].numpy(), plain["joints"][5].numpy())
    assert s["target_weight"][2] == 0 and s["target_weight"][3] == 1   # l-hip unlabelled -> r-hip
    again = _open(root, split="train", augment=True)
    again.set_epoch(epoch)
    assert np.array_equal(again[i]["image"].numpy(), s["image"].numpy())


def test_limit_takes_the_first_records(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    assert len(_open(root, limit=2)) == 2


def test_joint_count_must_match_the_model(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    with pytest.raises(NasError, match="MPII has 16 joints, the model expects 14"):
        _open(root, num_joints=14)


# -- PCKh ----------------------------------------------------------------------------------------
def _predictions(joints, norm, offset):
    coords = joints[..., :2] + offset
    n = len(joints)
    return Predictions(coords=coords, maxvals=np.ones(joints.shape[:2]), joints=joints,
                       norm=np.asarray(norm, dtype=float), index=np.arange(n), loss=0.0)


def test_pckh_uses_head_boxes_when_given(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    boxes = np.zeros((2, 2, 3))
    boxes[1] = [[10, 10, 10], [20, 20, 20]]   # (10, 20) -> head size 0.6 x sqrt(500)
    scipy.io.savemat(root / "annot" / "gt_valid.mat", {"headboxes_src": boxes})
    ds = _open(root)
    size = 0.6 * math.sqrt(500)
    assert ds[0]["norm"] == pytest.approx(size, rel=1e-5)
    joints = np.stack([ds[i]["joints"].numpy() for i in range(3)]).astype(np.float64)
    # every prediction 0.49 head sizes off: all correct; then 0.51: none
    result = ds.score(_predictions(joints, [size] * 3, [0.49 * size, 0]))
    assert result["mean"] == 100 and result["metric"] == "PCKh@0.5"
    assert "gt_valid.mat" in result["normaliser"]
    assert ds.score(_predictions(joints, [size] * 3, [0.51 * size, 0]))["mean"] == 0


def test_pckh_mean_leaves_out_pelvis_and_thorax_and_groups_joints(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    ds = _open(root)
    joints = np.stack([ds[i]["joints"].numpy() for i in range(3)]).astype(np.float64)
    joints[..., 2] = 1
    coords = joints[..., :2].copy()
    coords[:, MPII_JOINTS.index("pelvis")] += 1000       # wrong, but not in the mean
    coords[:, MPII_JOINTS.index("l-wrist")] += 1000      # wrong: 1 of the 14 joints
    coords[0, MPII_JOINTS.index("r-wrist")] += 1000      # wrong in 1 of 3 samples
    p = Predictions(coords=coords, maxvals=np.ones((3, 16)), joints=joints, norm=np.ones(3) * 10,
                    index=np.arange(3), loss=0.0)
    r = ds.score(p)
    assert r["mean"] == pytest.approx(100 * (14 * 3 - 3 - 1) / (14 * 3))
    assert r["per_joint"]["pelvis"] == 0 and r["per_joint"]["thorax"] == 100
    assert r["groups"]["Wrist"] == pytest.approx((100 * 2 / 3 + 0) / 2)
    assert r["mean_excludes"] == ["pelvis", "thorax"]


def test_head_size_approximation_is_labelled(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    ds = _open(root)
    j = ds[0]["joints"].numpy()
    top, neck = j[MPII_JOINTS.index("head-top"), :2], j[MPII_JOINTS.index("upper-neck"), :2]
    assert ds[0]["norm"] == pytest.approx(0.6 * math.sqrt(2) * np.linalg.norm(top - neck),
                                          rel=1e-4)
    joints = np.stack([ds[i]["joints"].numpy() for i in range(3)]).astype(np.float64)
    result = ds.score(_predictions(joints, [ds[i]["norm"] for i in range(3)], 0))
    assert result["normaliser"] == HEAD_SIZE_APPROXIMATION
    assert HEAD_SIZE_APPROXIMATION.startswith("approximate")


# -- bad input: each names the file and the record ------------------------------------------------
def _bad(tmp_path, mutate, *words, n=3):
    rng = np.random.default_rng(0)
    records = [_record(i, rng) for i in range(n)]
    mutate(records)
    root = _write_mpii(tmp_path / "mpii", n=n, records=records)
    with pytest.raises(NasError) as e:
        _open(root)
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    return message


def test_missing_annotation_file(tmp_path):
    (tmp_path / "mpii" / "annot").mkdir(parents=True)
    (tmp_path / "mpii" / "annot" / "train.json").write_text("[]")
    with pytest.raises(NasError, match="no MPII val annotations"):
        _open(tmp_path / "mpii")


def test_annotation_file_is_not_json(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    (root / "annot" / "valid.json").write_text("[{not json")
    with pytest.raises(NasError, match="valid.json: not valid JSON"):
        _open(root)


def test_annotation_file_is_not_a_list(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    (root / "annot" / "valid.json").write_text("[]")
    with pytest.raises(NasError, match="non-empty JSON list"):
        _open(root)


def test_missing_field(tmp_path):
    _bad(tmp_path, lambda r: r[1].pop("scale"), "valid.json", "record 1", "'scale'")


def test_wrong_joint_count(tmp_path):
    _bad(tmp_path, lambda r: r[2].update(joints=r[2]["joints"][:14]), "record 2", "(im2.jpg)",
         "14 joints, expected 16")


def test_non_numeric_joint(tmp_path):
    def mutate(r):
        r[0]["joints"][4] = ["a", 3]
    _bad(tmp_path, mutate, "record 0", "'joints'")


def test_visibility_other_than_0_or_1(tmp_path):
    def mutate(r):
        r[1]["joints_vis"][0] = 2
    _bad(tmp_path, mutate, "record 1", "joints_vis", "expected 0 or 1")


def test_non_positive_scale(tmp_path):
    _bad(tmp_path, lambda r: r[0].update(scale=0), "record 0", "'scale'", "positive")


def test_joint_outside_the_image(tmp_path):
    def mutate(r):
        r[2]["joints"][9] = [W * 3, 10]
    _bad(tmp_path, mutate, "record 2", "(im2.jpg)", "head-top", "outside the 60x80 image")


def test_missing_image(tmp_path):
    rng = np.random.default_rng(0)
    records = [_record(i, rng) for i in range(3)]
    records[1]["image"] = "gone.jpg"
    root = _write_mpii(tmp_path / "mpii", records=records)
    with pytest.raises(NasError, match=r"gone.jpg: missing \(record 1 of .*valid.json\)"):
        _open(root)


def test_image_that_does_not_decode(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    data = (root / "images" / "im1.jpg").read_bytes()
    (root / "images" / "im1.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(NasError, match=r"im1.jpg: does not decode as an image \(record 1"):
        _open(root)


def test_head_boxes_of_another_count(tmp_path):
    root = _write_mpii(tmp_path / "mpii")
    scipy.io.savemat(root / "annot" / "gt_valid.mat", {"headboxes_src": np.ones((2, 2, 5))})
    with pytest.raises(NasError, match="gt_valid.mat: 5 head boxes for 3 records"):
        _open(root)
