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
* ``pt2`` (with ``--pt2``): the torch.export program, ``torch.export.load(...).module()``;
* with ``--fold-pads``: the ONNX file with its reflect pads folded into the
  convolutions as zero padding - not the model near the borders, but the time a
  graph would take if its padding cost nothing extra.

Prints each runner's median, its ratio to ``model(y)`` and its largest
difference from it, with the machine (CPU model, inik's instruction set) and
versions; ``--out`` writes the same as JSON. ``--profile`` then runs the ONNX
file once more under onnxruntime's profiler and prints where its time goes, by
operator type, and the rate of its convolutions (multiply-adds counted from the
graph's shapes) against a float32 matmul timed in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_ifm import _device_name, _versions, sgemm_flops  # noqa: E402
from bench_model import _size  # noqa: E402

from inik.export import export_model  # noqa: E402
from inik.loading import load_model  # noqa: E402
from inik.runtime import keep_freed_memory  # noqa: E402


def _isa() -> str:
    from inik.ops import _ext, winograd
    return winograd.isa() if _ext.is_built() else "no inik._C"


def _ort_session(path: Path, profile_prefix: str = ""):
    """An onnxruntime CPU session with as many intra-op threads as torch has (profiling
    into ``profile_prefix``* when given)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _session(path: Path):
    session = _ort_session(path)
    return lambda y: torch.from_numpy(session.run(None, {"y": y.numpy()})[0])


def fold_reflect_pads(src: Path, dst: Path) -> int:
    """Write ``src`` with every Pad that only feeds convolutions removed and its widths
    moved into those convolutions (zero padding: another function near the borders, so
    a bound on what padding costs, not a model). Returns how many were folded."""
    import onnx
    model = onnx.load(str(src))
    graph = model.graph
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    consts.update({t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer})
    users: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    folded = []
    for n in graph.node:
        convs = users.get(n.output[0], []) if n.op_type == "Pad" else []
        pads = consts.get(n.input[1]) if len(n.input) > 1 else None
        if not convs or any(c.op_type != "Conv" for c in convs) or pads is None or len(pads) != 8:
            continue
        p = [int(v) for v in pads]  # (N, C, H, W) begins, then ends
        if p[0] or p[1] or p[4] or p[5] or any(a.name == "pads" and any(a.ints) for c in convs for a in c.attribute):
            continue
        for c in convs:
            c.input[0] = n.input[0]
            for a in [a for a in c.attribute if a.name in ("pads", "auto_pad")]:
                c.attribute.remove(a)
            c.attribute.append(onnx.helper.make_attribute("pads", [p[2], p[3], p[6], p[7]]))
        folded.append(n)
    for n in folded:
        graph.node.remove(n)
    onnx.save(model, str(dst))
    return len(folded)


def runners(model, folder: Path, size: tuple[int, int], pt2: bool, folded: bool) -> dict:
    """name -> a function of y, each export written into ``folder`` first."""
    export_model(model, "onnx", folder / "m.onnx", size=size, check=False)
    found = {"model(y)": model, "onnxruntime": _session(folder / "m.onnx")}
    if folded:
        n = fold_reflect_pads(folder / "m.onnx", folder / "folded.onnx")
        found[f"onnxruntime, {n} pads folded"] = _session(folder / "folded.onnx")
    if pt2:
        export_model(model, "pt2", folder / "m.pt2", size=size, check=False)
        found["pt2"] = torch.export.load(str(folder / "m.pt2")).module()
    return found


def conv_macs(path: Path) -> dict[str, int]:
    """Multiply-adds of the ONNX graph's Conv nodes (from its inferred shapes): all of
    them, and those with 3x3 kernels."""
    import onnx
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    macs = {"all": 0, "3x3": 0}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w, out = shapes[node.input[1]], shapes[node.output[0]]
        n = out[0] * out[1] * out[2] * out[3] * w[1] * w[2] * w[3]  # each output: C_in/groups x kh x kw
        macs["all"] += n
        macs["3x3"] += n if w[2:] == [3, 3] else 0
    return macs


def profile(path: Path, y: torch.Tensor) -> dict[str, float]:
    """Milliseconds per operator type in one onnxruntime call (after a warm-up)."""
    session = _ort_session(path, str(path.parent / "profile"))
    for _ in range(2):
        session.run(None, {"y": y.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    ms: dict[str, float] = {}
    for e in nodes[len(nodes) // 2:]:  # the second call's
        ms[e["args"]["op_name"]] = ms.get(e["args"]["op_name"], 0.0) + e["dur"] / 1e3
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640", help="input size, e.g. 640 or 1680x1120 (W x H) (default 640)")
    p.add_argument("--reps", type=int, default=3, help="calls of a runner in one turn (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="turns of every runner (default 2)")
    p.add_argument("--pt2", action="store_true", help="also time the torch.export program (default: off)")
    p.add_argument("--fold-pads", dest="fold_pads", action="store_true",
                   help="also time the ONNX file with its reflect pads folded into the convolutions as zero padding "
                        "(not the same function near the borders: what the padding costs) (default: off)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one onnxruntime call: time per operator type, the convolutions' rate "
                        "(default: off)")
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
        found = runners(model, Path(tmp), (h, w), args.pt2, args.fold_pads)
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
        if args.profile:
            del found, fn  # a second onnxruntime session beside the timed one can run about 2x slower
            gc.collect()
            by_op = profile(Path(tmp) / "m.onnx", y)
            macs = conv_macs(Path(tmp) / "m.onnx")
            sgemm = sgemm_flops(torch.device("cpu"), torch.float32)
    base = statistics.median(times["model(y)"])
    rows = [{"runner": name, "median_ms": statistics.median(ms), "ms": ms,
             "ratio_to_model": statistics.median(ms) / base, "max_diff": diffs[name]} for name, ms in times.items()]
    print(f"{meta['device']}; inik kernels {meta['isa']}; {meta['versions']}")
    print(f"inference {w}x{h}, float32, {args.rounds} turns of {args.reps} calls per runner")
    for r in rows:
        print(f"  {r['runner']:<32} {r['median_ms']:9.1f} ms  {r['ratio_to_model']:5.2f}x model(y)  "
              f"max |diff| {r['max_diff']:.1e}")
    result = {"meta": meta, "size": [h, w], "rows": rows}
    if args.profile:
        total = sum(by_op.values())
        rate = 2 * macs["all"] / (by_op.get("Conv", 0.0) / 1e3)
        print(f"onnxruntime, one call profiled: {total:.0f} ms in operators")
        for op, ms in list(by_op.items())[:8]:
            print(f"  {op:<14} {ms:8.1f} ms  {100 * ms / total:4.1f}%")
        print(f"  Conv: {macs['all'] / 1e9:.1f} G multiply-adds ({100 * macs['3x3'] / macs['all']:.0f}% in 3x3 "
              f"kernels) at {rate / 1e9:.1f} GFLOP/s, {100 * rate / sgemm:.0f}% of a 2048x2048 float32 matmul "
              f"here ({sgemm / 1e9:.1f} GFLOP/s)")
        result["profile"] = {"ms_by_op": by_op, "conv_macs": macs, "conv_flops": rate, "sgemm_flops": sgemm}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
