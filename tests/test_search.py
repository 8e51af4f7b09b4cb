"""`nas search` end to end on a tiny run: outputs, budget window, resume, bad input.

The latency table here is synthetic (row latency proportional to MACs), so the budget logic is
checked exactly and fast; tables measured on this machine are tested in test_lut_*.
"""

import json
import os
import signal

import numpy as np
import pytest
import torch
from conftest import macs_table, stand_in_probe

from lut import LatencyPredictor, LatencyTable
from nas.cli import main
from nas.search import SearchConfig, format_ms, search
from supernets.errors import NasError
from supernets.space import get_space
from supernets.spec import ArchSpec

INPUT = (64, 64)
TINY = ["--input", "64x64", "--space", "cpu-small", "--epochs", "2", "--train-samples", "40",
        "--batch-size", "8", "--rank-samples", "4", "--no-progress", "--allow-foreign-lut"]


@pytest.fixture(scope="module")
def space():
    return get_space("cpu-small", input_size=INPUT)


@pytest.fixture(scope="module")
def lut_path(space, tmp_path_factory):
    return macs_table(space, tmp_path_factory.mktemp("lut"))


@pytest.fixture(scope="module")
def bounds(lut_path, space):
    predictor = LatencyPredictor(LatencyTable.load(lut_path, allow_foreign=True))
    (_, fast), (_, slow) = predictor.bounds(space)
    return fast, slow


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def searched(lut_path, bounds, tmp_path_factory):
    fast, slow = bounds
    budget = fast + 0.4 * (slow - fast)
    out = tmp_path_factory.mktemp("search")
    code = main(["search", "--budget", f"{budget}ms", "--lut", str(lut_path), "--out", str(out),
                 "--json", *TINY, "--rank-samples", "16"])
    assert code == 0
    return out, budget


