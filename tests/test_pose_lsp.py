"""The Leeds Sports Pose reader: tiny files written here (good and bad), and the real data."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from nas.tasks.pose import LSP, LSP_JOINTS, make_dataset
from supernets.errors import NasError

REAL_LSP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lsp"


def _write_lsp(root: Path, n: int = 4, size=(40, 60), joints: np.ndarray | None = None) -> Path:
    """A valid miniature LSP: n images of size (w, h) and joints.mat (3, 14, n)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    w, h = size
    if joints is None:
        joints = np.zeros((3, 14, n))
        joints[0] = rng.uniform(5, w - 5, (14, n))
        joints[1] = rng.uniform(5, h - 5, (14, n))
        joints[2] = rng.integers(0, 2, (14, n))
    scipy.io.savemat(root / "joints.mat", {"joints": joints})
    for i in range(n):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"im{i + 1:04d}.jpg")
    return root


def _joints(n=4, w=40, h=60):
    rng = np.random.default_rng(1)
    joints = np.zeros((3, 14, n))
    joints[0] = rng.uniform(5, w - 5, (14, n))
    joints[1] = rng.uniform(5, h - 5, (14, n))
    return joints


def _open(root, **kw):
    args = dict(split="all", input_size=32, heatmap_size=8, seed=0, augment=False)
    args.update(kw)
    return LSP(root, args.pop("split"), args.pop("input_size"), args.pop("heatmap_size"), **args)


