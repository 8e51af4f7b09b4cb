"""``nas lut build|validate``: JSON output, files written, one-line errors (tiny space)."""

import json

import numpy as np
import pandas as pd
import pytest

import nas.commands.lut as lut_command
from lut import LatencyTable
from nas.cli import main
from supernets.space import SearchSpace
from supernets.spec import Skeleton, Stage


def tiny_space() -> SearchSpace:
    sk = Skeleton(input_size=(32, 32), num_joints=2, stem_width=8,
                  stages=(Stage(8, 2, 2), Stage(16, 2, 2)), head_stages=2)
    return SearchSpace("tiny", sk, backbone_ops=("mb_k3_e3", "mb_k5_e3", "skip"),
                       head_ops=("up_plain", "up_dw_sic"), head_widths=(8, 16))


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    """Built through the CLI, with the shipped space swapped for the tiny one (fast)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(lut_command, "get_space", lambda *a, **k: tiny_space())
    out = tmp_path_factory.mktemp("cli") / "tiny.parquet"
    assert main(["lut", "build", "--out", str(out), "--rounds", "2", "--quiet", "--json"]) == 0
    mp.undo()
    return out


def run_json(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured


def test_build_json_is_one_object(table_path, capsys, monkeypatch):
    monkeypatch.setattr(lut_command, "get_space", lambda *a, **k: tiny_space())
    code, out = run_json(capsys, ["lut", "build", "--out", str(table_path), "--quiet", "--json"])
    assert code == 0
    data = json.loads(out.out)
    assert data["path"] == str(table_path) and data["measured_rows"] == 0  # already complete
    assert data["rows"] == len(LatencyTable.load(table_path))
    assert data["device"] == "cpu" and data["threads"] == 1 and data["clock"] == "thread"
    assert data["calibration"]["a"] > 0 and data["calibration"]["networks"] == 8


def test_validate_json_and_files(table_path, capsys):
    # --allow-foreign-lut: a probe off by noise on a busy machine must not fail this test (the
    # probe's own behaviour is tested in test_lut_probe.py with a stand-in clock)
    code, out = run_json(capsys, ["lut", "validate", str(table_path), "--samples", "3",
                                  "--rounds", "2", "--quiet", "--json", "--allow-foreign-lut"])
    assert code == 0
    data = json.loads(out.out)
    # the probe ran, so the table is also scored as a search corrects it: times the probe's ratio
    assert set(data["metrics"]) == {"table", "table_raw", "table_affine", "flops", "table_probed"}
    df = pd.read_csv(data["csv"])
    assert np.allclose(df["table_probed_ms"], df["table_ms"] * data["probe"]["ratio"])
    assert data["calibration_method"] in ("raw", "affine") and "raw" in data["calibration_loo"]
    assert data["probe"]["rounds"] >= 15 and len(data["probe"]["networks"]) == 3
    for m in data["metrics"].values():
        assert set(m) == {"median_abs_rel_error", "p90_abs_rel_error", "within_10pct",
                          "kendall_tau"}
    assert data["samples"] == 3 and data["reference"]["macs"] > 0
    stem = table_path.with_suffix("")
    for ext in ("csv", "png", "json"):
        assert (stem.parent / f"{stem.name}.validation.{ext}").stat().st_size > 0
    assert (stem.parent / f"{stem.name}.validation.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_text(table_path, capsys):
    code, out = run_json(capsys, ["lut", "validate", str(table_path), "--samples", "2",
                                  "--rounds", "1", "--quiet", "--allow-foreign-lut"])
    assert code == 0 and "Kendall tau" in out.out and "within ±10%" in out.out
    assert "speed probe:" in out.out and "calibration chosen at build:" in out.out


def error_of(capsys, argv) -> str:
    code, out = run_json(capsys, argv)
    assert code == 2 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error: "), out.err
    return lines[0]


def test_validate_corrupt_table(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"\x00" * 100)
    assert "bad.parquet: not a readable latency table" in error_of(
        capsys, ["lut", "validate", str(bad), "--quiet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]  # nothing written


def test_validate_missing_table(tmp_path, capsys):
    assert "cannot read latency table" in error_of(
        capsys, ["lut", "validate", str(tmp_path / "none.parquet")])


def test_validate_foreign_table(table_path, tmp_path, capsys):
    table = LatencyTable.load(table_path)
    table.meta["fingerprint"] = {**table.fingerprint, "cores": 4096}
    foreign = tmp_path / "foreign.parquet"
    LatencyTable(table.rows, table.meta).save(foreign)
    message = error_of(capsys, ["lut", "validate", str(foreign), "--quiet"])
    assert "another device" in message and "pass --allow-foreign-lut" in message
    for flag in ("--allow-foreign-lut", "--allow-foreign"):  # the old name still works
        code, _ = run_json(capsys, ["lut", "validate", str(foreign), flag,
                                    "--samples", "2", "--rounds", "1", "--quiet", "--json"])
        assert code == 0


def test_validate_help_names_one_flag_for_foreign_tables(capsys):
    with pytest.raises(SystemExit):
        main(["lut", "validate", "--help"])
    text = capsys.readouterr().out
    assert "--allow-foreign-lut" in text and "--allow-foreign " not in text


def test_validate_checks_it_can_write_before_measuring(table_path, tmp_path, capsys,
                                                       monkeypatch):
    """The validation files go beside the table: a folder that takes no files is refused at
    once, not after minutes of measuring."""
    import errno
    import tempfile

    import lut.probe
    import lut.validate

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("measured before checking the output folder")

    def no_probe(*args, **kwargs):
        raise AssertionError("probed before checking the output folder")

    copy = tmp_path / "copy.parquet"
    copy.write_bytes(table_path.read_bytes())
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(lut.validate, "measure_networks", never)
    monkeypatch.setattr(lut.probe, "probe_table", no_probe)
    message = error_of(capsys, ["lut", "validate", str(copy), "--samples", "2", "--quiet"])
    assert str(copy) in message and "cannot create files in it (Read-only file system)" in message


def test_validate_too_few_samples(table_path, capsys, monkeypatch):
    import lut.probe

    def no_probe(*args, **kwargs):
        raise AssertionError("probed before checking --samples")

    monkeypatch.setattr(lut.probe, "probe_table", no_probe)
    assert "at least 2" in error_of(capsys, ["lut", "validate", str(table_path),
                                             "--samples", "1", "--quiet"])


def test_build_unknown_device(tmp_path, capsys):
    assert "unknown device 'tpu'" in error_of(
        capsys, ["lut", "build", "--device", "tpu", "--out", str(tmp_path / "t.parquet")])
    assert not list(tmp_path.iterdir())


def test_build_out_under_a_file(tmp_path, capsys):
    (tmp_path / "notes").write_text("")
    message = error_of(capsys, ["lut", "build", "--out", str(tmp_path / "notes" / "t.parquet"),
                                "--quiet"])
    assert "notes" in message and "is not a directory" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


@pytest.mark.parametrize("argv", [["build", "--batch", "0"], ["build", "--threads", "-1"],
                                  ["validate", "t.parquet", "--seed", "-1"],
                                  ["validate", "t.parquet", "--samples", "0"]])
def test_bad_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["lut", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("nas: error: argument ") and f"(see nas lut {argv[0]} --help)" in err
