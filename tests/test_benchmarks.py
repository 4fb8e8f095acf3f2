"""The benchmark scripts run end to end and write what they promise (tiny sizes;
speed itself is measured by running them, never asserted here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inik.ops import _ext

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_bench_model_runs_every_mode_in_its_own_process(tmp_path):
    out = tmp_path / "model.json"
    text = _run("bench_model.py", "--sizes", "32x48", "--train-size", "32", "--train-batch", "1",
                "--reps", "1", "--modes", "baseline,api,fast,fast-system-malloc", "--out", str(out))
    assert "every mode runs in its own process" in text
    data = json.loads(out.read_text())
    assert data["meta"]["device"] and data["meta"]["versions"]
    rows = {(r["task"], r["mode"]): r for r in data["rows"]}
    assert set(rows) == {(t, m) for t in ("infer 32x48", "train b1 32x32")
                         for m in ("baseline", "api", "fast", "fast-system-malloc")}
    assert data["meta"]["sgemm_GFLOP_per_s"] > 0 and "GFLOP/s" in text and "of sgemm" in text
    for (_, mode), r in rows.items():
        assert r["ms"] > 0 and r["peak_mb"] is not None and r["peak_mb"] >= 0
        assert r["GFLOP_per_s"] > 0 and r["of_sgemm"] > 0
        assert r["speedup"] is not None  # the baseline runs first, so every row has its ratio
        if mode == "baseline":
            assert r["speedup"] == 1.0


def test_bench_model_training_only(tmp_path):
    out = tmp_path / "train.json"
    _run("bench_model.py", "--no-infer", "--train-size", "32", "--train-batch", "1", "--reps", "1",
         "--modes", "baseline", "--out", str(out))
    assert [(r["task"], r["mode"]) for r in json.loads(out.read_text())["rows"]] == [("train b1 32x32", "baseline")]


def test_ab_env_alternates_settings_in_one_process(tmp_path):
    out = tmp_path / "ab.json"
    text = _run("ab_env.py", "INIK_WINOGRAD=0", "INIK_WINOGRAD=1,INIK_WINOGRAD_TILE=", "--size", "32x48",
                "--rounds", "2", "--out", str(out))
    assert "infer 32x48, mode fast, 2 rounds per setting" in text
    data = json.loads(out.read_text())
    assert [r["setting"] for r in data["rows"]] == ["INIK_WINOGRAD=0", "INIK_WINOGRAD=1,INIK_WINOGRAD_TILE="]
    assert all(len(r["ms"]) == 2 and r["median_ms"] > 0 for r in data["rows"])
    assert data["rows"][0]["ratio_to_first"] == 1.0 and data["meta"]["device"]
    text = _run("ab_env.py", "INIK_WINOGRAD=0", "INIK_WINOGRAD=1", "--train", "--train-size", "32",
                "--train-batch", "1", "--rounds", "1")
    assert "train b1 32x32" in text
    for bad, message in ((["INIK_WINOGRAD"], "expected VAR=value"), (["A=1"], "at least two settings")):
        proc = subprocess.run([sys.executable, str(BENCH / "ab_env.py"), *bad], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and message in proc.stderr


def test_bench_model_rejects_unknown_modes():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_model.py"), "--modes", "turbo"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown mode 'turbo'" in proc.stderr


def test_bench_ifm_cpu_backends(tmp_path):
    out = tmp_path / "ifm.json"
    text = _run("bench_ifm.py", "--size", "24", "--reps", "1", "--min-ms", "1",
                "--backends", "unfused,reference,cpp,cuda,triton", "--modes", "forward,forward+backward",
                "--out", str(out))
    assert "cuda" in text and "triton" in text  # GPU-only backends: a line saying they are skipped
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {r["backend"] for r in rows} >= {"unfused", "reference", "cpp"}
    # the CPU rows' rate against a matmul timed in the same run, and the kernels' instruction set
    assert "inik kernels " in text and "GFLOP/s here" in text and data["meta"]["sgemm_GFLOP_per_s"] > 0
    assert all(r["GFLOP_per_s"] > 0 and 0 < r["of_sgemm"] for r in rows)


def test_tile_error_reports_every_distance():
    text = _run("tile_error.py", "--size", "480", "--tile", "384")
    assert "384-px tiles at offsets [0, 16, 48, 96]" in text
    assert "16 px: " in text and "96 px: " in text and " -" not in text.split("inner edge: ")[1].splitlines()[0]
    assert "tiled (overlap 288) vs whole: max |diff|" in text
    for args, message in ((["--tile", "256"], "--tile must be 0 (whole image) or at least 384"),
                          (["--size", "300"], "--size must be larger than --tile"),
                          (["--dists", "8,x"], "--dists: expected comma-separated whole numbers")):
        proc = subprocess.run([sys.executable, str(BENCH / "tile_error.py"), *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_sweep_triton_launches_every_job_under_the_interpreter():
    """Every job of the GPU sweep runs through the module's host code (forced
    configurations, band budgets) on a tiny image under the interpreter."""

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "sweep_triton.py"), "--device", "cpu", "--size", "5",
                           "--compile-only", "--part", "0/6"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "jobs" in proc.stdout and "Error" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.skipif(not _ext.is_built() and _ext.left_out_on_purpose(),
                    reason="INIK_NO_EXTENSION=1: the extension was not built on purpose")
def test_bench_conv_times_every_shape_of_the_model(tmp_path):
    out = tmp_path / "conv.json"
    text = _run("bench_conv.py", "--size", "64", "--reps", "1", "--dtypes", "float32", "--out", str(out))
    assert "3x3 stride-1 convolutions in a 64x64 forward" in text and "float32: all of one forward" in text
    data = json.loads(out.read_text())
    rows = data["results"]
    # the U-Net's and the recurrent cells' shapes at the three levels, 3->32 included
    assert {(r["ci"], r["co"]) for r in rows} >= {(3, 32), (32, 32), (64, 64), (128, 128), (64, 32)}
    assert sum(r["count"] for r in rows) == data["meta"]["convolutions"]
    assert all(r["direct_ms"] > 0 and r["f4_ms"] > 0 and r["f6_ms"] > 0 for r in rows)
    # "winograd" is the tile size the model's calls take for that shape
    assert all(r["winograd_ms"] == r["f4_ms" if r["tile"] == 4 else "f6_ms"] for r in rows)
    assert {r["tile"] for r in rows if r["h"] >= 64} == {4}  # F(6x6) only from 128x128 pixels up
    out = tmp_path / "wgrad.json"
    text = _run("bench_conv.py", "--weight-grad", "--size", "32", "--batch", "2", "--reps", "1", "--out", str(out))
    assert "float32 weight gradients, batch 2" in text and "all its shapes that train through Winograd" in text
    data = json.loads(out.read_text())
    assert data["meta"]["batch"] == 2 and sum(r["count"] for r in data["results"]) == data["meta"]["convolutions"]
    assert all(r["onednn_ms"] > 0 and r["winograd_ms"] > 0 and r["ci"] >= 16 for r in data["results"])


@pytest.mark.skipif(not _ext.is_built(), reason="the native extension is not built")
def test_bench_threads_times_each_count_in_turns(tmp_path):
    out = tmp_path / "threads.json"
    text = _run("bench_threads.py", "--size", "32", "--threads", "1,2", "--rounds", "2", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["what"], r["threads"]) for r in rows] == [(w, n) for w in ("ifm forward (cpp)", "model fast path")
                                                          for n in (1, 2)]
    assert all(r["best_ms"] > 0 and r["median_ms"] >= r["best_ms"] for r in rows)
    assert [r["speedup_best"] for r in rows][::2] == [1.0, 1.0] and "kernels " in text
    proc = subprocess.run([sys.executable, str(BENCH / "bench_threads.py"), "--what", "gpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--what takes ifm and/or model" in proc.stderr


def test_bench_model_counts_the_work_a_real_call_does():
    """The rate's FLOPs, counted on meta tensors, are those of a real call of the model
    (its PyTorch-operator path) at a size that is not a multiple of 16."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import inik
    from inik.ops.paths import plain_ops
    sys.path.insert(0, str(BENCH))
    try:
        from bench_model import work_flops
    finally:
        sys.path.remove(str(BENCH))
    with plain_ops(), FlopCounterMode(display=False) as counter, torch.no_grad():
        inik.INIKNet().eval()(torch.rand(1, 3, 40, 50))
    assert work_flops({"task": "infer", "h": 40, "w": 50}) == counter.get_total_flops() > 0


