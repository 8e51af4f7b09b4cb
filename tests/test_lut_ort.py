"""ONNX Runtime tables and ``nas bench``: export, chains, fingerprints, bad input (micro space).

Exports are the slow part (a few seconds per exporter call), so one module-scoped table of a
seven-row space serves most tests; the export cache (``NAS_CACHE_DIR``, set per test session in
conftest) makes every later use of its rows free.
"""

import json

import numpy as np
import pytest
import torch

import lut.build
from lut import LatencyPredictor, LatencyTable, TimingConfig, ort
from lut.build import build, default_table_path, measure_networks
from lut.fingerprint import describe, device_slug, fingerprint, identity
from lut.keys import space_rows, spec_rows
from lut.runtimes import EAGER, Runtime
from nas.cli import main
from supernets.errors import NasError
from supernets.space import SearchSpace, get_space
from supernets.spec import Skeleton, Stage

FAST = TimingConfig(rounds=3, warmup_calls=1, retries=0)
CPU = torch.device("cpu")
ORT = Runtime("onnxruntime", "CPUExecutionProvider")


def micro_space() -> SearchSpace:
    sk = Skeleton(input_size=(16, 16), num_joints=2, stem_width=8,
                  stages=(Stage(8, 1, 2), Stage(8, 2, 1)), head_stages=1)
    return SearchSpace("micro", sk, backbone_ops=("mb_k3_e3", "skip"), head_ops=("up_plain",),
                       head_widths=(8, 16))


@pytest.fixture(scope="module")
def ort_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("ort") / "micro-ort.parquet"
    build(micro_space(), "cpu", out=out, timing=FAST, progress=False, calibration_networks=3,
          runtime=ORT)
    return out


def test_chain_of_row_graphs_runs_as_the_ops_one_after_another():
    space = micro_space()
    spec = space.sample(np.random.default_rng(0), "n")
    rows = [row for _, row in spec_rows(spec)]
    ops = ort.op_models(rows)
    net = ort.network_model(spec)
    assert [i.name for i in net.graph.input] == ["image"]
    assert [o.name for o in net.graph.output] == ["heatmaps"]
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (y,) = ort.session(net, "CPUExecutionProvider", 1).run(None, {"image": x})
    h = x
    for row in rows:
        (h,) = ort.session(ops[row.key], "CPUExecutionProvider", 1).run(None, {"x": h})
    assert y.shape == (2, 2, 8, 8) and np.allclose(y, h, atol=1e-6)
    # the export cache gives the same graph back, weights included
    again = ort.op_models(rows)
    assert all(again[r.key].SerializeToString() == ops[r.key].SerializeToString() for r in rows)


def test_ort_table_rows_metadata_and_file_name(ort_table):
    table = LatencyTable.load(ort_table)
    assert table.runtime == ORT and not table.runtime.is_eager
    assert len(table) == len(space_rows(micro_space())) and not table.missing()
    backend = table.meta["backend"]
    assert backend["name"] == "onnxruntime" and backend["version"] == ort.ort_version()
    assert backend["opset"] == ort.OPSET and backend["session_options"]["intra_op_num_threads"] == 1
    fp = table.fingerprint
    assert fp["runtime"] == "onnxruntime" and fp["provider"] == "CPUExecutionProvider"
    assert table.clock == "thread" and table.calibration is not None and table.meta["probes"]
    assert "onnxruntime" in describe(fp)
    assert "--runtime onnxruntime --provider CPUExecutionProvider" in table.build_command(
        get_space("cpu-base"))
    path = default_table_path(get_space("cpu-base"), "cpu", runtime=ORT)
    assert path.name == f"cpu-base-64x64-b1-fp32-onnxruntime-{ort.ort_version()}-cpu.parquet"
    # tables of both runtimes share the device's folder
    assert path.parent == default_table_path(get_space("cpu-base"), "cpu").parent


def test_eager_fingerprints_are_unchanged_by_runtimes():
    fp = fingerprint(CPU, 1)
    assert "runtime" not in fp and identity(fp)["runtime"] == "torch"
    # an eager table written before runtimes existed has the same identity and folder
    assert identity({k: v for k, v in fp.items()}) == identity(fingerprint(CPU, 1, EAGER))
    ort_fp = fingerprint(CPU, 1, ORT)
    assert device_slug(ort_fp) == device_slug(fp) and identity(ort_fp) != identity(fp)


