"""The speed probe and what uses it: ``nas lut check``, ``lut validate`` and ``nas search``
refuse or rebuild a table that no longer describes this machine; calibration chosen by
leave-one-out error.

"A machine 2x slower" is a stand-in host clock that reads twice the thread's CPU time
(``lut.timing.HOST_CLOCKS``): every in-process measurement then takes twice as long, as on a
slower machine of the same identity.
"""

import json
import time

import numpy as np
import pytest

import lut.timing
from lut import LatencyTable, build_table
from lut.build import choose_calibration, default_table_path, loo_errors
from lut.probe import PROBE_TOLERANCE, probe_table
from nas.cli import main
from supernets.space import SearchSpace, get_space
from supernets.spec import Skeleton, Stage


def tiny_space() -> SearchSpace:
    sk = Skeleton(input_size=(32, 32), num_joints=2, stem_width=8,
                  stages=(Stage(8, 2, 2), Stage(16, 2, 2)), head_stages=2)
    return SearchSpace("tiny", sk, backbone_ops=("mb_k3_e3", "mb_k5_e3", "skip"),
                       head_ops=("up_plain", "up_dw_sic"), head_widths=(8, 16))


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "tiny.parquet"
    return build_table(tiny_space(), "cpu", out=out, progress=False,
                       timing=lut.timing.TimingConfig(rounds=5))


@pytest.fixture
def twice_as_slow(monkeypatch):
    real = time.thread_time_ns
    monkeypatch.setitem(lut.timing.HOST_CLOCKS, "thread", lambda: 2 * real())


def run(argv, capsys):
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_build_stores_probes_from_the_calibration_set(table_path):
    table = LatencyTable.load(table_path)
    probes = table.meta["probes"]
    assert [n["role"] for n in probes["networks"]] == ["fastest", "median", "median"]
    assert 15 <= probes["rounds"] <= 60
    calibration = {n["name"]: n for n in table.calibration.networks}
    for n in probes["networks"]:
        assert n["stored_ms"] > 0 and n["choices"] == calibration[n["name"]]["choices"]
    fastest = min(calibration.values(), key=lambda n: n["raw_ms"])
    assert probes["networks"][0]["name"] == fastest["name"]