def test_gpu_carry_packs_training_photos_only_within_the_budget(tmp_path):
    """The carried folder holds the initial weights and the training part of the photo split
    (never a held-out photo), only photos large enough for the crops, within the budget."""
    import numpy as np
    from PIL import Image

    from inik.data.photos import select_photos

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):  # noise: JPEG cannot shrink it, so the budget binds
        side = 40 if i == 3 else 160
        noise = rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)
        Image.fromarray(noise).save(photos / "sub" / f"p{i:02d}.png")
    init = tmp_path / "w.safetensors"
    init.write_bytes(b"weights")
    out = tmp_path / "carry"
    text = _run("gpu_carry.py", "--photos", str(photos), "--init", str(init), "--out", str(out),
                "--crop", "64", "--max-blur", "4", "--max-side", "128", "--budget-mb", "1")
    packed = sorted(p.relative_to(out / "photos").with_suffix(".png") for p in (out / "photos").rglob("*.jpg"))
    train = {p.relative_to(photos) for p in select_photos(photos, "train")}
    assert packed and set(packed) <= train and Path("sub/p03.png") not in packed
    assert f"{len(packed)} photos" in text and (out / "init.safetensors").read_bytes() == b"weights"
    with Image.open(out / "photos" / packed[0].with_suffix(".jpg")) as im:
        assert max(im.size) == 128
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total <= 2**20
    small = tmp_path / "small"
    _run("gpu_carry.py", "--photos", str(photos), "--init", str(init), "--out", str(small),
         "--crop", "64", "--max-blur", "4", "--max-side", "128", "--budget-mb", "0.05")
    assert 0 < len(list((small / "photos").rglob("*.jpg"))) < len(packed)
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_carry.py"), "--photos", str(photos), "--init", str(init),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "exists" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_export_times_and_profiles_the_onnx_file(tmp_path):
    out = tmp_path / "export.json"
    text = _run("bench_export.py", "--size", "48", "--reps", "1", "--rounds", "1", "--profile", "--fold-pads",
                "--out", str(out))
    assert "onnxruntime, one call profiled" in text and "Conv:" in text
    result = json.loads(out.read_text())
    assert [r["runner"] for r in result["rows"]] == ["model(y)", "onnxruntime", "onnxruntime, 123 pads folded"]
    assert all(r["max_diff"] < 1e-4 for r in result["rows"][:2])
    assert result["rows"][2]["max_diff"] > 1e-3  # zero padding: another function near the borders
    prof = result["profile"]
    assert prof["ms_by_op"]["Conv"] > 0 and 0 < prof["conv_macs"]["3x3"] < prof["conv_macs"]["all"]


