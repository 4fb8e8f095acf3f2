"""inik export: the torch.export program and the ONNX model (run by onnxruntime) compute
what model(y) computes, to 1e-4 in float32, at a fixed size the graph pads and at
dynamic sizes; the default weights export; bad requests are one line and exit code 2."""

import importlib.util
import inspect
import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from inik import INIKNet
from inik.cli import main
from inik.export import ONNX_OPSET, export_model, load_exported
from inik.tiling import DEFAULT_OVERLAP, MIN_TILE, tiled

ROOT = Path(__file__).resolve().parents[1]

TOL = 1e-4


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return INIKNet(width=8, scales=4, atoms=4).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, small):
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    small.save(path)
    return path


def _against_model(model, run, shape):
    y = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        want, got = model(y), run(y)
    assert got.shape == want.shape and got.dtype == torch.float32
    return float((got - want).abs().max())


def test_pt2_at_an_odd_size_matches_the_model(tmp_path, small):
    path = tmp_path / "m.pt2"
    done = export_model(small, "pt2", path, size=(45, 38), check=False)  # padded to 48x48 inside the graph
    assert (done.format, done.size, done.dtype, done.difference) == ("pt2", (45, 38), "float32", None)
    run = load_exported(path, "pt2")
    assert _against_model(small, run, (1, 3, 45, 38)) <= TOL
    with pytest.raises(AssertionError, match="Guard failed"):  # that size only
        run(torch.rand(1, 3, 48, 48))
    # the IFM stays the registered op, whose kernel `import inik` provides
    assert "inik.ifm.default" in {str(n.target) for n in run.graph.nodes}


def test_default_weights_as_onnx_at_an_odd_size_match_the_model(tmp_path, capsys):
    path = tmp_path / "default.onnx"
    # the command checks the file against model(y) itself: exit code 1 above 1e-4
    assert main(["export", "-o", str(path), "--size", "45x38"]) == 0
    text = capsys.readouterr().out
    assert "onnx, opset 18, 45x38, float32; largest difference from model(y)" in text
    with pytest.raises(InvalidArgument, match="invalid dimensions"):  # that size only
        load_exported(path, "onnx")(torch.rand(1, 3, 48, 48))
    proto = onnx.load(str(path))  # standard operators only, at the stated opset
    assert {o.domain: o.version for o in proto.opset_import}.get("") == ONNX_OPSET
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} and not proto.functions
    assert {"Conv", "Pad"} <= {n.op_type for n in proto.graph.node}
    assert {p.key for p in proto.metadata_props} >= {"inik_version", "config", "input"}


