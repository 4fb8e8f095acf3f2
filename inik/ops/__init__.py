"""The IFM operator and its backends (``torch.ops.inik.ifm``)."""

from .ifm import (
    BACKEND_NAMES,
    ENV_BACKEND,
    Backend,
    available_backends,
    backend_unavailable,
    ifm,
    register_backend,
    resolve_backend,
    validate,
)

__all__ = [
    "BACKEND_NAMES", "ENV_BACKEND", "Backend", "available_backends", "backend_unavailable",
    "ifm", "register_backend", "resolve_backend", "validate",
]
