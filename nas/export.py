"""Export a pose network for deployment (ONNX, TorchScript) or retraining (a model checkpoint).

Every format is written to a temporary file beside the output, checked, then renamed: a failed
export or a failed check leaves nothing behind. The check runs the exported file on a seeded
random batch (of another size than the one traced, so the dynamic batch axis is exercised too)
and compares it with the PyTorch model in eval mode:

    onnx          torch.onnx.export (the torch.export-based exporter, torch's default) through
                  ``lut.ort.export_onnx``, as latency tables export their rows: opset
                  ``lut.ort.OPSET`` (20), dynamic batch axis; input ``image`` (N, 3, H, W), output
                  ``heatmaps``; weights inside the one file; the arch JSON in the model metadata
                  (``nas.arch``). Checked with onnxruntime (CPU): max abs difference <= 1e-4.
    torchscript   torch.jit.trace, with the arch JSON as the extra file ``nas.arch.json``.
                  Reloaded with torch.jit.load and compared the same way.
    pytorch       the nas.model/1 checkpoint (``nas.checkpoint``): arch + state_dict, for
                  retraining; reloaded with load_model_checkpoint and compared.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.checkpoint import load_model_checkpoint, save_model_checkpoint
from supernets.errors import NasError
from supernets.fileio import check_writable_dir, file_mode
from supernets.spec import ArchSpec

__all__ = ["FORMATS", "TOLERANCE", "export_model"]

FORMATS = ("onnx", "torchscript", "pytorch")
TOLERANCE = 1e-4       # max abs difference allowed between the exported file and PyTorch (fp32)
ARCH_METADATA = "nas.arch"
TRACE_BATCH = 1        # the batch size the graph is traced with
CHECK_BATCH = 2        # the batch size it is checked with: proves the batch axis is dynamic


def export_model(spec: ArchSpec, model: nn.Module, fmt: str, out: str | os.PathLike, *,
                 check: bool = True, seed: int = 0) -> dict:
    """Write ``model`` (a PoseNet of ``spec``) to ``out`` in format ``fmt``; return a report.

    The report holds ``format``, ``path``, ``bytes``, ``input_size``, ``opset`` (onnx only) and
    ``check``: the max abs difference from PyTorch on a random input drawn from ``seed``, the
    tolerance and whether it passed (None when ``check`` is False). A failed check raises
    NasError and writes nothing.
    """
    if fmt not in FORMATS:
        raise NasError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise NasError(f"{out}: is a directory, expected an output file path")
    check_writable_dir(out.parent, f"--out {out}: its folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private CPU copy in eval mode: the caller's model keeps its device and mode.
    model = copy.deepcopy(model).cpu().eval()
    h, w = spec.skeleton.input_size
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        report = _WRITERS[fmt](spec, model, tmp)
        report["check"] = None
        if check:
            x = torch.randn(CHECK_BATCH, 3, h, w, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                expected = model(x).numpy()
            got = _RUNNERS[fmt](tmp, x)
            diff = _max_abs_diff(got, expected)
            passed = diff <= TOLERANCE  # False for NaN too
            report["check"] = {"input_shape": list(x.shape), "seed": seed,
                               "max_abs_diff": diff, "tolerance": TOLERANCE, "passed": passed}
            if not passed:
                raise NasError(f"{out}: {fmt} export check failed: max abs difference from "
                               f"PyTorch {diff:.3g} > {TOLERANCE:g}; nothing written")
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size,
            "input_size": [h, w], **report}


def _max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def _example(spec: ArchSpec) -> torch.Tensor:
    return torch.zeros(TRACE_BATCH, 3, *spec.skeleton.input_size)


# -- ONNX --------------------------------------------------------------------------------------

def _write_onnx(spec: ArchSpec, model: nn.Module, path: Path) -> dict:
    from lut.ort import OPSET, export_onnx  # the one exporter: latency tables use it too

    program = export_onnx(model, (_example(spec),), ["image"], ["heatmaps"])
    program.model.metadata_props[ARCH_METADATA] = spec.to_json()
    # external_data=False: weights inside the one file, so the rename publishes all of it
    # (torch's default writes them to a side file named after the temporary path).
    program.save(str(path), external_data=False)
    return {"opset": program.model.opset_imports.get("", OPSET)}


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime  # local: a second of import time, needed only here

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["heatmaps"], {"image": x.numpy()})
    return out


# -- TorchScript -------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_torchscript():
    """torch.jit is deprecated in recent torch; the user asked for TorchScript all the same."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        yield


def _write_torchscript(spec: ArchSpec, model: nn.Module, path: Path) -> dict:
    with _quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(model, _example(spec), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{ARCH_METADATA}.json": spec.to_json()})
    return {}


def _run_torchscript(path: Path, x: torch.Tensor) -> np.ndarray:
    with _quiet_torchscript(), torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(x).numpy()


# -- PyTorch checkpoint ------------------------------------------------------------------------

def _write_pytorch(spec: ArchSpec, model: nn.Module, path: Path) -> dict:
    save_model_checkpoint(path, spec, model)
    return {}


def _run_pytorch(path: Path, x: torch.Tensor) -> np.ndarray:
    _, model, _ = load_model_checkpoint(path)
    with torch.no_grad():
        return model(x).numpy()


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "pytorch": _write_pytorch}
_RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript, "pytorch": _run_pytorch}
