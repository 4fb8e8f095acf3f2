"""Time every IFM backend that can run here: forward, backward, forward+backward.

    python benchmarks/bench_ifm.py                     # 640x640, B=1, C=3, fp32, default dictionary
    python benchmarks/bench_ifm.py --dtype bfloat16 --size 1024 --out ifm.csv
    python benchmarks/bench_ifm.py --backends unfused,reference,triton --out ifm.json

Default dictionary: R=7 scales of support 3, 5, ..., 15 inside K=15 atoms, N=10
atoms per scale. Prints the median time, the speed-up over ``unfused`` (the
authors' algorithm) measured in the same run, and the peak extra memory of one
call (GPU: ``torch.cuda.max_memory_allocated``; CPU: growth of the sampled
resident set, see :class:`RssPeak`); on a GPU also the achieved bandwidth over
the compulsory traffic (every input read once, every output written once) and
the fraction of the roofline, max(bytes / peak bandwidth, flops / peak flops),
reached (docs/ARCHITECTURE.md section 2). Times use ``triton.testing.do_bench`` on a
GPU and the median of up to ``--reps`` runs on a CPU (one run for calls slower
than ``--min-ms``), so CPU numbers are rough, more so on a shared machine; on
a CPU no measurement starts after ``--budget-s`` (75 s), which keeps a default
run near two minutes and says what it skipped.
Absolute numbers only mean something next to the device line printed above them.

Backends: every one registered in ``inik.ops.ifm`` (unfused, cpp, cuda, triton,
reference, ...) plus reference-compiled (the reference functions under
``torch.compile``) - whichever ``inik.ops.available_backends`` reports for the device. The Triton
interpreter (CPU) is skipped: it is a
correctness tool, thousands of times slower than the kernels.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inik  # noqa: E402
from inik.ops import available_backends, backend_unavailable, ifm  # noqa: E402
from inik.ops import reference as ref  # noqa: E402
from inik.ops.ifm import backend_names  # noqa: E402

# Every registered backend: the baseline first, then the fast ones, the reference
# (and its compiled form) last, so a time budget cuts the slow ones.
ALL_BACKENDS = ("unfused", *(n for n in backend_names() if n not in ("unfused", "reference")),
                "reference", "reference-compiled")
MODES = ("forward", "backward", "forward+backward")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Dense peak throughput (TFLOP/s) by GPU name: TF32 tensor cores, fp16/bf16 tensor
# cores, fp32 CUDA cores. Used only for the compute side of the roofline.
_PEAK_TFLOPS = {
    "H200": (494.0, 989.0, 67.0),
    "H100 PCIe": (378.0, 756.0, 51.0),
    "H100": (494.0, 989.0, 67.0),
    "A100": (156.0, 312.0, 19.5),
}


# ---------------------------------------------------------------- problem

def make_inputs(size: int, batch: int, channels: int, dtype, device, seed: int = 0):
    """Default dictionary at ``size x size``: image, mu (softmax over R), omega, atoms, support."""
    g = torch.Generator().manual_seed(seed)
    support = [3, 5, 7, 9, 11, 13, 15]
    r, n, k = len(support), 10, max(support)
    image = torch.rand(batch, channels, size, size, generator=g)
    mu = torch.randn(batch, r, size, size, generator=g).softmax(1)
    omega = torch.randn(batch, n, size, size, generator=g)
    atoms = torch.randn(r, n, k, k, generator=g) / k
    tensors = [t.to(device=device, dtype=dtype) for t in (image, mu, omega, atoms)]
    return tensors, support


def min_bytes(mode: str, shapes, elem: int) -> int:
    """Compulsory global-memory traffic: every input read once, every output written once."""
    (b, c, h, w), r, n = shapes
    px = b * h * w
    fwd = px * (c + r + n + c) * elem
    bwd = px * (c + c + r + n + c + r + n) * elem  # read grad, image, mu, omega; write dimage, dmu, domega
    return {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[mode]


def min_flops(mode: str, shapes, support, k: int) -> float:
    """Multiply-adds x 2 of the support-aware fused algorithm (synthesis, apply; backward:
    dk, dcoef, datoms, kernel re-synthesis for the image gradient, its gather)."""
    (b, c, h, w), r, n = shapes
    px = b * h * w
    synth = n * sum(s * s for s in support)
    apply = c * k * k
    fwd = 2.0 * px * (synth + apply)
    bwd = 2.0 * px * (3 * synth + 2 * apply)
    return {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[mode]


# ---------------------------------------------------------------- callables

def _compiled_reference():
    fwd = torch.compile(ref.ifm_reference, dynamic=False)
    bwd = torch.compile(ref.ifm_reference_backward, dynamic=False)
    return fwd, bwd


def make_callables(name: str, tensors, support, grad) -> dict[str, Callable[[], object]]:
    image, mu, omega, atoms = tensors
    needs = [True, True, True, True]
    if name == "reference-compiled":
        fwd, bwd = _compiled_reference()
        return {
            "forward": lambda: fwd(image, mu, omega, atoms, support),
            "backward": lambda: bwd(grad, image, mu, omega, atoms, support, needs),
            "forward+backward": lambda: (fwd(image, mu, omega, atoms, support),
                                         bwd(grad, image, mu, omega, atoms, support, needs)),
        }
    leaves = [t.detach().requires_grad_() for t in tensors]

    def forward():
        with torch.no_grad():
            return ifm(image, mu, omega, atoms, support=support, backend=name)

    def backward():
        return torch.ops.inik.ifm_backward(grad, image, mu, omega, atoms, support, name, needs)

    def forward_backward():
        out = ifm(*leaves, support=support, backend=name)
        return torch.autograd.grad(out, leaves, grad)

    return {"forward": forward, "backward": backward, "forward+backward": forward_backward}


# ---------------------------------------------------------------- measurement

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_unmaps_big_buffers() -> None:
    """glibc: serve every allocation of 1 MiB or more with mmap and give it back on
    free (the default threshold drifts up to 32 MB), so the resident set shows them."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class RssPeak:
    """Peak growth of the resident set size while the block runs, sampled every
    millisecond by a thread (Linux; ``mb`` is None elsewhere). Buffers above glibc's
    mmap threshold (1 MiB once ``_malloc_unmaps_big_buffers`` ran) are seen; smaller ones that reuse heap memory
    already resident, or live under a millisecond, can be missed."""

    def __enter__(self):
        self.mb = None
        if not os.path.exists("/proc/self/statm"):
            return self
        import threading
        self._base = self._peak = _rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(1e-3)

    def __exit__(self, *exc):
        if hasattr(self, "_thread"):
            self._done.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.mb = max(0, self._peak - self._base) / 1e6
        return False


