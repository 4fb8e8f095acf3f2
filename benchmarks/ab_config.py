"""Inference time of INIKNet with and without a configuration option, in one process.

    python benchmarks/ab_config.py --option cascade=true            # 640x640, fp32, channels_last
    python benchmarks/ab_config.py --option cascade=true --size 1024 --reps 7 --half

Both models have the same weights (the option's own parameters, if any, at their
initial values); calls alternate A, B, A, B, ... after one warm-up each, so that a
drifting machine affects both alike. Prints each model's median and the ratio B/A.
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

import inik  # noqa: E402
from inik.loading import DEFAULT_WEIGHTS  # noqa: E402
from inik.ops import winograd  # noqa: E402
from inik.runtime import keep_freed_memory  # noqa: E402


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (a JSON value), got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON value after {key}=, got {value!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--option", type=_option, action="append", required=True,
                   help="an INIKNetConfig field of model B, e.g. cascade=true (repeat for several)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="weights of model A (default: the bundled weights)")
    p.add_argument("--size", type=int, default=640, help="square input side in pixels (default 640)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per model (default 5)")
    p.add_argument("--half", action="store_true", help="bf16 autocast, as inik deblur --half (default: fp32)")
    args = p.parse_args(argv)
    keep_freed_memory()
    a = inik.INIKNet.load(args.weights).eval()
    config = inik.INIKNetConfig(**{**a.config.__dict__, **dict(args.option)})
    b = inik.INIKNet(config).eval()
    b.load_state_dict(a.state_dict(), strict=False)
    torch.manual_seed(0)
    y = torch.rand(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    times = {"A": [], "B": []}

    def call(model):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.half):
            t0 = time.perf_counter()
            model(y)
            return time.perf_counter() - t0

    call(a), call(b)
    for _ in range(args.reps):
        times["A"].append(call(a))
        times["B"].append(call(b))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.size}x{args.size}, {'bf16' if args.half else 'fp32'}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, CPU kernels {winograd.isa()}")
    print(f"A (weights as saved): {med['A'] * 1e3:.0f} ms; B ({', '.join(f'{k}={v}' for k, v in args.option)}): "
          f"{med['B'] * 1e3:.0f} ms; B/A = {med['B'] / med['A']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
