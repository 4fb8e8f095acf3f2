"""Time the model's 3x3 convolutions on the CPU: oneDNN against Winograd F(4x4, 3x3) and F(6x6, 3x3).

    python benchmarks/bench_conv.py                      # the shapes of a 640x640 forward, fp32 and bf16
    python benchmarks/bench_conv.py --size 320 --dtypes float32 --out conv.json
    python benchmarks/bench_conv.py --weight-grad --size 256 --batch 2   # training's weight gradients

The shapes are those the network's 3x3 stride-1 reflect convolutions see in one
inference forward at ``--size`` (found by running the model once with hooks),
with how often each occurs. For each shape and dtype: ``direct`` is what the
model runs without Winograd (``conv3x3_reflect_borders``: oneDNN's zero-padded
convolution, border rows and columns recomputed with reflect padding);
``F(4x4)`` and ``F(6x6)`` are ``inik.ops.winograd.conv3x3`` with reflect padding
and each tile size; ``auto`` is the tile size the model's calls take
(``inik.ops.winograd.tile_for``), and ``ratio`` direct over it. Prints the
median times and the forward's totals over all occurrences (what the
convolutions cost one forward); writes CSV or JSON with ``--out``.
The CPU's allocator setting of ``inik deblur`` is applied, as in bench_model.

``--weight-grad`` times the float32 weight gradient of each shape that trains
through Winograd (at least ``MIN_CHANNELS`` input channels) instead, at
``--batch`` images, the way the training backward takes it: ``onednn``
(``inik.ops.winograd.onednn_weight_grad``, on NCHW copies without AVX-512)
against ``winograd`` (``torch.ops.inik.conv3x3_winograd_weight_grad``).

To see what a CPU with AVX2 only would get, hold oneDNN, PyTorch and the Winograd
kernel to AVX2: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 INIK_CPU_ISA=avx2``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ifm import _device_name, _versions, _write, measure  # noqa: E402

import inik  # noqa: E402
from inik.models.unet import ReflectConv2d  # noqa: E402
from inik.ops import _ext, winograd  # noqa: E402
from inik.ops.conv import conv3x3_reflect_borders  # noqa: E402
from inik.runtime import keep_freed_memory  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_shapes(size: int) -> collections.Counter:
    """(Ci, Co, H, W) -> count, for the 3x3 stride-1 convolutions of one forward at size x size."""
    model = inik.INIKNet().eval()
    seen: collections.Counter = collections.Counter()

    def hook(module, args):
        if module.stride == (1, 1):
            x = args[0]
            seen[(x.shape[1], module.out_channels, x.shape[2], x.shape[3])] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ReflectConv2d)]
    with torch.no_grad(), mock.patch.dict(os.environ, {winograd.ENV: "0"}):
        model(torch.rand(1, 3, size, size))
    for h in handles:
        h.remove()
    return seen


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--dtypes", default="float32,bfloat16", help=f"comma-separated, of {list(DTYPES)}")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--min-ms", type=float, default=2000.0, help="stop repeating after this much time")
    p.add_argument("--out", type=Path, help="write rows to .csv or .json")
    p.add_argument("--weight-grad", action="store_true", help="time the float32 weight gradients instead")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    args = p.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r} (known: {', '.join(DTYPES)})")
    if not _ext.is_built():
        print(f"the Winograd convolution needs the C++ extension: {_ext.build_hint()}", file=sys.stderr)
        return 1
    keep_freed_memory()
    device = torch.device("cpu")
    meta = {"device": _device_name(device), "versions": _versions(device), "size": args.size,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "winograd_kernel": winograd.isa(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
    print(f"device: {meta['device']} (PyTorch kernels: {meta['cpu_capability']}, Winograd kernel: "
          f"{meta['winograd_kernel']}, ONEDNN_MAX_CPU_ISA={meta['onednn_max_cpu_isa'] or 'unset'})")
    print(f"versions: {meta['versions']}")
    shapes = model_shapes(args.size)
    meta["convolutions"] = sum(shapes.values())
    print(f"{meta['convolutions']} 3x3 stride-1 convolutions in a {args.size}x{args.size} forward, "
          f"{len(shapes)} shapes")
    if args.weight_grad:
        return weight_grads(args, shapes, meta, device)
    rows, totals = [], collections.defaultdict(float)
    gen = torch.Generator().manual_seed(0)
    print(f"{'dtype':9s} {'Ci->Co':>9s} {'H x W':>11s} {'n':>3s} {'direct ms':>10s} {'F(4x4) ms':>10s} "
          f"{'F(6x6) ms':>10s} {'auto':>5s} {'ratio':>6s}")
    for dname in dtypes:
        dtype = DTYPES[dname]
        for (ci, co, h, w), n in sorted(shapes.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * kv[0][3]):
            x = torch.randn(1, ci, h, w, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            weight = (torch.randn(co, ci, 3, 3, generator=gen) / (3 * ci ** 0.5)).to(dtype)
            runs = {"direct": lambda x=x, weight=weight: conv3x3_reflect_borders(x, weight, 1)}
            for tile in winograd.TILES:
                runs[tile] = lambda tile=tile, x=x, weight=weight: winograd.conv3x3(
                    x, weight, padding_mode="reflect", tile=tile)
            t = {}
            with torch.no_grad():
                for key, fn in runs.items():
                    fn()  # warm-up
                    t[key], _ = measure(fn, device, args.reps, args.min_ms)
            auto = winograd.tile_for(h, w)  # what the model's calls (tile=0) run
            for key in ("direct",) + winograd.TILES:
                totals[(dname, key)] += n * t[key]
            totals[(dname, "winograd")] += n * t[auto]
            rows.append({"dtype": dname, "ci": ci, "co": co, "h": h, "w": w, "count": n,
                         "direct_ms": round(t["direct"], 3), "f4_ms": round(t[4], 3), "f6_ms": round(t[6], 3),
                         "tile": auto, "winograd_ms": round(t[auto], 3),
                         "speedup": round(t["direct"] / t[auto], 3)})
            print(f"{dname:9s} {f'{ci}->{co}':>9s} {f'{h}x{w}':>11s} {n:3d} {t['direct']:10.2f} {t[4]:10.2f} "
                  f"{t[6]:10.2f} {auto:5d} {t['direct'] / t[auto]:6.2f}")
    for dname in dtypes:
        d, wgr = totals[(dname, "direct")], totals[(dname, "winograd")]
        print(f"{dname}: all of one forward's 3x3 stride-1 convolutions: direct {d:.0f} ms, "
              f"winograd {wgr:.0f} ms ({d / wgr:.2f}x; all F(4x4) {totals[(dname, 4)]:.0f} ms, "
              f"all F(6x6) {totals[(dname, 6)]:.0f} ms)")
        meta[f"total_ms_{dname}"] = {"direct": round(d, 1), "winograd": round(wgr, 1),
                                     "f4": round(totals[(dname, 4)], 1), "f6": round(totals[(dname, 6)], 1)}
    if args.out:
        _write(args.out, rows, meta)
        print(f"wrote {args.out}")
    return 0


def weight_grads(args, shapes: collections.Counter, meta: dict, device: torch.device) -> int:
    """--weight-grad: oneDNN's and the Winograd weight gradient of each shape."""
    rows, totals = [], collections.Counter()
    gen = torch.Generator().manual_seed(0)
    meta["batch"] = args.batch
    print(f"float32 weight gradients, batch {args.batch}")
    print(f"{'Ci->Co':>9s} {'H x W':>11s} {'n':>3s} {'onednn ms':>10s} {'winograd ms':>12s} {'ratio':>6s}")
    isa = _ext.cpu_isa()
    trained = {k: n for k, n in shapes.items() if k[0] >= winograd.MIN_CHANNELS}  # the others train on oneDNN
    meta["convolutions"] = sum(trained.values())
    for (ci, co, h, w), n in sorted(trained.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * kv[0][3]):
        x = torch.randn(args.batch, ci, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
        g = torch.randn(args.batch, co, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(co, ci, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
        runs = {"onednn": lambda x=x, g=g, weight=weight: winograd.onednn_weight_grad(x, g, weight, "reflect", isa),
                "winograd": lambda x=x, g=g: torch.ops.inik.conv3x3_winograd_weight_grad(x, g, "reflect", isa)}
        t = {}
        for key, fn in runs.items():
            fn()  # warm-up
            t[key], _ = measure(fn, device, args.reps, args.min_ms)
            totals[key] += n * t[key]
        rows.append({"ci": ci, "co": co, "h": h, "w": w, "count": n, "onednn_ms": round(t["onednn"], 3),
                     "winograd_ms": round(t["winograd"], 3), "speedup": round(t["onednn"] / t["winograd"], 3)})
        print(f"{f'{ci}->{co}':>9s} {f'{h}x{w}':>11s} {n:3d} {t['onednn']:10.2f} {t['winograd']:12.2f} "
              f"{t['onednn'] / t['winograd']:6.2f}")
    print(f"all its shapes that train through Winograd, as often as a forward runs them: "
          f"onednn {totals['onednn']:.0f} ms, winograd {totals['winograd']:.0f} ms "
          f"({totals['onednn'] / totals['winograd']:.2f}x)")
    meta["total_ms"] = {k: round(v, 1) for k, v in totals.items()}
    if args.out:
        _write(args.out, rows, meta)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
