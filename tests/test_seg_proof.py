"""benchmarks/seg_proof.py end to end on a tiny CamVid-layout folder: report, resume, refusals.

Kept short: 40x56 images at a 32x48 input, a 2-epoch search on 10 images, 2 random networks,
1 epoch at batch 2. The latency table is synthetic (row latency proportional to MACs) and
measuring is stood in for: the budget and the search's checks return the table's prediction,
the side-by-side stage times in this process with 2 rounds; nothing waits for a timed child.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmark_script, macs_table, stand_in_probe
from PIL import Image

import lut
import lut.isolated
import nas.bench.proof as proof
from nas.tasks.seg import CAMVID
from supernets.errors import NasError
from supernets.named import load_arch

REPO = Path(__file__).resolve().parents[1]
INPUT = (32, 48)
SPLITS = {"train": 10, "val": 3, "test": 3}


seg_proof = benchmark_script("seg_proof")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """SegNet's CamVid layout: <split>.txt lists, images and label maps with 11 = void."""
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(0)
    for split, count in SPLITS.items():
        lines = []
        for i in range(count):
            name = f"0001TP_{split}_{i:03d}.png"
            _png(root / split / name, rng.integers(0, 256, (40, 56, 3)))
            _png(root / f"{split}annot" / name, rng.integers(0, 12, (40, 56)))
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def space():
    return seg_proof.get_space("seg-small", preset="camvid", input_size=INPUT)


@pytest.fixture(scope="module")
def lut_path(space, tmp_path_factory):
    return macs_table(space, tmp_path_factory.mktemp("lut"))


@pytest.fixture
def measured(monkeypatch, space, lut_path):
    """The table is this machine's; a network in the space measures what the table predicts,
    the baseline (not in the space) half-way between the space's fastest and slowest networks,
    so that the budget has a window inside the space."""
    stand_in_probe(monkeypatch)
    predictor = lut.LatencyPredictor(lut.LatencyTable.load(lut_path))
    (_, fast), (_, slow) = predictor.bounds(space)
    calls = []

    def fake_isolated(spec, device="cpu", **kwargs):
        calls.append(spec.name)
        ms = proof.predicted_latency(predictor, spec) or (fast + slow) / 2
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "samples": 1, "device": device}

    def in_process(specs, threads, dtype, batches, device):
        calls.append(f"side by side on {device}")
        timing = lut.TimingConfig(rounds=2, warmup_calls=1, retries=0)
        return {b: [t.to_dict() for t in lut.measure_networks(specs, device, batch=b, dtype=dtype,
                                                               threads=threads, timing=timing)]
                for b in batches}

    monkeypatch.setattr(proof, "measure_network_isolated", fake_isolated)
    monkeypatch.setattr(lut.isolated, "measure_network_isolated", fake_isolated)
    monkeypatch.setattr(proof, "measure_side_by_side", in_process)
    return calls


def argv(camvid, lut_path, workdir, *extra):
    return ["--data", str(camvid), "--space", "seg-small", "--input", "32x48", "--epochs", "1",
            "--search-epochs", "2", "--search-option", "batch_size=4",
            "--search-option", "rank_samples=0", "--randoms", "2", "--batch-size", "2",
            "--limit", "4", "--threads", "1", "--workers", "0", "--lut", str(lut_path),
            "--workdir", str(workdir), "--out", str(workdir / "report.md"), "--no-progress",
            *extra]


def ctrl_c_in_first_training(monkeypatch):
    """Ctrl-C after the first training step of the first model (the trainer then writes its
    checkpoint and stops, as on a real SIGINT)."""
    real, calls = proof.train, []

    def train(cfg, out, **kwargs):
        calls.append(out)
        if len(calls) == 1:
            kwargs["on_step"] = lambda trainer: trainer.request_stop()
        return real(cfg, out, **kwargs)

    monkeypatch.setattr(proof, "train", train)