def test_search_writes_arch_report_logs_plot(searched, space):
    out, budget = searched
    for name in ("arch.json", "report.json", "log.jsonl", "search.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    spec = ArchSpec.load(out / "arch.json")
    space.check(spec)
    report = json.loads((out / "report.json").read_text())
    assert report["arch"] == spec.to_dict()
    assert 0.85 * budget <= report["predicted_ms"] <= budget
    assert report["in_window"] and not report["accuracy_only"]
    assert {x["label"] for x in report["layers"]} == set(spec.choices)
    assert all(0 < x["prob"] <= 1 for x in report["layers"])
    assert report["lut"]["sha256"] and report["lut"]["fingerprint"] == {"type": "synthetic"}
    assert report["measured_ms"] is None  # a foreign (synthetic) table: nothing to measure
    ranking = report["ranking"]  # the derived network and up to 16 drawn ones, best first
    assert ranking[0]["choices"] == spec.choices and report["proxy_loss"] > 0
    assert [r["rank"] for r in ranking] == list(range(1, len(ranking) + 1)) and len(ranking) > 5
    losses = [r["proxy_loss"] for r in ranking]
    assert losses == sorted(losses) and losses[0] < losses[-1]
    assert sum(r["source"] == "derived" for r in ranking) == 1
    assert all(0.85 * budget <= r["predicted_ms"] <= budget for r in ranking)
    assert report["macs"] > 0 and report["params"] > 0 and report["seed"] == 0
    assert report["lam_trajectory"][0] == [0, 0.1]
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [1, 2]
    assert [r["phase"] for r in logs] == ["warmup", "search"]
    assert all(set(r["probs"]) == set(spec.choices) for r in logs)


def test_search_json_prints_one_object(lut_path, bounds, tmp_path, capsys):
    fast, slow = bounds
    code, out, _ = run(["search", "--budget", f"{(fast + slow) / 2}ms", "--lut", str(lut_path),
                        "--out", str(tmp_path / "s"), "--json", *TINY, "--rank-samples", "0"],
                       capsys)
    assert code == 0
    report = json.loads(out)
    assert report["out"] == str(tmp_path / "s") and "predicted_ms" in report
    # --rank-samples 0: derivation's network, no ranking
    assert report["ranking"] is None and report["selected_by"] == "derivation"
    assert report["config"]["mode"] == "reinforce" and report["config"]["arch_lr"] == 0.05


def test_budget_below_fastest_stops_before_training(lut_path, bounds, tmp_path, capsys):
    fast, _ = bounds
    out = tmp_path / "never"
    code, _, err = run(["search", "--budget", f"{fast * 0.5}ms", "--lut", str(lut_path),
                        "--out", str(out), *TINY], capsys)
    assert code == 2
    assert "fastest" in err and format_ms(fast) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_budget_above_slowest_searches_for_accuracy_alone(lut_path, bounds, tmp_path, capsys):
    _, slow = bounds
    code, out, err = run(["search", "--budget", f"{slow * 2}ms", "--lut", str(lut_path),
                          "--out", str(tmp_path / "s"), "--json", *TINY], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["accuracy_only"] and report["window_ms"] is None
    assert report["lam_trajectory"][-1][1] == 0.0
    assert "accuracy alone" in err


@pytest.mark.parametrize("mode", ["path", "reinforce"])
def test_resume_after_interruption_gives_the_same_architecture(mode, lut_path, bounds, tmp_path):
    fast, slow = bounds
    cfg = dict(budget_ms=fast + 0.5 * (slow - fast), space="cpu-small", input_size=INPUT,
               epochs=3, warmup_epochs=1, train_samples=40, batch_size=8, seed=3, mode=mode,
               lam_control="expected" if mode == "reinforce" else "argmax", rank_samples=4)
    kw = dict(lut=str(lut_path), allow_foreign_lut=True, progress=False)
    full = search(SearchConfig(**cfg), tmp_path / "full", **kw)

    def stop_midway(searcher):
        if searcher.epoch == 1 and searcher.step == 2:
            searcher.request_stop()

    stopped = search(SearchConfig(**cfg), tmp_path / "cut", on_step=stop_midway, **kw)
    assert stopped["status"] == "interrupted"
    assert not (tmp_path / "cut" / "arch.json").exists()
    resumed = search(None, tmp_path / "cut", resume=True, **kw)
    assert resumed["arch"]["choices"] == full["arch"]["choices"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["arch"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["arch"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize("argv, message", [
    (["--budget", "3 parsecs"], "--budget '3 parsecs'"),
    (["--budget=-1ms"], "--budget '-1ms'"),
    (["--budget", "-1ms"], "argument --budget: expected one argument"),
    (["--budget", "3ms", "--task", "dance"], "--task 'dance'"),
    (["--budget", "3ms", "--space", "nope"], "unknown space 'nope'"),
    (["--budget", "3ms", "--data", "/nonexistent/lsp"], "/nonexistent/lsp"),
    (["--budget", "3ms", "--mode", "softmax", "--epochs", "0"], "argument --epochs: '0'"),
    ([], "--budget is required"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, lut_path, bounds, tmp_path,
                                                  capsys):
    if "--data" in argv:  # a budget the table can meet, so the data is what fails
        argv = ["--budget", f"{bounds[1]}ms", *argv[2:]]
    out = tmp_path / "out"
    code, _, err = run(["search", "--lut", str(lut_path), "--out", str(out), *TINY, *argv], capsys)
    assert code == 2, err
    assert message in err and "error:" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_resume_from_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(["search", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "corrupt search checkpoint" in err and str(tmp_path) in err
    code, _, err = run(["search", "--resume", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no search checkpoint" in err


def test_network_measuring_over_budget_is_derived_again(lut_path, bounds, space, tmp_path,
                                                         monkeypatch):
    """The table here predicts 15% fast on every network: the first derived network measures
    over the budget, the measurement feeds back (the predictor is corrected by 1.15), and the
    network derived again with it inside the same window measures under the budget."""
    import lut.isolated

    predictor = LatencyPredictor(LatencyTable.load(lut_path, allow_foreign=True))
    measured = []

    def fake_measure(spec, device, **kw):
        ms = 1.15 * predictor.latency(spec)
        measured.append(ms)
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "samples": 1}

    stand_in_probe(monkeypatch)
    monkeypatch.setattr(lut.isolated, "measure_network_isolated", fake_measure)
    fast, slow = bounds
    budget = fast + 0.5 * (slow - fast)
    cfg = SearchConfig(budget_ms=budget, space="cpu-small", input_size=INPUT, epochs=1,
                       train_samples=40, batch_size=8, rank_samples=4)
    report = search(cfg, tmp_path / "s", lut=str(lut_path), progress=False)
    checks = report["measure_checks"]
    assert len(checks) == len(measured) == 2
    assert checks[0]["measured_ms"] > budget >= checks[1]["measured_ms"]
    assert report["measured_ms"] == checks[1]["measured_ms"] <= budget
    assert report["verdict"] == "met"
    assert report["arch"]["choices"] == checks[1]["choices"] != checks[0]["choices"]
    assert checks[0]["correction"] == 1.0 and checks[1]["correction"] == pytest.approx(1.15)
    # the window never moves: the corrected predictor is what changes
    assert checks[0]["window_ms"] == checks[1]["window_ms"]
    low, high = checks[1]["window_ms"]
    assert low <= report["predicted_ms"] <= high
    assert report["predicted_ms"] == pytest.approx(report["measured_ms"])
    assert report["latency_feedback"]["final_correction"] == pytest.approx(1.15)


def test_ranked_network_measuring_over_budget_is_replaced_by_the_next_inside(
        lut_path, space, tmp_path, monkeypatch):
    """With a ranking, the replacement is the best-ranked candidate inside the window by the
    corrected predictor: here the ranking is A (0.96 x budget), C (0.70 x), B (0.88 x); every
    network measures 6% over its prediction, so A fails, the predictor is corrected by 1.06
    (A 1.02, C 0.74, B 0.93 x budget) and B, not C, is taken, measured and kept."""
    import lut.isolated
    import nas.search.run as run_module

    predictor = LatencyPredictor(LatencyTable.load(lut_path, allow_foreign=True))
    rng = np.random.default_rng(0)
    specs = sorted((space.sample(rng, name="s") for _ in range(300)), key=predictor.latency)
    a = specs[int(0.9 * len(specs))]
    budget = predictor.latency(a) / 0.96

    def nearest(fraction):
        return min(specs, key=lambda x: abs(predictor.latency(x) - fraction * budget))

    b, c = nearest(0.88), nearest(0.70)
    assert 0.83 < predictor.latency(b) / budget < 0.91 and predictor.latency(c) / budget < 0.8

    def fake_rank(searcher, probs, derived, window, name):
        return [{"spec": x, "predicted_ms": predictor.latency(x), "source": "sampled",
                 "rank": i + 1, "proxy_loss": 0.1 * (i + 1)} for i, x in enumerate((a, c, b))]

    def fake_measure(spec, device, **kw):
        ms = 1.06 * predictor.latency(spec)
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "samples": 1}

    stand_in_probe(monkeypatch)
    monkeypatch.setattr(lut.isolated, "measure_network_isolated", fake_measure)
    monkeypatch.setattr(run_module, "rank", fake_rank)
    cfg = SearchConfig(budget_ms=budget, space="cpu-small", input_size=INPUT, epochs=1,
                       train_samples=40, batch_size=8, rank_samples=2)
    report = search(cfg, tmp_path / "s", lut=str(lut_path), progress=False)
    assert [ch["choices"] for ch in report["measure_checks"]] == [a.choices, b.choices]
    assert report["arch"]["choices"] == b.choices and report["measured_ms"] <= budget
    assert report["selected_by"] == "supernet ranking (rank 3 of 3)"
    assert report["finetune_steps"] == 0 and report["finetune_loss"] is None  # pose: off


def test_network_still_over_budget_after_the_checks_fails_with_one_line(
        lut_path, bounds, tmp_path, capsys, monkeypatch):
    """Every network measures 1.2 x the budget: after three measured networks the search
    exits 3 with one line (measured latency, the space's fastest as measured, a budget that
    would work), report.json carries the verdict and no arch.json is written."""
    import lut.isolated

    fast, slow = bounds
    budget = fast + 0.5 * (slow - fast)
    calls = []

    def fake_measure(spec, device, **kw):
        calls.append(spec.name)
        ms = 1.2 * budget
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "samples": 1}

    stand_in_probe(monkeypatch)
    monkeypatch.setattr(lut.isolated, "measure_network_isolated", fake_measure)
    out = tmp_path / "s"
    code, stdout, err = run(["search", "--budget", f"{budget}ms", "--lut", str(lut_path),
                             "--out", str(out), "--json", *TINY], capsys)
    assert code == 3
    lines = err.strip().splitlines()
    assert lines[-1].startswith("nas: error: the selected network measured ")
    assert "1.20x the" in lines[-1] and "the fastest network of cpu-small measures" in lines[-1]
    assert "--budget " in lines[-1] and "no arch.json" in lines[-1]
    data = json.loads(stdout)
    report = json.loads((out / "report.json").read_text())
    assert data["verdict"] == report["verdict"] == "over_budget"
    assert len(report["measure_checks"]) == 3 and report["fastest_measured_ms"] > 0
    assert report["suggested_budget_ms"] >= report["measured_ms"]
    assert not (out / "arch.json").exists()


def test_network_within_noise_of_the_budget_passes(lut_path, bounds, tmp_path, monkeypatch):
    """1.00-1.05 x budget is measurement noise: reported as such, exit 0."""
    import lut.isolated

    fast, slow = bounds
    budget = fast + 0.5 * (slow - fast)

    def fake_measure(spec, device, **kw):
        ms = 1.03 * budget
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "samples": 1}

    stand_in_probe(monkeypatch)
    monkeypatch.setattr(lut.isolated, "measure_network_isolated", fake_measure)
    cfg = SearchConfig(budget_ms=budget, space="cpu-small", input_size=INPUT, epochs=1,
                       train_samples=40, batch_size=8, rank_samples=4)
    report = search(cfg, tmp_path / "s", lut=str(lut_path), progress=False)
    assert report["verdict"] == "met_within_noise" and (tmp_path / "s" / "arch.json").exists()


def test_probe_slower_than_the_table_puts_a_close_budget_out_of_reach(
        lut_path, bounds, tmp_path, capsys, monkeypatch):
    """The probe measures this machine 10% slower than the table (inside the tolerance): the
    search predicts with that, so a budget 5% above the table's fastest network is out of
    reach before any training, naming the fastest network as measured."""
    fast, _ = bounds
    stand_in_probe(monkeypatch, ratio=1.10, fastest_ms=1.10 * fast)
    out = tmp_path / "s"
    code, stdout, err = run(["search", "--budget", f"{1.05 * fast}ms", "--lut", str(lut_path),
                             "--out", str(out), *TINY], capsys)
    assert code == 2 and stdout == ""
    line = err.strip().splitlines()[-1]
    assert "out of reach on this device" in line
    assert f"measures {format_ms(1.10 * fast)} here (speed probe)" in line
    assert not out.exists()


def test_search_refuses_a_table_of_another_device_type(lut_path, tmp_path, capsys, monkeypatch):
    """`--device cuda` with this machine's CPU table: the budget would be a CPU latency."""
    stand_in_probe(monkeypatch)
    code, _, err = run(["search", "--budget", "3ms", "--lut", str(lut_path), "--device", "cuda",
                        "--out", str(tmp_path / "s"), *TINY[:-1]], capsys)
    assert code == 2 and "describes cpu" in err and "nas lut build --device cuda" in err
    assert not (tmp_path / "s").exists()


def test_table_of_another_space_is_refused_even_when_foreign_is_allowed(lut_path, tmp_path,
                                                                          capsys):
    code, out, err = run(["search", "--budget", "3ms", "--lut", str(lut_path), "--input",
                          "96x96", "--out", str(tmp_path / "s"), *TINY[2:]], capsys)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert "covers space cpu-small at 64x64" in line and "at 96x96" in line
    assert not (tmp_path / "s").exists()


# -- exits that tell the truth, outputs that are never mixed ------------------------------------
def stop_after_first_step(monkeypatch):
    """Ctrl-C after the first weight step, through the real signal handler of the search."""
    from nas.search.searcher import Searcher

    weight_step = Searcher._weight_step

    def step_then_ctrl_c(self, *args, **kwargs):
        loss = weight_step(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Searcher, "_weight_step", step_then_ctrl_c)


def test_interrupted_search_exits_130_and_says_how_to_resume(lut_path, bounds, tmp_path, capsys,
                                                             monkeypatch):
    out = tmp_path / "s"
    stop_after_first_step(monkeypatch)
    code, stdout, err = run(["search", "--budget", f"{bounds[1]}ms", "--lut", str(lut_path),
                             "--out", str(out), "--json", *TINY], capsys)
    assert code == 130
    report = json.loads(stdout)  # --json still prints its one object
    assert report["status"] == "interrupted" and report["resume"] == f"nas search --resume {out}"
    assert err.strip().splitlines()[-1] == (f"nas: search interrupted; checkpoint "
                                            f"{out / 'checkpoint.pt'}; continue with: nas search "
                                            f"--resume {out}")
    assert (out / "checkpoint.pt").is_file() and not (out / "arch.json").exists()


def test_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    code, _, err = run(["search", "--resume", str(tmp_path), "--budget", "10ms", "--space",
                        "cpu-small", "--epochs", "30", "--seed", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--resume {tmp_path} continues a search with the settings in its checkpoint; it " \
           "cannot change --budget, --space, --seed (only --epochs, to extend it)" in err


def test_new_search_into_a_used_out_is_refused_without_force(lut_path, bounds, tmp_path, capsys,
                                                             monkeypatch):
    """A finished search's arch.json and report.json would otherwise stay beside the new
    search's checkpoint and log; --force deletes the known files (and nothing else) first."""
    out = tmp_path / "s"
    out.mkdir()
    for name in ("arch.json", "report.json", "search.png", "checkpoint.pt", "notes.txt"):
        (out / name).write_text("old")
    argv = ["search", "--budget", f"{bounds[1]}ms", "--lut", str(lut_path), "--out", str(out),
            *TINY]
    code, _, err = run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "already holds a search (checkpoint.pt, arch.json, report.json, search.png)" in err
    assert f"--resume {out}" in err and "--force" in err
    assert (out / "arch.json").read_text() == "old"
    stop_after_first_step(monkeypatch)  # the replacing search is stopped at once: no new arch
    code, _, _ = run([*argv, "--force"], capsys)
    assert code == 130
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl", "notes.txt"]
    assert (out / "notes.txt").read_text() == "old"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_cannot_be_a_folder_is_refused_before_any_work(where, tmp_path, capsys,
                                                                monkeypatch):
    import nas.search.run

    def never(*args, **kwargs):
        raise AssertionError("prepared the search before checking --out")

    monkeypatch.setattr(nas.search.run, "prepare", never)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
    code, _, err = run(["search", "--budget", "3ms", "--out", str(out), *TINY], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--out {out}: " in err and "not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_search_in_onnxruntime_measures_its_checks_there(lut_path, bounds, tmp_path,
                                                         monkeypatch):
    """A table measured in ONNX Runtime: the search takes its runtime (no --runtime needed) and
    its measured checks run the network in ONNX Runtime."""
    import lut.isolated
    from lut.runtimes import Runtime

    ort = Runtime("onnxruntime", "CPUExecutionProvider")
    table = LatencyTable.load(lut_path, allow_foreign=True)
    ort_path = tmp_path / "ort.parquet"
    table.with_meta(backend=ort.meta(1)).save(ort_path)
    fast, slow = bounds
    budget = fast + 0.5 * (slow - fast)
    runtimes = []

    def fake_measure(spec, device, **kw):
        runtimes.append(kw.get("runtime"))
        ms = 0.95 * budget
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "samples": 1}

    stand_in_probe(monkeypatch)
    monkeypatch.setattr(lut.isolated, "measure_network_isolated", fake_measure)
    cfg = SearchConfig(budget_ms=budget, space="cpu-small", input_size=INPUT, epochs=1,
                       train_samples=40, batch_size=8, rank_samples=4)
    report = search(cfg, tmp_path / "s", lut=str(ort_path), progress=False)
    assert runtimes == [ort] and report["verdict"] == "met"
    assert report["config"]["runtime"] == "onnxruntime"
    assert report["lut"]["runtime"].startswith("ONNX Runtime")
    # asking for eager with that table is refused before any work
    cfg = SearchConfig(budget_ms=budget, space="cpu-small", input_size=INPUT, epochs=1,
                       train_samples=40, batch_size=8, runtime="torch")
    with pytest.raises(NasError, match="measured in ONNX Runtime"):
        search(cfg, tmp_path / "t", lut=str(ort_path), progress=False)
    assert not (tmp_path / "t").exists()


def test_rank_draw_evolve_from_the_command_line(lut_path, bounds, tmp_path, capsys):
    """--rank-draw evolve: the ranking holds the derived network, window draws and mutations,
    all inside the window, the pick the best scored."""
    fast, slow = bounds
    budget = fast + 0.4 * (slow - fast)
    code, out, err = run(["search", "--budget", f"{budget}ms", "--lut", str(lut_path), "--out",
                          str(tmp_path), "--json", *TINY, "--epochs", "1", "--rank-samples", "8",
                          "--rank-draw", "evolve"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    ranking = report["ranking"]
    assert len(ranking) == 9 and {r["source"] for r in ranking} == {"derived", "sampled",
                                                                      "mutated"}
    assert [r["proxy_loss"] for r in ranking] == sorted(r["proxy_loss"] for r in ranking)
    low, high = report["window_ms"]
    assert all(low <= r["predicted_ms"] <= high for r in ranking)
    assert report["config"]["rank_draw"] == "evolve"
