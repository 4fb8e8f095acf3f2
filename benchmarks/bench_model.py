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
* ``fast-bf16`` (and ``fast-fp16`` on CUDA): the same under autocast; the IFM
  still accumulates in fp32. Changes numerics (tested >= 40 dB against fp32).
* ``fast-bf16-graph``/``fast-fp16-graph`` (CUDA, inference, ask with
  ``--modes``): one forward recorded as a CUDA graph and replayed (the shapes
  are static), which removes the launch overhead of ~150 small kernels;
  ``fast-bf16-compiled-graph``/``fast-fp16-compiled-graph``: ``torch.compile``
  with ``mode="reduce-overhead"`` (compiled kernels, replayed as CUDA graphs).
* ``fast-bf16-compiled``/``fast-fp16-compiled`` (with ``--compile``; ``fast-compiled``
  in fp32 with ``--modes``): the network under
  ``torch.compile`` around the opaque IFM op.
* ``fast-system-malloc`` (ask with ``--modes``): ``fast`` without the
  allocator setting below, to show what that setting alone is worth.
* ``api`` (ask with ``--modes``): the model as the README's Python example
  runs it - ``inik.INIKNet()`` as built, called on a contiguous (NCHW) tensor,
  in a plain Python process (the script applies no setting: the model changes
  the layout inside and applies the allocator setting below itself).

Every mode runs in its own fresh process, as a user would run it: the
baseline as plain PyTorch (``INIK_MALLOC=system``, glibc's malloc as it is); the
fast modes on a CPU with the allocator setting that ``inik deblur``, ``inik
train`` and the model's first CPU forward apply (:func:`inik.runtime.keep_freed_memory`:
glibc keeps freed buffers instead of unmapping them, which removes millions of
page faults per forward). All processes build the same weights (seed 0).

Training step: batch 4, 256x256 crops (``--train-size``), forward over the three
levels, the paper's loss without LPIPS (its AlexNet weights are not available
offline; MSE + 0.1 frequency), backward, Adam step.

Each row's rate: the work of one call as the fast path does it, counted in
PyTorch's operators on meta tensors (``torch.utils.flop_counter``; the
convolutions as direct ones, the IFM as its per-scale convolutions, the finest
level's only at inference) over the mode's time - the same work for every mode,
so Winograd's saving shows as a rate above the machine's - and that rate
against a 2048x2048 float32 matmul timed in the same run ("of sgemm").

Prints median times, speed-ups over ``baseline`` from the same run, peak extra
memory (CPU: the process's peak resident set minus its size before the first
call; GPU: max allocated), device and versions; writes CSV or JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ifm import _device_name, _rss_bytes, _sync, _versions, measure, sgemm_flops  # noqa: E402

import inik  # noqa: E402
from inik.losses import INIKLoss  # noqa: E402
from inik.runtime import keep_freed_memory  # noqa: E402
from inik.train import train_step  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return (int(h or w), int(w))


def build(mode: str, state: dict, device: torch.device) -> inik.INIKNet:
    """The model as ``mode`` runs it."""
    backend = "unfused" if mode == "baseline" else "auto"
    model = inik.INIKNet(ifm_backend=backend).to(device)
    model.load_state_dict(state)
    if mode not in ("baseline", "api"):
        model = model.to(memory_format=torch.channels_last)
    return model


def _conv_path(device: torch.device) -> str:
    """How the fast path runs its 3x3 stride-1 convolutions at inference on this device."""
    from inik import settings
    from inik.ops import _ext, winograd
    if device.type != "cpu":
        return "the device's convolutions (cuDNN)"
    setting = f"{winograd.ENV}={os.environ.get(winograd.ENV, 'auto')}"
    if not _ext.is_built() or not winograd.enabled():
        return f"oneDNN ({setting})"
    tile = settings.get(winograd.TILE_ENV)
    tiles = f"F({tile}x{tile}, 3x3) (INIK_WINOGRAD_TILE)" if tile else "F(6x6, 3x3) from 128x128 up, F(4x4, 3x3) below"
    return f"Winograd {tiles}, {winograd.isa()} kernel ({setting})"


def amp_dtype(mode: str):
    """The autocast dtype a mode names (None: fp32)."""
    if "-bf16" in mode:
        return torch.bfloat16
    if "-fp16" in mode:
        return torch.float16
    return None