def test_proof_end_to_end_then_resumed_then_refused(camvid, lut_path, measured, tmp_path,
                                                    capsys, monkeypatch):
    workdir = tmp_path / "proof"
    ctrl_c_in_first_training(monkeypatch)
    code = seg_proof.main(argv(camvid, lut_path, workdir))
    captured = capsys.readouterr()
    assert code == 130 and captured.out == ""
    assert "training of mobilenetv2-lraspp stopped; checkpoint in" in captured.err
    assert "run the same command again to continue" in captured.err
    for name in ("budget.json", "search/report.json", "randoms.json",
                 "train/mobilenetv2-lraspp/resume.pt"):
        assert (workdir / name).is_file(), name
    assert not (workdir / "train/mobilenetv2-lraspp/metrics.json").exists()

    # the same command continues: the killed training from its checkpoint, nothing redone
    code = seg_proof.main(argv(camvid, lut_path, workdir, "--json"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "continuing training of mobilenetv2-lraspp" in captured.err
    assert "stage 1" not in captured.err and "stage 2" not in captured.err
    report = json.loads(captured.out)       # --json: one object on stdout
    models = ["mobilenetv2-lraspp", "searched", "random-1", "random-2"]
    assert [r["model"] for r in report["rows"]] == models
    for r in report["rows"]:
        assert 0 <= r["miou"] <= 100 and r["test_samples"] == SPLITS["test"]
        assert set(r["per_class"]) == set(CAMVID.class_names)
        assert r["latency_ms"] > 0 and r["latency_b16_ms"] > 0
        assert r["score"]["batch1"]["score"] == pytest.approx(
            r["miou"] * seg_proof.latency_weight(r["latency_ms"]))
        assert r["score"]["flops"]["t_ms"] == pytest.approx(
            seg_proof.flops_latency_ms(r["gflops"]))
    assert report["rows"][0]["predicted_ms"] is None          # the baseline is not in the space
    budget = report["budget_ms"]
    low, high = report["randoms"]["window_ms"]
    assert (low, high) == pytest.approx((0.85 * budget, budget))
    assert all(low <= r["predicted_ms"] <= high for r in report["randoms"]["randoms"])
    assert report["settings"]["input_size"] == list(INPUT)
    assert report["data"] == {**SPLITS, "image_size": [40, 56]}
    assert set(report["verdict"]) >= {"miou_gain_over_baseline", "latency_met",
                                      "beats_best_random", "target_met"}
    for name in ("settings.json", "budget.json", "search/report.json", "randoms.json",
                 "latency.json", "proxy.json", *(f"train/{m}/{f}" for m in models
                                   for f in ("metrics.json", "test.json"))):
        assert (workdir / name).is_file(), name
    markdown = (workdir / "report.md").read_text()
    assert json.loads((workdir / "report.json").read_text())["rows"] == report["rows"]
    assert "**Smoke run (--limit 4)" in markdown and "## Verdict" in markdown
    assert "## Per-class IoU" in markdown and "## Score" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    for r in report["rows"]:
        row = next(line for line in table if line.startswith(f"| {r['model']}"))
        assert f"{r['miou']:.2f}" in row and f"{r['latency_ms']:.3f}" in row
        assert f"{r['score']['batch1']['score']:.2f}" in row
    assert ("**Target met.**" in markdown) == report["verdict"]["target_met"]
    # the search's proxy beside retraining: the networks of the space only
    proxy = report["proxy"]
    assert proxy["models"]["mobilenetv2-lraspp"] is None and proxy["swaps"] == {}
    assert all(proxy["models"][m]["loss"] > 0 for m in models[1:])
    # and after the search's own-training steps, as its shortlist is scored
    assert proxy["finetune_steps"] == report["search"]["config"]["rank_finetune"] == 60
    assert all(proxy["models"][m]["finetune_loss"] > 0 for m in models[1:])
    assert "| loss after 60 own steps |" in markdown and "; after 60 own steps: " in markdown
    # no ranking here (rank_samples=0), so no family stage (nas.search.family) and no column
    assert report["search"]["family_stage"] is None and proxy["family"] is None
    assert "supernet loss |" not in markdown
    assert "## The search's proxy against retraining" in markdown
    assert "Not networks of the space (no proxy): mobilenetv2-lraspp." in markdown
    assert "test mIoU over these 3 networks" in markdown

    # and again: every stage's output is reused, nothing trained or measured
    outputs = {p: p.read_bytes() for p in workdir.rglob("*.json") if p.parent != workdir
               or p.name != "report.json"}
    measured.clear()
    code = seg_proof.main(argv(camvid, lut_path, workdir))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert measured == [] and "stage" not in captured.err
    assert captured.out.splitlines()[0] == ("# Proof: searched network vs mobilenetv2-lraspp vs "
                                            "random networks (CamVid, space seg-small, this CPU)")
    assert {p: p.read_bytes() for p in outputs} == outputs

    # --extra to the finished workdir: only the new network is trained and scored, the side by
    # side stage measures all again, and the row is reported outside the verdict
    space = seg_proof.get_space("seg-small", preset="camvid", input_size=INPUT)
    extra = space.sample(np.random.default_rng(7), "neighbour")
    extra.save(tmp_path / "neighbour.json")
    before = json.loads((workdir / "proxy.json").read_text())["models"]
    measured.clear()
    code = seg_proof.main(argv(camvid, lut_path, workdir, "--extra",
                               str(tmp_path / "neighbour.json"), "--json"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stage 4: training extra-neighbour" in captured.err
    assert captured.err.count("stage 4: training ") == 1
    assert measured == ["side by side on cpu"]
    with_extra = json.loads(captured.out)
    assert [r["model"] for r in with_extra["rows"]] == [*models, "extra-neighbour"]
    for key in ("miou_gain_over_baseline", "best_random", "miou_gain_over_best_random"):
        assert with_extra["verdict"][key] == report["verdict"][key]   # re-measured: latency
    assert with_extra["extras"] == {"extra-neighbour": str(tmp_path / "neighbour.json")}
    scores = with_extra["proxy"]["models"]
    assert {k: v for k, v in scores.items() if k != "extra-neighbour"} == before
    assert scores["extra-neighbour"]["loss"] > 0
    markdown = (workdir / "report.md").read_text()
    row = with_extra["rows"][-1]
    assert (f"- outside the verdict (--extra): extra-neighbour {row['miou']:.2f} at "
            f"{row['latency_ms']:.3f} ms") in markdown
    assert f"extra-neighbour (`{tmp_path / 'neighbour.json'}`)" in markdown

    # other settings in the same workdir: refused in one line, nothing written
    code = seg_proof.main(argv(camvid, lut_path, workdir, "--epochs", "2"))
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("seg_proof: error: ") and "settings.json" in captured.err
    assert "epochs=1, not 2" in captured.err

    # a baseline in the space with another head than the searched network: heads swapped too
    # and a family stage's supernet (here the search's own, as family.pt): a third column
    other = tmp_path / "other"
    (other / "search").mkdir(parents=True)
    (other / "search" / "checkpoint.pt").symlink_to(workdir / "search" / "checkpoint.pt")
    state = torch.load(workdir / "search" / "checkpoint.pt", weights_only=True)
    torch.save({"family": "tc2", "epoch": 3, "supernet": state["supernet"]},
               other / "search" / "family.pt")
    space = seg_proof.get_space("seg-small", preset="camvid", input_size=INPUT)
    a = space.sample(np.random.default_rng(0), "a")
    b = space.spec({**a.choices, "head": next(h for h in space.seg_heads
                                              if h != a.choices["head"])}, "b")
    b = space.spec({**b.choices, "stage1.block1": "skip"}, "b")
    result = seg_proof.stage_proxy(proof.Stages(other, "test", progress=False), space,
                                   {"mobilenetv2-lraspp": a, "searched": b})
    swaps = result["swaps"]
    assert list(swaps) == ["baseline backbone, searched head", "searched backbone, baseline head"]
    assert swaps["baseline backbone, searched head"]["head"] == b.choices["head"]
    assert {p["loss"] for p in swaps.values()}.isdisjoint(
        {p["loss"] for p in result["models"].values()})
    assert (other / "proxy.json").is_file()
    assert result["family"] == {"family": "tc2", "epochs": 3}
    # the same supernet scores as the family one: the same held-out loss
    for p in [*result["models"].values(), *swaps.values()]:
        assert p["family_loss"] == pytest.approx(p["loss"], rel=1e-5)
    rows = [{"model": m, "choices_head": spec.choices["head"], "miou": 40.0 + i}
            for i, (m, spec) in enumerate({"mobilenetv2-lraspp": a, "searched": b}.items())]
    lines = "\n".join(seg_proof.proxy_lines(result, rows))
    assert "| tc2 supernet loss | test mIoU |" in lines and "(3 more epochs" in lines


def test_missing_data_is_one_line_naming_the_path(lut_path, tmp_path, capsys):
    missing = tmp_path / "no-camvid"
    code = seg_proof.main(argv(missing, lut_path, tmp_path / "proof"))
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"seg_proof: error: --data {missing}: ")
    assert not (tmp_path / "proof").exists()


def test_a_missing_table_is_built_into_this_machines_folder(space, tmp_path, monkeypatch):
    built = []

    def fake_build(space_, device, *, out, progress):
        built.append((space_.skeleton.input_size, device))
        return macs_table(space_, out.parent).rename(out)

    monkeypatch.setattr(seg_proof, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(lut, "build_table", fake_build)
    path = seg_proof.table_path(space, None, "cpu")
    assert path.is_relative_to(tmp_path / "results" / "lut")
    assert path.name == "seg-small-32x48-b1-fp32.parquet"
    stages = proof.Stages(tmp_path / "proof", "seg_proof", progress=False)
    assert seg_proof.stage_table(stages, space, path, False, "cpu") == path and path.is_file()
    assert seg_proof.stage_table(stages, space, path, False, "cpu") == path
    assert built == [(INPUT, "cpu")]                          # built once, then found
    with pytest.raises(NasError, match="--lut .*: no such table"):
        seg_proof.stage_table(stages, space, tmp_path / "other.parquet", True, "cpu")


def test_the_proof_runs_on_its_tables_device(lut_path, measured, tmp_path):
    """--lut decides the device (search, training and measurements run where its latency was
    measured); a --device that disagrees is refused before anything is written."""
    assert seg_proof.table_device(lut_path, None) == "cpu"
    assert seg_proof.table_device(lut_path, "cpu") == "cpu"
    with pytest.raises(NasError, match=f"--device cuda: the table {lut_path} was measured on "
                                       "cpu; pass --device cpu"):
        seg_proof.table_device(lut_path, "cuda")
    with pytest.raises(NasError, match="--lut .*: no such table"):
        seg_proof.table_device(tmp_path / "none.parquet", None)
    args = seg_proof.parse_args(["--device", "cuda:0"])
    cfg = seg_proof.train_config(load_arch("mobilenetv2-lraspp"), args)
    assert cfg.device == "cuda:0"


def test_smoke_run_cannot_write_the_proofs_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code = seg_proof.main(["--limit", "4", "--workdir", str(tmp_path / "proof")])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1
    assert "a smoke run cannot write the proof's report" in captured.err
    assert not (tmp_path / "proof").exists()


def test_search_options_the_proof_sets_are_refused(capsys):
    with pytest.raises(SystemExit):
        seg_proof.parse_args(["--search-option", "budget_ms=3"])
    assert "the proof sets budget_ms itself" in capsys.readouterr().err


def test_models_trained_at_once_match_those_trained_one_by_one(camvid, space, tmp_path):
    """``--jobs``: each model in its own process gives what the serial run gives (CPU, one
    thread, seeded), and a rerun finds everything done."""
    from nas.train import TrainConfig

    rng = np.random.default_rng(3)
    configs = {f"m{i}": TrainConfig(arch=space.sample(rng, f"m{i}").to_dict(), task="seg",
                                    data=str(camvid), epochs=1, batch_size=2, limit=4,
                                    threads=1, workers=0, seed=0)
               for i in range(2)}
    serial = proof.Stages(tmp_path / "serial", "test", progress=False).train_all(
        configs, "test", jobs=1)
    at_once = proof.Stages(tmp_path / "at_once", "test", progress=False)
    parallel = at_once.train_all(configs, "test", jobs=2)
    for key in configs:
        assert parallel[1][key]["mean"] == serial[1][key]["mean"]
        assert parallel[0][key]["final"]["mean"] == serial[0][key]["final"]["mean"]
        assert (tmp_path / "at_once" / "train" / key / "test.json").is_file()
    again = at_once.train_all(configs, "test", jobs=2)
    assert again[1] == parallel[1]
    trained_only, tested = proof.Stages(tmp_path / "no_split", "test", progress=False).train_all(
        configs, None, jobs=2)
    assert tested == {}
    assert {k: r["final"]["mean"] for k, r in trained_only.items()} == \
        {k: r["final"]["mean"] for k, r in serial[0].items()}
    assert not list((tmp_path / "no_split").glob("train/*/test.json"))


def test_search_threads_set_the_search_alone(space, capsys):
    args = seg_proof.parse_args(["--threads", "1", "--search-threads", "2"])
    assert seg_proof.search_config(3.0, space, args).threads == 2
    assert seg_proof.search_config(
        3.0, space, seg_proof.parse_args(["--threads", "1"])).threads == 1
    with pytest.raises(SystemExit):
        seg_proof.parse_args(["--search-threads", "-1"])
    assert "--search-threads" in capsys.readouterr().err


def test_models_at_once_stop_starting_after_one_fails(camvid, space, tmp_path):
    """``--jobs``: a model that fails (or is stopped) in its process starts no other model; the
    one running beside it finishes and is kept, and a rerun continues."""
    from nas.train import TrainConfig

    rng = np.random.default_rng(3)
    ok = {f"m{i}": TrainConfig(arch=space.sample(rng, f"m{i}").to_dict(), task="seg",
                               data=str(camvid), epochs=1, batch_size=2, limit=4, threads=1,
                               workers=0, seed=0)
          for i in range(3)}
    broken = TrainConfig(**{**dataclasses.asdict(ok["m0"]), "data": str(tmp_path / "nowhere")})
    configs = {"bad": broken, "m0": ok["m0"], "m1": ok["m1"], "m2": ok["m2"]}
    stages = proof.Stages(tmp_path / "run", "test", progress=False)
    with pytest.raises(NasError, match="nowhere"):
        stages.train_all(configs, "test", jobs=2)
    started = sorted(p.name for p in (tmp_path / "run" / "train").iterdir())
    assert "m1" not in started and "m2" not in started
    trained, tested = stages.train_all({k: ok[k] for k in ("m0", "m1")}, "test", jobs=2)
    assert set(tested) == {"m0", "m1"}


def test_extra_networks_are_checked_before_anything_is_written(camvid, lut_path, space,
                                                               tmp_path, capsys):
    """--extra: a missing file, a network of another space, a name that is no folder name and
    two networks of one name are refused in one line naming the file, and nothing is written."""
    spec = space.sample(np.random.default_rng(0), "n")
    spec.save(tmp_path / "a.json")
    spec.save(tmp_path / "b.json")
    dataclasses.replace(spec, name="../n").save(tmp_path / "slash.json")
    pose = load_arch("mobilenetv2")
    pose.save(tmp_path / "pose.json")
    cases = {
        (str(tmp_path / "none.json"),): f"{tmp_path / 'none.json'}: cannot read arch spec",
        (str(tmp_path / "pose.json"),): (f"{tmp_path / 'pose.json'}: --extra takes networks "
                                         "of the space seg-small at 32x48"),
        (str(tmp_path / "slash.json"),): f"{tmp_path / 'slash.json'}: name '../n' names",
        (str(tmp_path / "a.json"), str(tmp_path / "b.json")): (
            f"{tmp_path / 'b.json'}: a second --extra network named 'n'"),
    }
    for paths, message in cases.items():
        workdir = tmp_path / "proof"
        extra = [a for path in paths for a in ("--extra", path)]
        code = seg_proof.main(argv(camvid, lut_path, workdir, *extra))
        captured = capsys.readouterr()
        assert code == 2 and captured.out == "", paths
        assert captured.err.count("\n") == 1 and message in captured.err, captured.err
        assert not workdir.exists()
