"""Building, storing, resuming and validating tables (tiny space, few rounds: seconds)."""

import math
import re
import threading
import time

import numpy as np
import pytest
import torch
from filelock import FileLock

import lut.build
from lut import LatencyTable, TimingConfig, build_table, measure_network, space_rows
from lut.build import build
from lut.device import parse_device
from lut.timing import measure
from supernets.errors import NasError
from supernets.space import SearchSpace
from supernets.spec import Skeleton, Stage

FAST = TimingConfig(rounds=3, warmup_calls=1, retries=0)


def tiny_space() -> SearchSpace:
    sk = Skeleton(input_size=(32, 32), num_joints=2, stem_width=8,
                  stages=(Stage(8, 2, 2), Stage(16, 2, 2)), head_stages=2)
    return SearchSpace("tiny", sk, backbone_ops=("mb_k3_e3", "mb_k5_e3", "skip"),
                       head_ops=("up_plain", "up_dw_sic"), head_widths=(8, 16))


def fast_build(out, **kw):
    kw = {"timing": FAST, "progress": False, "calibration_networks": 3, **kw}
    return build(tiny_space(), "cpu", out=out, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("lut") / "tiny.parquet"
    fast_build(out)
    return out


def op_calls(monkeypatch):
    """Record the row keys each call of lut.build.measure times (networks excluded)."""
    seen = []

    def spy(fns, *args, **kwargs):
        seen.extend(k for k in fns if "|" in k)
        return measure(fns, *args, **kwargs)

    monkeypatch.setattr(lut.build, "measure", spy)
    return seen


def altered(src, dst, *, meta=None, rows=None):
    table = LatencyTable.load(src)
    if meta:
        table.meta.update(meta)
    if rows:
        rows(table.rows)
    LatencyTable(table.rows, table.meta).save(dst)
    return dst


# -- building ---------------------------------------------------------------------------------
def test_build_writes_complete_calibrated_table(built):
    table = LatencyTable.load(built)
    assert len(table) == len(space_rows(tiny_space())) and not table.missing()
    assert (table.device, table.batch, table.dtype, table.threads) == ("cpu", 1, "fp32", 1)
    assert table.clock == "thread" and table.fingerprint["type"] == "cpu"
    assert "allocator" in table.meta["runtime"] and table.meta["runtime"]["threads"] == 1
    rows = table.rows
    assert ((rows.p10_ms <= rows.median_ms) & (rows.median_ms <= rows.p90_ms)).all()
    cal = table.calibration
    assert cal.a > 0 and len(cal.networks) == 3
    assert table.space == tiny_space()


def test_complete_table_is_not_measured_again(built, monkeypatch):
    seen = op_calls(monkeypatch)
    result = fast_build(built)
    assert result.measured_rows == 0 and not result.calibrated and seen == []


def test_resume_measures_only_missing_rows(built, tmp_path, monkeypatch):
    dropped = list(LatencyTable.load(built).rows.key[:4])
    out = tmp_path / "partial.parquet"
    table = LatencyTable.load(built)
    partial = LatencyTable(table.rows[~table.rows.key.isin(dropped)],
                           {**table.meta, "calibration": None})
    partial.save(out)
    seen = op_calls(monkeypatch)
    result = fast_build(out)
    assert sorted(seen) == sorted(dropped) and result.measured_rows == 4 and result.calibrated
    before, after = table.rows.set_index("key"), LatencyTable.load(out).rows.set_index("key")
    kept = [k for k in before.index if k not in dropped]
    assert (after.loc[kept, "median_ms"] == before.loc[kept, "median_ms"]).all()


def test_killed_build_resumes_from_saved_chunks(tmp_path, monkeypatch):
    out = tmp_path / "killed.parquet"
    calls = {"n": 0}

    def dies_on_second_chunk(fns, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return measure(fns, *args, **kwargs)

    monkeypatch.setattr(lut.build, "measure", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        fast_build(out, chunk_rows=5)
    saved = LatencyTable.load(out)  # whole and readable: the first chunk only
    assert len(saved) == 5 and saved.calibration is None
    assert not (tmp_path / ".killed.parquet.lock").exists()  # an interrupted build cleans up too
    monkeypatch.setattr(lut.build, "measure", measure)
    result = fast_build(out, chunk_rows=5)
    assert result.measured_rows == len(space_rows(tiny_space())) - 5
    assert LatencyTable.load(out).calibration is not None


def test_partial_table_is_saved_every_few_seconds_of_measuring(tmp_path, monkeypatch):
    """Chunks are cut by time, not only by CHUNK_ROWS: with rows taking 50 ms each and a save
    every 0.3 s, a build killed in its third chunk keeps the two chunks before it, the second
    one sized by the time per row of the first."""
    out = tmp_path / "slow.parquet"
    sizes = []

    def slow_rows(fns, *args, **kwargs):
        rows = [k for k in fns if "|" in k]
        if rows:
            sizes.append(len(rows))
            if len(sizes) == 3:
                raise KeyboardInterrupt
            time.sleep(0.05 * len(rows))
        return measure(fns, *args, **kwargs)

    monkeypatch.setattr(lut.build, "measure", slow_rows)
    monkeypatch.setattr(lut.build, "MIN_CHUNK_ROWS", 2)
    with pytest.raises(KeyboardInterrupt):
        fast_build(out, save_seconds=0.3)  # chunk_rows: the default, more than the space's rows
    assert sizes[0] == 2 and 2 <= sizes[1] <= 0.3 / 0.05
    assert len(LatencyTable.load(out)) == sizes[0] + sizes[1]


def test_chunk_size_follows_the_time_per_row():
    assert lut.build._chunk_size(0, 0.0, 256, 5.0) == lut.build.MIN_CHUNK_ROWS
    assert lut.build._chunk_size(16, 4.0, 256, 5.0) == 20       # 0.25 s a row: 20 in 5 s
    assert lut.build._chunk_size(16, 0.001, 256, 5.0) == 256    # fast rows: capped
    assert lut.build._chunk_size(16, 160.0, 256, 5.0) == lut.build.MIN_CHUNK_ROWS  # slow: floor
    assert lut.build._chunk_size(0, 0.0, 5, 5.0) == 5           # chunk_rows below the floor


def test_build_removes_its_lock_file(built, tmp_path):
    out = tmp_path / "t.parquet"
    fast_build(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
    assert not (built.parent / f".{built.name}.lock").exists()


def test_concurrent_builders_make_one_table(tmp_path, capsys):
    """Two builders of one file: one measures, the other waits for the lock, then finds the
    table complete; the lock file is gone afterwards."""
    out = tmp_path / "shared.parquet"
    results, errors = [], []

    def builder():
        try:
            results.append(fast_build(out))
        except BaseException as e:  # noqa: BLE001  reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.measured_rows for r in results) == [0, len(space_rows(tiny_space()))]
    assert sorted(r.calibrated for r in results) == [False, True]
    assert "being built by another process" in capsys.readouterr().err
    table = LatencyTable.load(out)
    assert not table.missing(tiny_space()) and table.calibration is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.parquet"]


def test_build_refuses_another_devices_table_without_advising_a_flag_it_lacks(built, tmp_path):
    fp = {**LatencyTable.load(built).fingerprint, "cpu_model": "Imaginary CPU 9000"}
    foreign = altered(built, tmp_path / "foreign.parquet", meta={"fingerprint": fp})
    before = foreign.read_bytes()
    with pytest.raises(NasError, match="another device") as info:
        fast_build(foreign)
    msg = str(info.value)
    assert "choose another --out, or pass --no-resume" in msg and "allow-foreign" not in msg
    assert foreign.read_bytes() == before


def test_out_in_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NasError, match="is not a directory"):
        fast_build(tmp_path / "file" / "t.parquet")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(NasError, match="is a directory"):
        fast_build(tmp_path / "dir.parquet")


def test_no_resume_measures_every_row(built, tmp_path, monkeypatch):
    out = tmp_path / "again.parquet"
    out.write_bytes(built.read_bytes())
    seen = op_calls(monkeypatch)
    fast_build(out, resume=False)
    assert len(seen) == len(space_rows(tiny_space()))


def test_resume_with_other_settings_is_refused(built, tmp_path):
    out = tmp_path / "b1.parquet"
    out.write_bytes(built.read_bytes())
    with pytest.raises(NasError, match=r"other settings \(batch 1 here vs 2 asked\)"):
        fast_build(out, batch=2)


def test_second_builder_waits_for_the_lock(tmp_path):
    out = tmp_path / "locked.parquet"
    with FileLock(str(tmp_path / ".locked.parquet.lock")):
        with pytest.raises(NasError, match="another build holds"):
            fast_build(out, lock_timeout=0.05)
    assert not out.exists()


def test_measure_network_reports_percentiles():
    spec = tiny_space().sample(np.random.default_rng(0))
    m = measure_network(spec, "cpu", timing=FAST)
    assert 0 < m["p10_ms"] <= m["median_ms"] <= m["p90_ms"]
    assert m["samples"] == 3 and m["clock"] == "thread" and m["threads"] == 1


def test_wide_spread_is_measured_again():
    x = torch.randn(64, 64)
    state = {"n": 0}

    def uneven():  # every other call does ten times the work: p90/p10 far apart
        state["n"] += 1
        for _ in range(10 if state["n"] % 2 else 1):
            x @ x

    timings = measure({"uneven": uneven, "even": lambda: x @ x}, torch.device("cpu"),
                      TimingConfig(rounds=10, warmup_calls=1, retries=1), clock="thread")
    assert timings["uneven"].attempts == 2 and timings["uneven"].samples == 10


# -- bad input --------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(NasError, match=r"nope\.parquet: cannot read latency table"):
        LatencyTable.load(tmp_path / "nope.parquet")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(NasError, match=r"corrupt\.parquet: not a readable latency table"):
        LatencyTable.load(bad)


def test_truncated_file(built, tmp_path):
    bad = tmp_path / "truncated.parquet"
    data = built.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(NasError, match=r"truncated\.parquet: .*corrupt or truncated"):
        LatencyTable.load(bad)


def test_parquet_without_table_metadata(built, tmp_path):
    bad = tmp_path / "plain.parquet"
    LatencyTable.load(built).rows.to_parquet(bad)
    with pytest.raises(NasError, match="without latency-table metadata"):
        LatencyTable.load(bad)


def test_wrong_schema_version(built, tmp_path):
    bad = altered(built, tmp_path / "old.parquet", meta={"schema": "nas.lut/0"})
    with pytest.raises(NasError, match=r"old\.parquet: schema 'nas.lut/0', expected 'nas.lut/1'"):
        LatencyTable.load(bad)


def test_nan_latency(built, tmp_path):
    def nan_row(rows):
        rows.loc[2, "median_ms"] = math.nan

    bad = altered(built, tmp_path / "nan.parquet", rows=nan_row)
    key = LatencyTable.load(built).rows.key[2]
    with pytest.raises(NasError, match=rf"nan\.parquet: row '{re.escape(key)}': "
                                       r"median_ms = nan"):
        LatencyTable.load(bad)


@pytest.mark.parametrize("value", [0.0, -1.5])
def test_non_positive_latency(built, tmp_path, value):
    def bad_row(rows):
        rows.loc[0, "p10_ms"] = value

    bad = altered(built, tmp_path / "neg.parquet", rows=bad_row)
    with pytest.raises(NasError, match=rf"p10_ms = {value}; expected a positive"):
        LatencyTable.load(bad)


def test_foreign_table_is_refused_naming_both_fingerprints(built, tmp_path):
    fp = {**LatencyTable.load(built).fingerprint, "cpu_model": "Imaginary CPU 9000"}
    foreign = altered(built, tmp_path / "foreign.parquet", meta={"fingerprint": fp})
    with pytest.raises(NasError) as e:
        LatencyTable.load(foreign)
    msg = str(e.value)
    assert "another device" in msg and "cpu_model" in msg and "Imaginary CPU 9000" in msg
    assert "(table) vs" in msg and "(here)" in msg and "--allow-foreign-lut" in msg


def test_foreign_table_is_accepted_with_override(built, tmp_path):
    fp = {**LatencyTable.load(built).fingerprint, "torch": "1.0.0"}
    foreign = altered(built, tmp_path / "foreign.parquet", meta={"fingerprint": fp})
    table = LatencyTable.load(foreign, allow_foreign=True)
    assert table.foreign and len(table) == len(space_rows(tiny_space()))
    assert not LatencyTable.load(built).foreign


@pytest.mark.parametrize("device", ["tpu", "gpu", "cpu:1", "cuda:x", ""])
def test_unknown_device_string(device):
    with pytest.raises(NasError, match="unknown device"):
        parse_device(device)


def test_unknown_device_string_in_build(tmp_path):
    with pytest.raises(NasError, match="unknown device 'tpu'"):
        build_table(tiny_space(), "tpu", out=tmp_path / "x.parquet", progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error():
    with pytest.raises(NasError, match="CUDA is not available"):
        parse_device("cuda:0")


def test_build_never_overwrites_a_corrupt_table(tmp_path):
    out = tmp_path / "corrupt.parquet"
    out.write_bytes(b"garbage")
    with pytest.raises(NasError, match="corrupt or truncated"):
        fast_build(out)
    assert out.read_bytes() == b"garbage"


def test_out_must_be_parquet(tmp_path):
    with pytest.raises(NasError, match=r"expected a \.parquet file"):
        fast_build(tmp_path / "table.csv")
    assert not (tmp_path / "table.csv").exists()
