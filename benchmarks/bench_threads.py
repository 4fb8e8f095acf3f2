"""How the CPU kernels scale with threads: the IFM forward (``cpp``) and the whole
model's fast path, timed with 1 thread and with N threads in turns, in one process.

    python benchmarks/bench_threads.py                  # 640x640, 1 against all threads, 5 rounds
    python benchmarks/bench_threads.py --size 320 --rounds 9 --out threads.json

A shared virtual machine's speed drifts while it runs (other tenants), so each
round times every thread count once, one after the other, and the speed-up is
reported twice: of the fastest call of each count (what the cores can do when
they are not disturbed) and of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ifm import _device_name, _versions, cpu_kernel_isa, make_inputs  # noqa: E402

import inik  # noqa: E402


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def workloads(size: int, which: list[str]) -> dict:
    """Callables by name: the IFM forward on the default dictionary, the model's fast path."""
    out = {}
    if "ifm" in which:
        (image, mu, omega, atoms), support = make_inputs(size, 1, 3, torch.float32, "cpu")
        out["ifm forward (cpp)"] = lambda: torch.ops.inik.ifm_native_forward(image, mu, omega, atoms, support, "")
    if "model" in which:  # (its first forward applies the allocator setting, as inik deblur does)
        torch.manual_seed(0)
        model = inik.INIKNet().eval().to(memory_format=torch.channels_last)
        y = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.no_grad():
                model(y)
        out["model fast path"] = run
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=640, help="image side [px] (default 640)")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1 and torch's default)")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per thread count (default 5)")
    p.add_argument("--what", default="ifm,model", help="comma-separated subset of ifm,model (default both)")
    p.add_argument("--out", help="write the rows to this .json file")
    args = p.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, torch.get_num_threads()})
    which = args.what.split(",")
    if set(which) - {"ifm", "model"} or args.rounds < 1 or min(counts) < 1:
        p.error("--what takes ifm and/or model; --rounds and --threads must be >= 1")
    print(f"device: {_device_name(torch.device('cpu'))}; kernels {cpu_kernel_isa()}")
    print(f"versions: {_versions(torch.device('cpu'))}")
    rows = []
    for name, fn in workloads(args.size, which).items():
        times = {n: [] for n in counts}
        for n in counts:  # warm-up at every count
            torch.set_num_threads(n)
            fn()
        for _ in range(args.rounds):
            for n in counts:
                torch.set_num_threads(n)
                times[n].append(_time(fn))
        base = counts[0]
        for n in counts:
            best, med = min(times[n]), statistics.median(times[n])
            row = {"what": name, "size": args.size, "threads": n, "best_ms": round(best, 2),
                   "median_ms": round(med, 2), "speedup_best": round(min(times[base]) / best, 3),
                   "speedup_median": round(statistics.median(times[base]) / med, 3)}
            rows.append(row)
            print(f"{name:20s} {args.size}x{args.size} threads {n:2d}: best {best:9.1f} ms "
                  f"(x{row['speedup_best']:.2f})  median {med:9.1f} ms (x{row['speedup_median']:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": _device_name(torch.device("cpu")),
                                              "versions": _versions(torch.device("cpu")), "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
