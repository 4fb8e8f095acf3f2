"""``inik export``: INIKNet as one file for deployment - a torch.export program, an
AOTInductor package, or an ONNX model - checked against ``model(y)`` once written.

* ``pt2``: :func:`torch.export.export` of ``model(y)`` on the CPU, on the paths
  ``inik deblur`` runs: the IFM is the registered op ``torch.ops.inik.ifm`` (its
  fake kernel lets it be traced), the 3x3 convolutions and the ConvLSTM cell
  inik's native ops where the CPU takes them. Saved with :func:`torch.export.save`;
  :func:`torch.export.load` reads it back once ``import inik`` has registered
  those ops and their kernels (the only part of inik it needs).
* ``pt2`` with ``aoti=True``: the model in PyTorch operators only
  (:func:`inik.ops.paths.plain_ops`), compiled ahead of time by AOTInductor into a
  package that ``torch._inductor.aoti_load_package`` runs without inik (building
  it needs a C++ compiler).
* ``onnx``: the model in standard ONNX operators (opset :data:`ONNX_OPSET`), the IFM
  as the ``reference`` backend computes it - the per-scale convolutions with the
  atoms, then the mu-omega weighted sum - so any ONNX runtime runs it.

Sizes: ``size=(H, W)`` makes a graph for (1, 3, H, W) input, padded inside the
graph to a multiple of 16 as ``model(y)`` pads it; ``dynamic=True`` one for
(B, 3, H, W) input with H and W multiples of 16 (at least 32): the caller pads
(reflect, at the bottom and right) and crops (docs/deploy.md). Input and output
are float32 images in [0, 1]; ``half=True`` computes in float16 (onnx) or
bfloat16 (pt2, as ``deblur --half`` on a CPU).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import re
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import first_line
from .models.iniknet import MIN_SIZE, MULTIPLE
from .ops.paths import plain_ops

FORMATS = ("pt2", "onnx")
#: the ONNX opset of ``format="onnx"`` (torch's exporter translates to it natively)
ONNX_OPSET = 18
#: the input size of an export that names none
DEFAULT_SIZE = (1024, 1024)
#: the largest height or width an export takes (larger photos are tiled)
MAX_SIDE = 8192
#: a dynamic export takes batches of up to this many images, of heights and widths that are multiples
#: of MULTIPLE (16) and at least MIN_SIZE (32), as the network needs them
MAX_BATCH = 64
#: the largest difference from model(y) the check accepts, float32 and half precision
TOLERANCE = {"float32": 1e-4, "half": 5e-2}
#: the image size the check runs a dynamic export at
CHECK_DYNAMIC_SIZE = (80, 112)
EXTRA = "pip install 'inik[export]'"


@dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote. ``size`` is None for a dynamic export;
    ``difference`` the largest absolute difference from ``model(y)`` on a random image of
    ``checked_size`` (None when not checked)."""

    path: Path
    format: str
    aoti: bool
    size: Optional[tuple[int, int]]
    dtype: str
    difference: Optional[float]
    checked_size: Optional[tuple[int, int]]

    @property
    def tolerance(self) -> float:
        return TOLERANCE["float32" if self.dtype == "float32" else "half"]

    def describe(self) -> str:
        kind = "pt2 (AOTInductor)" if self.aoti else self.format + (f", opset {ONNX_OPSET}" if self.format == "onnx"
                                                                     else "")
        sizes = (f"{self.size[0]}x{self.size[1]}" if self.size else
                 f"dynamic: batch 1-{MAX_BATCH}, H and W multiples of {MULTIPLE} from {MIN_SIZE}")
        line = f"{self.path}: {kind}, {sizes}, {self.dtype}"
        if self.difference is not None:
            h, w = self.checked_size
            line += f"; largest difference from model(y) on a random {h}x{w} image: {self.difference:.1e}"
        return line


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` or ``"S"`` (square) -> (H, W); ValueError naming ``--size``."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if m is None:
        raise ValueError(f"--size {text}: expected HxW (e.g. 1024x768) or one number for a square")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def format_for(path: str | Path) -> str:
    """The format an output file's suffix names (``.pt2``, ``.onnx``); ValueError otherwise."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"-o {path}: name a .pt2 or .onnx file, or give --format")
    return suffix


def _require(modules: tuple[str, ...], purpose: str) -> None:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(f"{purpose} needs {' and '.join(missing)}, not installed: {EXTRA}")


def check_request(format: str, path: str | Path, *, size: Optional[tuple[int, int]] = None, dynamic: bool = False,
                  aoti: bool = False, overwrite: bool = False, check: bool = True) -> Optional[tuple[int, int]]:
    """Everything :func:`export_model` checks before it traces the model: the input size
    it exports (None for dynamic), or a ValueError saying what is wrong."""
    if format not in FORMATS:
        raise ValueError(f"--format {format}: expected one of {', '.join(FORMATS)}")
    if size is not None and dynamic:
        raise ValueError("--size and --dynamic exclude each other: a fixed size, or any multiple of 16")
    if aoti and format != "pt2":
        raise ValueError(f"--aoti builds a pt2 package; --format {format} has no AOTInductor form")
    if not dynamic:
        size = DEFAULT_SIZE if size is None else size
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"--size must be (height, width), got {size!r}") from None
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ValueError(f"--size {h}x{w}: height and width must be 1 to {MAX_SIDE} "
                             f"(tile larger photos, docs/deploy.md)")
        size = (h, w)
    out = Path(path)
    named = out.suffix.lower().lstrip(".")
    if named in FORMATS and named != format:
        raise ValueError(f"--format {format} contradicts the output file -o {path}; name a .{format} file")
    if out.is_dir():
        raise ValueError(f"-o {path}: is a folder; name a file")
    if not out.parent.is_dir():
        raise ValueError(f"-o {path}: the folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise ValueError(f"-o {path}: exists (pass --overwrite to replace it)")
    if format == "onnx":
        _require(("onnx", "onnxscript"), "ONNX export")
        if check:
            _require(("onnxruntime",), "checking the ONNX model (--no-check skips it)")
    return None if dynamic else size


@contextlib.contextmanager
def tracing_paths(plain: bool):
    """The paths the export traces: without gradients, and with ``plain`` every op in
    PyTorch operators only (:func:`inik.ops.paths.plain_ops`: no Winograd, no fused
    ConvLSTM cell, the IFM as the reference backend's convolutions and weighted sum)."""
    with torch.no_grad(), (plain_ops() if plain else contextlib.nullcontext()):
        yield


def _example(size: Optional[tuple[int, int]]):
    """The example input torch.export traces and its dynamic shapes (None: all fixed)."""
    if size is not None:
        return torch.rand(1, 3, *size), None
    dim = torch.export.Dim
    blocks = {"min": MIN_SIZE // MULTIPLE, "max": MAX_SIDE // MULTIPLE}
    shapes = ({0: dim("batch", min=1, max=MAX_BATCH), 2: MULTIPLE * dim("height_blocks", **blocks),
               3: MULTIPLE * dim("width_blocks", **blocks)},)
    # sizes 0 and 1, and equal sizes, would be specialised: batch 2, H != W
    return torch.rand(2, 3, 4 * MULTIPLE, 6 * MULTIPLE), shapes


def _metadata(model, size, dtype: torch.dtype) -> dict[str, str]:
    from . import __version__
    return {"producer": "inik export", "inik_version": __version__, "config": json.dumps(asdict(model.config)),
            "input": (f"(1, 3, {size[0]}, {size[1]}) float32 in [0, 1]" if size else
                      f"(B, 3, H, W) float32 in [0, 1], H and W multiples of {MULTIPLE}, at least {MIN_SIZE}: "
                      f"pad (reflect, bottom and right), then crop the output"),
            "compute_dtype": str(dtype).replace("torch.", "")}


def _trace(net, size, format: str, aoti: bool):
    example, shapes = _example(size)
    try:
        with tracing_paths(plain=format == "onnx" or aoti):
            return torch.export.export(net, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as exc:
        if size is None:
            raise ValueError(f"{format}: the graph cannot take dynamic sizes ({first_line(exc)}); export a "
                             f"fixed size, e.g. --size {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}") from exc
        raise RuntimeError(f"torch.export failed: {first_line(exc)}") from exc


def _pt2_bytes(program, meta: dict[str, str], aoti: bool) -> bytes:
    buf = io.BytesIO()
    if not aoti:
        with warnings.catch_warnings():  # about weights off the CPU, which these never are
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            torch.export.save(program, buf, extra_files={"inik.json": json.dumps(meta)})
        return buf.getvalue()
    try:
        from torch._inductor import aoti_compile_and_package
        aoti_compile_and_package(program, package_path=buf)
    except Exception as exc:
        raise ValueError(f"AOTInductor cannot build a package here: {first_line(exc)}") from exc
    return buf.getvalue()


def _onnx_bytes(program, meta: dict[str, str]) -> bytes:
    import onnx
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines
            onnx_program = torch.onnx.export(program, input_names=["y"], output_names=["x"],
                                             opset_version=ONNX_OPSET, dynamo=True, optimize=True, verbose=False)
    except Exception as exc:
        raise RuntimeError(f"ONNX export failed: {first_line(exc)}") from exc
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, meta)
    return proto.SerializeToString()


def load_exported(path: str | Path, format: str, aoti: bool = False):
    """A function of ``y`` (float32, on the CPU) that runs an exported file as a deployment
    would: onnxruntime's CPU provider, ``aoti_load_package`` or ``torch.export.load``."""
    if format == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda y: torch.from_numpy(session.run(None, {"y": y.numpy()})[0])
    if aoti:
        from torch._inductor import aoti_load_package
        return aoti_load_package(str(path))
    return torch.export.load(str(path)).module()


def _difference(reference, path, format: str, aoti: bool, size) -> tuple[float, tuple[int, int]]:
    h, w = size or CHECK_DYNAMIC_SIZE
    y = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(y)
        got = load_exported(path, format, aoti)(y)
    return float((got.float() - want).abs().max()), (h, w)


def export_model(model, format: str, path: str | Path, *, size: Optional[tuple[int, int]] = None,
                 dynamic: bool = False, half: bool = False, aoti: bool = False, overwrite: bool = False,
                 check: bool = True) -> Exported:
    """Write ``model`` (an INIKNet; left as it is) to ``path`` as ``format`` (``"pt2"``,
    ``"onnx"``; see the module doc), for input of ``size`` (H, W) (default
    :data:`DEFAULT_SIZE`) or, with ``dynamic``, batches of 1 to :data:`MAX_BATCH` images
    of any H and W that are multiples of 16 (at least 32). ``check``: run the file on a
    random image and measure how far it is from ``model(y)`` (onnxruntime for ONNX).
    ValueError for a request it refuses, RuntimeError when the export itself fails."""
    size = check_request(format, path, size=size, dynamic=dynamic, aoti=aoti, overwrite=overwrite, check=check)
    from .data.io import write_atomically
    reference = copy.deepcopy(model).eval().cpu().float()
    dtype = (torch.float16 if format == "onnx" else torch.bfloat16) if half else torch.float32
    net = copy.deepcopy(reference).to(dtype) if half else reference
    program = _trace(net, size, format, aoti)
    meta = _metadata(net, size, dtype)
    data = _onnx_bytes(program, meta) if format == "onnx" else _pt2_bytes(program, meta, aoti)
    write_atomically(path, data)
    difference, checked = _difference(reference, path, format, aoti, size) if check else (None, None)
    return Exported(Path(path), format, aoti, size, str(dtype).replace("torch.", ""), difference, checked)


# ------------------------------------------------------------------ command line


def configure_parser(p) -> None:
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the file to write, .pt2 or .onnx (required)")
    p.add_argument("--format", default=None, metavar="|".join(FORMATS),
                   help="pt2: a torch.export program (torch.export.load reads it after `import inik`, which "
                        "registers inik's ops and their kernels: the IFM, the Winograd convolution, the ConvLSTM "
                        f"cell); onnx: standard ONNX operators, opset {ONNX_OPSET}, no inik needed (default: from "
                        "-o's suffix)")
    p.add_argument("--weights", help="INIKNet safetensors file (default: the bundled weights)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help=f"the one input size of the export, padded to a multiple of {MULTIPLE} inside the graph "
                        f"(default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--dynamic", action="store_true",
                   help=f"take batches of 1 to {MAX_BATCH} images of any H and W that are multiples of "
                        f"{MULTIPLE} (at least {MIN_SIZE}): the caller pads and crops, see docs/deploy.md "
                        "(default: off)")
    p.add_argument("--half", action="store_true",
                   help="compute in half precision: float16 for onnx, bfloat16 for pt2; input and output stay "
                        "float32 (default: off, float32)")
    p.add_argument("--aoti", action="store_true",
                   help="pt2 only: an AOTInductor package, compiled ahead of time (needs a C++ compiler); "
                        "torch._inductor.aoti_load_package runs it without inik (default: off)")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the file against model(y) on a random image (default: check; onnx needs "
                        "onnxruntime for it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (default: off)")


def run(args) -> int:
    from .loading import DEFAULT_WEIGHTS, UNTRAINED_NOTE, load_model
    name = "inik export"
    try:
        size = parse_size(args.size) if args.size is not None else None
        fmt = args.format if args.format is not None else format_for(args.output)
        if args.weights and Path(args.output).resolve() == Path(args.weights).resolve():
            raise ValueError(f"-o {args.output}: is the --weights file it reads; choose another output")
        check_request(fmt, args.output, size=size, dynamic=args.dynamic, aoti=args.aoti,
                      overwrite=args.overwrite, check=not args.no_check)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    try:
        model, trained = load_model(args.weights)
    except (OSError, ValueError) as exc:
        print(f"{name}: cannot load weights: {first_line(exc)}", file=sys.stderr)
        return 2
    if not trained:
        print(f"{name}: WARNING: " + UNTRAINED_NOTE.format(path=DEFAULT_WEIGHTS), file=sys.stderr)
    try:
        done = export_model(model, fmt, args.output, size=size, dynamic=args.dynamic, half=args.half,
                            aoti=args.aoti, overwrite=args.overwrite, check=not args.no_check)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"{name}: {first_line(exc)}", file=sys.stderr)
        return 2
    print(done.describe())
    if done.difference is not None and not done.difference <= done.tolerance:
        print(f"{name}: the export differs from model(y) by {done.difference:.1e}, more than {done.tolerance:.0e}",
              file=sys.stderr)
        return 1
    return 0
