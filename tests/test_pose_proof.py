"""benchmarks/pose_proof.py's settings: what the proof's second seed changes and what it keeps.

The proof itself (LSP, 30 epochs) is a benchmark; seg_proof's tests run the shared stages end to
end.
"""

from pathlib import Path

import pytest
from conftest import benchmark_script

import nas.bench.proof as proof
from supernets.errors import NasError
from supernets.named import load_arch


def _script():
    return benchmark_script("pose_proof")


pose_proof = _script()


def test_search_seed_changes_the_search_alone(tmp_path):
    lut = tmp_path / "table.parquet"
    first = pose_proof.parse_args(["--seed", "0"])
    second = pose_proof.parse_args(["--seed", "0", "--search-seed", "1"])
    assert pose_proof.search_config(8.0, first).seed == 0
    assert pose_proof.search_config(8.0, second).seed == 1
    baseline = load_arch("mobilenetv2", input_size=(128, 128), num_joints=14)
    assert pose_proof.train_config(baseline, second).seed == 0    # the trainings keep --seed
    a, b = pose_proof.settings_of(first, lut), pose_proof.settings_of(second, lut)
    assert {k for k in a if a[k] != b[k]} == {"search_seed"}
    assert (a["seed"], a["search_seed"], b["search_seed"]) == (0, 0, 1)

    # a workdir of the first seed refuses the second; one started before --search-seed (no
    # search_seed in its settings) is read as searched with --seed
    stages = proof.Stages(tmp_path / "work", "test", progress=False)
    stages.pin(a)
    with pytest.raises(NasError, match="search_seed=0, not 1"):
        stages.pin(b, defaults={"search_seed": 0})
    old = {k: v for k, v in a.items() if k != "search_seed"}
    (tmp_path / "old").mkdir()
    proof.write_json(tmp_path / "old" / "settings.json", old)
    assert proof.Stages(tmp_path / "old", "test", progress=False).pin(
        a, defaults={"search_seed": 0}) == a


def test_search_threads_set_the_search_alone(capsys):
    args = pose_proof.parse_args(["--threads", "1", "--search-threads", "2", "--jobs", "2"])
    baseline = load_arch("mobilenetv2", input_size=(128, 128), num_joints=14)
    assert pose_proof.search_config(8.0, args).threads == 2
    assert pose_proof.train_config(baseline, args).threads == 1
    # unset, the search takes --threads; threads are not a setting the results depend on
    plain = pose_proof.parse_args(["--threads", "1"])
    assert pose_proof.search_config(8.0, plain).threads == 1
    lut = Path("table.parquet")
    assert pose_proof.settings_of(args, lut) == pose_proof.settings_of(plain, lut)
    with pytest.raises(SystemExit):
        pose_proof.parse_args(["--search-threads", "0"])
    assert "--search-threads" in capsys.readouterr().err
