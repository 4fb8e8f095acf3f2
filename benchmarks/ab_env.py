"""Compare settings the package reads on every call, inside one process, alternating.

    python benchmarks/ab_env.py INIK_CPU_ISA=avx512 INIK_CPU_ISA=avx512_bf16 --mode fast-bf16
    python benchmarks/ab_env.py INIK_WINOGRAD_TILE=4 INIK_WINOGRAD_TILE= --mode fast --train

A CPU's speed can drift by 10-30% between runs minutes apart (the 2-core
development machine does), so two separate ``bench_model.py`` runs cannot
resolve a 5-10% change. Here one model and one input are timed under each
setting in turn, round after round, so drift hits every setting alike; the
medians and their ratio to the first setting's are printed (and written as JSON
with ``--out``).

Each SETTING is ``VAR=value[,VAR=value...]``; an empty value unsets the
variable. Only variables read on every call make sense here: ``INIK_CPU_ISA``
(the Winograd kernel), ``INIK_WINOGRAD_TILE``, ``INIK_WINOGRAD``, ``INIK_CONV_WEIGHT_GRAD``. The model
is built as ``bench_model.py`` builds ``--mode`` (same weights, seed 0, the same
allocator setting); ``--train`` times a training step instead of a forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ifm import _device_name, _versions  # noqa: E402
from bench_model import KNOWN_MODES, _size, build, inference_fn, train_fn  # noqa: E402

import inik  # noqa: E402
from inik.runtime import keep_freed_memory  # noqa: E402


def parse_setting(text: str) -> dict[str, str]:
    """``"A=1,B="`` -> ``{"A": "1", "B": ""}`` (an empty value unsets the variable)."""
    setting = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"setting {text!r}: expected VAR=value[,VAR=value...]")
        setting[name.strip()] = value
    return setting


def apply(setting: dict[str, str]) -> None:
    for name, value in setting.items():
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", metavar="SETTING", help="VAR=value[,VAR=value...]; two or more")
    p.add_argument("--mode", default="fast", help=f"as bench_model.py builds it, one of {KNOWN_MODES}")
    p.add_argument("--size", default="640", help="inference size, e.g. 640 or 1680x1120 (W x H)")
    p.add_argument("--train", action="store_true", help="time a training step instead of a forward")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7, help="timed calls per setting")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the times to this .json file")
    args = p.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings]
    except ValueError as e:
        p.error(str(e))
    if len(settings) < 2:
        p.error("give at least two settings to compare")
    if args.mode not in KNOWN_MODES:
        p.error(f"unknown mode {args.mode!r}; known: {', '.join(KNOWN_MODES)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    device = torch.device(args.device)
    if device.type == "cpu" and args.mode != "baseline":
        keep_freed_memory()
    torch.manual_seed(0)
    model = build(args.mode, inik.INIKNet().state_dict(), device)
    g = torch.Generator().manual_seed(1)
    if args.train:
        b, s = args.train_batch, args.train_size
        batch, target = (torch.rand(b, 3, s, s, generator=g).to(device) for _ in range(2))
        fn, task = train_fn(args.mode, model, batch, target, device), f"train b{b} {s}x{s}"
    else:
        h, w = _size(args.size)
        y = torch.rand(1, 3, h, w, generator=g).to(device)
        fn, task = inference_fn(args.mode, model, y, device), f"infer {w}x{h}"
    saved = dict(os.environ)
    times: list[list[float]] = [[] for _ in settings]
    try:
        for setting in settings:  # warm-up: one call under each setting
            apply(setting)
            fn()
        for _ in range(args.rounds):
            for k, setting in enumerate(settings):
                apply(setting)
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(f"{task}, mode {args.mode}, {args.rounds} rounds per setting, alternating")
    print(f"device: {_device_name(device)}; {_versions(device)}")
    base = statistics.median(times[0])
    rows = []
    for text, t in zip(args.settings, times):
        med = statistics.median(t)
        rows.append({"setting": text, "median_ms": round(med, 2), "min_ms": round(min(t), 2),
                     "ms": [round(x, 2) for x in t], "ratio_to_first": round(base / med, 3)})
        print(f"  {text or '(none)':40s} median {med:9.1f} ms  min {min(t):9.1f} ms  x{base / med:5.2f} vs first")
    if args.out:
        meta = {"device": _device_name(device), "versions": _versions(device)}
        Path(args.out).write_text(json.dumps({"task": task, "mode": args.mode, "meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
