"""The runtime a table is measured in: PyTorch eager, or ONNX Runtime with one provider.

A network is deployed through an inference runtime, and its latency there is not eager's times a
constant (fusions, layouts and kernel choices change which candidate is cheap), so a table
belongs to one runtime as it belongs to one device. ``Runtime`` says which, and turns ops and
networks into the zero-argument calls ``lut.timing.measure`` times:

    Runtime()                                      PyTorch eager (every table before runtimes)
    Runtime("onnxruntime", "CPUExecutionProvider") ONNX Runtime (see ``lut.ort``)

In a table the runtime is the metadata field ``backend`` (absent for eager tables, so tables
written before runtimes existed read as eager) and, for ONNX Runtime, part of the fingerprint
(runtime, its version, provider, session options, opset: identity fields, so a table measured in
another runtime, version or provider is another device's) and of the file name
(``<space>-<H>x<W>-b1-fp32-onnxruntime-1.32.0-cpu.parquet``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lut.timing import resolve_clock
from supernets.errors import NasError

__all__ = ["EAGER", "RUNTIMES", "Runtime"]

RUNTIMES = ("torch", "onnxruntime")
Fn = Callable[[], object]


@dataclass(frozen=True)
class Runtime:
    name: str = "torch"
    provider: str | None = None  # ONNX Runtime's execution provider

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, name: str | None, provider: str | None, device: torch.device) -> Runtime:
        """The runtime a command asked for, checked against this machine and ``device``."""
        name = name or "torch"
        if name not in RUNTIMES:
            raise NasError(f"--runtime {name}: expected one of {', '.join(RUNTIMES)}")
        if name == "torch":
            if provider:
                raise NasError(f"--provider {provider}: only with --runtime onnxruntime")
            return cls()
        from lut import ort

        try:
            ort.ort_version()
        except ImportError:
            raise NasError("--runtime onnxruntime: the onnxruntime package is not installed "
                           "(pip install onnxruntime)") from None
        if provider is None:
            provider = "CUDAExecutionProvider" if device.type == "cuda" else \
                "CPUExecutionProvider"
        ort.check_provider(provider, device)
        return cls(name, provider)

    @classmethod
    def from_meta(cls, meta: dict, where: str = "table") -> Runtime:
        """The runtime of a table from its metadata (no ``backend``: eager)."""
        backend = meta.get("backend")
        if backend is None:
            return cls()
        if not isinstance(backend, dict) or backend.get("name") not in RUNTIMES:
            raise NasError(f"{where}: metadata field 'backend' = {backend!r}: expected "
                           f"{{\"name\": one of {', '.join(RUNTIMES)}, ...}}")
        if backend["name"] == "torch":
            return cls()
        provider = backend.get("provider")
        if not isinstance(provider, str):
            raise NasError(f"{where}: metadata field 'backend' has no provider")
        return cls(backend["name"], provider)

    # -- what a table stores -----------------------------------------------------------------
    @property
    def is_eager(self) -> bool:
        return self.name == "torch"

    def fingerprint_fields(self, threads: int) -> dict:
        """Fields added to a device's fingerprint (identity fields; none for eager)."""
        if self.is_eager:
            return {}
        from lut import ort

        provider = self.provider
        if provider not in ort.available_providers():
            provider = f"{provider} (not available here)"
        return {"runtime": self.name, "runtime_version": ort.ort_version(),
                "provider": provider, "session_options": ort.session_settings(threads),
                "opset": ort.OPSET}

    def meta(self, threads: int) -> dict | None:
        """The table's ``backend`` metadata (None for eager)."""
        if self.is_eager:
            return None
        from lut import ort

        return {"name": self.name, "version": ort.ort_version(), "provider": self.provider,
                "session_options": ort.session_settings(threads), "opset": ort.OPSET,
                "exporter": "torch.onnx.export(dynamo=True), ops exported one by one, "
                            "networks as the chain of their ops' graphs"}

    def file_suffix(self) -> str:
        """``""`` for eager, ``-onnxruntime-1.32.0-cpu`` and so on."""
        if self.is_eager:
            return ""
        from lut import ort

        short = re.sub(r"executionprovider$", "", self.provider.lower())
        return f"-{self.name}-{ort.ort_version()}-{short}"

    def flags(self) -> str:
        """The command-line flags that select this runtime (``""`` for eager)."""
        return "" if self.is_eager else f" --runtime {self.name} --provider {self.provider}"

    def describe(self) -> str:
        if self.is_eager:
            return f"PyTorch eager {torch.__version__}"
        from lut import ort

        return f"ONNX Runtime {ort.ort_version()} ({self.provider}, opset {ort.OPSET})"

    def check_dtype(self, dtype: str) -> None:
        """NasError unless this runtime measures ``dtype`` (ONNX Runtime: fp32 only)."""
        if not self.is_eager and dtype != "fp32":
            raise NasError(f"--dtype {dtype}: ONNX Runtime tables are measured in fp32 only")

    def clock(self, clock: str, device: torch.device, threads: int) -> str:
        """The clock for this runtime: ``lut.timing.resolve_clock``'s, except that ONNX Runtime
        on a GPU is timed by the wall clock (its stream is not torch's; its calls return when
        the device is done)."""
        if not self.is_eager and device.type == "cuda":
            if clock not in ("auto", "wall"):
                raise NasError(f"clock {clock!r}: ONNX Runtime on a GPU is timed with the wall "
                               "clock")
            return "wall"
        return resolve_clock(clock, device, threads)

    # -- calls -------------------------------------------------------------------------------
    def op_calls(self, rows: Sequence, device: torch.device, dtype: torch.dtype, batch: int,
                 gen: torch.Generator, threads: int) -> dict[str, Fn]:
        """``{row.key: call}``: each row's op on a random input of its shape."""
        if self.is_eager:
            calls = {}
            for row in rows:
                module = row.build().eval().to(device, dtype)
                xs = tuple(x.to(device, dtype) for x in row.inputs(batch, gen))
                calls[row.key] = (lambda m, xs: lambda: m(*xs))(module, xs)
            return calls
        from lut import ort

        models = ort.op_models(rows, batch, _dtype_name(dtype))
        calls = {}
        for row in rows:
            x = dict(zip(("x", "low"), (t.numpy() for t in row.inputs(batch, gen))))
            sess = ort.session(models[row.key], self.provider, threads, device.index or 0)
            calls[row.key] = ort.runner(sess, x, self.provider, device.index or 0)
        return calls

    def network_calls(self, specs: Sequence, device: torch.device, dtype: torch.dtype,
                      batch: int, gen: torch.Generator, threads: int,
                      how: str = "chain") -> list[Fn]:
        """One call per spec (in order): the standalone network on a random input.
        ``how`` (ONNX Runtime): ``chain`` of the rows' graphs, or the one-piece ``export``."""
        calls = []
        if self.is_eager:
            from supernets.model import PoseNet

            for spec in specs:
                model = PoseNet(spec).eval().to(device, dtype)
                x = torch.randn(batch, 3, *spec.skeleton.input_size, generator=gen)
                calls.append((lambda m, x: lambda: m(x))(model, x.to(device, dtype)))
            return calls
        from lut import ort

        for spec in specs:
            model = ort.network_model(spec, batch, _dtype_name(dtype), how=how)
            calls.append(self.model_call(model, spec.skeleton.input_size, device, batch, gen,
                                         threads))
        return calls

    def model_call(self, model, input_size: tuple[int, int], device: torch.device, batch: int,
                   gen: torch.Generator, threads: int) -> Fn:
        """A call running an ONNX model (ModelProto or path) on a random (batch, 3, H, W)."""
        from lut import ort

        x = torch.randn(batch, 3, *input_size, generator=gen).numpy()
        sess = ort.session(model, self.provider, threads, device.index or 0)
        return ort.runner(sess, x, self.provider, device.index or 0)


EAGER = Runtime()


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype))
