"""End-to-end timing of a network in a fresh process.

A process that has just trained a supernet holds a large heap, warmed thread pools and changed
allocator state; timing a small network there reads 5-15% slower than in the fresh process a
table is built and validated in. The search therefore measures the network it derives here, in
a child interpreter that does nothing else.

    python -m lut.isolated ARCH.json --device cpu --batch 1 --dtype fp32 --threads 1 \
        [--runtime onnxruntime --provider CPUExecutionProvider]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from supernets.errors import NasError
from supernets.spec import ArchSpec

__all__ = ["measure_network_isolated"]


def measure_network_isolated(spec: ArchSpec, device: str = "cpu", *, batch: int = 1,
                             dtype: str = "fp32", threads: int | None = None,
                             cuda_graphs: bool = False, runtime=None) -> dict:
    """``lut.measure_network`` run in a child process; the same dict. ``cuda_graphs``: time
    replays of a captured CUDA graph, as a table built with ``--cuda-graphs`` does;
    ``runtime``: a ``lut.runtimes.Runtime`` (default eager), e.g. a table's."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arch.json"
        spec.save(path)
        argv = [sys.executable, "-m", "lut.isolated", str(path), "--device", device,
                "--batch", str(batch), "--dtype", dtype]
        if threads:
            argv += ["--threads", str(threads)]
        if cuda_graphs:
            argv += ["--cuda-graphs"]
        if runtime is not None and not runtime.is_eager:
            argv += ["--runtime", runtime.name, "--provider", runtime.provider]
        done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NasError(f"measuring {spec.name} in a child process failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description="time one network end to end (JSON on stdout)")
    ap.add_argument("arch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--provider")
    args = ap.parse_args()
    from lut.build import measure_network
    from lut.device import parse_device
    from lut.runtimes import Runtime
    from lut.timing import TimingConfig

    runtime = Runtime.parse(args.runtime, args.provider, parse_device(args.device))
    result = measure_network(ArchSpec.load(args.arch), args.device, batch=args.batch,
                             dtype=args.dtype, threads=args.threads,
                             timing=TimingConfig(cuda_graphs=args.cuda_graphs), runtime=runtime)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
