"""Decoding, PCK, loss and evaluation on cases computable by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nas.tasks.pose import (
    LSP_FLIP_PAIRS,
    LSP_JOINTS,
    SyntheticPose,
    decode_heatmaps,
    evaluate,
    flip_heatmaps,
    heatmap_loss,
    pck,
    to_image_coords,
    torso_size,
)


def _gt(n=2, joints=14, labelled=1.0):
    rng = np.random.default_rng(0)
    gt = np.concatenate([rng.uniform(0, 100, (n, joints, 2)), np.full((n, joints, 1), labelled)],
                        axis=-1)
    return gt


def test_decode_takes_the_argmax_and_a_quarter_step_to_the_higher_neighbour():
    hm = torch.zeros(1, 3, 8, 10)
    hm[0, 0, 4, 6] = 1.0
    hm[0, 0, 4, 7] = 0.5      # right neighbour higher -> +0.25 in x
    hm[0, 0, 3, 6] = 0.2      # upper neighbour higher -> -0.25 in y
    hm[0, 1, 2, 3] = 1.0      # symmetric: no shift
    hm[0, 2, 3, 9] = 1.0      # on the right border: no x shift; lower neighbour higher: +0.25 y
    hm[0, 2, 4, 9] = 0.5
    hm[0, 2, 3, 8] = 0.9
    coords, maxvals = decode_heatmaps(hm)
    assert coords.shape == (1, 3, 2) and maxvals.shape == (1, 3)
    assert np.allclose(coords[0], [[6.25, 3.75], [3.0, 2.0], [9.0, 3.25]])
    assert np.allclose(maxvals[0], [1.0, 1.0, 1.0])


def test_perfect_prediction_scores_100():
    gt = _gt()
    result = pck(gt[..., :2], gt, np.array([50.0, 50.0]), joint_names=LSP_JOINTS)
    assert result["mean"] == 100.0 and result["count"] == 28
    assert set(result["per_joint"]) == set(LSP_JOINTS)
    assert all(v == 100.0 for v in result["per_joint"].values())


def test_a_joint_shifted_past_the_threshold_scores_0_and_within_it_100():
    gt = _gt()
    pred = gt[..., :2].copy()
    pred[:, 0, 0] += 10.1      # r-ankle: 10.1 px > 0.2 * 50
    pred[:, 1, 1] += 9.9       # r-knee: 9.9 px <= 0.2 * 50
    result = pck(pred, gt, np.array([50.0, 50.0]), joint_names=LSP_JOINTS)
    assert result["per_joint"]["r-ankle"] == 0.0 and result["per_joint"]["r-knee"] == 100.0
    assert math.isclose(result["mean"], 100 * 13 / 14)


def test_unlabelled_joints_and_unnormalisable_samples_are_not_counted():
    gt = _gt(n=3)
    gt[0, 2, 2] = 0                    # r-hip unlabelled in sample 0
    pred = gt[..., :2] + 1000.0        # everything wrong
    pred[0, 2] = gt[0, 2, :2]
    result = pck(pred, gt, np.array([50.0, 0.0, 50.0]), joint_names=LSP_JOINTS)
    assert result["count"] == 2 * 14 - 1
    assert result["per_joint_count"]["r-hip"] == 1 and result["per_joint"]["r-hip"] == 0.0
    assert result["mean"] == 0.0


def test_torso_size_is_the_mean_of_the_two_shoulder_to_opposite_hip_distances():
    joints = np.zeros((14, 3))
    joints[:, 2] = 1
    idx = {name: i for i, name in enumerate(LSP_JOINTS)}
    joints[idx["r-shoulder"], :2] = [0, 0]
    joints[idx["l-hip"], :2] = [30, 40]         # 50
    joints[idx["l-shoulder"], :2] = [10, 0]
    joints[idx["r-hip"], :2] = [10, 30]         # 30
    assert torso_size(joints) == 40.0
    joints[idx["r-hip"], 2] = 0                 # that diagonal unlabelled: the other alone
    assert torso_size(joints) == 50.0
    assert torso_size(np.stack([joints, joints])).shape == (2,)


def test_flip_heatmaps_mirrors_back_and_swaps_left_and_right():
    hm = torch.zeros(1, 14, 8, 8)
    hm[0, 0, 2, 1] = 1.0                       # r-ankle at x=1 in the mirrored image
    back = flip_heatmaps(hm, LSP_FLIP_PAIRS)
    assert back[0, 5, 2, 6] == 1.0             # -> l-ankle at x = 8 - 1 - 1
    assert torch.equal(flip_heatmaps(back, LSP_FLIP_PAIRS), hm)
    shifted = flip_heatmaps(hm, LSP_FLIP_PAIRS, shift=True)
    assert shifted[0, 5, 2, 7] == 1.0


def test_loss_is_half_the_weighted_mse_averaged_over_joints():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    target[:, 0] = 1.0                                       # joint 0: MSE 1
    weight = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    assert heatmap_loss(pred, target, weight).item() == pytest.approx(0.5 * 1 / 6)
    assert heatmap_loss(target, target, weight).item() == 0.0


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        heatmap_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="target_weight"):
        heatmap_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.ones(2))


def test_decoded_targets_map_back_to_the_original_joints():
    ds = SyntheticPose(4, (64, 48), (16, 12), seed=1, augment=True, sigma=1.5)
    for i in range(len(ds)):
        s = ds[i]
        coords, _ = decode_heatmaps(s["target"][None])
        back = to_image_coords(coords, s["affine"][None], ds.input_size, ds.heatmap_size)[0]
        err = np.linalg.norm(back - s["joints"][:, :2].numpy(), axis=1)
        inside = s["target_weight"].numpy() > 0
        pixel = 1 / float(s["affine"][0, :2].norm())    # original pixels per input pixel
        assert (err[inside] <= 4 * 0.5 * pixel + 1e-3).all()   # half a heatmap pixel at most


class _Oracle(nn.Module):
    """A perfect pose model: replays the dataset's targets in DataLoader order. With ``flip``,
    every second call is the mirrored input and gets the mirrored targets."""

    def __init__(self, dataset, flip):
        super().__init__()
        self.targets = torch.stack([dataset[i]["target"] for i in range(len(dataset))])
        self.flip_pairs, self.flip = dataset.flip_pairs, flip
        self.calls, self.pos = 0, 0

    def forward(self, images):
        mirrored = self.flip and self.calls % 2 == 1
        self.calls += 1
        if mirrored:
            return flip_heatmaps(self.targets[self.pos - len(images):self.pos], self.flip_pairs)
        self.pos += len(images)
        return self.targets[self.pos - len(images):self.pos]


@pytest.mark.parametrize("flip", [False, True])
def test_evaluate_scores_a_perfect_model_100(flip):
    ds = SyntheticPose(6, (64, 64), (16, 16), seed=2, augment=False)
    result = evaluate(_Oracle(ds, flip), ds, batch_size=4, flip=flip)
    assert result["mean"] == 100.0 and result["count"] == 6 * 14 and result["loss"] == 0.0
    assert result["flip"] is flip


def test_evaluate_restores_training_mode_and_reports_every_joint():
    ds = SyntheticPose(3, (32, 32), (8, 8), seed=0, augment=False)
    model = nn.Sequential(nn.Conv2d(3, 14, 3, stride=4, padding=1))
    model.train()
    result = evaluate(model, ds, batch_size=2)
    assert model.training
    assert 0.0 <= result["mean"] <= 100.0 and len(result["per_joint"]) == 14
    assert result["threshold"] == 0.2 and result["loss"] > 0


def test_evaluate_accepts_a_subset():
    ds = SyntheticPose(6, (64, 64), (16, 16), seed=2, augment=False)
    subset = torch.utils.data.Subset(ds, [0, 1, 2, 3])
    assert evaluate(_Oracle(ds, False), subset, batch_size=2)["count"] == 4 * 14