def test_check_reports_the_ratio_on_a_machine_twice_as_slow(table_path, capsys, twice_as_slow):
    code, out, err = run(["lut", "check", str(table_path), "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and not data["ok"]
    assert 1.6 < data["ratio"] < 2.5  # 2.0 up to timing noise
    assert all(1.4 < n["ratio"] < 2.8 for n in data["networks"])
    assert data["tolerance"] == PROBE_TOLERANCE and data["seconds"] < 10
    assert data["attempts"] == 2  # read twice before the verdict
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error: ")
    assert "does not describe this machine now" in lines[0] and "--no-resume" in lines[0]


def test_a_passing_burst_of_load_is_not_taken_for_the_machine(table_path, monkeypatch):
    """A reading outside the tolerance is taken again and each network keeps its faster
    timing: a burst that slowed the first reading does not refuse the table, a machine that is
    slower reads so twice, and a reading within tolerance is taken once."""
    import lut.probe

    table = LatencyTable.load(table_path)
    stored = [n["stored_ms"] for n in table.meta["probes"]["networks"]]

    def readings(*factors):
        calls = iter(factors)

        def time_probes(*args):
            factor = next(calls)
            return [factor * ms for ms in stored]

        monkeypatch.setattr(lut.probe, "_time", time_probes)

    readings(1.82, 1.02)
    probe = probe_table(table)
    assert probe.ok and probe.attempts == 2 and probe.ratio == pytest.approx(1.02)
    readings(2.4, 2.5)
    probe = probe_table(table)
    assert not probe.ok and probe.attempts == 2 and probe.ratio == pytest.approx(2.4)
    readings(0.6, 1.0)  # faster than at build: the faster reading stands
    assert probe_table(table).ratio == pytest.approx(0.6)
    readings(1.1)       # within tolerance: read once (a second call would raise StopIteration)
    probe = probe_table(table)
    assert probe.ok and probe.attempts == 1 and probe.to_dict()["attempts"] == 1


def test_check_on_this_machine(table_path, capsys):
    code, out, _ = run(["lut", "check", str(table_path)], capsys)
    assert "speed probe:" in out and "fastest" in out
    assert code in (0, 1)  # 0 unless this shared machine changed speed since the build
    assert abs(probe_table(LatencyTable.load(table_path)).ratio - 1) < 0.5


def test_explicit_table_is_refused_on_a_machine_twice_as_slow(table_path, tmp_path, capsys,
                                                               monkeypatch):
    space = get_space("cpu-small", input_size=(32, 32))
    small = build_table(space, "cpu", out=tmp_path / "small.parquet", progress=False,
                        timing=lut.timing.TimingConfig(rounds=5))
    real = time.thread_time_ns
    monkeypatch.setitem(lut.timing.HOST_CLOCKS, "thread", lambda: 2 * real())
    code, out, err = run(["lut", "validate", str(table_path), "--samples", "2", "--rounds", "1",
                          "--quiet"], capsys)
    assert code == 2 and out == "" and "does not describe this machine now" in err
    assert "x its stored probe timings" in err and "--allow-foreign-lut" in err
    # the search refuses before any output exists
    out_dir = tmp_path / "search"
    code, _, err = run(["search", "--budget", "100ms", "--lut", str(small), "--space",
                        "cpu-small", "--input", "32x32", "--out", str(out_dir), "--no-progress"],
                       capsys)
    assert code == 2 and "does not describe this machine now" in err
    assert not out_dir.exists()


def test_allow_foreign_lut_accepts_it_and_keeps_the_ratio(table_path, capsys, twice_as_slow):
    code, out, _ = run(["lut", "validate", str(table_path), "--samples", "2", "--rounds", "1",
                        "--quiet", "--json", "--allow-foreign-lut"], capsys)
    assert code == 0 and json.loads(out)["probe"]["ratio"] > 1.5


def test_table_without_probes_is_refused_with_a_rebuild_command(table_path, tmp_path, capsys):
    table = LatencyTable.load(table_path)
    old = tmp_path / "old.parquet"
    LatencyTable(table.rows, {k: v for k, v in table.meta.items() if k != "probes"}).save(old)
    code, out, err = run(["lut", "check", str(old)], capsys)
    assert code == 2 and "no speed probes" in err and "--no-resume" in err
    assert len(err.strip().splitlines()) == 1


def test_default_table_is_rebuilt_on_a_machine_twice_as_slow(tmp_path, capsys, monkeypatch):
    """`nas search` without --lut: the default table's probe says 2x, so it is built again for
    this machine (with the slow clock: its probes then read twice the old figures)."""
    monkeypatch.chdir(tmp_path)
    space = get_space("cpu-small", input_size=(64, 64))
    path = default_table_path(space, "cpu")
    build_table(space, "cpu", out=path, progress=False, timing=lut.timing.TimingConfig(rounds=5))
    before = LatencyTable.load(path).meta["probes"]["networks"]
    real = time.thread_time_ns
    monkeypatch.setitem(lut.timing.HOST_CLOCKS, "thread", lambda: 2 * real())
    code, out, err = run(["search", "--space", "cpu-small", "--input", "64x64", "--budget",
                          "10s", "--epochs", "1", "--train-samples", "40", "--batch-size", "8",
                          "--rank-samples", "2", "--out", str(tmp_path / "s"), "--no-progress",
                          "--json"], capsys)
    assert code == 0, err
    assert "does not describe this machine now" in err and "building a table" in err
    after = LatencyTable.load(path).meta["probes"]["networks"]
    ratio = np.median([a["stored_ms"] / b["stored_ms"] for a, b in zip(after, before)])
    assert 1.5 < ratio < 2.7
    report = json.loads(out)
    assert report["speed_probe"]["ratio"] == 1.0  # the table was built a moment ago
    assert report["lut"]["path"] == str(path) and report["verdict"] in ("met", "met_within_noise")


# -- calibration chosen by held-out error ---------------------------------------------------

def test_loo_prefers_raw_when_the_sum_of_rows_is_exact():
    raw = [1.0, 2.0, 3.0, 4.0, 5.0]
    measured = [1.01, 1.98, 3.02, 4.0, 4.99]
    cal = choose_calibration(raw, measured)
    assert cal.method == "raw" and (cal.a, cal.b) == (1.0, 0.0)
    assert cal.affine is not None and cal.loo["raw"] < 0.02


def test_loo_prefers_affine_for_a_scaled_and_offset_machine():
    raw = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    measured = 1.3 * raw + 0.4
    cal = choose_calibration(raw, measured, [{"name": f"n{i}", "raw_ms": r}
                                             for i, r in enumerate(raw)])
    assert cal.method == "affine"
    assert cal.a == pytest.approx(1.3) and cal.b == pytest.approx(0.4)
    assert cal.loo["affine"] < 1e-9 < cal.loo["raw"]
    assert [n["predicted_ms"] for n in cal.networks] == pytest.approx(measured)


def test_loo_with_too_few_networks_keeps_raw():
    assert set(loo_errors([1.0, 2.0], [1.5, 2.5])) == {"raw"}
    assert choose_calibration([1.0, 2.0], [1.5, 2.5]).method == "raw"
