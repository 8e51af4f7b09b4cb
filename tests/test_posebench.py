"""posebench, the pose ground truth: the training pieces it needs (``val_every``, named recipes,
``TrainingDiverged``), its rank statistics, its networks and files, and a one-network smoke run of
``benchmarks/posebench.py``. Nothing here writes outside ``tmp_path``."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import benchmark_script

from nas.bench import posebench as pb
from nas.bench.stats import rank_agreement, top_overlap
from nas.cli import main
from nas.tasks.pose.task import POSE
from nas.train import RECIPES, TrainConfig, Trainer, TrainingDiverged, recipe, train
from supernets.errors import NasError
from supernets.space import get_space

REPO = Path(__file__).resolve().parents[1]
# the data lives in ../shared beside the checkout (CI's layout); a clone elsewhere reads this
# machine's copy
LSP = next((p for p in ((REPO / ".." / "shared" / "data" / "lsp").resolve(),
                        Path("/work/shared/data/lsp")) if (p / "joints.mat").is_file()),
           Path("/work/shared/data/lsp"))
SCRIPT = REPO / "benchmarks" / "posebench.py"
needs_lsp = pytest.mark.skipif(not (LSP / "joints.mat").is_file(), reason="no LSP data here")
HW = (64, 64)


def _spec(seed=0):
    space = get_space("cpu-small", input_size=HW, num_joints=14)
    return space.sample(np.random.default_rng(seed), name="tiny14")


def _cfg(**kw):
    """A tiny run on the embedded synthetic figures (data=None): 8 train, 4 val images."""
    return TrainConfig(**{"arch": _spec().to_dict(), "epochs": 2, "batch_size": 4,
                          "synthetic_train": 8, "synthetic_val": 4, "workers": 0, **kw})


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def cheap_complexity(monkeypatch):
    """``rows`` counts every network's MACs by building it (seconds each on a busy machine);
    what these tests check does not depend on the count."""
    monkeypatch.setattr("supernets.flops.complexity",
                        lambda spec, batch=1: SimpleNamespace(macs=2e6, params=3e5))


# -- nas.train: val_every, recipes, divergence -------------------------------------------------
def test_val_every_picks_the_validated_epochs():
    def validated(every, epochs):
        fake = SimpleNamespace(cfg=SimpleNamespace(val_every=every, epochs=epochs))
        return [e + 1 for e in range(epochs) if Trainer._validates(fake, e)]

    assert validated(0, 5) == []
    assert validated(1, 3) == [1, 2, 3]
    assert validated(2, 5) == [2, 4, 5]        # every 2nd, and the last
    assert validated(3, 3) == [3]
    assert validated(7, 3) == [3]              # longer than the run: the last epoch only
    with pytest.raises(NasError, match="val_every|val-every"):
        _cfg(val_every=-1)


@pytest.mark.parametrize("every, epochs, validated", [(0, 2, []), (1, 2, [1, 2]),
                                                      (2, 3, [2, 3])])
def test_val_every_in_a_tiny_run(tmp_path, every, epochs, validated):
    out = tmp_path / "run"
    report = train(_cfg(val_every=every, epochs=epochs), out, progress=False)
    assert report["status"] == "complete"
    for entries in (report["history"], _log(out)):
        assert [e["epoch"] for e in entries] == list(range(1, epochs + 1))
        assert [e["epoch"] for e in entries if "val" in e] == validated
        for e in entries:
            assert ("val" in e) == ("val_metric" in e) == ("val_loss" in e) == \
                ("val_seconds" in e)
            assert e["seconds"] >= 0 and math.isfinite(e["train_loss"])
    # the final evaluation happens whatever val_every says
    assert report["final"]["samples"] == 4 and report["final_flip"]["flip"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["val_every"] == every
    if every == 0:
        assert report["best"] is None and report["checkpoints"]["best"] is None
        assert not (out / "best.pt").exists() and (out / "last.pt").is_file()
    else:
        assert report["best"]["epoch"] in validated and (out / "best.pt").is_file()


def test_recipes_are_named_and_copied():
    assert {"efficientpose", "proof", "posebench"} <= set(RECIPES)
    assert recipe("posebench") == {"epochs": 12, "val_every": 0}
    assert recipe("proof")["epochs"] == 30
    mine = recipe("posebench")
    mine["epochs"] = 1
    assert RECIPES["posebench"]["epochs"] == 12       # a copy: the table's recipe stays
    TrainConfig(arch={}, **recipe("posebench"))       # every recipe is a valid config
    with pytest.raises(NasError) as info:
        recipe("nosuch")
    message = str(info.value)
    assert "nosuch" in message and "\n" not in message
    assert all(name in message for name in RECIPES)


def test_cli_unknown_recipe_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "mobilenetv2", "--recipe", "nosuch", "--out", str(out),
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("nas: error: ")
    assert "nosuch" in captured.err and "posebench" in captured.err
    assert not out.exists()


def test_cli_recipe_with_flags_beside_it(tmp_path, capsys):
    arch = tmp_path / "tiny.json"
    _spec().save(arch)
    out = tmp_path / "run"
    code = main(["train", str(arch), "--recipe", "posebench", "--epochs", "1", "--limit", "4",
                 "--batch-size", "4", "--workers", "0", "--out", str(out), "--no-progress",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["config"]["epochs"] == 1 and report["config"]["val_every"] == 0
    assert report["best"] is None and all("val" not in e for e in report["history"])


def _nan_loss(*args, **kwargs):
    return torch.tensor(float("nan"), requires_grad=True)


def test_a_nan_loss_stops_training_naming_epoch_and_step(tmp_path, monkeypatch):
    monkeypatch.setattr(POSE, "loss", _nan_loss)
    with pytest.raises(TrainingDiverged) as info:
        train(_cfg(epochs=1), tmp_path / "run", progress=False)
    assert isinstance(info.value, NasError)
    message = str(info.value)
    assert "nan" in message and "epoch 1" in message and "step 1" in message
    assert "\n" not in message


def test_an_infinite_loss_in_a_later_step_names_that_step(tmp_path, monkeypatch):
    real, calls = POSE.loss, []

    def later(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * math.inf if len(calls) == 2 else loss

    monkeypatch.setattr(POSE, "loss", later)
    with pytest.raises(TrainingDiverged, match=r"became inf in epoch 1, step 2"):
        train(_cfg(epochs=1), tmp_path / "run", progress=False)


def test_cli_divergence_is_one_line(tmp_path, monkeypatch, capsys):
    arch = tmp_path / "tiny.json"
    _spec().save(arch)
    monkeypatch.setattr(POSE, "loss", _nan_loss)
    code = main(["train", str(arch), "--epochs", "1", "--limit", "4", "--batch-size", "4",
                 "--workers", "0", "--out", str(tmp_path / "run"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("nas: error: training loss became nan in epoch 1, step 1")


# -- nas.bench.stats ---------------------------------------------------------------------------
def test_rank_agreement_perfect_reversed_nan_and_constant():
    truth = [1.0, 2.0, 3.0, 4.0, 5.0]
    same = rank_agreement(truth, [10, 20, 30, 40, 50])
    assert same["n"] == 5 and same["kendall_tau"] == pytest.approx(1.0)
    assert same["spearman"] == pytest.approx(1.0) and 0 <= same["kendall_p"] < 0.05
    reverse = rank_agreement(truth, [5, 4, 3, 2, 1])
    assert reverse["kendall_tau"] == pytest.approx(-1.0)
    assert reverse["spearman"] == pytest.approx(-1.0)

    holes = rank_agreement([1, 2, np.nan, 4, 5, 6], [1, 2, 3, np.nan, 5, 6])
    assert holes["n"] == 4 and holes["kendall_tau"] == pytest.approx(1.0)

    flat = rank_agreement(truth, [7, 7, 7, 7, 7])
    assert flat["n"] == 5 and math.isnan(flat["kendall_tau"]) and math.isnan(flat["spearman"])
    few = rank_agreement([1, 2], [1, 2])
    assert few["n"] == 2 and math.isnan(few["kendall_tau"])
    nothing = rank_agreement([np.nan], [1.0])
    assert nothing["n"] == 0 and math.isnan(nothing["kendall_tau"]) and nothing["top"] is None


def test_top_overlap():
    truth = list(range(20))                      # best: 19, 18
    assert top_overlap(truth, truth) == {"k": 2, "shared": 2, "overlap": 1.0}
    assert top_overlap(truth, [-t for t in truth]) == {"k": 2, "shared": 0, "overlap": 0.0}
    score = [0.0] * 20
    score[19], score[3] = 5.0, 4.0               # one of the two best found
    assert top_overlap(truth, score) == {"k": 2, "shared": 1, "overlap": 0.5}
    assert top_overlap([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])["k"] == 1   # at least one
    assert top_overlap(truth, truth, fraction=0.5)["k"] == 10
    assert rank_agreement(truth, truth)["top"]["overlap"] == 1.0


# -- nas.bench.posebench: settings and networks -------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    """The proof's settings with 7 random networks (its 5 and 2 new), and the table's entries."""
    if not (LSP / "joints.mat").is_file():
        pytest.skip("no LSP data here")
    settings = pb.proof_settings(LSP, randoms=7)
    all_entries, how = pb.entries(settings)
    return settings, all_entries, how


def test_proof_settings_continue_the_proof(bench):
    settings, _, _ = bench
    proof = json.loads((pb.PROOF_RUNS / "settings.json").read_text())
    budget = json.loads((pb.PROOF_RUNS / "budget.json").read_text())
    assert settings.space == proof["space"] and settings.seed == proof["seed"]
    assert settings.batch_size == proof["batch_size"]
    assert settings.budget_ms == pytest.approx(budget["budget_ms"])
    assert settings.recipe == "posebench" and settings.recipe_settings == recipe("posebench")
    assert settings.proof == "results/benchmarks/pose_proof_runs"
    assert (REPO / settings.table).is_file()
    low, high = settings.window_ms
    assert low == pytest.approx(0.85 * settings.budget_ms)
    assert high == pytest.approx(settings.budget_ms)
    assert settings.limit is None and settings.randoms == 7


def test_entries_are_the_proof_networks_then_the_draw(bench):
    settings, all_entries, how = bench
    keys = [e.key for e in all_entries]
    assert keys == [*pb.PROOF_KEYS, "random-6", "random-7"]
    proof, drawn = all_entries[:8], all_entries[8:]
    for e in proof:
        assert e.source == "proof" and e.in_proof
        assert 0 < e.pck_proof < 100 and 0 < e.pck_proof_flip < 100
        m = json.loads((pb.PROOF_RUNS / "train" / e.key / "metrics.json").read_text())
        assert e.pck_proof == pytest.approx(m["final"]["mean"])
    assert all(e.draw is None for e in proof[:3])
    assert all(e.source == "draw" and not e.in_proof and e.pck_proof is None for e in drawn)
    # every drawn network, the proof's random-1..5 among them, is in the proof's window
    low, high = settings.window_ms
    draws = [e.draw for e in all_entries if e.key.startswith("random-")]
    assert all(isinstance(d, int) for d in draws) and draws == sorted(set(draws))
    for e in all_entries[3:]:
        assert low <= e.predicted_ms <= high
    assert all(e.spec.space == settings.space for e in drawn)
    assert {e.key: e.spec.name for e in drawn} == {"random-6": "random-6",
                                                   "random-7": "random-7"}
    assert len({json.dumps(dict(e.spec.choices), sort_keys=True) for e in all_entries}) == 10
    assert how["kept"] == 7 and how["draws"] == draws[-1]
    assert how["acceptance"] == pytest.approx(7 / how["draws"])
    assert how["window_ms"] == pytest.approx(list(settings.window_ms))


def test_a_missing_lsp_folder_is_one_line(tmp_path):
    with pytest.raises(NasError, match="no LSP folder") as info:
        pb.proof_settings(tmp_path / "nolsp")
    assert str(tmp_path / "nolsp") in str(info.value)


def _settings(**kw):
    return pb.BenchSettings(**{"data": "/data/lsp", "table": "t.parquet", "budget_ms": 8.0,
                               "randoms": 7, "recipe_settings": {"epochs": 12, "val_every": 0},
                               **kw})


def test_pin_refuses_other_settings_and_accepts_more_randoms(tmp_path):
    out = tmp_path / "out"
    pb.pin(out, _settings())
    pinned = json.loads((out / "settings.json").read_text())
    assert pinned["recipe_settings"] == {"epochs": 12, "val_every": 0}
    assert pinned["window"] == [0.85, 1.0] and pinned["randoms"] == 7
    pb.pin(out, _settings())                                      # the same: fine

    with pytest.raises(NasError) as info:
        pb.pin(out, _settings(recipe_settings={"epochs": 1, "val_every": 0}))
    message = str(info.value)
    assert "recipe_settings" in message and "settings.json" in message and "\n" not in message
    with pytest.raises(NasError, match="limit"):
        pb.pin(out, _settings(limit=8))
    assert json.loads((out / "settings.json").read_text()) == pinned   # refusals write nothing

    pb.pin(out, _settings(randoms=9))                             # more draws extend the table
    assert json.loads((out / "settings.json").read_text())["randoms"] == 9


def _result(key, settings, *, status="complete", pck=40.0, **kw):
    r = {"format": pb.RESULT_FORMAT, "key": key, "arch": {"name": key}, "status": status,
         "recipe": settings.recipe_settings, "source": "draw"}
    if status == "complete":
        r.update(pck=pck, pck_flip=None if pck is None else pck + 1.0, train_seconds=10.0)
    r.update(kw)
    return r


def _write(out, r):
    path = pb.result_path(out, r["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))
    return path


def test_load_results_reads_and_refuses_damaged_files(tmp_path):
    settings = _settings()
    assert pb.load_results(tmp_path, settings) == {}
    _write(tmp_path, _result("random-6", settings))
    _write(tmp_path, _result("random-7", settings, status="failed", reason="loss nan"))
    done = pb.load_results(tmp_path, settings)
    assert set(done) == {"random-6", "random-7"} and done["random-7"]["status"] == "failed"

    bad = pb.result_path(tmp_path, "random-8")
    bad.write_text('{"format": "nas.posebench/1", "ke')          # a write cut short
    with pytest.raises(NasError) as info:
        pb.load_results(tmp_path, settings)
    message = str(info.value)
    assert str(bad) in message and "delete it" in message and "\n" not in message
    bad.unlink()

    other = _write(tmp_path, _result("random-8", settings,
                                     recipe={"epochs": 1, "val_every": 0}))
    with pytest.raises(NasError, match="recipe") as info:
        pb.load_results(tmp_path, settings)
    assert str(other) in str(info.value) and "delete it" in str(info.value)
    other.unlink()

    r = _result("random-8", settings)
    del r["status"]
    _write(tmp_path, r)
    with pytest.raises(NasError, match="not a posebench result.*status"):
        pb.load_results(tmp_path, settings)
    _write(tmp_path, _result("random-8", settings, pck=None))
    with pytest.raises(NasError, match="without a PCK"):
        pb.load_results(tmp_path, settings)


def _invocation(**kw):
    inv = {"started": "2025-01-01T00:00:00+0000", "command": "x", "status": "complete",
           "seconds": 1.0, "trained": 0, "workers": 1, "machine": "m"}
    inv.update(kw)
    return inv


def test_report_writes_the_table_and_the_recipe_check(bench, tmp_path, cheap_complexity):
    settings, all_entries, how = bench
    extra = pb.Entry("random-8", all_entries[-1].spec, "draw", draw=how["draws"] + 5,
                     predicted_ms=8.0)
    table_entries = [*all_entries, extra]
    results = {e.key: _result(e.key, settings, pck=e.pck_proof, source="proof")
               for e in all_entries[:8]}
    results["random-6"] = _result("random-6", settings, status="failed",
                                  reason="training loss became nan in epoch 3, step 7")
    results["random-8"] = _result("random-8", settings, pck=45.0)
    for r in results.values():
        _write(tmp_path, r)
    assert pb.load_results(tmp_path, settings) == results        # what main() passes on

    summary = pb.report(tmp_path, settings, table_entries, how, results, None, command="x",
                        invocation=_invocation())
    for name in ("table.parquet", "table.csv", "summary.json", "README.md", "invocations.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=str))

    table = pb.load_table(tmp_path)
    assert list(table["key"]) == [e.key for e in table_entries]
    row = table.set_index("key")
    assert row.loc["random-6", "status"] == "failed"
    assert "nan in epoch 3" in row.loc["random-6", "reason"]
    assert row.loc["random-7", "status"] == "pending" and pd.isna(row.loc["random-7", "pck"])
    assert row.loc["random-8", "pck"] == 45.0 and row.loc["random-8", "source"] == "draw"
    assert list(row["in_proof"]) == [True] * 8 + [False] * 3
    assert row.loc["searched", "pck_proof_30ep"] == pytest.approx(all_entries[1].pck_proof)
    assert row["latency_ms"].isna().all()
    csv = pd.read_csv(tmp_path / "table.csv")
    assert list(csv["key"]) == list(table["key"]) and list(csv["status"]) == list(table["status"])
    assert json.loads(row.loc["random-7", "arch"])["name"] == "random-7"

    assert summary["networks"] == 11 and summary["complete"] == 9
    assert summary["failed"] == ["random-6"] and summary["pending"] == ["random-7"]
    # the proof's random-1..5 are draws too (with their indices): 5 + random-8
    assert summary["drawn_complete"] == 6
    drawn_pcks = [e.pck_proof for e in all_entries[3:8]] + [45.0]
    assert summary["pck_drawn"]["mean"] == pytest.approx(np.mean(drawn_pcks))
    assert summary["pck_drawn"]["max"] == pytest.approx(max(drawn_pcks))
    assert summary["latency"] is None and summary["measured_in_window"] is None
    assert summary["train_seconds"] == pytest.approx(90.0)

    check = summary["recipe_check"]
    assert check["networks"] == list(pb.PROOF_KEYS) and check["n"] == 8
    assert check["kendall_tau"] == pytest.approx(1.0) and check["spearman"] == pytest.approx(1.0)
    assert check["met"] is True and check["target_tau"] == 0.6
    # mobilenetv2 is not a network of the space: the check is given without it as well
    assert check["space_only"]["networks"] == list(pb.PROOF_KEYS[1:])
    assert check["space_only"]["kendall_tau"] == pytest.approx(1.0)
    readme = (tmp_path / "README.md").read_text()
    assert "9 of 11 networks trained" in readme and "1 failed (random-6)" in readme
    assert "pending: 1" in readme and "Kendall tau 1.000" in readme and "met." in readme
    assert "| random-6 | draw | failed |" in readme and "| random-7 | draw | pending |" in readme
    assert "Not measured yet" in readme
    assert "| random-3 | " in readme.split("## Latency")[0]   # the check's own table

    # a report alone (invocation None) is not recorded as a run
    before = (tmp_path / "invocations.json").read_text()
    pb.report(tmp_path, settings, table_entries, how, results, None, command="x",
              invocation=None)
    assert (tmp_path / "invocations.json").read_text() == before

    # a second run appends its invocation; a worse short recipe fails the check
    worse = dict(results)
    for key, pck in zip(pb.PROOF_KEYS, [40, 30, 45, 20, 50, 35, 25, 42], strict=True):
        worse[key] = {**results[key], "pck": float(pck)}
    summary = pb.report(tmp_path, settings, table_entries, how, worse, None, command="x",
                        invocation=_invocation(command="y"))
    assert [inv["command"] for inv in summary["invocations"]] == ["x", "y"]
    assert summary["recipe_check"]["met"] is False
    assert summary["recipe_check"]["kendall_tau"] < 0.6
    assert "**not met**" in (tmp_path / "README.md").read_text()


def test_recipe_check_waits_for_all_eight(bench, tmp_path, cheap_complexity):
    settings, all_entries, how = bench
    results = {e.key: _result(e.key, settings, pck=e.pck_proof) for e in all_entries[:5]}
    summary = pb.report(tmp_path, settings, all_entries, how, results, None, command="x",
                        invocation=_invocation())
    check = summary["recipe_check"]
    assert check["n"] == 5 and check["kendall_tau"] == pytest.approx(1.0)
    assert check["met"] is False        # tau 1, but not on all 8 proof networks
    assert "pending (not all 8 trained)" in (tmp_path / "README.md").read_text()
    assert summary["pending"] == [e.key for e in all_entries[5:]]


def test_load_table_of_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(NasError, match="no posebench table"):
        pb.load_table(tmp_path)


def test_a_killed_network_continues_from_its_checkpoint(tmp_path, capsys):
    run = tmp_path / "random-6"
    cfg = _cfg(epochs=1)
    train(cfg, run, progress=False)
    assert pb._resumable(run, cfg.to_dict())
    assert "another run's" not in capsys.readouterr().err


def test_another_run_s_checkpoint_is_not_resumed(tmp_path, capsys):
    run = tmp_path / "random-6"
    train(_cfg(epochs=1), run, progress=False)
    assert not pb._resumable(run, _cfg(epochs=1, seed=3).to_dict())
    assert "another run's" in capsys.readouterr().err
    (run / "resume.pt").write_bytes(b"not a checkpoint")
    assert not pb._resumable(run, _cfg(epochs=1).to_dict())
    assert "unreadable" in capsys.readouterr().err
    assert not pb._resumable(tmp_path / "nothing", _cfg(epochs=1).to_dict())


# -- benchmarks/posebench.py ---------------------------------------------------------------------
def _script():
    return benchmark_script("posebench")


@needs_lsp
def test_script_smoke_one_network_then_refuses_other_settings(tmp_path, capsys,
                                                             cheap_complexity):
    """Kept short: 8 images, 1 epoch, 1 network (random-6), no latency. The run is in-process
    (MACs stubbed; training still happens in the script's spawned worker); the refused rerun is
    the real command line."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    code = _script().main(["--data", str(LSP), "--epochs", "1", "--limit", "8", "--randoms", "6",
                           "--max-networks", "1", "--only", "random-6", "--workdir", str(runs),
                           "--out", str(out), "--no-measure"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("1 of 9 networks trained")
    result = json.loads((out / "networks" / "random-6.json").read_text())
    assert result["format"] == pb.RESULT_FORMAT and result["status"] == "complete"
    assert result["recipe"] == {"epochs": 1, "val_every": 0}
    assert result["test_samples"] == 8 and len(result["train_loss"]) == 1
    assert 0 <= result["pck"] <= 100 and 0 <= result["pck_flip"] <= 100
    assert sorted(p.name for p in (out / "networks").iterdir()) == ["random-6.json"]
    for name in ("settings.json", "table.parquet", "table.csv", "summary.json", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "settings.json").read_text())["limit"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] == 1 and len(summary["pending"]) == 8
    assert (runs / "random-6" / "resume.pt").is_file()
    assert "Smoke run: at most 8 images" in (out / "README.md").read_text()

    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(LSP), "--epochs", "2",
                           "--limit", "8",
                           "--randoms", "6", "--max-networks", "1", "--only", "random-6",
                           "--workdir", str(runs), "--out", str(out), "--no-measure"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("posebench: error: ") and "settings.json" in done.stderr
    assert "recipe_settings" in done.stderr
    assert json.loads((out / "networks" / "random-6.json").read_text()) == result


