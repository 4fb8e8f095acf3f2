"""Where the IFM backward's time goes: each gradient timed alone, then the
kernels of one full backward under torch.profiler.

    python benchmarks/profile_ifm.py --backend triton [--size 640] [--dtype float32]

The backward computes four gradients with separate kernels (see the backend's
docstring); timing ``needs`` = image only, mu and omega only, atoms only and
all four shows which one to work on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ifm import DTYPES, _device_name, _sync, _versions, make_inputs, measure, profile_table  # noqa: E402

NEEDS = {"image": [True, False, False, False], "mu+omega": [False, True, True, False],
         "atoms": [False, False, False, True], "all": [True, True, True, True]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="triton")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--rows", type=int, default=15, help="profiler table rows")
    p.add_argument("--reps", type=int, default=3, help="CPU: timed calls per measurement")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    tensors, support = make_inputs(args.size, 1, 3, DTYPES[args.dtype], device)
    grad = torch.randn_like(tensors[0])
    print(f"IFM backward, backend {args.backend}, {args.size}x{args.size} {args.dtype}\n"
          f"device: {_device_name(device)}\nversions: {_versions(device)}")

    def backward(needs):
        def run():
            out = torch.ops.inik.ifm_backward(grad, *tensors, support, args.backend, needs)
            _sync(device)
            return out
        return run

    for name, needs in NEEDS.items():
        fn = backward(needs)
        fn()  # warm-up (autotuning, compilation)
        ms, _ = measure(fn, device, args.reps, 0.0)
        print(f"  gradients {name:<9} {ms:10.3f} ms")
    print(profile_table(backward(NEEDS["all"]), device, 1, args.rows, 50))
    return 0


if __name__ == "__main__":
    sys.exit(main())