def test_reads_a_small_valid_dataset(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    ds = _open(root)
    assert len(ds) == 4 and ds.joint_names == LSP_JOINTS
    s = ds[1]
    assert s["image"].shape == (3, 32, 32) and s["target"].shape == (14, 8, 8)
    raw = scipy.io.loadmat(root / "joints.mat")["joints"]
    assert np.allclose(s["joints"][:, :2].numpy(), raw[:2, :, 1].T, atol=1e-4)
    # All joints are annotated: labelled whatever the occlusion flag, which stays available.
    assert (s["joints"][:, 2] == 1).all() and (s["target_weight"] == 1).all()
    assert np.array_equal(ds.occluded[1], raw[2, :, 1] > 0)


def test_split_is_first_half_train_second_half_test_when_small(tmp_path):
    root = _write_lsp(tmp_path / "lsp", n=6)
    assert list(_open(root, split="train").records) == [0, 1, 2]
    assert list(_open(root, split="test").records) == [3, 4, 5]
    assert list(_open(root, split="test", limit=2).records) == [3, 4]


def test_make_dataset_recognises_an_lsp_folder(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    ds = make_dataset(str(root), "test", 32, 8, seed=0, augment=True)
    assert isinstance(ds, LSP) and len(ds) == 2
    with pytest.raises(NasError, match="14 joints, the model expects 16"):
        make_dataset(str(root), "test", 32, 8, seed=0, augment=True, num_joints=16)


def test_augmented_samples_are_deterministic_per_seed_and_epoch(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    a, b = _open(root, augment=True), _open(root, augment=True)
    assert torch.equal(a[2]["image"], b[2]["image"])
    b.set_epoch(3)
    assert not torch.equal(a[2]["affine"], b[2]["affine"])


def test_missing_folder(tmp_path):
    with pytest.raises(NasError, match="not a directory"):
        _open(tmp_path / "absent")


def test_missing_joints_file(tmp_path):
    (tmp_path / "lsp").mkdir()
    with pytest.raises(NasError, match=r"joints\.mat: missing"):
        _open(tmp_path / "lsp")


def test_joints_file_that_is_not_matlab(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    (root / "joints.mat").write_text("not a mat file")
    with pytest.raises(NasError, match=r"joints\.mat: not a readable MATLAB file"):
        _open(root)


def test_joints_file_without_the_joints_variable(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    scipy.io.savemat(root / "joints.mat", {"points": _joints()})
    with pytest.raises(NasError, match=r"no variable 'joints' \(found: points\)"):
        _open(root)


def test_wrong_joint_count(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    scipy.io.savemat(root / "joints.mat", {"joints": np.zeros((3, 16, 4))})
    with pytest.raises(NasError, match="has 16 joints, expected 14"):
        _open(root)


def test_wrong_layout(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    scipy.io.savemat(root / "joints.mat", {"joints": np.zeros((14, 3, 4))})
    with pytest.raises(NasError, match=r"shape \(14, 3, 4\), expected \(3, 14, N\)"):
        _open(root)


def test_non_finite_coordinate_names_the_record(tmp_path):
    joints = _joints()
    joints[1, 4, 2] = np.nan
    root = _write_lsp(tmp_path / "lsp", joints=joints)
    with pytest.raises(NasError, match=r"record 2 \(im0003\.jpg\) l-knee has a non-finite"):
        _open(root)


def test_flag_other_than_0_or_1(tmp_path):
    joints = _joints()
    joints[2, 0, 1] = 2
    root = _write_lsp(tmp_path / "lsp", joints=joints)
    with pytest.raises(NasError, match=r"record 1 \(im0002\.jpg\) r-ankle flag is 2"):
        _open(root)


def test_missing_image_names_file_and_record(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    (root / "images" / "im0003.jpg").unlink()
    with pytest.raises(NasError, match=r"im0003\.jpg: missing \(record 2 of joints\.mat\)"):
        _open(root)


def test_image_that_does_not_decode(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    data = (root / "images" / "im0002.jpg").read_bytes()
    (root / "images" / "im0002.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(NasError, match=r"im0002\.jpg: does not decode as an image \(record 1\)"):
        _open(root)


def test_joint_outside_its_image(tmp_path):
    joints = _joints()
    joints[0, 13, 3] = 45.0          # images are 40 px wide
    root = _write_lsp(tmp_path / "lsp", joints=joints)
    with pytest.raises(NasError, match=r"record 3 \(im0004\.jpg\) head-top at \(45\.0, .*"
                                       r"outside the 40x60 image"):
        _open(root)


def test_joint_on_the_edge_is_accepted(tmp_path):
    joints = _joints()
    joints[1, 0, 0] = 60.04          # like LSP's im0126: a hair past the last row
    _open(_write_lsp(tmp_path / "lsp", joints=joints))


def test_only_the_requested_records_are_checked(tmp_path):
    root = _write_lsp(tmp_path / "lsp", n=6)
    (root / "images" / "im0006.jpg").unlink()
    assert len(_open(root, split="train")) == 3
    with pytest.raises(NasError, match="im0006"):
        _open(root, split="test")


def test_unknown_split(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    with pytest.raises(NasError, match="unknown LSP split 'val'; expected one of train, test, all"):
        _open(root, split="val")


def test_bad_limit(tmp_path):
    root = _write_lsp(tmp_path / "lsp")
    with pytest.raises(NasError, match="limit must be at least 1, not 0"):
        _open(root, limit=0)


@pytest.mark.skipif(not (REAL_LSP / "joints.mat").is_file(), reason="no LSP at ../shared/data/lsp")
def test_real_lsp_standard_split_and_occlusion_flags():
    train = LSP(REAL_LSP, "train", 128, 32, seed=0, augment=False, limit=3)
    test = LSP(REAL_LSP, "test", 128, 32, seed=0, augment=False, limit=3)
    assert list(train.records) == [0, 1, 2] and list(test.records) == [1000, 1001, 1002]
    s = test[0]
    assert s["image"].shape == (3, 128, 128) and (s["target_weight"] == 1).all()
    assert 20 < float(s["norm"]) < 100      # a torso in a ~150 px tall person
    # im1070, a jockey seen from the side: the far (left) leg is flagged 1 = occluded.
    jockey = LSP(REAL_LSP, "test", 128, 32, seed=0, augment=False, limit=70).occluded[69]
    left_leg = [LSP_JOINTS.index(n) for n in ("l-hip", "l-knee", "l-ankle")]
    right_leg = [LSP_JOINTS.index(n) for n in ("r-hip", "r-knee", "r-ankle")]
    assert jockey[left_leg].all() and not jockey[right_leg].any()
