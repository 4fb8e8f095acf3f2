"""Where the whole model's time goes: one mode of bench_model under torch.profiler.

    python benchmarks/profile_model.py --size 640 --mode fast-bf16 [--rows 25]

Prints the operators (and on a GPU, their kernels) sorted by device time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ifm import profile_table  # noqa: E402
from bench_model import KNOWN_MODES, _size, build, inference_fn  # noqa: E402

import inik  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="640", help="W or WxH")
    p.add_argument("--mode", default="fast", choices=KNOWN_MODES)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    h, w = _size(args.size)
    torch.manual_seed(0)
    model = build(args.mode, inik.INIKNet().state_dict(), device)
    y = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    run = inference_fn(args.mode, model, y, device)
    for _ in range(3):
        run()
    print(f"{args.mode} {w}x{h} on {device} (3 calls)")
    print(profile_table(run, device, 3, args.rows, 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
