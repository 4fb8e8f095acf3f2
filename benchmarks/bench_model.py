"""Whole-model speed: the authors' way of running INIKNet against the package's fast path.

    python benchmarks/bench_model.py                        # 640x640 inference + a training step
    python benchmarks/bench_model.py --sizes 640,1680x1120 --compile --out model.json

Modes, measured in the same run on the same weights:

* ``baseline``: what the authors' code does - fp32, contiguous (NCHW) tensors,
  the unfused IFM (all R*N responses materialised), and the IFM evaluated at
  all three pyramid levels even at inference (``forward_levels``).
* ``fast``: channels_last, the fastest IFM backend (``auto``), the IFM only at
  the finest level at inference; fp32, so it must equal the baseline (tested in
  tests/test_fast_path.py).
* ``fast-bf16`` (``fast-fp16`` on CUDA): the same under autocast; the IFM
  still accumulates in fp32. Changes numerics (tested >= 40 dB against fp32).
* ``fast-bf16-compiled`` (with ``--compile``): the network under
  ``torch.compile`` around the opaque IFM op.

Training step: batch 4, 256x256 crops (``--train-size``), forward over the three
levels, the paper's loss without LPIPS (its AlexNet weights are not available
offline; MSE + 0.1 frequency), backward, Adam step.

Prints median times, speed-ups over ``baseline`` from the same run, peak extra
memory (CPU: resident-set growth; GPU: max allocated), device and versions;
writes CSV or JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ifm import _device_name, _malloc_unmaps_big_buffers, _sync, _versions, measure  # noqa: E402

import inik  # noqa: E402
from inik.losses import INIKLoss  # noqa: E402
from inik.train import train_step  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return (int(h or w), int(w))


def build(mode: str, state: dict, device: torch.device) -> inik.INIKNet:
    """The model as ``mode`` runs it."""
    backend = "unfused" if mode == "baseline" else "auto"
    model = inik.INIKNet(ifm_backend=backend).to(device)
    model.load_state_dict(state)
    if mode != "baseline":
        model = model.to(memory_format=torch.channels_last)
    return model


def half_dtype(device: torch.device):
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def modes_for(device: torch.device, compile_: bool) -> list[str]:
    half = "fp16" if device.type == "cuda" else "bf16"
    modes = ["baseline", "fast", f"fast-{half}"]
    if compile_:
        modes.append(f"fast-{half}-compiled")
    return modes


def inference_fn(mode: str, model, y: torch.Tensor, device: torch.device):
    amp = half_dtype(device) if "-bf16" in mode or "-fp16" in mode else None
    if mode == "baseline":
        net = lambda x: model.forward_levels(x)[-1]  # noqa: E731
        x = y.contiguous()
    else:
        net = torch.compile(model) if mode.endswith("compiled") else model
        x = y.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(x)
        _sync(device)
        return out

    return run


def train_fn(mode: str, model, batch: torch.Tensor, target: torch.Tensor, device: torch.device):
    amp = half_dtype(device) if "-bf16" in mode or "-fp16" in mode else None
    loss_fn = INIKLoss(lpips_weight=0.0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    net = torch.compile(model) if mode.endswith("compiled") else model
    x = batch.contiguous() if mode == "baseline" else batch.contiguous(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def step():
        train_step(net, loss_fn, opt, scaler, x, target, amp)
        _sync(device)

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="640", help="inference sizes, e.g. 640,1680x1120 (W x H)")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd fast path")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-ms", type=float, default=20_000, help="CPU: stop repeating after this much time")
    p.add_argument("--out", help="write rows to .csv or .json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    _malloc_unmaps_big_buffers()
    torch.manual_seed(0)
    state = inik.INIKNet().state_dict()
    modes = modes_for(device, args.compile)
    print(f"device: {_device_name(device)}\nversions: {_versions(device)}\n"
          f"IFM backend of the fast path: {inik.ops.resolve_backend(device)}")
    rows = []

    def record(task, mode, fn):
        fn()  # warm-up (and compilation)
        ms, mb = measure(fn, device, args.reps, args.min_ms)
        base = next((r["ms"] for r in rows if r["task"] == task and r["mode"] == "baseline"), ms)
        rows.append({"task": task, "mode": mode, "ms": ms, "speedup": base / ms,
                     "peak_mb": None if mb is None else round(mb, 1)})
        r = rows[-1]
        print(f"{task:<24} {mode:<22} {ms:>10.1f} ms  x{r['speedup']:>6.2f}  "
              f"peak +{'?' if mb is None else f'{mb:.0f}'} MB", flush=True)

    for text in args.sizes.split(","):
        h, w = _size(text)
        y = torch.rand(1, 3, h, w, device=device)
        for mode in modes:
            record(f"infer {w}x{h}", mode, inference_fn(mode, build(mode, state, device), y, device))
    if not args.no_train:
        s, b = args.train_size, args.train_batch
        batch = torch.rand(b, 3, s, s, device=device)
        target = torch.rand(b, 3, s, s, device=device)
        for mode in modes:
            record(f"train b{b} {s}x{s}", mode, train_fn(mode, build(mode, state, device), batch, target, device))
    if args.out:
        out = Path(args.out)
        meta = {"device": _device_name(device), "versions": _versions(device)}
        if out.suffix == ".json":
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        else:
            with open(out, "w", newline="") as f:
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