def measure(fn, device: torch.device, reps: int, min_ms: float) -> tuple[float, Optional[float]]:
    """(median ms, peak extra MB) of ``fn``, already warmed up where that matters.

    GPU: ``triton.testing.do_bench`` (median), then one call under
    ``torch.cuda.max_memory_allocated``. CPU: up to ``reps`` timed calls, fewer once
    ``min_ms`` has been spent; the first one also samples the resident set.
    """
    if device.type == "cuda":
        import triton.testing
        ms = float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return ms, (torch.cuda.max_memory_allocated(device) - base) / 1e6
    times, mem = [], None
    while len(times) < reps and (not times or sum(times) < min_ms):
        with RssPeak() as rss:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        mem = rss.mb if mem is None else mem
    return statistics.median(times), mem


def profile_table(fn, device: torch.device, calls: int, rows: int, name_width: int) -> str:
    """torch.profiler's operator (and on a GPU, kernel) table of ``calls`` calls of ``fn``,
    sorted by device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=name_width)


def peak_bandwidth(device: torch.device) -> Optional[float]:
    """Theoretical DRAM bandwidth in bytes/s (double data rate x bus width)."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8
    return None


def peak_flops(device: torch.device, dtype) -> Optional[float]:
    name = torch.cuda.get_device_name(device)
    for key, (tf32, half, fp32) in _PEAK_TFLOPS.items():
        if key in name:
            if dtype in (torch.float16, torch.bfloat16):
                return half * 1e12
            return (fp32 if torch.get_float32_matmul_precision() == "highest" else tf32) * 1e12
    return None


