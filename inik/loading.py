"""The model a deblur runs: the bundled weights or a file, its device, and the dtype of ``--half``."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from .models import INIKNet

log = logging.getLogger("inik")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


DEFAULT_WEIGHTS = WEIGHTS_DIR / "default.safetensors"


UNTRAINED_NOTE = ("no trained weights found (looked for {path}): using an UNTRAINED INIKNet "
                  "(random initialisation, seed 0) - its output is not a deblurred photo")


def load_model(weights: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu"
               ) -> tuple[INIKNet, bool]:
    """``(model, trained)``: the model in ``weights`` (default: the bundled weights),
    in eval mode on ``device``. Without any weights file, an untrained model and False."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if weights is None and not path.is_file():
        torch.manual_seed(0)
        model, trained = INIKNet(), False
    else:
        model, trained = INIKNet.load(path, map_location=device), True
    # channels_last: same numbers (tests/test_fast_path.py), faster convolutions on CPU
    return model.eval().to(device, memory_format=torch.channels_last), trained


_MODEL_CACHE: dict = {}


def default_model(device) -> INIKNet:
    key = str(device)
    if key not in _MODEL_CACHE:
        model, trained = load_model(device=device)
        if not trained:
            log.warning(UNTRAINED_NOTE.format(path=DEFAULT_WEIGHTS))
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def on_device(model: INIKNet, device) -> INIKNet:
    """``model`` if it is on ``device``, else a copy there: ``deblur(model=m, device=d)``
    leaves the caller's model where it was (``Module.to`` moves it in place)."""
    want, have = torch.device(device), next(model.parameters()).device
    if want.type == have.type and (want.index is None or want.index == have.index):
        return model
    return copy.deepcopy(model).to(want)


def half_dtype(device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--half`` on ``device``: float16 on CUDA, bfloat16 on CPUs
    with native bfloat16 arithmetic, and None (float32, with a one-line notice) on CPUs
    that only emulate it, where bfloat16 runs several times slower than float32."""
    if torch.device(device).type == "cuda":
        return torch.float16
    if not cpu_has_bf16():
        log.warning("half=True (--half): this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX), "
                    "where bfloat16 is slower than float32: running in float32")
        return None
    return torch.bfloat16


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # not exposed by this torch build
        return True