def test_table_of_another_runtime_version_is_foreign(ort_table, tmp_path):
    table = LatencyTable.load(ort_table)
    other = table.with_meta(fingerprint={**table.fingerprint, "runtime_version": "0.0.1"})
    other.save(tmp_path / "old.parquet")
    with pytest.raises(NasError, match=r"runtime_version '0\.0\.1' \(table\).*--runtime "
                                       r"onnxruntime --provider CPUExecutionProvider"):
        LatencyTable.load(tmp_path / "old.parquet")


def test_networks_measure_in_the_table_runtime_and_predictions_follow(ort_table):
    table = LatencyTable.load(ort_table)
    space = micro_space()
    specs = [space.sample(np.random.default_rng(s), f"n{s}") for s in range(2)]
    eager = measure_networks(specs, "cpu", timing=FAST)
    onnx = measure_networks(specs, "cpu", timing=FAST, runtime=ORT)
    assert all(t.median_ms > 0 for t in eager + onnx)
    predictor = LatencyPredictor(table)
    assert all(predictor.latency(s) > 0 for s in specs)


def test_runtime_parse_refuses_bad_providers():
    with pytest.raises(NasError, match="expected one of CPUExecutionProvider"):
        Runtime.parse("onnxruntime", "DmlExecutionProvider", CPU)
    if "CUDAExecutionProvider" not in ort.available_providers():
        with pytest.raises(NasError, match=r"not available in this onnxruntime .*available "
                                           r"here: .*CPUExecutionProvider"):
            Runtime.parse("onnxruntime", "CUDAExecutionProvider", CPU)
    with pytest.raises(NasError, match="only with --runtime onnxruntime"):
        Runtime.parse("torch", "CPUExecutionProvider", CPU)
    with pytest.raises(NasError, match="expected one of torch, onnxruntime"):
        Runtime.parse("tflite", None, CPU)
    assert Runtime.parse("onnxruntime", None, CPU) == ORT
    assert Runtime.parse(None, None, CPU) == EAGER


def test_build_refuses_fp16_and_cuda_graphs_in_onnxruntime(tmp_path, capsys):
    with pytest.raises(NasError, match="fp32 only"):
        build(micro_space(), "cpu", dtype="fp16", out=tmp_path / "x.parquet", runtime=ORT)
    assert main(["lut", "build", "--runtime", "onnxruntime", "--cuda-graphs",
                 "--out", str(tmp_path / "y.parquet")]) == 2
    assert "only with --runtime torch" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_resuming_a_table_in_another_runtime_is_refused(ort_table, tmp_path):
    import shutil

    path = tmp_path / "t.parquet"
    shutil.copy(ort_table, path)
    with pytest.raises(NasError, match=r"other settings \(backend ONNX Runtime .* here vs "
                                       r"PyTorch eager"):
        build(micro_space(), "cpu", out=path, timing=FAST, progress=False)


# -- nas bench ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro_arch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    spec = micro_space().sample(np.random.default_rng(0), "micro-net")
    spec.save(folder / "arch.json")
    return folder / "arch.json"