def test_dynamic_onnx_matches_the_model_and_tiles_as_inik_does(tmp_path, small):
    path = tmp_path / "d.onnx"
    done = export_model(small, "onnx", path, dynamic=True)
    assert done.size is None and done.checked_size == (80, 112) and done.difference <= TOL
    run = load_exported(path, "onnx")
    for shape in [(1, 3, 32, 48), (2, 3, 80, 64)]:
        assert _against_model(small, run, shape) <= TOL, shape
    # a caller's tiling (examples/onnx_deblur.py) gives what inik.tiling gives
    spec = importlib.util.spec_from_file_location("onnx_deblur", ROOT / "examples" / "onnx_deblur.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # its tiling constants are inik's (the example imports no inik)
    assert example.MIN_TILE == MIN_TILE
    assert inspect.signature(example.deblur).parameters["overlap"].default == DEFAULT_OVERLAP
    image = torch.rand(3, 420, 390, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(example.deblur(session, image.numpy(), tile=384, overlap=288))
    want = tiled(run, image[None], 384, 288)[0].clamp(0, 1)
    assert got.shape == (3, 420, 390) and float((got - want).abs().max()) <= 1e-6


def test_half_precision_onnx(tmp_path, small):
    done = export_model(small, "onnx", tmp_path / "h.onnx", size=(40, 33), half=True)
    assert done.dtype == "float16" and done.difference <= done.tolerance


def _one_line_error(capsys, args, expect):
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("inik export: "), err
    assert expect in err, err


def test_bad_requests_are_one_line_errors(tmp_path, capsys, weights, monkeypatch):
    out, w = str(tmp_path / "m.onnx"), ["--weights", str(weights)]
    (tmp_path / "old.pt2").write_bytes(b"x")
    cases = [
        (["-o", str(tmp_path / "m.tflite")], "name a .pt2 or .onnx file"),
        (["-o", out, "--format", "tflite"], "--format tflite: expected one of pt2, onnx"),
        (["-o", out, "--size", "0x10"], "height and width must be 1 to"),
        (["-o", out, "--size", "big"], "--size big: expected HxW"),
        (["-o", out, "--size", "64x64", "--dynamic"], "exclude each other"),
        (["-o", out, "--aoti"], "--aoti builds a pt2 package"),
        (["-o", str(tmp_path / "old.pt2")], "exists (pass --overwrite"),
        (["-o", str(tmp_path / "no" / "m.pt2")], "does not exist"),
        (["-o", str(tmp_path / "m.pt2"), "--format", "onnx"], "--format onnx contradicts the output file"),
        (["-o", out, "--format", "pt2"], "--format pt2 contradicts the output file"),
    ]
    for args, expect in cases:
        _one_line_error(capsys, args + w, expect)
    _one_line_error(capsys, ["-o", out, "--weights", str(tmp_path / "missing.safetensors")], "cannot load weights")
    w_copy = tmp_path / "w.pt2"  # the weights it reads are never its output, --overwrite or not
    w_copy.write_bytes(Path(weights).read_bytes())
    _one_line_error(capsys, ["-o", str(w_copy), "--weights", str(w_copy), "--overwrite"], "is the --weights file")
    assert w_copy.read_bytes() == Path(weights).read_bytes()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    _one_line_error(capsys, ["-o", out] + w, "needs onnxruntime, not installed: pip install 'inik[export]'")
    monkeypatch.setitem(sys.modules, "onnx", None)
    _one_line_error(capsys, ["-o", out, "--no-check"] + w, "ONNX export needs onnx, not installed")
    assert not (tmp_path / "m.onnx").exists() and (tmp_path / "old.pt2").read_bytes() == b"x"


def test_aoti_failure_is_one_line(tmp_path, capsys, weights, monkeypatch):
    import torch._inductor

    def cannot(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", cannot)
    _one_line_error(capsys, ["-o", str(tmp_path / "a.pt2"), "--aoti", "--size", "32x32", "--weights", str(weights)],
                    "AOTInductor cannot build a package here: no C++ compiler found")
    assert not (tmp_path / "a.pt2").exists()


def _cpp_compiler() -> bool:
    from torch._inductor import cpp_builder
    try:
        return bool(cpp_builder.get_cpp_compiler())
    except Exception:  # inductor's search raises when it finds none
        return False


@pytest.mark.skipif(not _cpp_compiler(), reason="AOTInductor needs a C++ compiler")
def test_aoti_package_runs_without_inik(tmp_path, small):
    """An AOTInductor package (a C++ build: about a minute) computes model(y) in a process
    where inik cannot be imported."""
    import subprocess
    path = tmp_path / "a.pt2"
    done = export_model(small, "pt2", path, size=(45, 38), aoti=True)
    assert done.aoti and done.difference <= TOL
    y = torch.rand(1, 3, 45, 38, generator=torch.Generator().manual_seed(7))
    torch.save(y, tmp_path / "y.pt")
    script = ("import sys; sys.modules['inik'] = None\n"  # any import of inik fails
              "import torch; from torch._inductor import aoti_load_package\n"
              f"y = torch.load({str(tmp_path / 'y.pt')!r})\n"
              f"torch.save(aoti_load_package({str(path)!r})(y), {str(tmp_path / 'x.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=600)
    got = torch.load(tmp_path / "x.pt")
    with torch.no_grad():
        want = small(y)
    assert got.shape == want.shape and float((got - want).abs().max()) <= TOL
