"""benchmarks/proxy_fidelity.py's own-training proxy (--finetune RULE:EPOCH:STEPS) and its
scores (nas.bench.proxies.finetune_scores)."""

import numpy as np
import pytest
from conftest import benchmark_script

from nas.bench import proxies as px
from nas.search.oneshot import OneShotConfig, PathScorer, snapshot_path, train_oneshot
from supernets.space import get_space

fidelity = benchmark_script("proxy_fidelity")


def test_finetune_option_is_parsed_and_bad_values_are_one_line(capsys):
    args = fidelity.parse_args(["--finetune", "uniform:5:60", "--finetune", "sandwich:10:30"])
    assert args.finetune == [("uniform", 5, 60), ("sandwich", 10, 30)]
    assert fidelity.parse_args([]).finetune == []
    for bad in ("uniform:5", "uniform:five:60", "nope:5:60", "uniform:0:60", "uniform:5:60:1"):
        with pytest.raises(SystemExit) as e:
            fidelity.parse_args(["--finetune", bad])
        assert e.value.code == 2
        assert "RULE:EPOCH:STEPS" in capsys.readouterr().err


def test_finetune_scores_each_network_once_and_caches(tmp_path, monkeypatch):
    cfg = OneShotConfig(space="cpu-small", preset=None, data=None, rule="uniform", epochs=1,
                        snapshots=(1,), batch_size=4, train_samples=24, input_size=(64, 64),
                        threads=1)
    assert train_oneshot(cfg, tmp_path / "uniform", progress=False)["status"] == "complete"
    assert snapshot_path(tmp_path / "uniform", 1).exists()
    space = get_space("cpu-small", input_size=(64, 64))
    rows = [{"key": f"n{i}", "spec": space.sample(np.random.default_rng(i))} for i in range(2)]
    cache = px.finetune_scores(rows, "uniform", 1, 2, workdir=tmp_path, cache_dir=tmp_path / "c",
                               bn_batches=1, images=4, threads=1, log=lambda m: None)
    assert set(cache["networks"]) == {"n0", "n1"} and cache["steps"] == 2
    assert all(v["loss"] > 0 and v["steps"] == 2 for v in cache["networks"].values())

    def refuse(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(PathScorer, "score_finetuned", refuse)
    again = px.finetune_scores(rows, "uniform", 1, 2, workdir=tmp_path,
                               cache_dir=tmp_path / "c", bn_batches=1, images=4, threads=1,
                               log=lambda m: None)
    assert again["networks"] == cache["networks"]
    # no such snapshot: nothing, and a line saying so
    said = []
    assert px.finetune_scores(rows, "sandwich", 1, 2, workdir=tmp_path, cache_dir=tmp_path / "c",
                              bn_batches=1, images=4, threads=1, log=said.append) == {}
    assert "no supernet sandwich epoch 1" in said[0]
