"""Segmentation as a task: synthetic data, loss, mIoU evaluation, and the CLI end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.cli import main
from nas.tasks import get_task
from nas.tasks.seg.synthetic import SyntheticSeg, synthetic_spec
from nas.tasks.seg.task import SEG, evaluate_model, segmentation_loss
from supernets.errors import NasError
from supernets.space import SearchSpace
from supernets.spec import Skeleton, Stage

REAL_CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


def tiny_skeleton(classes=4):
    return Skeleton(input_size=(32, 48), num_joints=classes, stem_width=8,
                    stages=(Stage(8, 1, 2), Stage(16, 1, 2), Stage(16, 1, 2)), task="seg")


def run_cli(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr()


def test_synthetic_scenes_are_seeded_labelled_and_flip_with_the_epoch():
    a, b = SyntheticSeg(4, (32, 48), 5, seed=1), SyntheticSeg(4, (32, 48), 5, seed=1)
    s = a[2]
    assert s["image"].shape == (3, 32, 48) and s["label"].shape == (32, 48)
    assert torch.equal(s["image"], b[2]["image"]) and torch.equal(s["label"], b[2]["label"])
    assert not torch.equal(s["label"], a[3]["label"])
    assert set(torch.unique(s["label"]).tolist()) <= set(range(5)) and 0 in s["label"]
    other = SyntheticSeg(4, (32, 48), 5, seed=1, stream=1)
    assert not torch.equal(other[2]["image"], s["image"])          # splits are disjoint
    aug = SyntheticSeg(16, (32, 48), 5, seed=1, augment=True)
    plain = SyntheticSeg(16, (32, 48), 5, seed=1)
    flipped = [i for i in range(16) if not torch.equal(aug[i]["label"], plain[i]["label"])]
    assert 0 < len(flipped) < 16
    assert all(torch.equal(aug[i]["label"], plain[i]["label"].flip(-1)) for i in flipped)
    aug.set_epoch(1)
    assert [i for i in range(16) if not torch.equal(aug[i]["label"], plain[i]["label"])] \
        != flipped
    assert synthetic_spec(3).class_names == ("background", "disc-1", "box-2")
    with pytest.raises(NasError, match="at least 2 classes"):
        synthetic_spec(1)


def test_loss_ignores_the_void_label_and_distillation_matches_the_teacher():
    scores = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    void = labels.clone()
    void[:, :2] = 255
    full = torch.nn.functional.cross_entropy(scores[:, :, 2:], labels[:, 2:])
    torch.testing.assert_close(segmentation_loss(scores, void), full)
    batch = {"label": labels}
    same = SEG.distillation_loss(scores, scores, batch)
    assert float(SEG.distillation_loss(scores, torch.randn_like(scores), batch)) > float(same)
    with pytest.raises(ValueError, match="differ in batch or size"):
        segmentation_loss(scores, labels[:, :2])


class Constant(nn.Module):
    """Predicts class ``k`` everywhere."""

    def __init__(self, classes, k):
        super().__init__()
        self.classes, self.k, self.p = classes, k, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes, *x.shape[2:])
        out[:, self.k] = 1.0
        return out + 0 * self.p


def test_miou_of_a_constant_prediction_is_the_background_share_over_the_classes_present():
    data = SyntheticSeg(6, (32, 48), 4, seed=3)
    labels = np.stack([data[i]["label"].numpy() for i in range(6)])
    present = len(np.unique(labels))
    result = evaluate_model(Constant(4, 0), data, batch_size=4)
    share = float((labels == 0).mean())
    assert result["metric"] == "mIoU"
    assert result["mean"] == pytest.approx(100 * share / present)
    assert result["pixel_accuracy"] == pytest.approx(100 * share)
    assert result["per_class"]["background"] == pytest.approx(100 * share)
    assert result["samples"] == 6 and np.isfinite(result["loss"])
    text = SEG.format_result(result)
    assert "background" in text and "pixel accuracy" in text
    with pytest.raises(NasError, match="predicts 5 classes"):
        evaluate_model(Constant(5, 0), data)


def test_evaluation_pads_images_of_any_size_and_never_scores_the_padding():
    from nas.tasks.seg.task import pad_collate

    samples = [{"image": torch.ones(3, 30, 40), "label": torch.zeros(30, 40, dtype=torch.int64),
                "index": 0},
               {"image": torch.ones(3, 33, 20), "label": torch.ones(33, 20, dtype=torch.int64),
                "index": 1}]
    batch = pad_collate(samples)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["label"].shape == (2, 64, 64)
    assert int((batch["label"] != 255).sum()) == 30 * 40 + 33 * 20
    assert float(batch["image"][0, :, 30:].abs().sum()) == 0.0

    class Mixed(torch.utils.data.Dataset):
        spec = synthetic_spec(2)

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return samples[i]
    result = evaluate_model(Constant(2, 0), Mixed(), batch_size=2)
    # class 0 everywhere: background IoU = 1200 / (1200 + 660), class 1 IoU 0
    assert result["per_class"]["background"] == pytest.approx(100 * 1200 / 1860)
    assert result["pixel_accuracy"] == pytest.approx(100 * 1200 / 1860)


def test_task_reads_synthetic_and_refuses_mismatched_data(tmp_path):
    task = get_task("seg")
    ds = task.make_dataset(None, "train", tiny_skeleton(), seed=0, augment=True, limit=3)
    assert len(ds) == 3 and ds[0]["label"].shape == (32, 48)
    assert task.validation_split(None) == "val" and task.evaluation_split(None) == "test"
    with pytest.raises(NasError, match="unknown split 'dev'"):
        task.make_dataset(None, "dev", tiny_skeleton(), seed=0, augment=False)
    with pytest.raises(NasError, match="not a segmentation dataset"):
        task.make_dataset(tmp_path, "train", tiny_skeleton(), seed=0, augment=False)
    with pytest.raises(NasError, match="takes no sigma option"):
        task.make_dataset(None, "train", tiny_skeleton(), seed=0, augment=False, sigma=2.0)
    if (REAL_CAMVID / "train.txt").is_file():
        with pytest.raises(NasError, match="camvid has 11 classes, the model predicts 4"):
            task.make_dataset(REAL_CAMVID, "train", tiny_skeleton(), seed=0, augment=False)
        camvid = task.make_dataset(REAL_CAMVID, "train", tiny_skeleton(11), seed=0,
                                   augment=True, limit=2)
        assert camvid[1]["image"].shape == (3, 32, 48)
        test = task.make_dataset(REAL_CAMVID, "test", tiny_skeleton(11), seed=0, augment=False,
                                 limit=1)
        assert test[0]["label"].shape == (180, 240)    # scored at the image's own size


def seg_arch(tmp_path, classes=4):
    space = SearchSpace("tiny-seg", tiny_skeleton(classes), backbone_ops=("mb_k3_e3",),
                        seg_heads=("seg_lraspp_w8",))
    spec = space.sample(np.random.default_rng(0), "tiny-seg-net")
    spec.save(tmp_path / "arch.json")
    return tmp_path / "arch.json"


def test_train_and_eval_a_seg_network_from_the_command_line(tmp_path, capsys):
    arch = seg_arch(tmp_path)
    out = tmp_path / "run"
    code, res = run_cli(capsys, ["train", str(arch), "--epochs", "1", "--limit", "8",
                                 "--batch-size", "4", "--workers", "0", "--out", str(out),
                                 "--no-progress", "--json"])
    assert code == 0, res.err
    report = json.loads(res.out)
    assert report["task"] == "seg" and report["metric"] == "mIoU"
    code, res = run_cli(capsys, ["eval", str(out / "last.pt"), "--limit", "4", "--no-progress",
                                 "--json"])
    assert code == 0, res.err
    result = json.loads(res.out)
    assert result["metric"] == "mIoU" and result["split"] == "test"
    assert set(result["per_class"]) == {"background", "disc-1", "box-2", "triangle-3"}
    code, res = run_cli(capsys, ["eval", str(out / "last.pt"), "--limit", "4", "--no-progress",
                                 "--score", "--rounds", "3", "--json"])
    assert code == 0, res.err
    score = json.loads(res.out)["score"]
    assert [m["batch"] for m in score["measured"]] == [1, 16]
    for m in score["measured"]:
        assert m["t_ms"] == pytest.approx(m["batch_ms"] / m["batch"])
        assert m["w"] == pytest.approx(max(0.0, 1 - max(0.0, m["t_ms"] - 3) / 7))
        assert m["score"] == pytest.approx(score["miou"] * m["w"])
    flops = score["flops"]
    assert flops["t_ms"] == pytest.approx(9.1453 * flops["gflops"] / 140.6)
    assert score["measured_over_flops_guess"] == \
        pytest.approx(score["measured"][0]["t_ms"] / flops["t_ms"])
    code, res = run_cli(capsys, ["train", str(arch), "--task", "pose", "--epochs", "1",
                                 "--out", str(tmp_path / "bad")])
    assert code != 0 and "is a seg network (use --task seg)" in res.err
    assert len(res.err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_log_weight_cost_is_flat_under_3ms_minus_log_w_then_a_line_past_the_floor():
    from nas.tasks.seg.score import SCORE_FLOOR, latency_weight, log_weight_cost

    t = torch.tensor([1.0, 2.9, 4.0, 7.5, 9.0, 9.9, 12.0], requires_grad=True)
    cost = log_weight_cost(t)
    cost.sum().backward()
    assert cost[:2].detach().tolist() == [0.0, 0.0] and t.grad[:2].tolist() == [0.0, 0.0]
    for i in (2, 3, 4):
        w = latency_weight(float(t[i].detach()))
        assert float(cost[i].detach()) == pytest.approx(-np.log(w))
        assert float(t.grad[i]) == pytest.approx(1 / (7 * w))
    t_floor = 10 - 7 * SCORE_FLOOR
    assert float(log_weight_cost(torch.tensor(t_floor))) == pytest.approx(-np.log(SCORE_FLOOR))
    assert float(t.grad[5]) == float(t.grad[6]) == pytest.approx(1 / (7 * SCORE_FLOOR))
    assert float(cost[6].detach()) == pytest.approx(-np.log(SCORE_FLOOR)
                                           + (12 - t_floor) / (7 * SCORE_FLOOR))


def test_objective_score_searches_without_a_budget_floor_or_a_lambda_controller(tmp_path, capsys):
    from conftest import macs_table

    from nas.search.run import budget_window
    from nas.search.searcher import SearchConfig
    from supernets.space import get_space

    cfg = SearchConfig(budget_ms=10.0, task="seg", space="seg-small", objective="score")
    assert budget_window(cfg, 10.0, 1.0) == (0.0, pytest.approx(9.7))
    lut = macs_table(get_space("seg-small", input_size=(32, 48)), tmp_path)
    out = tmp_path / "search"
    code, res = run_cli(capsys, ["search", "--task", "seg", "--objective", "score", "--input",
                                 "32x48", "--epochs", "2", "--train-samples", "24",
                                 "--batch-size", "8", "--lut", str(lut), "--allow-foreign-lut",
                                 "--out", str(out), "--no-progress", "--json"])
    assert code == 0, res.err
    report = json.loads(res.out)
    assert report["objective"] == "score" and report["budget_ms"] == 10.0
    assert report["window_ms"] is None or report["window_ms"][0] == 0.0
    assert {lam for _, lam in report["lam_trajectory"]} == {1.0}
    # the macs table puts the whole space under 3 ms: full marks, the task term alone moves it
    assert report["predicted_ms"] < 3.0 and report["latency_weight"]["predicted"] == 1.0
    assert json.loads((out / "arch.json").read_text())["task"] == "seg"
    # seg's default: the shortlist (the best of each head family, at least 4) trained 60 steps
    # each on its own, first in the order of its loss after them
    assert report["finetune_steps"] == 60 and report["finetune_seconds"] > 0
    tuned = [r for r in report["ranking"] if r["finetune_loss"] is not None]
    assert len(tuned) >= 4 and report["ranking"][:len(tuned)] == tuned
    assert [r["finetune_loss"] for r in tuned] == sorted(r["finetune_loss"] for r in tuned)
    families = {r["choices"]["head"].split("_")[1] for r in tuned}
    assert {"lraspp", "aspp"} <= families
    assert "own training" in report["selected_by"] and report["finetune_loss"] is not None
    assert report["family_stage"] is None   # off by default (tests/test_search_family.py)


def test_search_refuses_a_space_of_the_other_task(tmp_path, capsys):
    code, res = run_cli(capsys, ["search", "--task", "seg", "--space", "cpu-base",
                                 "--budget", "5ms", "--out", str(tmp_path / "s")])
    assert code != 0
    assert "--space cpu-base is a pose space, not one for --task seg" in res.err
    assert "seg-small" in res.err and not (tmp_path / "s").exists()


def test_objective_score_with_a_proposing_strategy(tmp_path, capsys):
    """`--strategy random --objective score`: the supernet's held-out mIoU x W(T) ranks the
    networks, no budget needed (W's zero, 10 ms), the report says so."""
    from conftest import macs_table

    from supernets.space import get_space

    lut = macs_table(get_space("seg-small", input_size=(32, 48)), tmp_path)
    out = tmp_path / "search"
    code, res = run_cli(capsys, ["search", "--task", "seg", "--strategy", "random",
                                 "--objective", "score", "--trials", "4", "--input", "32x48",
                                 "--epochs", "1", "--train-samples", "24", "--batch-size", "8",
                                 "--lut", str(lut), "--allow-foreign-lut", "--out", str(out),
                                 "--no-progress", "--json"])
    assert code == 0, res.err
    report = json.loads(res.out)
    assert report["objective"] == "score" and report["budget_ms"] == 10.0
    assert report["window_ms"] is None or report["window_ms"][0] == 0.0
    assert report["latency_weight"]["predicted"] == 1.0  # the macs table: all under 3 ms
    assert report["search"]["evaluations"] == 4 and (out / "search.png").is_file()


def test_search_epochs_default_is_the_tasks(tmp_path):
    """Pose searches 10 epochs; seg enough for SEARCH_WEIGHT_STEPS (720) weight steps of the
    search's weight part, at least 10; given epochs are kept."""
    from PIL import Image

    from nas.search import SearchConfig
    from nas.tasks.seg.task import SEARCH_WEIGHT_STEPS

    assert SEARCH_WEIGHT_STEPS == 720
    assert SearchConfig(budget_ms=5.0).epochs == 10
    seg = {"budget_ms": 5.0, "task": "seg", "space": "seg-small"}
    # synthetic: 1024 images, 205 held out, 819 // 16 = 51 steps an epoch -> 15 epochs
    assert SearchConfig(**seg).epochs == 15
    assert SearchConfig(**seg).warmup_epochs == 7
    assert SearchConfig(**seg, train_samples=4096).epochs == 10
    assert SearchConfig(**seg, epochs=3).epochs == 3
    root = tmp_path / "camvid"
    lines = []
    for i in range(40):
        for folder in ("train", "trainannot"):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / folder / f"f{i:02d}.png")
        lines.append(f"/SegNet/CamVid/train/f{i:02d}.png /SegNet/CamVid/trainannot/f{i:02d}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    # 40 images, 8 held out, 32 // 4 = 8 steps an epoch -> 90 epochs
    assert SearchConfig(**seg, data=str(root), batch_size=4).epochs == 90
    # at batch 16 a batch is held out: 24 // 16 = 1 step an epoch
    assert SearchConfig(**seg, data=str(root)).epochs == 720
    if REAL_CAMVID.is_dir():   # 367 images, 73 held out, 294 // 16 = 18 steps an epoch
        assert SearchConfig(**seg, data=str(REAL_CAMVID)).epochs == 40
    with pytest.raises(NasError, match=str(tmp_path / "nowhere")):
        SearchConfig(**seg, data=str(tmp_path / "nowhere"))


def test_segmentation_imports_neither_the_pose_readers_nor_pycocotools():
    # a seg search or training must run where pycocotools (the COCO keypoints reader's
    # library) is missing; the readers share only nas.tasks.images
    import subprocess
    import sys
    code = ("import sys, nas.cli, nas.search.searcher, nas.train, nas.tasks.seg.data, "
            "nas.tasks.seg.synthetic, nas.tasks.seg.task\n"
            "from nas.tasks import get_task\n"
            "get_task('seg')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pycocotools', "
            "'nas.tasks.pose'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