def modes_for(device: torch.device, compile_: bool) -> list[str]:
    halves = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    modes = ["baseline", "fast", *(f"fast-{h}" for h in halves)]
    if compile_:
        modes += [f"fast-{h}-compiled" for h in halves]
    return modes


KNOWN_MODES = ("baseline", "api", "fast", "fast-system-malloc", "fast-bf16", "fast-fp16", "fast-compiled",
               "fast-bf16-compiled", "fast-fp16-compiled", "fast-bf16-graph", "fast-fp16-graph",
               "fast-bf16-compiled-graph", "fast-fp16-compiled-graph")


def inference_fn(mode: str, model, y: torch.Tensor, device: torch.device):
    amp = amp_dtype(mode)
    if mode == "baseline":
        net = lambda x: model.forward_levels(x)[-1]  # noqa: E731
        x = y.contiguous()
    elif mode == "api":
        net, x = model, y.contiguous()
    else:
        if mode.endswith("compiled-graph"):  # torch.compile's own CUDA graphs
            net = torch.compile(model, mode="reduce-overhead")
        else:
            net = torch.compile(model) if mode.endswith("compiled") else model
        x = y.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(x)
        _sync(device)
        return out

    if not mode.endswith("-graph") or "compiled" in mode:
        return run
    # CUDA graph: the shapes are static, so record one forward and replay it.
    if device.type != "cuda":
        raise SystemExit(f"mode {mode}: CUDA graphs need a CUDA device, not {device}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the graph (Triton autotuning, cuDNN choices)
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        with torch.autocast(device.type, dtype=amp):
            static_out = net(x)

    def replay():
        graph.replay()
        _sync(device)
        return static_out

    return replay


def train_fn(mode: str, model, batch: torch.Tensor, target: torch.Tensor, device: torch.device):
    amp = amp_dtype(mode)
    loss_fn = INIKLoss(lpips_weight=0.0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    net = torch.compile(model) if mode.endswith("compiled") else model
    x = batch.contiguous() if mode in ("baseline", "api") else batch.contiguous(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def step():
        train_step(net, loss_fn, opt, scaler, x, target, amp)
        _sync(device)

    return step


def run_one(spec: dict) -> dict:
    """Time one (task, mode) in this process; called in a fresh child process."""
    device = torch.device(spec["device"])
    mode = spec["mode"]
    if device.type == "cpu" and mode not in ("baseline", "api", "fast-system-malloc"):  # (spawn sets INIK_MALLOC)
        if not keep_freed_memory():
            print("note: the allocator setting is unavailable here (not glibc)", file=sys.stderr)
    if spec.get("cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True  # time cuDNN's algorithms per shape first, keep the fastest
    torch.manual_seed(0)
    state = inik.INIKNet().state_dict()
    model = build(mode, state, device)
    g = torch.Generator().manual_seed(1)
    if spec["task"] == "infer":
        y = torch.rand(1, 3, spec["h"], spec["w"], generator=g).to(device)
        fn = inference_fn(mode, model, y, device)
    else:
        b, s = spec["batch"], spec["size"]
        batch = torch.rand(b, 3, s, s, generator=g).to(device)
        target = torch.rand(b, 3, s, s, generator=g).to(device)
        fn = train_fn(mode, model, batch, target, device)
    rss0 = _rss_bytes() if device.type == "cpu" else 0
    fn()  # warm-up (and compilation)
    ms, mb = measure(fn, device, spec["reps"], spec["min_ms"])
    if device.type == "cpu":  # the high-water mark covers the warm-up and every timed call
        mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 1e6
    return {"ms": ms, "peak_mb": None if mb is None else round(mb, 1)}


def work_flops(spec: dict) -> float:
    """The FLOPs of one call of ``spec``'s task as the fast path does it (see the module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    from inik.ops.paths import plain_ops
    model = inik.INIKNet().to("meta")
    with plain_ops(), FlopCounterMode(display=False) as counter:
        if spec["task"] == "infer":
            with torch.no_grad():
                model._run(torch.empty(1, 3, -(-spec["h"] // 16) * 16, -(-spec["w"] // 16) * 16, device="meta"),
                           all_levels=False)
        else:
            x = torch.empty(spec["batch"], 3, spec["size"], spec["size"], device="meta")
            sum(level[0].square().mean() for level in model._run(x, all_levels=True)).backward()
    return float(counter.get_total_flops())


def spawn(spec: dict) -> dict:
    """Run :func:`run_one` in a fresh Python process and return its result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    env = dict(os.environ)
    if spec["mode"] in ("baseline", "fast-system-malloc"):  # plain PyTorch: glibc's malloc as it is
        env["INIK_MALLOC"] = "system"  # (the model's CPU forward would apply the setting otherwise)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"bench_model: the {spec['task']} / {spec['mode']} process failed "
                           f"(exit {proc.returncode}); its errors are printed above")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="640", help="inference sizes, e.g. 640,1680x1120 (W x H)")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-infer", action="store_true", help="time the training step only")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd fast path")
    p.add_argument("--modes", help=f"comma-separated modes (default: baseline, fast, fast-bf16/fp16); "
                                   f"known: {', '.join(KNOWN_MODES)}")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-ms", type=float, default=20_000, help="CPU: stop repeating after this much time")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="GPU: torch.backends.cudnn.benchmark in every mode (cuDNN times its algorithms first)")
    p.add_argument("--out", help="write rows to .csv or .json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_one(json.loads(args.child))), flush=True)
        return 0
    device = torch.device(args.device)
    modes = modes_for(device, args.compile)
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for m in modes:
            if m not in KNOWN_MODES:
                p.error(f"--modes: unknown mode {m!r}; known: {', '.join(KNOWN_MODES)}")
    conv = _conv_path(device)
    print(f"device: {_device_name(device)}\nversions: {_versions(device)}\n"
          f"IFM backend of the fast path: {inik.ops.resolve_backend(device)}\n"
          f"3x3 convolutions of the fast path at inference: {conv}\n"
          f"threads: {torch.get_num_threads()}; every mode runs in its own process", flush=True)
    sgemm = sgemm_flops(device, torch.float32)
    print(f"sgemm (2048x2048 float32 matmul) here: {sgemm / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    base_spec = {"device": str(device), "reps": args.reps, "min_ms": args.min_ms,
                 "cudnn_benchmark": args.cudnn_benchmark}

    flops = {}  # per task: the same work for every mode, counted once

    def record(task, mode, spec):
        if task.startswith("train") and mode.endswith("-graph"):
            return  # graphs are measured for inference only
        try:
            res = spawn({**base_spec, **spec, "mode": mode})
        except RuntimeError as e:  # one broken mode must not hide the others' results
            print(f"{task:<24} {mode:<22} FAILED: {e}", flush=True)
            rows.append({"task": task, "mode": mode, "ms": None, "speedup": None, "peak_mb": None,
                         "GFLOP_per_s": None, "of_sgemm": None})
            return
        ms, mb = res["ms"], res["peak_mb"]
        base = ms if mode == "baseline" else next(
            (r["ms"] for r in rows if r["task"] == task and r["mode"] == "baseline"), None)
        if task not in flops:
            flops[task] = work_flops(spec)
        rate = flops[task] / (ms / 1e3)
        rows.append({"task": task, "mode": mode, "ms": ms, "speedup": None if base is None else base / ms,
                     "peak_mb": mb, "GFLOP_per_s": round(rate / 1e9, 1), "of_sgemm": round(rate / sgemm, 3)})
        ratio = "" if base is None else f"x{base / ms:>6.2f}"
        print(f"{task:<24} {mode:<22} {ms:>10.1f} ms  {ratio:>7}  "
              f"peak +{'?' if mb is None else f'{mb:.0f}'} MB  {rate / 1e9:7.1f} GFLOP/s  {rate / sgemm:6.1%} of sgemm",
              flush=True)

    for text in ([] if args.no_infer else args.sizes.split(",")):
        h, w = _size(text)
        for mode in modes:
            record(f"infer {w}x{h}", mode, {"task": "infer", "h": h, "w": w})
    if not args.no_train:
        s, b = args.train_size, args.train_batch
        for mode in modes:
            record(f"train b{b} {s}x{s}", mode, {"task": "train", "size": s, "batch": b})
    if args.out:
        out = Path(args.out)
        meta = {"device": _device_name(device), "versions": _versions(device), "threads": torch.get_num_threads(),
                "sgemm_GFLOP_per_s": round(sgemm / 1e9, 1),
                "fast_path_convolutions": conv, "cudnn_benchmark": args.cudnn_benchmark}
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