@needs_lsp
def test_script_smoke_run_cannot_write_the_committed_table(tmp_path, monkeypatch, capsys):
    """Refused right after reading the proof's settings, before pin() writes anything; pin and
    everything after it are replaced here so that nothing could reach results/posebench."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("posebench went past the --limit refusal")

    for name in ("pin", "write_json", "entries", "load_results", "train_all", "report"):
        monkeypatch.setattr(pb, name, must_not_run)
    monkeypatch.chdir(REPO)           # the default --out, results/posebench, is the committed one
    code = _script().main(["--data", str(LSP), "--limit", "8", "--workdir",
                           str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("posebench: error: --limit 8: a smoke run cannot write")
    assert not (tmp_path / "runs").exists()


def test_script_refuses_bad_numbers(capsys):
    with pytest.raises(SystemExit) as info:
        _script().parse_args(["--randoms", "0"])
    assert info.value.code == 2 and "--randoms 0" in capsys.readouterr().err


# -- search quality: scoring a search's pick on the table ----------------------------------------

def test_percentile_counts_ties_half():
    from nas.bench.search_quality import percentile

    assert percentile(5.0, [1, 2, 3, 4]) == 100.0
    assert percentile(0.0, [1, 2, 3, 4]) == 0.0
    assert percentile(2.0, [1, 2, 3, 4]) == 37.5
    assert percentile(2.5, [1, 2, 3, 4]) == 50.0


def test_search_quality_runs_every_strategy_at_the_tables_setting():
    from nas.bench.posebench import BenchSettings
    from nas.bench.search_quality import QualitySettings, search_config

    bench = BenchSettings(data="/data/lsp", budget_ms=8.499, table="t.parquet")
    q = QualitySettings(supernet="s.pt", trials=50)
    diff = search_config(q, bench, "differentiable", 1)
    assert (diff.strategy, diff.seed, diff.epochs, diff.budget_ms) == ("differentiable", 1, 10,
                                                                       8.499)
    assert search_config(q, bench, "reinforce-rank", 1).epochs == 40   # a variant's own
    assert search_config(q, bench, "random-48", 1).trials == 48
    assert diff.input_size == (128, 128) and diff.num_joints == 14 and diff.data == "/data/lsp"
    opt = search_config(q, bench, "optuna", 2)
    assert (opt.strategy, opt.trials, opt.supernet, opt.seed) == ("optuna", 50, "s.pt", 2)
    # the search's window lies inside the table's
    low, high = (w * opt.budget_ms for w in opt.window)
    assert bench.window_ms[0] <= low < high <= bench.window_ms[1]
    with pytest.raises(NasError, match="--supernet"):
        search_config(QualitySettings(), bench, "random", 0)


def test_a_searchs_own_supernet_is_scored_on_the_window_once(tmp_path):
    """search_quality --fidelity: the window's networks scored by a finished search's supernet,
    tau against their PCK, cached by the checkpoint's hash (a copy of the checkpoint reuses it;
    without ``compute`` only the cache answers)."""
    import shutil

    from conftest import macs_table

    from nas.bench.posebench import BenchSettings
    from nas.bench.search_quality import supernet_fidelity
    from nas.search import SearchConfig, search

    space = get_space("cpu-small", input_size=(64, 64))
    lut_path = macs_table(space, tmp_path)
    cfg = SearchConfig(budget_ms=100.0, space="cpu-small", input_size=(64, 64), epochs=1,
                       train_samples=32, batch_size=8, rank_samples=0)
    search(cfg, tmp_path / "a", lut=str(lut_path), allow_foreign_lut=True, progress=False)
    gen = torch.Generator().manual_seed(0)
    specs = [space.spec({layer.label: layer.names[int(torch.randint(len(layer.names), (1,),
                                                                    generator=gen))]
                         for layer in space.choice_layers()}) for _ in range(4)]
    inside = pd.DataFrame({"key": [f"net-{i}" for i in range(4)],
                           "arch": [json.dumps(s.to_dict()) for s in specs],
                           "pck": [10.0, 20.0, 30.0, 40.0]})
    bench = BenchSettings(data=None, budget_ms=100.0, table=str(lut_path))
    cache = tmp_path / "fidelity"
    result = supernet_fidelity(tmp_path / "a", bench, inside, cache, log=lambda m: None)
    assert set(result["losses"]) == set(inside["key"]) and -1 <= result["kendall_tau"] <= 1
    assert result["best"] == min(result["losses"], key=result["losses"].get)
    assert result["best_percentile"] == {"net-0": 12.5, "net-1": 37.5, "net-2": 62.5,
                                         "net-3": 87.5}[result["best"]]
    assert len(list(cache.glob("*.json"))) == 1
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    again = supernet_fidelity(tmp_path / "b", bench, inside, cache, compute=False)
    assert again == result                                    # from the cache, nothing scored
    assert supernet_fidelity(tmp_path / "c", bench, inside, cache) is None   # no checkpoint


def test_a_ranking_variant_ranks_anothers_trained_search_again(tmp_path):
    """RERANKS: the finished search copied with other rank_* settings and resumed ranks the same
    trained supernet again (its training is not repeated); other settings must match."""
    import dataclasses

    from conftest import macs_table

    from nas.bench.search_quality import RERANKS, VARIANTS, rerank_from
    from nas.search import SearchConfig, search

    assert all(VARIANTS[v]["rank_draw"] != VARIANTS[b]["rank_draw"] for v, b in RERANKS.items())
    space = get_space("cpu-small", input_size=(64, 64))
    lut_path = macs_table(space, tmp_path)
    cfg = SearchConfig(budget_ms=100.0, space="cpu-small", input_size=(64, 64), epochs=1,
                       train_samples=32, batch_size=8, rank_samples=2, rank_images=8,
                       rank_bn_batches=1)
    first = search(cfg, tmp_path / "a", lut=str(lut_path), allow_foreign_lut=True,
                   progress=False)
    before = (tmp_path / "a" / "checkpoint.pt").read_bytes()
    again = dataclasses.replace(cfg, rank_samples=4, rank_draw="evolve")
    rerank_from(tmp_path / "a", tmp_path / "b", again)
    steps = []
    report = search(None, tmp_path / "b", lut=str(lut_path), allow_foreign_lut=True,
                    progress=False, resume=True, on_step=lambda *a, **k: steps.append(1))
    assert steps == []                                      # no training step: ranked only
    assert len(report["ranking"]) == 5 and len(first["ranking"]) == 3
    assert {r["source"] for r in report["ranking"]} == {"derived", "sampled", "mutated"}
    derived = [r for r in report["ranking"] if r["source"] == "derived"][0]
    assert derived["choices"] == [r for r in first["ranking"]
                                  if r["source"] == "derived"][0]["choices"]
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == before
    with pytest.raises(NasError, match="epochs"):
        rerank_from(tmp_path / "a", tmp_path / "c", dataclasses.replace(again, epochs=2))


def test_picks_train_under_their_choices():
    from nas.bench.search_quality import pick_key

    space = get_space("cpu-small", input_size=(64, 64))
    a, b = (space.sample(np.random.default_rng(i)) for i in (0, 1))
    assert pick_key("x-s0", a) == pick_key("x-s0", a) != pick_key("x-s0", b)
    assert pick_key("x-s0", a).startswith("pick-x-s0-")


def test_earlier_rows_are_carried_where_this_run_has_none():
    from nas.bench.search_quality import QualitySettings, add_earlier, render

    def row(key, pck, pct):
        strategy, seed = key.rsplit("-s", 1)
        return {"key": key, "strategy": strategy, "seed": int(seed), "predicted_ms": 8.0,
                "in_table": None, "trained": f"pick-{key}", "pck": pck, "percentile": pct,
                "proxy_loss": 0.1, "evaluations": 48, "search_seconds": 60.0,
                "supernet": None, "choices": {}}

    result = {"window_ms": [7.2, 8.5], "population": 4, "not_run": ["random-48-s1"],
              "population_pck": {"min": 1.0, "median": 2.0, "max": 3.0},
              "rows": [row("reinforce-evolve-e10-s0", 30.0, 90.0)], "summary": {}}
    earlier = {"window_ms": [7.2, 8.5], "machine": "cpu 'old'",
               "rows": [row("random-48-s0", 20.0, 50.0), row("random-48-s1", 24.0, 70.0),
                        row("reinforce-evolve-e10-s0", 10.0, 10.0)]}
    strategies = add_earlier(result, earlier, "old.json")
    assert strategies == ["reinforce-evolve-e10", "random-48"]
    keys = [(r["key"], r.get("earlier", False)) for r in result["rows"]]
    assert keys == [("reinforce-evolve-e10-s0", False), ("random-48-s0", True),
                    ("random-48-s1", True)]                     # this run's row wins
    assert result["summary"]["random-48"]["mean_percentile"] == 60.0
    assert result["summary"]["reinforce-evolve-e10"]["mean_pck"] == 30.0
    assert result["not_run"] == []
    result["strategies"] = strategies
    text = render(result, QualitySettings(), command="c", machine="cpu 'new'")
    assert "| random-48* | 0 |" in text and "searched and timed on cpu 'old'" in text
    assert [r["key"] for r in result["replaced"]] == ["reinforce-evolve-e10-s0"]
    assert "| reinforce-evolve-e10 | 0 | 10.00 | 10 |" in text
    with pytest.raises(NasError, match="window"):
        add_earlier(result, {**earlier, "window_ms": [7.0, 8.5]}, "old.json")


def test_a_report_read_back_as_earlier_keeps_its_replaced_rows_once():
    """Running the same report again with --earlier pointing at its own JSON: this machine's
    rows are not listed as replaced, the other machine's replaced rows stay, once."""
    from nas.bench.search_quality import add_earlier

    def row(key, pct, machine=None):
        strategy, seed = key.rsplit("-s", 1)
        return {"key": key, "strategy": strategy, "seed": int(seed), "pck": pct, "percentile": pct,
                "search_seconds": 1.0, "evaluations": 48, **({"machine": machine} if machine
                                                             else {})}

    first = {"window_ms": [1.0, 2.0], "rows": [row("random-48-s0", 50.0, "new")], "summary": {}}
    add_earlier(first, {"window_ms": [1.0, 2.0], "machine": "old",
                        "rows": [row("random-48-s0", 40.0), row("random-s0", 90.0)]},
                "a.json", "new")
    assert [(r["key"], r["machine"]) for r in first["replaced"]] == [("random-48-s0", "old")]
    again = {"window_ms": [1.0, 2.0], "rows": [row("random-48-s0", 50.0, "new")], "summary": {}}
    add_earlier(again, first, "b.json", "new")
    assert [(r["key"], r["machine"]) for r in again["replaced"]] == [("random-48-s0", "old")]
    assert sorted(r["key"] for r in again["rows"]) == ["random-48-s0", "random-s0"]
