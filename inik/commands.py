"""What the commands share: their inputs (files, folders, globs), ``--device``,
``--tile``/``--overlap``, one line per done or failed item of a batch."""

from __future__ import annotations

import glob
import os
import sys
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
            before = len(found)
            for m in map(Path, matches):  # a folder the pattern matches counts as a folder named here
                found += [(f, m) for f in list_images(m)] if m.is_dir() else [(m, None)]
            if matches and len(found) == before:  # only folders, none holding an image
                raise ValueError(f"{item}: no images found in the {len(matches)} folder(s) it matches")
    return found


def output_path(output: str) -> Path:
    """``-o``'s path; ValueError for an empty one (which would mean the current folder unseen)."""
    if not output.strip():
        raise ValueError(f"-o/--output {output!r}: empty (name a file or folder; . for the current folder)")
    return Path(output)


def check_tile_option(tile: Optional[int], overlap: Optional[int] = None) -> None:
    """``--tile`` and ``--overlap`` of ``inik deblur``, ``explain`` and ``eval``
    (:func:`check_tiling`); ValueError naming the option."""
    check_tiling(tile, overlap, names=("--tile", "--overlap"))


#: help text of --device in deblur, explain and eval
DEVICE_HELP = "torch device: auto (default: cuda when available, else cpu), cpu, cuda, cuda:1 ..."


def check_device(device: str) -> torch.device:
    """The torch device named by --device, usable here (``"auto"``: CUDA when it is
    available, else the CPU); ValueError saying why not."""
    from .devices import usable_device
    return usable_device(device, "--device")


def say(line: str) -> None:
    """One line of a batch's progress on stdout (above any progress bar). A reader that
    went away (``inik deblur ... | head -1``) stops the lines, not the work: the rest
    of them go nowhere."""
    from tqdm import tqdm
    try:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        stop_stdout()


def stop_stdout() -> None:
    """Point stdout at the null device once its reader has gone (no error at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


#: what one bad item of a batch (an unreadable or odd image, a failed write, a model that cannot run on
#: it, too little memory) raises; deblur, explain and eval report it and go on with the rest
ITEM_ERRORS = (OSError, ValueError, RuntimeError, MemoryError)


def item_error(exc: BaseException, *paths) -> str:
    """``exc`` as one line naming the file: the first line of its message (torch's run over
    several), after the first of ``paths`` unless it names one of them already."""
    from .errors import first_line
    msg = first_line(exc)
    return msg if any(str(p) in msg for p in paths) else f"{paths[0]}: {msg}"


def batch_status(failures: int, total: int) -> int:
    """Exit status of a batch (docs/cli.md): 0 all done, 1 some items failed, 2 nothing done."""
    return 0 if not failures else 2 if failures >= total else 1
