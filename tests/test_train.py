"""``nas train`` and ``nas eval``: a tiny run end to end, resume equality, clean failures."""

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from test_pose_coco import _write_coco
from test_pose_mpii import _write_mpii

from nas.checkpoint import load_model_checkpoint, save_model_checkpoint
from nas.cli import main
from nas.train import TrainConfig, learning_rate, train
from supernets.model import PoseNet
from supernets.space import get_space

HW = (64, 64)
PAUSE = 2.0  # seconds an interrupted epoch spends before its stop


def _spec(joints=14, seed=0):
    space = get_space("cpu-small", input_size=HW, num_joints=joints)
    return space.sample(np.random.default_rng(seed), name=f"tiny{joints}")


def _cfg(**kw):
    args = dict(arch=_spec().to_dict(), epochs=2, batch_size=4, limit=8, workers=0)
    args.update(kw)
    return TrainConfig(**args)


@pytest.fixture
def arch_json(tmp_path):
    path = tmp_path / "tiny.json"
    _spec().save(path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _weights(path):
    return load_model_checkpoint(path)[1].state_dict()


def test_lr_schedule_follows_efficientpose_scaled_to_the_epochs():
    cfg = _cfg(epochs=200)
    assert cfg.milestones() == [150, 170]
    assert [learning_rate(cfg, e) for e in (0, 149, 150, 169, 170, 199)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert _cfg(epochs=20).milestones() == [15, 17]


def test_cli_trains_a_tiny_arch_and_writes_every_file(tmp_path, arch_json, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(capsys, "train", arch_json, "--epochs", 2, "--limit", 8,
                           "--batch-size", 4, "--workers", 0, "--out", out, "--no-progress",
                           "--json")
    assert code == 0
    report = json.loads(stdout)   # one JSON object, nothing else on stdout
    assert report["status"] == "complete" and report["metric"] == "PCK@0.2"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.jsonl",
                                                     "metrics.json", "resume.pt"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(e["lr"] == 1e-3 for e in log)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final_flip"]["per_joint"]) >= {"r-ankle", "head-top"}
    assert metrics["final_flip"]["flip"] is True and metrics["final"]["samples"] == 8
    spec, _, meta = load_model_checkpoint(out / "last.pt")
    assert spec.name == "tiny14" and meta["epoch"] == 2 and meta["complete"]
    assert load_model_checkpoint(out / "best.pt")[2]["epoch"] == report["best"]["epoch"]

    code, stdout, _ = _run(capsys, "eval", out / "last.pt", "--limit", 4, "--flip",
                           "--no-progress", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["split"] == "test" and result["samples"] == 4
    assert result["flip"] is True and len(result["per_joint"]) == 14
    code, stdout, _ = _run(capsys, "eval", out / "last.pt", "--limit", 4, "--no-progress")
    assert code == 0 and "PCK@0.2" in stdout and "head-top" in stdout


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    train(_cfg(), tmp_path / "whole", progress=False)

    def interrupt(trainer):   # Ctrl-C in the middle of the second epoch
        if trainer.epoch == 1 and trainer.step == 1:
            time.sleep(PAUSE)  # time the second epoch took before the stop
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train(_cfg(), tmp_path / "parts", progress=False, on_step=interrupt)
    assert stopped["status"] == "interrupted" and (stopped["epoch"], stopped["step"]) == (1, 1)
    assert stopped["resume"] == f"nas train --resume {tmp_path / 'parts'}"
    assert not (tmp_path / "parts" / "metrics.json").exists()
    resumed = train(None, tmp_path / "parts", resume=True, progress=False)
    assert resumed["status"] == "complete"
    whole, parts = _weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "parts" /
                                                                      "last.pt")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    a = json.loads((tmp_path / "whole" / "log.jsonl").read_text().splitlines()[-1])
    b = json.loads((tmp_path / "parts" / "log.jsonl").read_text().splitlines()[-1])
    assert a["train_loss"] == b["train_loss"] and a["val"] == b["val"]
    # the stopped epoch's time counts what it took before the stop as well
    assert b["seconds"] >= PAUSE > a["seconds"] > 0


def _save_untrained(path, joints, input_size):
    spec = _spec(joints).with_input(input_size)
    torch.manual_seed(0)
    save_model_checkpoint(path, spec, PoseNet(spec))
    return path


def test_eval_on_mpii_reports_pckh_and_the_head_size_approximation(tmp_path, capsys):
    root = _write_mpii(tmp_path / "mpii")
    ckpt = _save_untrained(tmp_path / "m.pt", 16, HW)
    code, stdout, _ = _run(capsys, "eval", ckpt, "--data", root, "--no-progress", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["metric"] == "PCKh@0.5" and result["split"] == "val"
    assert "approximate" in result["normaliser"] and "Wrist" in result["groups"]


def test_eval_on_coco_reports_oks_ap(tmp_path, capsys):
    root = _write_coco(tmp_path / "coco")
    ckpt = _save_untrained(tmp_path / "c.pt", 17, (64, 48))
    code, stdout, _ = _run(capsys, "eval", ckpt, "--data", root, "--flip", "--no-progress",
                           "--json")
    result = json.loads(stdout)
    assert code == 0 and result["metric"] == "AP" and set(result["stats"]) >= {"AP50", "ARl"}
    assert result["per_joint_metric"] == "OKS/joint" and result["samples"] == 4


# -- bad input: exit 2, one line, nothing written ------------------------------------------------
def _fails_cleanly(tmp_path, capsys, argv, *words, out=None):
    out = out or tmp_path / "run"
    code, stdout, err = _run(capsys, *argv, "--out", out, "--no-progress", "--workers", 0)
    assert code == 2, err
    assert err.startswith("nas: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return out


def test_missing_arch_file(tmp_path, capsys):
    out = _fails_cleanly(tmp_path, capsys, ["train", tmp_path / "nope.json"], "nope.json")
    assert not out.exists()


def test_data_that_is_not_a_dataset(tmp_path, arch_json, capsys):
    (tmp_path / "empty").mkdir()
    out = _fails_cleanly(tmp_path, capsys, ["train", arch_json, "--data", tmp_path / "empty"],
                         "not a pose dataset")
    assert not out.exists()


def test_joint_count_of_data_and_arch_differ(tmp_path, arch_json, capsys):
    root = _write_mpii(tmp_path / "mpii")
    out = _fails_cleanly(tmp_path, capsys, ["train", arch_json, "--data", root],
                         "16 joints", "expects 14", "--joints 16")
    assert not out.exists()


def test_broken_data_is_reported_before_training(tmp_path, arch_json, capsys):
    root = _write_mpii(tmp_path / "mpii")
    (root / "images" / "im2.jpg").write_bytes(b"junk")
    out = _fails_cleanly(tmp_path, capsys, ["train", arch_json, "--data", root, "--joints", 16],
                         "im2.jpg", "does not decode", "record 2")
    assert not out.exists()


def test_out_already_holds_a_run(tmp_path, arch_json, capsys):
    train(_cfg(epochs=1, limit=4), tmp_path / "run", progress=False)
    capsys.readouterr()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    _fails_cleanly(tmp_path, capsys, ["train", arch_json], "already holds a training run",
                   "--resume")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_resume_without_a_run(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--resume", tmp_path / "nothing", "--no-progress")
    assert code == 2 and "no training run to resume" in err and err.count("\n") == 1
    assert not (tmp_path / "nothing").exists()


def test_resume_with_another_arch(tmp_path, capsys):
    train(_cfg(epochs=1, limit=4), tmp_path / "run", progress=False)
    capsys.readouterr()
    other = tmp_path / "other.json"
    _spec(seed=5).save(other)
    code, _, err = _run(capsys, "train", other, "--resume", tmp_path / "run", "--no-progress")
    assert code == 2 and "this run trains 'tiny14'" in err and err.count("\n") == 1


def test_no_arch_and_no_resume(tmp_path, capsys):
    _fails_cleanly(tmp_path, capsys, ["train"], "an architecture is required")


def test_unknown_task(tmp_path, arch_json, capsys):
    _fails_cleanly(tmp_path, capsys, ["train", arch_json, "--task", "segmentation"],
                   "--task 'segmentation'")


def test_eval_of_a_missing_checkpoint(tmp_path, capsys):
    code, _, err = _run(capsys, "eval", tmp_path / "none.pt")
    assert code == 2 and "no such checkpoint file" in err and err.count("\n") == 1


def test_eval_with_data_of_another_joint_count(tmp_path, capsys):
    ckpt = _save_untrained(tmp_path / "m.pt", 14, HW)
    root = _write_mpii(tmp_path / "mpii")
    code, _, err = _run(capsys, "eval", ckpt, "--data", root, "--no-progress")
    assert code == 2 and "MPII has 16 joints, the model expects 14" in err


def test_non_positive_epochs_is_a_usage_error(tmp_path, arch_json, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(arch_json), "--epochs", "0", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "--epochs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_is_refused_before_loading_data(tmp_path, arch_json, capsys):
    (tmp_path / "file").write_text("")
    _fails_cleanly(tmp_path, capsys, ["train", arch_json], "--out", "file",
                   "exists and is not a directory", out=tmp_path / "file")
    _fails_cleanly(tmp_path, capsys, ["train", arch_json], "is not a directory",
                   out=tmp_path / "file" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tiny.json"]


def test_finished_run_is_refused_and_replaced_with_force(tmp_path, arch_json, capsys):
    """Any of a run's files counts (a finished run may have lost resume.pt); --force deletes
    them, and no other file, once the inputs have been checked."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.json", "best.pt", "notes.txt"):
        (out / name).write_text("old")
    argv = ["train", arch_json, "--epochs", 1, "--limit", 4, "--batch-size", 4]
    _fails_cleanly(tmp_path, capsys, argv, "already holds a training run (best.pt, "
                   "metrics.json)", f"--resume {out}", "--force", out=out)
    _fails_cleanly(tmp_path, capsys, [*argv, "--data", tmp_path / "nowhere", "--force"],
                   "nowhere", out=out)
    assert (out / "metrics.json").read_text() == "old"  # a refused --force deletes nothing
    code, _, _ = _run(capsys, *argv, "--out", out, "--force", "--no-progress", "--workers", 0)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.jsonl",
                                                     "metrics.json", "notes.txt", "resume.pt"]
    assert (out / "notes.txt").read_text() == "old"
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_interrupted_cli_run_exits_130_and_says_how_to_resume(tmp_path, arch_json, capsys,
                                                              monkeypatch):
    from nas.train import Trainer

    train_step = Trainer._train_step

    def step_then_ctrl_c(self, batch):
        loss = train_step(self, batch)
        os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "_train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "train", arch_json, "--epochs", 2, "--limit", 8,
                             "--batch-size", 4, "--workers", 0, "--out", out, "--no-progress",
                             "--json")
    assert code == 130
    assert json.loads(stdout)["status"] == "interrupted"
    assert err.strip().splitlines()[-1] == (f"nas: training interrupted in epoch 1 after step "
                                            f"1; checkpoints in {out}; continue with: nas train "
                                            f"--resume {out}")


def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--resume", tmp_path, "--lr", "0.1", "--sigma", 3,
                        "--epochs", 5, "--workers", 0)
    assert code == 2 and err.count("\n") == 1
    assert "it cannot change --sigma, --lr (only --epochs, to extend it, and --workers)" in err
