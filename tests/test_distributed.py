"""Several processes, one run (``nas.distributed``): ``torchrun -m nas train`` with gloo on CPU,
one report, resumed by one process; the helpers are the identity with one process."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nas.cli import main
from nas.distributed import World, from_env, resumed_step
from supernets.errors import NasError
from supernets.space import get_space


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "arch.json"
    get_space("cpu-small", input_size=(32, 32)).sample(np.random.default_rng(0), "tiny").save(path)
    return path


def torchrun(nproc: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(nproc), "-m", "nas", *argv],
                          capture_output=True, text=True, timeout=600)


def test_train_with_two_processes_then_resumed_by_one(arch, tmp_path, capsys):
    out = tmp_path / "run"
    done = torchrun(2, "train", str(arch), "--epochs", "1", "--limit", "16", "--batch-size", "4",
                    "--workers", "0", "--threads", "1", "--out", str(out), "--no-progress",
                    "--json")
    assert done.returncode == 0, done.stderr[-8000:]
    report = json.loads(done.stdout)   # rank 0 alone prints: one JSON object
    assert report["processes"] == 2 and report["batch_size_per_rank"] == 4
    assert report["global_batch_size"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.jsonl",
                                                    "metrics.json", "resume.pt"]
    (entry,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert entry["processes"] == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["processes"] == 1 and [h["epoch"] for h in again["history"]] == [1, 2]


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = from_env("cpu")
    assert world == World() and not world.enabled and world.is_main
    assert world.mean(2.5) == 2.5 and world.any(True) and not world.any(False)
    assert world.broadcast({"a": 1}) == {"a": 1} and world.device("cuda") == "cuda"
    assert World(rank=1, size=2, local_rank=1).device("cuda") == "cuda:1"


def test_an_epoch_stopped_by_two_processes_continues_after_the_samples_seen():
    assert resumed_step(3, 2, 2, 10) == 3      # same processes: same step
    assert resumed_step(3, 2, 1, 10) == 6      # 3 steps x 2 ranks = 6 single-process steps
    assert resumed_step(3, 1, 2, 10) == 1      # 3 samples-batches by 2 ranks: 1 full step
    assert resumed_step(9, 4, 1, 10) == 10     # never past the epoch's end


def test_search_with_two_processes_agrees_and_resumes_with_one(tmp_path, capsys):
    """`torchrun -m nas search`: every rank draws the same paths and averages its gradients,
    so the architecture parameters agree at every epoch's end (a checksum all ranks compare,
    an error otherwise); rank 0 alone derives, ranks, writes and prints; one process continues
    the search."""
    from conftest import macs_table

    lut = macs_table(get_space("cpu-small", input_size=(32, 32)), tmp_path)
    out = tmp_path / "search"
    common = ["--space", "cpu-small", "--input", "32x32", "--budget", "0.6ms", "--epochs", "2",
              "--train-samples", "48", "--batch-size", "8", "--rank-samples", "2", "--lut",
              str(lut), "--allow-foreign-lut", "--threads", "1", "--no-progress", "--json"]
    done = torchrun(2, "search", *common, "--out", str(out))
    assert done.returncode == 0, done.stderr[-8000:]
    report = json.loads(done.stdout)
    assert report["processes"] == 2 and report["global_batch_size"] == 16
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "checkpoint.pt", "log.jsonl",
                                                    "report.json", "search.png"]
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [h["processes"] for h in history] == [2, 2]
    capsys.readouterr()
    assert main(["search", "--resume", str(out), "--epochs", "3", "--allow-foreign-lut",
                 "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["processes"] == 1 and len(again["lam_trajectory"]) == 4


def test_ranks_that_disagree_are_one_error_on_every_rank():
    class TwoRanks(World):
        def gather(self, value):   # what all_gather_object returns: rank 1 holds another value
            return [value, value + 1.0]

    with pytest.raises(NasError, match="the 2 processes disagree about the checksum: rank 0 "
                                       "has 1.0, rank 1 2.0"):
        TwoRanks(rank=0, size=2).check_agree(1.0, "the checksum")