def sgemm_flops(device: torch.device, dtype, n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of an n x n matmul in this dtype here, timed now: what "of sgemm" divides by
    (the machine's practical peak, as its own BLAS reaches it)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times)


def cpu_kernel_isa() -> str:
    """The instruction set of inik's native CPU kernels in this process (INIK_CPU_ISA may lower it)."""
    from inik.ops import _ext, winograd
    return winograd.isa() if _ext.is_built() else "not built"


# ---------------------------------------------------------------- main

def _versions(device: torch.device) -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"inik {getattr(inik, '__version__', '?')}"]
    try:
        import triton
        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton not installed")
    if device.type == "cuda":
        parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical cores"


def skip_reason(name: str, device: torch.device) -> Optional[str]:
    if name == "reference-compiled":
        return None
    if name == "triton" and device.type == "cpu":
        return "the Triton interpreter (CPU) is a correctness tool, far too slow to time"
    why = backend_unavailable(name, device)
    if why is None and name not in available_backends(device):
        why = "not available"
    return why


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=640, help="image height and width (default 640)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS),
                   help=f"comma-separated subset of {','.join(ALL_BACKENDS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--reps", type=int, default=3, help="at most this many timed runs per measurement on a CPU")
    p.add_argument("--min-ms", type=float, default=1000.0,
                   help="on a CPU, stop repeating once this many milliseconds were spent (default 1000)")
    p.add_argument("--tf32", action="store_true",
                   help="fp32 matmuls on TF32 tensor cores (torch.set_float32_matmul_precision('high'))")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no measurement after this many seconds (default: 75 on a CPU, none on a GPU)")
    p.add_argument("--out", help="write the results to this .csv or .json file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    if device.type == "cpu":
        _malloc_unmaps_big_buffers()
    dtype = DTYPES[args.dtype]
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for n in names:
        if n not in ALL_BACKENDS:
            p.error(f"--backends: unknown backend {n!r}; expected some of {ALL_BACKENDS}")
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: unknown mode {m!r}; expected some of {MODES}")
    if "unfused" in names:  # the baseline goes first, so every ratio has its denominator
        names.remove("unfused")
        names.insert(0, "unfused")

    tensors, support = make_inputs(args.size, args.batch, args.channels, dtype, device)
    grad = torch.randn_like(tensors[0])
    shapes = (tuple(tensors[0].shape), tensors[1].shape[1], tensors[2].shape[1])
    k = tensors[3].shape[-1]
    elem = tensors[0].element_size()
    bw = peak_bandwidth(device) if device.type == "cuda" else None
    fl = peak_flops(device, dtype) if device.type == "cuda" else None
    gemm = sgemm_flops(device, dtype) if device.type == "cpu" else None

    print(f"IFM benchmark: B={args.batch} C={args.channels} {args.size}x{args.size} {args.dtype}, "
          f"R={len(support)} supports {support} in K={k}, N={tensors[2].shape[1]}")
    print(f"device: {_device_name(device)}")
    if gemm:
        print(f"cpu: inik kernels {cpu_kernel_isa()}, torch {torch.backends.cpu.get_cpu_capability()}; "
              f"a 2048x2048 matmul in {args.dtype} runs at {gemm / 1e9:.0f} GFLOP/s here ('of sgemm' below)")
    print(f"versions: {_versions(device)}; float32 matmul precision: {torch.get_float32_matmul_precision()}")
    cpu_timing = (f"median of up to {args.reps} runs (fewer past {args.min_ms:.0f} ms), compiled code warmed up; "
                  f"memory: sampled RSS growth")
    print(f"timing: {'triton.testing.do_bench, median' if device.type == 'cuda' else cpu_timing}"
          + (f"; roofline: {bw / 1e12:.2f} TB/s" if bw else "")
          + (f", {fl / 1e12:.0f} TFLOP/s" if fl else ""))

    budget = args.budget_s if args.budget_s is not None else (75.0 if device.type == "cpu" else 0.0)
    start = time.perf_counter()
    rows, baseline = [], {}
    for name in names:
        why = skip_reason(name, device)
        if why is not None:
            print(f"skipped {name}: {why}")
            continue
        fns = make_callables(name, tensors, support, grad)
        for mode in modes:
            if budget and time.perf_counter() - start > budget:
                print(f"skipped {name} {mode}: past the time budget of {budget:.0f} s (--budget-s)")
                continue
            fn = fns[mode]
            try:
                if device.type == "cuda" or name == "reference-compiled":
                    fn()  # warm-up: compilation, autotuning
                    _sync(device)
                ms, mem = measure(fn, device, args.reps, args.min_ms)
            except Exception as exc:  # a backend failing here must not hide the others
                print(f"failed {name} {mode}: {type(exc).__name__}: {exc}")
                continue
            if name == "unfused":
                baseline[mode] = ms
            row = {"backend": name, "mode": mode, "median_ms": ms,
                   "speedup_vs_unfused": baseline[mode] / ms if mode in baseline else None,
                   "peak_extra_MB": mem}
            if gemm:  # the fused algorithm's multiply-adds (unfused and reference do more)
                row["GFLOP_per_s"] = min_flops(mode, shapes, support, k) / (ms * 1e-3) / 1e9
                row["of_sgemm"] = row["GFLOP_per_s"] * 1e9 / gemm
            if device.type == "cuda":
                nbytes = min_bytes(mode, shapes, elem)
                row["GB_per_s"] = nbytes / (ms * 1e-3) / 1e9
                t_roof = nbytes / bw if bw else 0.0
                if fl:
                    t_roof = max(t_roof, min_flops(mode, shapes, support, k) / fl)
                row["roofline_fraction"] = t_roof / (ms * 1e-3) if t_roof else None
            rows.append(row)
            _print_row(row, header=len(rows) == 1)

    meta = {"device": _device_name(device), "dtype": args.dtype, "size": args.size, "batch": args.batch,
            "channels": args.channels, "support": support, "K": k, "N": tensors[2].shape[1],
            "versions": _versions(device), "cpu_kernels": cpu_kernel_isa() if gemm else None,
            "sgemm_GFLOP_per_s": gemm / 1e9 if gemm else None,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if args.out:
        _write(Path(args.out), rows, meta)
        print(f"wrote {args.out}")
    return 0


_COLS = [("backend", "{:<19}"), ("mode", "{:<17}"), ("median_ms", "{:>11.3f}"),
         ("speedup_vs_unfused", "{:>9.2f}x"), ("peak_extra_MB", "{:>10.1f}"),
         ("GFLOP_per_s", "{:>8.1f}"), ("of_sgemm", "{:>8.1%}"),
         ("GB_per_s", "{:>9.1f}"), ("roofline_fraction", "{:>9.1%}")]
_HEAD = {"backend": "backend", "mode": "mode", "median_ms": "median ms", "speedup_vs_unfused": "vs unfused",
         "peak_extra_MB": "peak MB", "GFLOP_per_s": "GFLOP/s", "of_sgemm": "of sgemm", "GB_per_s": "GB/s",
         "roofline_fraction": "roofline"}


def _width(fmt: str) -> int:
    try:
        return len(fmt.format(0.0))
    except ValueError:  # a string column
        return len(fmt.format(""))


def _print_row(row: dict, header: bool) -> None:
    cols = [(k, f) for k, f in _COLS if k in row]
    if header:
        widths = [_width(f) for _, f in cols]
        print("  ".join(_HEAD[k].rjust(w) if i > 1 else _HEAD[k].ljust(w)
                        for i, ((k, _), w) in enumerate(zip(cols, widths))))
    cells = []
    for k, f in cols:
        v = row[k]
        if v is None:
            cells.append("-".rjust(_width(f)))
        else:
            cells.append(f.format(v))
    print("  ".join(cells))


def _write(path: Path, rows: list[dict], meta: dict) -> None:
    if path.suffix == ".json":
        path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        return
    keys = list(dict.fromkeys(k for r in rows for k in r)) + list(meta)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in meta.items()}})


if __name__ == "__main__":
    sys.exit(main())
