"""``inik info``: what this installation runs on - versions, the compiled kernels,
devices, the IFM backend ``auto`` picks, the default weights - for bug reports and
for checking an install."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

from . import settings
from .errors import first_line


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ask(question, *args):
    """``question(*args)``, or what went wrong as ``"error: ..."``: a bad setting (say
    ``INIK_IFM_BACKEND=cuda`` on a machine without one) is reported, not fatal."""
    try:
        return question(*args)
    except Exception as exc:  # noqa: BLE001 - every answer is a report
        return f"error: {first_line(exc)}"


def _default_weights():
    """Path, size, network revision and cascade of the bundled weights (their header
    read once; a damaged file is reported in both fields), or None when missing."""
    from .loading import DEFAULT_WEIGHTS
    from .models import INIKNet

    if not DEFAULT_WEIGHTS.is_file():
        return None
    config = _ask(INIKNet.read_config, DEFAULT_WEIGHTS)
    if isinstance(config, str):  # what went wrong
        revision = cascade = config
    else:
        revision, cascade = config.revision, config.cascade
    return {"path": str(DEFAULT_WEIGHTS), "bytes": DEFAULT_WEIGHTS.stat().st_size,
            "revision": revision, "cascade": cascade}


def collect() -> dict:
    """The facts ``inik info`` prints, as a JSON-ready dict."""
    import torch

    import inik

    from .loading import cpu_has_bf16
    from .ops import _ext, resolve_backend, winograd

    cuda = torch.cuda.is_available()
    facts = {
        "inik": inik.__version__,
        "location": str(Path(inik.__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in
                     ("torch", "triton", "numpy", "pillow", "pillow-heif", "tifffile", "safetensors", "lpips")},
        "torch_cuda": torch.version.cuda,
        "extension": {
            "built": _ext.is_built(),
            "cpu_isa": _ask(winograd.isa) if _ext.is_built() else None,
            "cuda_kernels": _ext.has_cuda_kernels(),
            "note": None if _ext.is_built() else _ext.build_hint(),
        },
        "cpu": {"threads": torch.get_num_threads(), "native_bf16": cpu_has_bf16(),
                "ifm_backend": _ask(resolve_backend, "cpu")},
        "cuda": ({"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                  "ifm_backend": _ask(resolve_backend, "cuda")} if cuda else None),
        "default_weights": _default_weights(),
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("INIK_", "TRITON_INTERPRET"))},
        "unknown_settings": settings.unknown(),
    }
    return facts


def _text(f: dict) -> str:
    ext = f["extension"]
    lines = [f"inik {f['inik']} ({f['location']})",
             f"python {f['python']} on {f['platform']}",
             "versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in f["versions"].items())
             + (f" (torch built with CUDA {f['torch_cuda']})" if f["torch_cuda"] else ""),
             ("extension inik._C: built, CPU kernels " + ext["cpu_isa"]
              + (", CUDA kernels" if ext["cuda_kernels"] else ", no CUDA kernels"))
             if ext["built"] else f"extension inik._C: NOT built - {ext['note']}",
             f"cpu: {f['cpu']['threads']} threads, bfloat16 "
             f"{'native' if f['cpu']['native_bf16'] else 'emulated (--half runs float32)'}"
             f", IFM backend {f['cpu']['ifm_backend']}",
             (f"cuda: {f['cuda']['count']} x {f['cuda']['device']}, IFM backend {f['cuda']['ifm_backend']}"
              if f["cuda"] else "cuda: not available"),
             (f"default weights: {f['default_weights']['path']} ({f['default_weights']['bytes'] / 1e6:.1f} MB, "
              f"network revision {f['default_weights']['revision']}"
              + (", cascade)" if f["default_weights"]["cascade"] is True else ")")
              if f["default_weights"] else "default weights: MISSING (inik deblur would run an untrained model)")]
    if f["environment"]:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in f["environment"].items()))
    if f["unknown_settings"]:
        lines.append("warning: inik reads no variable named " + ", ".join(f["unknown_settings"])
                     + " (docs/configuration.md lists the settings)")
    return "\n".join(lines)


def configure_parser(p) -> None:
    p.add_argument("--json", action="store_true", help="print the facts as JSON (default: off, text)")


def run(args) -> int:
    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else _text(facts), file=sys.stdout)
    return 0
