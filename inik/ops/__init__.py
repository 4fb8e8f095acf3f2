"""The IFM operator and its backends (``torch.ops.inik.ifm``)."""

from . import ifm as _ifm
from .ifm import (
    ENV_BACKEND,
    Backend,
    Registration,
    auto_order,
    available_backends,
    backend_names,
    backend_unavailable,
    ifm,
    register_backend,
    resolve_backend,
    validate,
)

__all__ = [
    "BACKEND_NAMES", "ENV_BACKEND", "Backend", "Registration", "auto_order", "available_backends",
    "backend_names", "backend_unavailable", "ifm", "register_backend", "resolve_backend", "validate",
]


def __getattr__(name: str):
    if name == "BACKEND_NAMES":  # read at each use: backends registered later count
        return _ifm.BACKEND_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