def run_cli(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out


def test_bench_json_in_both_runtimes(micro_arch, capsys):
    code, out = run_cli(capsys, ["bench", str(micro_arch), "--rounds", "3", "--json"])
    assert code == 0, out.err
    eager = json.loads(out.out)
    assert eager["runtime_name"] == "torch" and eager["interleaved_with"] == 16
    assert eager["p10_ms"] <= eager["median_ms"] <= eager["p90_ms"]
    assert eager["memory"]["peak_rss_mb"] > 0 and eager["fingerprint"]["type"] == "cpu"
    code, out = run_cli(capsys, ["bench", str(micro_arch), "--runtime", "onnxruntime",
                                 "--rounds", "3", "--alone", "--json"])
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["provider"] == "CPUExecutionProvider" and data["interleaved_with"] == 0
    assert data["fingerprint"]["runtime"] == "onnxruntime" and data["macs"] == eager["macs"]


def test_bench_onnx_file_and_its_errors(micro_arch, tmp_path, capsys):
    onnx_path = tmp_path / "net.onnx"
    assert main(["export", str(micro_arch), "--format", "onnx", "--out", str(onnx_path)]) == 0
    code, out = run_cli(capsys, ["bench", str(onnx_path), "--rounds", "3", "--json"])
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["source"] == "onnx" and data["model"] == "micro-net"
    assert data["runtime_name"] == "onnxruntime" and data["interleaved_with"] == 16
    code, out = run_cli(capsys, ["bench", str(onnx_path), "--runtime", "torch"])
    assert code == 2 and "runs in ONNX Runtime, not with --runtime torch" in out.err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, out = run_cli(capsys, ["bench", str(bad)])
    assert code == 2 and f"{bad}: not a valid ONNX model" in out.err
    assert len(out.err.strip().splitlines()) == 1
    code, out = run_cli(capsys, ["bench", str(onnx_path), "--input", "32x32"])
    assert code == 2 and "takes 16x16 images, not --input 32x32" in out.err


def test_bench_with_a_table_compares_and_refuses_mismatches(micro_arch, ort_table, capsys):
    code, out = run_cli(capsys, ["bench", str(micro_arch), "--lut", str(ort_table),
                                 "--rounds", "3", "--allow-foreign-lut", "--json"])
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["runtime_name"] == "onnxruntime" and data["predicted_ms"] > 0
    code, out = run_cli(capsys, ["bench", str(micro_arch), "--lut", str(ort_table),
                                 "--runtime", "torch"])
    assert code == 2 and "measured in ONNX Runtime" in out.err and "--runtime torch" in out.err
    code, out = run_cli(capsys, ["bench", str(micro_arch), "--lut", str(ort_table),
                                 "--input", "32x32"])
    assert code == 2 and "the table is for 16x16 inputs, the model takes 32x32" in out.err


def test_search_refuses_a_table_of_another_runtime(ort_table, tmp_path, capsys):
    code, out = run_cli(capsys, ["search", "--budget", "3ms", "--lut", str(ort_table),
                                 "--runtime", "torch", "--out", str(tmp_path / "s")])
    assert code == 2 and "measured in ONNX Runtime" in out.err
    assert not (tmp_path / "s").exists()


def test_probe_and_validation_run_in_the_table_runtime(ort_table, monkeypatch):
    seen = []
    real = lut.build.Runtime.network_calls

    def spy(self, specs, *a, **k):
        seen.append(self)
        return real(self, specs, *a, **k)
    monkeypatch.setattr(lut.build.Runtime, "network_calls", spy)
    from lut.probe import probe_table

    probe_table(LatencyTable.load(ort_table))
    assert seen and all(r == ORT for r in seen)


def test_runtime_gap_report(ort_table, tmp_path):
    from nas.bench.runtime_gap import render, runtime_gap

    eager_path = tmp_path / "eager.parquet"
    build(micro_space(), "cpu", out=eager_path, timing=FAST, progress=False,
          calibration_networks=3)
    result = runtime_gap(micro_space(), LatencyTable.load(eager_path),
                         LatencyTable.load(ort_table), networks=3, rounds=2, export_check=1,
                         bench_check=1)
    assert len(result["rows"]) == 3 and -1 <= result["kendall_tau_eager_vs_ort"] <= 1
    r = result["ratio_ort_over_eager"]
    assert r["min"] <= r["median"] <= r["max"] and r["min"] > 0
    assert set(result["fidelity"]["ort_table_on_ort"]) >= {"median_abs_rel_error", "kendall_tau"}
    (check,) = result["export_vs_chain"]["networks"]
    assert check["export_ms"] > 0 and check["chain_ms"] > 0
    text = render(result, command="x", machine="m", tables={"eager": "e", "onnxruntime": "o"})
    assert "Kendall tau between the eager and the ONNX Runtime latency orders" in text
    for name in ("eager", "onnxruntime"):
        (b,) = result["validation"][name]["bench"]
        assert b["bench_p10_ms"] <= b["bench_ms"] <= b["bench_p90_ms"]


def test_bench_times_as_the_table_was_timed(micro_arch, capsys):
    """With --lut, the measurement uses the table's timing (CUDA-graph replays for a
    --cuda-graphs table), so measured and predicted mean the same thing."""
    from types import SimpleNamespace

    from nas.commands.bench import _timing_fields

    graphs = SimpleNamespace(device="cuda:0", meta={"timing": {
        "rounds": 100, "clock": "cuda", "cuda_graphs": True, "seed": 1}})
    eager = SimpleNamespace(device="cuda:0", meta={"timing": {"rounds": 100, "clock": "cuda"}})
    args = SimpleNamespace(rounds=None, cuda_graphs=False, device=None, lut="t.parquet")
    assert _timing_fields(args, graphs) == {"rounds": 100, "clock": "cuda", "cuda_graphs": True}
    assert _timing_fields(SimpleNamespace(**{**vars(args), "rounds": 7}), eager)["rounds"] == 7
    with pytest.raises(NasError, match="the table t.parquet was timed without CUDA graphs"):
        _timing_fields(SimpleNamespace(**{**vars(args), "cuda_graphs": True}), eager)
    code, out = run_cli(capsys, ["bench", str(micro_arch), "--cuda-graphs"])
    assert code == 2 and "--cuda-graphs: only with --device cuda" in out.err
