"""Model checkpoints: an architecture and its weights in one file, for export, retraining, search.

Format ``nas.model/1``, written by ``torch.save`` and read back with ``weights_only=True`` (no
arbitrary code runs when a checkpoint is opened)::

    {
      "format": "nas.model/1",
      "arch": {...},          # ArchSpec.to_dict(): the nas.arch/1 JSON object
      "state_dict": {...},    # PoseNet(arch).state_dict(), tensors on the CPU
      "meta": {...}           # free-form: str, int, float, bool, None, lists and dicts of them
    }

Loading checks everything and names the file at fault: unreadable or truncated file, another
format, an arch that fails validation, weights that do not fit the arch.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.model import PoseNet
from supernets.spec import ArchSpec

__all__ = ["FORMAT", "layers_difference", "load_model_checkpoint", "save_model_checkpoint"]

FORMAT = "nas.model/1"
_KEYS = {"format", "arch", "state_dict", "meta"}
_META_TYPES = (str, int, float, bool, type(None))


def save_model_checkpoint(path: str | os.PathLike, spec: ArchSpec, model: nn.Module,
                          **meta) -> None:
    """Write ``model``'s weights with ``spec`` (atomically: a reader never sees half a file).

    ``meta`` holds plain values (epoch, metrics, the command that trained it...); anything else
    would not load back under ``weights_only=True``, so it is refused here, not at load time.
    """
    _check_meta(meta, "meta")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    mismatch = _state_dict_mismatch(spec, state)
    if mismatch:
        raise ValueError(f"model does not match arch {spec.name!r}: {mismatch}")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "arch": spec.to_dict(), "state_dict": state, "meta": meta},
               buffer)
    write_atomic(path, buffer.getvalue())


def load_model_checkpoint(path: str | os.PathLike, *, arch: ArchSpec | None = None
                          ) -> tuple[ArchSpec, PoseNet, dict]:
    """``(spec, model with the weights, meta)`` from a checkpoint; the model is in eval mode.

    With ``arch``, the checkpoint must hold weights for that architecture (the same layers; name,
    space and input size may differ, as a fully convolutional net's weights do not depend on
    them) and the model is built from ``arch``, e.g. to export at another input size.
    """
    where = str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NasError(f"{where}: no such checkpoint file") from None
    except IsADirectoryError:
        raise NasError(f"{where}: is a directory, expected a checkpoint file") from None
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain values (torch's own message
        # suggests weights_only=False, which would run code from the file: not for us).
        raise NasError(f"{where}: not a {FORMAT} checkpoint (not a torch.save file of tensors "
                       "and plain values)") from None
    except Exception as e:  # noqa: BLE001
        # Corrupt or truncated files fail inside torch/zipfile with many exception types
        # (RuntimeError, EOFError, ...); all mean the same thing to a user.
        raise NasError(f"{where}: cannot read checkpoint, the file is corrupt or truncated "
                       f"({_first_sentence(e)})") from None
    if not isinstance(ckpt, dict):
        raise NasError(f"{where}: not a {FORMAT} checkpoint (holds a {type(ckpt).__name__}, "
                       "expected a dict)")
    if ckpt.get("format") != FORMAT:
        hint = ""
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = "; this looks like a bare state_dict: save it with save_model_checkpoint"
        raise NasError(f"{where}: field 'format' = {ckpt.get('format')!r}: expected "
                       f"{FORMAT!r}{hint}")
    missing = sorted(_KEYS - set(ckpt))
    if missing:
        raise NasError(f"{where}: missing field {missing[0]!r}")
    spec = ArchSpec.from_dict(ckpt["arch"], where=f"{where}: arch")
    state = ckpt["state_dict"]
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise NasError(f"{where}: field 'state_dict': expected a mapping of names to tensors")
    meta = ckpt["meta"]
    if not isinstance(meta, dict):
        raise NasError(f"{where}: field 'meta' = {meta!r}: expected an object")
    mismatch = _state_dict_mismatch(spec, state)
    if mismatch:
        raise NasError(f"{where}: weights do not match its arch {spec.name!r}: {mismatch}")
    if arch is not None:
        difference = layers_difference(spec, arch)
        if difference:
            raise NasError(f"{where}: holds weights for arch {spec.name!r}, not for "
                           f"{arch.name!r}: {difference}")
        spec = arch
    model = PoseNet(spec)
    model.load_state_dict(state)
    return spec, model.eval(), meta


def layers_difference(a: ArchSpec, b: ArchSpec) -> str | None:
    """Where two specs need different weights (first differing layer), or None if they share
    them: same labels, ops, channels and strides; input size, name and space do not matter."""
    def key(layer):
        return layer.label, layer.op, layer.in_chs, layer.out_chs, layer.stride

    layers_a, layers_b = [key(x) for x in a.layers()], [key(x) for x in b.layers()]
    for la, lb in zip(layers_a, layers_b):
        if la != lb:
            return (f"layer {la[0]!r} is {la[1]} {la[2]}->{la[3]} stride {la[4]}, "
                    f"expected {lb[1]} {lb[2]}->{lb[3]} stride {lb[4]}"
                    if la[0] == lb[0] else f"layer {la[0]!r} where {lb[0]!r} was expected")
    if len(layers_a) != len(layers_b):
        return f"{len(layers_a)} layers, expected {len(layers_b)}"
    return None


def _state_dict_mismatch(spec: ArchSpec, state: Mapping[str, torch.Tensor]) -> str | None:
    """The first key that is missing, unexpected or of another shape, or None if all fit."""
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        expected = {k: tuple(v.shape) for k, v in PoseNet(spec).state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            return f"missing tensor {key!r}"
        if tuple(state[key].shape) != shape:
            return (f"tensor {key!r} has shape {list(state[key].shape)}, "
                    f"expected {list(shape)}")
    for key in state:
        if key not in expected:
            return f"unexpected tensor {key!r}"
    return None


def _check_meta(value, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            _check_meta(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
    elif not isinstance(value, _META_TYPES):
        raise TypeError(f"{where} = {value!r}: checkpoint metadata must be plain values "
                        "(str, int, float, bool, None, lists and dicts of them)")


def _first_sentence(error: Exception) -> str:
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")
