"""benchmarks/seg_proxy_stability.py end to end on a tiny CamVid-layout folder: the report's
reliability and stability tables, resume from its scores, and one-line refusals.

Kept short: 40x56 images at a 32x48 input, a 2-epoch supernet on 12 images at batch 4, 4
networks scored at epochs 1 and 2; the latency table is synthetic (MACs)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import benchmark_script, macs_table
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


bench = benchmark_script("seg_proxy_stability")


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        name = f"0001TP_{i:03d}.png"
        for folder, array in (("train", rng.integers(0, 256, (40, 56, 3))),
                              ("trainannot", rng.integers(0, 12, (40, 56)))):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(root / folder / name)
        lines.append(f"/SegNet/CamVid/train/{name} /SegNet/CamVid/trainannot/{name}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    space = bench.get_space("seg-small", preset="camvid", input_size=(32, 48))
    return macs_table(space, tmp_path_factory.mktemp("lut"))


def argv(camvid, lut_path, workdir, *extra):
    return ["--data", str(camvid), "--space", "seg-small", "--input", "32x48", "--epochs", "2",
            "--snapshots", "1,2", "--networks", "4", "--batch-size", "4", "--bn-batches", "1",
            "--threads", "1", "--lut", str(lut_path), "--workdir", str(workdir),
            "--out", str(workdir / "report.md"), "--no-progress", *extra]


def test_report_then_resumed_from_its_scores(camvid, lut_path, tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    assert bench.main(argv(camvid, lut_path, workdir, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["epoch"] for s in report["snapshots"]] == [1, 2]
    # 12 images, 4 held out (at least a batch of 4... 2.4 rounds to 2 < 4), 8 // 4 = 2 steps
    assert [s["weight_steps"] for s in report["snapshots"]] == [2, 4]
    lo, hi = report["window_ms"]
    assert len(report["networks"]) == 4
    assert all(lo <= n["predicted_ms"] <= hi for n in report["networks"])
    fast, slow = report["space_range_ms"]
    assert report["budget_ms"] == pytest.approx((fast + slow) / 2)
    for s in report["snapshots"]:
        assert -1 <= s["reliability_loss"] <= 1 and np.isfinite(s["loss_mean"])
    for metric in ("loss", "miou"):
        matrix = np.array(report["stability"][metric], float)
        assert matrix.shape == (2, 2)
        assert np.allclose(matrix, matrix.T, equal_nan=True)
    assert report["stability"]["loss"][0][0] == pytest.approx(1.0)
    markdown = (workdir / "report.md").read_text()
    assert "| 1 | 2 |" in markdown and "Kendall tau between the rankings" in markdown
    assert json.loads((workdir / "report.json").read_text())["networks"] == report["networks"]
    assert (workdir / "scores-e2.json").is_file()

    # a second run scores nothing again
    def never(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(bench.PathScorer, "score", never)
    assert bench.main(argv(camvid, lut_path, workdir, "--json")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["snapshots"] == report["snapshots"]


def test_refusals_are_one_line(camvid, lut_path, tmp_path, capsys):
    missing = tmp_path / "none.parquet"
    code = bench.main(argv(camvid, missing, tmp_path / "a"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"seg_proxy_stability: error: --lut {missing}: ")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a" / "report.md").exists()

    code = bench.main(argv(tmp_path, lut_path, tmp_path / "b"))
    err = capsys.readouterr().err
    assert code == 2 and f"--data {tmp_path}" in err and len(err.strip().splitlines()) == 1

    code = bench.main(argv(camvid, lut_path, tmp_path / "c", "--limit", "8", "--out",
                           str(REPO / bench.DEFAULT_OUT)))
    assert code == 2 and "smoke run" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        bench.main(argv(camvid, lut_path, tmp_path / "d", "--snapshots", "1,3"))
    assert e.value.code == 2 and "beyond --epochs 2" in capsys.readouterr().err
