"""ONNX Runtime on the CPU against the package's own ``model(y)``, timed in one process.

    python benchmarks/bench_export.py                          # 640x640, the default weights
    python benchmarks/bench_export.py --size 480x320 --rounds 3 --pt2 --out export.json

Exports the default weights at the size (``inik.export.export_model``, float32),
then times them in turns (``--reps`` calls of each runner, ``--rounds`` times), so
that a CPU's drift hits every runner alike:

* ``model(y)``: what ``inik deblur`` runs - channels_last, the Winograd
  convolutions, the fused ConvLSTM cell, the native IFM, the allocator setting
  of the command line (:func:`inik.runtime.keep_freed_memory`);
* ``onnxruntime``: the ONNX export, CPUExecutionProvider with its default
  settings (all graph optimisations) and as many intra-op threads as torch has;
* ``pt2`` (with ``--pt2``): the torch.export program, ``torch.export.load(...).module()``.

Prints each runner's median, its ratio to ``model(y)`` and its largest
difference from it, with the machine (CPU model, inik's instruction set) and
versions; ``--out`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_ifm import _device_name, _versions  # noqa: E402
from bench_model import _size  # noqa: E402

from inik.export import export_model  # noqa: E402
from inik.loading import load_model  # noqa: E402
from inik.runtime import keep_freed_memory  # noqa: E402


def _isa() -> str:
    from inik.ops import _ext, winograd
    return winograd.isa() if _ext.is_built() else "no inik._C"


def runners(model, folder: Path, size: tuple[int, int], pt2: bool) -> dict:
    """name -> a function of y, each export written into ``folder`` first."""
    import onnxruntime

    export_model(model, "onnx", folder / "m.onnx", size=size, check=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"])
    found = {"model(y)": model,
             "onnxruntime": lambda y: torch.from_numpy(session.run(None, {"y": y.numpy()})[0])}
    if pt2:
        export_model(model, "pt2", folder / "m.pt2", size=size, check=False)
        found["pt2"] = torch.export.load(str(folder / "m.pt2")).module()
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640", help="input size, e.g. 640 or 1680x1120 (W x H) (default 640)")
    p.add_argument("--reps", type=int, default=3, help="calls of a runner in one turn (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="turns of every runner (default 2)")
    p.add_argument("--pt2", action="store_true", help="also time the torch.export program (default: off)")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    keep_freed_memory()
    h, w = _size(args.size)
    model, _ = load_model()
    y = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    meta = {"device": _device_name(torch.device("cpu")), "isa": _isa(), "versions": _versions(torch.device("cpu"))}
    try:
        import onnxruntime
        meta["versions"] += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        print("bench_export.py needs onnxruntime: pip install 'inik[export]'", file=sys.stderr)
        return 2
    times: dict[str, list] = {}
    diffs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        found = runners(model, Path(tmp), (h, w), args.pt2)
        want = model(y)  # also the warm-up of model(y)
        for name, fn in found.items():
            diffs[name] = float((fn(y) - want).abs().max())  # the others' warm-up
            times[name] = []
        for _ in range(args.rounds):
            for name, fn in found.items():
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    fn(y)
                    times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["model(y)"])
    rows = [{"runner": name, "median_ms": statistics.median(ms), "ms": ms,
             "ratio_to_model": statistics.median(ms) / base, "max_diff": diffs[name]} for name, ms in times.items()]
    print(f"{meta['device']}; inik kernels {meta['isa']}; {meta['versions']}")
    print(f"inference {w}x{h}, float32, {args.rounds} turns of {args.reps} calls per runner")
    for r in rows:
        print(f"  {r['runner']:<12} {r['median_ms']:9.1f} ms  {r['ratio_to_model']:5.2f}x model(y)  "
              f"max |diff| {r['max_diff']:.1e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "size": [h, w], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
