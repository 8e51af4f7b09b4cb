"""The embedded synthetic dataset: sample layout, determinism, splits, flip consistency."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nas.tasks.pose import (
    LSP_JOINTS,
    MPII_JOINTS,
    PoseDataset,
    SyntheticPose,
    decode_heatmaps,
    make_dataset,
)
from supernets.errors import NasError


def _ds(**kw):
    args = dict(n=8, input_size=(64, 48), heatmap_size=(16, 12), seed=0, augment=True)
    args.update(kw)
    return SyntheticPose(args.pop("n"), args.pop("input_size"), args.pop("heatmap_size"), **args)


def test_sample_has_the_documented_layout():
    ds = _ds()
    s = ds[3]
    assert isinstance(ds, PoseDataset) and len(ds) == 8
    assert s["image"].shape == (3, 64, 48) and s["image"].dtype == torch.float32
    assert s["target"].shape == (14, 16, 12) and s["target"].dtype == torch.float32
    assert s["target_weight"].shape == (14,) and s["joints"].shape == (14, 3)
    assert s["affine"].shape == (2, 3) and s["norm"].shape == () and s["norm"] > 0
    assert s["index"] == 3
    assert ds.num_joints == 14 and ds.joint_names == LSP_JOINTS
    assert ds.input_size == (64, 48) and ds.heatmap_size == (16, 12)
    assert (s["joints"][:, 2] == 1).all()     # every joint known exactly
    assert -3 < s["image"].mean() < 3          # normalised, not 0-255


def test_without_augmentation_every_joint_is_in_the_crop_with_its_peak_there():
    ds = _ds(augment=False)
    for i in range(len(ds)):
        s = ds[i]
        assert (s["target_weight"] == 1).all()
        assert torch.allclose(s["target"].amax(dim=(1, 2)), torch.ones(14), atol=0.25)


def test_same_seed_same_samples_other_seed_other_samples():
    a, b, c = _ds()[5], _ds()[5], _ds(seed=1)[5]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["joints"], b["joints"])
    assert not torch.equal(a["joints"], c["joints"])


def test_augmentation_changes_with_epoch_but_the_figure_does_not():
    ds = _ds()
    first = ds[2]
    ds.set_epoch(1)
    second = ds[2]
    assert not torch.equal(first["affine"], second["affine"])
    # The same figure: joints in the original canvas are the same (up to a left/right swap).
    same = torch.equal(first["joints"], second["joints"])
    xs_first, xs_second = first["joints"][:, 0].sort()[0], second["joints"][:, 0].sort()[0]
    swapped = torch.equal(xs_first, xs_second)
    assert same or swapped


def test_loader_workers_do_not_change_the_samples():
    ds = _ds(n=4)
    serial = next(iter(DataLoader(ds, batch_size=4)))
    parallel = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert torch.equal(serial["image"], parallel["image"])
    assert torch.equal(serial["target"], parallel["target"])


def test_splits_draw_different_figures():
    kw = dict(input_size=32, heatmap_size=8, seed=0, augment=False, synthetic_size=3)
    train = make_dataset(None, "train", **kw)
    val = make_dataset(None, "val", **kw)
    test = make_dataset(None, "test", **kw)
    joints = [d[0]["joints"] for d in (train, val, test)]
    assert not torch.equal(joints[0], joints[1]) and not torch.equal(joints[1], joints[2])


def test_flip_swaps_left_and_right_joints():
    ds = _ds(n=40)
    ds.augmentation = type(ds.augmentation)(scale=0.0, rotation_prob=0.0, flip_prob=0.5)
    plain = _ds(n=40, augment=False)
    flipped_seen = 0
    for i in range(len(ds)):
        s, p = ds[i], plain[i]
        if torch.equal(s["affine"], p["affine"]):
            continue
        flipped_seen += 1
        # The person's right ankle (channel 0) now holds the original left ankle (5).
        assert torch.equal(s["joints"][0], p["joints"][5])
        coords, _ = decode_heatmaps(s["target"][None])
        plain_coords, _ = decode_heatmaps(p["target"][None])
        assert abs(coords[0, 0, 0] - (11 - plain_coords[0, 5, 0])) <= 0.5
    assert flipped_seen > 5


def test_mpii_joint_order_is_available():
    ds = _ds(num_joints=16)
    assert ds.joint_names == MPII_JOINTS and ds[0]["target"].shape == (16, 16, 12)


def test_unsupported_joint_count_is_refused():
    with pytest.raises(NasError, match="14 or 16 joints, not 17"):
        _ds(num_joints=17)


def test_empty_dataset_is_refused():
    with pytest.raises(NasError, match="at least 1"):
        _ds(n=0)


def test_unknown_synthetic_split_is_refused():
    with pytest.raises(NasError, match="unknown split 'dev'"):
        make_dataset(None, "dev", 32, 8, seed=0, augment=False)


def test_limit_caps_the_synthetic_size():
    ds = make_dataset(None, "train", 32, 8, seed=0, augment=False, limit=5)
    assert len(ds) == 5 and isinstance(ds, SyntheticPose)


def test_not_a_dataset_path_is_refused(tmp_path):
    with pytest.raises(NasError, match="not a pose dataset"):
        make_dataset(tmp_path, "train", 32, 8, seed=0, augment=False)
    with pytest.raises(NasError, match="not a pose dataset"):
        make_dataset(tmp_path / "nothing-here", "train", 32, 8, seed=0, augment=False)


def test_index_out_of_range_raises_index_error():
    with pytest.raises(IndexError):
        _ds(n=2)[2]


def test_figures_vary():
    ds = _ds(n=16, augment=False)
    norms = np.array([float(ds[i]["norm"]) for i in range(16)])
    means = np.array([float(ds[i]["image"].mean()) for i in range(16)])
    assert norms.std() > 0 and means.std() > 0.05
