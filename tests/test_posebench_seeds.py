"""benchmarks/posebench_seeds.py: the ground truth's networks trained again with other seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import benchmark_script

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI's layout); a clone elsewhere reads this machine's copy
LSP = next((p for p in ((REPO / ".." / "shared" / "data" / "lsp").resolve(),
                        Path("/work/shared/data/lsp")) if (p / "joints.mat").is_file()),
           Path("/work/shared/data/lsp"))
needs_lsp = pytest.mark.skipif(not (LSP / "joints.mat").is_file(), reason="no LSP data here")

seeds_script = benchmark_script("posebench_seeds")


def test_summary_pools_the_spread_and_maps_percentiles():
    window = [float(x) for x in range(1, 21)]            # 20 networks, PCK 1..20
    trained = {"a": {1: 17.0, 2: 18.0}, "b": {1: 10.0}}
    s = seeds_script.summarise(trained, {"a": 19.0, "b": 10.0}, window)
    # the spread of the seeds trained here only (the table's row picked the networks):
    # a -> 17, 18 (1 dof), b -> 10 (none): pooled sqrt(0.5)
    assert s["dof"] == 1 and s["pooled_std"] == pytest.approx(0.5 ** 0.5)
    assert s["networks"]["a"]["mean"] == pytest.approx(17.5)
    assert s["networks"]["a"]["range"] == pytest.approx(1.0)
    assert s["networks"]["a"]["table_minus_mean"] == pytest.approx(1.5)
    assert s["networks"]["b"]["std"] is None and s["networks"]["b"]["table_minus_mean"] == 0
    assert s["table_minus_mean"] == pytest.approx(0.75)
    assert s["table_minus_mean_rms"] == pytest.approx((1.5 ** 2 / 2) ** 0.5)
    level = s["percentile_pck"]["89"]
    # the least PCK of the window at or above the 89th percentile: 18.5 / 20 -> 92.5
    assert level["pck"] == 19.0 and level["percentile"] == pytest.approx(92.5)
    assert level["low"] < level["percentile"] < level["high"]
    one = seeds_script.summarise({"a": {1: 4.0}}, {"a": 5.0}, window)
    assert one["pooled_std"] is None and "low" not in one["percentile_pck"]["80"]
    assert "no spread to pool" in seeds_script.render(
        {"stats": one, "finished": "now", "recipe": {}, "seeds": [1]}, "cmd", "machine")


@pytest.mark.parametrize("argv, message", [
    (["--networks", "no-such-net"], "no-such-net not finished networks"),
    (["--networks", "random-3", "--seeds", "1,x"], "--seeds '1,x'"),
    (["--networks", "random-3", "--data", "/nonexistent/lsp"], "no LSP folder there"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = seeds_script.main(argv + ["--out", str(out), "--workdir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.iterdir())


@needs_lsp
def test_a_tiny_run_trains_each_seed_once_and_reports(tmp_path, capsys):
    args = ["--networks", "random-3", "--seeds", "1,2", "--epochs", "1", "--limit", "8",
            "--data", str(LSP), "--workdir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "seeds"), "--json"]
    assert seeds_script.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "complete" and report["recipe"]["epochs"] == 1
    net = report["stats"]["networks"]["random-3"]
    assert sorted(net["pck"]) == ["1", "2"]
    assert net["table"] is None                      # a smoke recipe: not comparable
    for seed in (1, 2):
        row = json.loads((tmp_path / "seeds" / "networks" / f"random-3-s{seed}.json").read_text())
        assert row["status"] == "complete" and row["recipe"]["epochs"] == 1
    assert (tmp_path / "seeds.md").read_text().startswith("# The pose ground truth")
    # finished: the same command trains nothing again
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "seeds" / "networks").iterdir()}
    assert seeds_script.main(args) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in before} == before
