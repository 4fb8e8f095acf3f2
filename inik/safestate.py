"""Nested training state (dicts, lists, numbers, strings, tensors) in one safetensors
file: the tensors as tensors, everything else as JSON in the file's metadata.

Reading it never runs code, whoever wrote the file (a pickle - ``torch.save`` -
can run anything when loaded). Optimiser, scheduler and GradScaler state dicts
and the run's settings are all of these types.
"""

from __future__ import annotations

import json
import os

import torch

from .errors import first_line

FORMAT = "inik.state"
_TENSOR, _DICT, _TUPLE = "$tensor", "$dict", "$tuple"


class StateFormatError(ValueError):
    """The file is not a state file this module wrote (or it is damaged)."""


def _encode(value, tensors: dict):
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared ones
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {_DICT: [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a state file")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)).startswith("$"):
        (tag, body), = value.items()
        if tag == _TENSOR and isinstance(body, str) and body in tensors:
            return tensors[body]
        if tag == _DICT and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
            out = {}
            for k, v in body:
                k = _decode(k, tensors)
                if isinstance(k, (dict, list, torch.Tensor)):
                    raise StateFormatError("a dictionary key that is not a number or a string")
                out[k] = _decode(v, tensors)
            return out
        if tag == _TUPLE and isinstance(body, list):
            return tuple(_decode(v, tensors) for v in body)
        raise StateFormatError(f"an unknown entry {tag!r}")
    return {k: _decode(v, tensors) for k, v in value.items()}


def dumps(state) -> bytes:
    """``state`` as the bytes of a state file."""
    from safetensors.torch import save
    tensors: dict = {}
    skeleton = _encode(state, tensors)
    return save(tensors, metadata={"format": FORMAT, "state": json.dumps(skeleton)})


def load(path: str | os.PathLike):
    """The state stored in ``path`` by :func:`dumps`; StateFormatError when the file
    is not one (OSError when it cannot be read)."""
    from safetensors import safe_open
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or "state" not in meta:
                raise StateFormatError("not an inik state file (no inik.state metadata)")
            # copies: the file's memory map would fault if the file were cut short later
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except (StateFormatError, OSError):
        raise
    except Exception as exc:  # safetensors' own errors: a truncated or foreign file
        raise StateFormatError(f"not a readable safetensors file ({first_line(exc)})") from None
    try:
        skeleton = json.loads(meta["state"])
    except ValueError as exc:
        raise StateFormatError(f"malformed state metadata ({exc})") from None
    return _decode(skeleton, tensors)
