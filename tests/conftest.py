"""Shared test settings."""

import importlib.util
import os
import tempfile
from pathlib import Path

import torch

# ONNX exports are cached on disk (lut.ort); tests use a fresh cache of their own, which child
# processes (the CLI, lut.isolated) inherit through the environment
os.environ["NAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="nas-test-cache-")

# One thread: on a shared 2-core machine, torch's thread pool contending with other processes
# makes the suite several times slower; results do not depend on the thread count.
torch.set_num_threads(1)


def macs_table(space, folder):
    """A synthetic latency table of ``space`` in ``folder``: each row's latency proportional to
    its MACs (plus a constant), so windows and budgets are checked exactly and fast."""
    from lut import LatencyTable, space_rows
    from supernets.flops import op_macs

    rows = {r.key: op_macs(r.op, r.in_chs, r.out_chs, r.stride, r.in_hw, r.low_chs, r.low_hw)
            / 1e7 + 0.01 for r in space_rows(space)}
    path = folder / "macs.parquet"
    LatencyTable.from_rows(space, rows).save(path)
    return path


def stand_in_probe(monkeypatch, ratio: float = 1.0, fastest_ms: float | None = None):
    """The table is "this machine's" and its speed probe measures ``ratio``."""
    import lut.probe
    import lut.table

    def probe(table, tolerance=lut.probe.PROBE_TOLERANCE):
        nets = ({"role": "fastest", "name": "fastest", "stored_ms": 1.0,
                 "measured_ms": fastest_ms or ratio, "ratio": ratio},)
        return lut.probe.ProbeResult(str(table.path), ratio, nets, 15, 0.1, tolerance)

    monkeypatch.setattr(lut.table, "_foreign_fields", lambda table: [])
    monkeypatch.setattr(lut.probe, "probe_table", probe)


def randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Seeded, non-trivial BatchNorm parameters and statistics in every BatchNorm2d of ``model``,
    so that copying them (or not) shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
