"""Measure the CPU's float32 peak: a large matmul (always) and a hand-written FMA loop (with a C compiler).

The FMA loop is the device peak the benchmark divides by: 12 independent chains of 16-lane (AVX-512) or
8-lane (AVX2) float32 fused multiply-adds per thread, one thread per core, compiled at run
time with the system C compiler and called through ctypes (which releases the GIL). The matmul peak (best
``torch.mm`` of two N x N float32 matrices on all threads) is reported beside it; it is a lower bound.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_FMA_SOURCE = r"""
#ifdef __AVX512F__
#define LANES 16
#else
#define LANES 8
#endif
typedef float vec __attribute__((vector_size(LANES * 4)));
int lanes(void) { return LANES; }
float fma_loop(long iterations, float seed) {
    vec m, c, a[12];
    for (int i = 0; i < LANES; i++) { m[i] = 0.999999f; c[i] = seed * (float)(i + 1); }
#pragma GCC unroll 12
    for (int k = 0; k < 12; k++) a[k] = c * (float)(k + 1);
    for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 12
        for (int k = 0; k < 12; k++) a[k] = a[k] * m + c;
    }
    vec s = a[0];
#pragma GCC unroll 12
    for (int k = 1; k < 12; k++) s += a[k];
    float total = 0;
    for (int i = 0; i < LANES; i++) total += s[i];
    return total;
}
"""
_CHAINS = 12


@dataclass(frozen=True)
class Peak:
    """Measured float32 peaks in GFLOP/s and how they were taken."""

    gflops: float
    method: str
    fma_gflops: float | None
    matmul_gflops: float
    threads: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compile_fma() -> ctypes.CDLL | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    flags = ["-O2", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-shared", "-fPIC"]
    digest = hashlib.sha256((_FMA_SOURCE + " ".join(flags)).encode()).hexdigest()[:16]
    library = Path(tempfile.gettempdir()) / f"fcn-bench-fma-{digest}.so"
    if not library.exists():
        source = library.with_suffix(".c")
        source.write_text(_FMA_SOURCE)
        result = subprocess.run([compiler, *flags, str(source), "-o", str(library)], capture_output=True)
        if result.returncode != 0:
            return None
    lib = ctypes.CDLL(str(library))
    lib.fma_loop.argtypes = [ctypes.c_long, ctypes.c_float]
    lib.fma_loop.restype = ctypes.c_float
    lib.lanes.restype = ctypes.c_int
    return lib


def fma_peak(threads: int, seconds: float = 0.5, repeats: int = 5) -> tuple[float, int] | None:
    """Best GFLOP/s of the FMA loop on ``threads`` threads and its vector lanes (None without a compiler)."""
    lib = _compile_fma()
    if lib is None:
        return None
    flop_per_iteration = _CHAINS * lib.lanes() * 2
    iterations = 1000
    while True:  # calibrate one thread's run to about ``seconds``
        start = time.perf_counter()
        lib.fma_loop(iterations, 1e-7)
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 4:
            iterations = int(iterations * seconds / elapsed)
            break
        iterations *= 4
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=lib.fma_loop, args=(iterations, 1e-7)) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        best = max(best, threads * iterations * flop_per_iteration / elapsed / 1e9)
    return best, lib.lanes()


def matmul_peak(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of ``torch.mm`` on two ``size x size`` float32 matrices with ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def measure_peak(threads: int | None = None, quick: bool = False) -> Peak:
    """Measure both peaks; the FMA loop is the reference when it could be built, else the matmul."""
    threads = threads or len(os.sched_getaffinity(0))
    measured = fma_peak(threads, seconds=0.1 if quick else 0.5, repeats=2 if quick else 5)
    size = 1024 if quick else 4096
    matmul = matmul_peak(threads, size=size, repeats=2 if quick else 5)
    fma = measured[0] if measured else None
    matmul_text = f"torch.mm {size}x{size} float32 on {threads} threads: {matmul:.0f} GFLOP/s"
    if measured is not None and measured[0] >= matmul:
        method = "fma"
        description = (
            f"best of FMA-loop runs: {_CHAINS} independent {measured[1]}-lane float32 FMA chains per thread, "
            f"{threads} threads, C compiled with -O2 -march=native ({matmul_text})"
        )
    else:
        method = "matmul"
        description = f"best of {matmul_text}" + ("" if fma is None else f" (FMA loop: {fma:.0f} GFLOP/s)")
    return Peak(
        gflops=fma if method == "fma" and fma is not None else matmul,
        method=method,
        fma_gflops=fma,
        matmul_gflops=matmul,
        threads=threads,
        description=description,
    )


if __name__ == "__main__":
    print(measure_peak())
