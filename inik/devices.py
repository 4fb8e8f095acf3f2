"""The torch device to run on, checked before any work, so that a bad one is named as
such, not reported later as an unreadable weights file."""

from __future__ import annotations

import torch


def usable_device(device, name: str = "device") -> torch.device:
    """``device`` (a string, torch.device or CUDA index) as a torch.device that works
    here; ValueError ``"<name> <device>: <why>"`` otherwise (``"<name>'<device>'"`` for a
    name ending in ``=``, as ``device=``). ``"auto"``: CUDA when it is available, else the CPU."""
    shown = f"{name}{device!r}" if name.endswith("=") else f"{name} {device}"
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"{shown}: expected cpu, cuda or cuda:N (a string, torch.device or "
                         f"CUDA index), got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{shown}: not a torch device ({exc})") from None
    if dev.type == "meta":
        raise ValueError(f"{shown}: the meta device holds no data (use cpu or cuda)")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"{shown}: there is one CPU device, cpu (no index)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{shown}: CUDA is not available (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{shown}: there are {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"{shown}: cannot use it here ({str(exc).splitlines()[0]})") from None
    return dev
