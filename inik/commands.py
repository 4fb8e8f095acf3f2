"""What the commands share: their inputs (files, folders, globs), ``--device``,
``--tile``/``--overlap``, and one line per failed item of a batch."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Optional

import torch

from .settings import SettingError  # noqa: F401 (what a batch re-raises: not an item's fault)
from .tiling import check_tiling


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Optional[Path]]]:
    """(file, folder it came from or None) for every input file, folder or glob."""
    from .data.io import list_images
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images = list_images(p)
            if not images:
                from .data.io import IMAGE_EXTENSIONS
                raise ValueError(f"{p}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
            found += [(f, p) for f in images]
        elif p.exists():
            found.append((p, None))
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                found.append((p, None))  # reported as missing when read
            for m in map(Path, matches):  # a folder the pattern matches counts as a folder named here
                found += [(f, m) for f in list_images(m)] if m.is_dir() else [(m, None)]
    return found


def check_tile_option(tile: Optional[int], overlap: Optional[int] = None) -> None:
    """``--tile`` and ``--overlap`` of ``inik deblur``, ``explain`` and ``eval``
    (:func:`check_tiling`); ValueError naming the option."""
    check_tiling(tile, overlap, names=("--tile", "--overlap"))


#: help text of --device in deblur, explain and eval
DEVICE_HELP = "torch device: auto (default: cuda when available, else cpu), cpu, cuda, cuda:1 ..."


def check_device(device: str) -> torch.device:
    """The torch device named by --device, usable here (``"auto"``: CUDA when it is
    available, else the CPU); ValueError saying why not."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device}: not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available (use --device cpu)")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"--device {device}: cannot use it here ({str(exc).splitlines()[0]})") from None
    return dev


#: what one bad item of a batch (an unreadable or odd image, a failed write, a model that cannot run on
#: it, too little memory) raises; deblur, explain and eval report it and go on with the rest
ITEM_ERRORS = (OSError, ValueError, RuntimeError, MemoryError)


def item_error(exc: BaseException, *paths) -> str:
    """``exc`` as one line naming the file: the first line of its message (torch's run over
    several), after the first of ``paths`` unless it names one of them already."""
    from .errors import first_line
    msg = first_line(exc)
    return msg if any(str(p) in msg for p in paths) else f"{paths[0]}: {msg}"