def test_bench_export_counts_convolution_multiply_adds(tmp_path):
    """conv_macs on a graph of known work: a 3x3 conv 4 -> 5 channels on 10x12, and a
    grouped (2 groups) 5x5 conv 4 -> 6 channels with stride 2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    sys.path.insert(0, str(BENCH))
    from bench_export import conv_macs
    w1 = numpy_helper.from_array(np.zeros((5, 4, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((6, 2, 5, 5), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"], group=2, strides=[2, 2], pads=[2, 2, 2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 12])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "g.onnx")
    three = 5 * 10 * 12 * 4 * 9
    assert conv_macs(tmp_path / "g.onnx") == {"3x3": three, "all": three + 6 * 5 * 6 * 2 * 25}


def test_fold_reflect_pads_moves_pads_into_convolutions_only(tmp_path):
    """A reflect Pad feeding a Conv becomes that Conv's zero padding (equal away from the
    border); one feeding anything else stays."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    sys.path.insert(0, str(BENCH))
    from bench_export import fold_reflect_pads
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p")]
    nodes = [helper.make_node("Pad", ["x", "p"], ["xp"], mode="reflect"),
             helper.make_node("Conv", ["xp", "w"], ["a"]),
             helper.make_node("Pad", ["x", "p"], ["xq"], mode="reflect"),
             helper.make_node("Relu", ["xq"], ["b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 11])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "g.onnx")
    assert fold_reflect_pads(tmp_path / "g.onnx", tmp_path / "f.onnx") == 1
    folded = onnx.load(str(tmp_path / "f.onnx"))
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Pad", "Relu"]
    x = rng.random((1, 3, 9, 11), dtype=np.float32)
    (a, b), (fa, fb) = (onnxruntime.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                        .run(None, {"x": x}) for f in ("g.onnx", "f.onnx"))
    assert a.shape == fa.shape == (1, 2, 9, 11) and np.array_equal(b, fb)
    np.testing.assert_allclose(fa[..., 1:-1, 1:-1], a[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert np.abs(fa - a).max() > 1e-3
