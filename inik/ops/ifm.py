"""The Inverse Filtering Module (IFM) operator: validation, registration, backend choice.

    x[b,c,i,j] = sum_{r,n} mu[b,r,i,j] * omega[b,n,i,j]
                 * sum_{u,v} atoms[r,n,u,v] * image[b,c,i+u-K//2,j+v-K//2]

(cross-correlation, zeros outside the image; docs/ARCHITECTURE.md section 2).

The op is registered as ``torch.ops.inik.ifm`` (with ``torch.ops.inik.ifm_backward``
for its gradient) through :mod:`torch.library`, so ``torch.compile(fullgraph=True)``
keeps it as one opaque call. Each backend is declared once, with
:func:`register_backend` (its name, its code, its priority for ``backend="auto"``
per device type; docs/adding_a_backend.md); ``backend="auto"`` picks the
highest-priority one available for the tensors' device, the
environment variable ``INIK_IFM_BACKEND`` forces one, and :func:`resolve_backend`
says which one a call would use (also logged at DEBUG level on ``inik.ops``).
"""

from __future__ import annotations

import importlib
import logging
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import settings
from . import paths
from . import reference as _ref

log = logging.getLogger("inik.ops")

ENV_BACKEND = "INIK_IFM_BACKEND"
MAX_ATOM_SIZE = 1023  # K: K*K taps per pixel and their offsets stay far inside int32 in every kernel


@dataclass(frozen=True)
class Backend:
    """One implementation of the IFM.

    ``forward(image, mu, omega, atoms, support) -> out`` and
    ``backward(grad, image, mu, omega, atoms, support, needs) -> 4 grads`` take
    validated tensors of one dtype and device, possibly non-contiguous;
    ``needs`` holds four booleans and an unneeded gradient may be None.
    ``unavailable(device)`` returns None when the backend can run on that
    device, else the reason it cannot.
    """

    name: str
    forward: Callable
    backward: Callable
    unavailable: Callable[[torch.device], Optional[str]]


@dataclass(frozen=True)
class Registration:
    """One entry of the backend registry: everything the package knows about a
    backend before running it, so that adding one is a module plus one
    :func:`register_backend` call.

    ``source`` is the :class:`Backend`, or ``"module:function"`` naming a function
    that returns it, imported on first use (an ImportError there, e.g. an optional
    part not installed, makes the backend unavailable with that message).
    ``auto`` maps device types (``"cpu"``, ``"cuda"``, ``"*"`` for any other) to the
    backend's priority for ``backend="auto"``: the highest available one runs;
    a backend without a priority for a device type runs there only when named.
    """

    name: str
    source: Union[Backend, str]
    auto: Mapping[str, int]


_REGISTRY: dict[str, Registration] = {}
_LOADED: dict[str, Union[Backend, str]] = {}  # name -> its Backend, or why it could not be imported
BACKEND_NAMES: tuple[str, ...] = ()  # kept equal to backend_names()


def register_backend(backend: Union[Backend, str], *, name: Optional[str] = None,
                     auto: Optional[Mapping[str, int]] = None) -> None:
    """Add a backend, or replace the one of the same name.

    ``backend`` is a :class:`Backend`, or ``"module:function"`` (then ``name`` is
    required) for code imported only when the backend is first used. ``auto``:
    its priority per device type for ``backend="auto"`` (see :class:`Registration`
    and the package's registrations below); None keeps the priority of a backend
    it replaces, else the backend is never picked by "auto".
    """
    if isinstance(backend, Backend):
        name = backend.name if name is None else name
    elif not (isinstance(backend, str) and backend.count(":") == 1 and isinstance(name, str)):
        raise TypeError(f"register_backend: backend must be a Backend, or 'module:function' with name=..., "
                        f"got {backend!r} (name={name!r})")
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"register_backend: name must be a non-empty string other than 'auto', got {name!r}")
    if auto is None:
        auto = _REGISTRY[name].auto if name in _REGISTRY else {}
    if not isinstance(auto, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in auto.items()):
        raise TypeError(f"register_backend: auto must map device types to integer priorities, got {auto!r}")
    global BACKEND_NAMES
    _REGISTRY[name] = Registration(name, backend, dict(auto))
    _LOADED.pop(name, None)
    BACKEND_NAMES = tuple(_REGISTRY)


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order, as of now (``BACKEND_NAMES``
    imported elsewhere keeps the names of its import time)."""
    return tuple(_REGISTRY)


def auto_order(device: torch.device | str) -> list[str]:
    """The backends ``backend="auto"`` tries on ``device``, in order: highest priority
    first, ties in registration order."""
    kind = torch.device(device).type
    ranked = []
    for i, reg in enumerate(_REGISTRY.values()):
        priority = reg.auto.get(kind, reg.auto.get("*"))
        if priority is not None:
            ranked.append((-priority, i, reg.name))
    return [name for _, _, name in sorted(ranked)]


def _load(name: str) -> Union[Backend, str]:
    """The registered backend's code (imported on first use), or why it cannot be loaded."""
    source = _REGISTRY[name].source
    if isinstance(source, Backend):
        return source
    if name not in _LOADED:
        module, attr = source.split(":")
        try:
            _LOADED[name] = getattr(importlib.import_module(module), attr)()
        except ImportError as exc:  # optional component not built / not installed
            _LOADED[name] = f"{type(exc).__name__}: {exc}"
            log.debug("IFM backend %r not loadable: %s", name, exc)
    return _LOADED[name]


def backend_unavailable(name: str, device: torch.device | str) -> Optional[str]:
    """None if backend ``name`` can run on ``device``, else why not."""
    if not isinstance(name, str) or name not in _REGISTRY:
        return f"unknown backend {name!r}; expected one of {backend_names()}"
    be = _load(name)
    return be if isinstance(be, str) else be.unavailable(torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``."""
    return [n for n in backend_names() if backend_unavailable(n, device) is None]


@torch.compiler.assume_constant_result
def resolve_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The backend a call on ``device`` uses: ``backend`` if given (or the
    ``INIK_IFM_BACKEND`` environment variable when ``backend == "auto"``),
    else the first available in :func:`auto_order`."""
    device = torch.device(device)
    source = f"backend={backend!r}"
    if isinstance(backend, str) and backend == "auto":
        env = settings.get(ENV_BACKEND)
        if env != "auto":
            backend, source = env, f"{ENV_BACKEND}={env!r}"
    if backend != "auto":
        if not isinstance(backend, str) or backend not in _REGISTRY:
            raise ValueError(f"inik.ops.ifm: {source}: unknown backend; expected 'auto' or one of {backend_names()}")
        why = backend_unavailable(backend, device)
        if why is not None:
            raise RuntimeError(f"inik.ops.ifm: {source} cannot run on {device}: {why}")
        return backend
    for name in auto_order(device):
        why = backend_unavailable(name, device)
        if why is None:
            log.debug("IFM on %s: backend %r", device, name)
            return name
        log.debug("IFM on %s: skipping %r (%s)", device, name, why)
    raise RuntimeError(f"inik.ops.ifm: no backend can run on {device}")


def _always(device: torch.device) -> Optional[str]:
    return None


# The package's backends, in the order BACKEND_NAMES lists them.
register_backend(Backend("reference", _ref.ifm_reference, _ref.ifm_reference_backward, _always), auto={"*": 0})
register_backend(Backend("unfused", _ref.ifm_unfused, _ref.ifm_unfused_backward, _always))
register_backend("inik.ops._ext:cpp_backend", name="cpp", auto={"cpu": 20})
register_backend("inik.ops._ext:cuda_backend", name="cuda", auto={"cuda": 20})
register_backend("inik.kernels.ifm_triton:triton_backend", name="triton", auto={"cuda": 30})
# the second Triton design runs when named until a GPU has timed it against the first
register_backend("inik.kernels.ifm_triton2:triton2_backend", name="triton2")


# ---------------------------------------------------------------- registration

def _like(result: Tensor, like: Tensor, backend: str, what: str) -> Tensor:
    """``result`` with the dtype and strides ``torch.empty_like(like)`` has (what the fake promises);
    a RuntimeError naming the backend when it returned something else than like's shape and device
    (a registered backend's bug, which a copy would otherwise broadcast silently)."""
    if not (isinstance(result, Tensor) and result.shape == like.shape and result.device == like.device
            and result.is_floating_point()):
        got = (f"shape {tuple(result.shape)}, {result.dtype} on {result.device}" if isinstance(result, Tensor)
               else type(result).__name__)
        raise RuntimeError(f"inik IFM backend {backend!r}: its {what} returned {got}, expected a floating tensor "
                           f"of shape {tuple(like.shape)} on {like.device}")
    target = torch.empty_like(like)
    if result.dtype == target.dtype and result.stride() == target.stride():
        return result
    return target.copy_(result)


def _runnable(backend: str, device: torch.device) -> Backend:
    """The backend the raw ops run (loaded on first use); a clear error where it cannot run."""
    why = backend_unavailable(backend, device)
    if why is not None:
        raise ValueError(f"inik IFM op: backend {backend!r} cannot run on {device}: {why}")
    return _load(backend)


def _check_op(image, mu, omega, atoms, support, grad=None, needs=None) -> None:
    """What :func:`validate` checks, for the raw ops (called directly, they would
    otherwise hand a backend inconsistent inputs: a wrong-length ``support`` or
    mismatched mu silently gave a wrong result with the pure PyTorch backends), also
    from their fake kernels (SymInt sizes under torch.compile)."""
    validate(image, mu, omega, atoms, support)
    if grad is not None:
        _check(isinstance(grad, Tensor) and grad.shape == image.shape and grad.dtype == image.dtype
               and grad.device == image.device,
               f"grad must match image (shape {tuple(image.shape)}, {image.dtype} on {image.device}), got "
               + (f"shape {tuple(grad.shape)}, {grad.dtype} on {grad.device}" if isinstance(grad, Tensor)
                  else type(grad).__name__))
    if needs is not None:
        _check(len(needs) == 4, f"needs must give four booleans (image, mu, omega, atoms), got {list(needs)}")


@torch.library.custom_op("inik::ifm", mutates_args=())
def _ifm_op(image: Tensor, mu: Tensor, omega: Tensor, atoms: Tensor,
            support: Sequence[int], backend: str) -> Tensor:
    kernels = _runnable(backend, image.device)
    _check_op(image, mu, omega, atoms, support)
    if image.numel() == 0:  # an empty batch, channel or image: nothing for a kernel to do
        return torch.empty_like(image)
    return _like(kernels.forward(image, mu, omega, atoms, list(support)), image, backend, "forward")


@_ifm_op.register_fake
def _(image, mu, omega, atoms, support, backend):
    _check_op(image, mu, omega, atoms, support)
    return torch.empty_like(image)


@torch.library.custom_op("inik::ifm_backward", mutates_args=())
def _ifm_backward_op(grad: Tensor, image: Tensor, mu: Tensor, omega: Tensor, atoms: Tensor,
                     support: Sequence[int], backend: str,
                     needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for (image, mu, omega, atoms); an unneeded one is an empty tensor."""
    kernels = _runnable(backend, image.device)
    _check_op(image, mu, omega, atoms, support, grad, needs)
    inputs = (image, mu, omega, atoms)
    if image.numel() == 0:  # an empty output: every gradient is zero
        return tuple(torch.zeros_like(x) if nd else x.new_empty(0) for x, nd in zip(inputs, needs))
    grads = kernels.backward(grad, image, mu, omega, atoms, list(support), list(needs))
    if not isinstance(grads, (tuple, list)) or len(grads) != 4:
        raise RuntimeError(f"inik IFM backend {backend!r}: its backward returned {type(grads).__name__}, expected "
                           f"four gradients (image, mu, omega, atoms)")
    return tuple(_like(g, x, backend, f"gradient of {name}") if nd else x.new_empty(0)
                 for g, x, nd, name in zip(grads, inputs, needs, ("image", "mu", "omega", "atoms")))


@_ifm_backward_op.register_fake
def _(grad, image, mu, omega, atoms, support, backend, needs):
    _check_op(image, mu, omega, atoms, support, grad, needs)
    return tuple(torch.empty_like(x) if nd else x.new_empty(0)
                 for x, nd in zip((image, mu, omega, atoms), needs))


def _setup_context(ctx, inputs, output):
    image, mu, omega, atoms, support, backend = inputs
    ctx.save_for_backward(image, mu, omega, atoms)
    ctx.support = support
    ctx.backend = backend


def _backward(ctx, grad):
    needs = [bool(x) for x in ctx.needs_input_grad[:4]]
    if not any(needs):
        return None, None, None, None, None, None
    grads = torch.ops.inik.ifm_backward(grad, *ctx.saved_tensors, ctx.support, ctx.backend, needs)
    return (*(g if nd else None for g, nd in zip(grads, needs)), None, None)


_ifm_op.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("inik.ops.ifm has no second derivative: its gradients (taken with "
                       "create_graph=True) cannot be differentiated again")


# Without it, differentiating the gradients fails with torch's advice to register a formula.
_ifm_backward_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


# ---------------------------------------------------------------- public API

def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"inik.ops.ifm: {msg}")


def validate(image: Tensor, mu: Tensor, omega: Tensor, atoms: Tensor,
             support: Optional[Sequence[int]] = None) -> list[int]:
    """Check the IFM's inputs; return the per-scale support sizes (K for every
    scale when ``support`` is None). Raises ValueError/TypeError naming the argument."""
    named = {"image": image, "mu": mu, "omega": omega, "atoms": atoms}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"inik.ops.ifm: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"inik.ops.ifm: {name} must be a floating-point tensor, got dtype {t.dtype}")
    layouts = {"image": "(B, C, H, W)", "mu": "(B, R, H, W)", "omega": "(B, N, H, W)", "atoms": "(R, N, K, K)"}
    for name, t in named.items():
        _check(t.dim() == 4, f"{name} must have 4 dimensions {layouts[name]}, got shape {tuple(t.shape)}")
    dtypes = {name: t.dtype for name, t in named.items()}
    _check(len(set(dtypes.values())) == 1, f"all inputs must share one dtype, got {dtypes}")
    devices = {name: str(t.device) for name, t in named.items()}
    _check(len(set(devices.values())) == 1, f"all inputs must be on one device, got {devices}")
    b, c, h, w = image.shape
    r, n, k, k2 = atoms.shape
    _check(k == k2, f"atoms must be square (R, N, K, K), got shape {tuple(atoms.shape)}")
    _check(k % 2 == 1, f"atoms' kernel size K must be odd, got K={k}")
    _check(k <= MAX_ATOM_SIZE, f"atoms' kernel size K must be at most {MAX_ATOM_SIZE}, got K={k}")
    _check(r >= 1 and n >= 1, f"atoms must have R >= 1 and N >= 1, got shape {tuple(atoms.shape)}")
    for name, t in (("mu", mu), ("omega", omega)):
        _check(t.shape[0] == b and tuple(t.shape[2:]) == (h, w),
               f"{name} must match image's batch and spatial size ({b}, *, {h}, {w}), "
               f"got shape {tuple(t.shape)}")
    _check(mu.shape[1] == r, f"mu has {mu.shape[1]} scales but atoms has R={r}")
    _check(omega.shape[1] == n, f"omega has {omega.shape[1]} atoms but atoms has N={n}")
    if support is None:
        return [k] * r
    if isinstance(support, (Tensor, np.ndarray)):
        support = support.tolist()
    if isinstance(support, (str, bytes)) or not isinstance(support, Sequence) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in support):
        raise TypeError(f"inik.ops.ifm: support must be a sequence of R={r} odd integers, got {support!r}")
    support = [int(s) for s in support]
    _check(len(support) == r, f"support must give one size per scale (R={r}), got {len(support)}")
    for s in support:
        _check(s % 2 == 1 and 1 <= s <= k, f"support sizes must be odd and in [1, K={k}], got {support}")
    return support


def ifm(image: Tensor, mu: Tensor, omega: Tensor, atoms: Tensor, *,
        support: Optional[Sequence[int]] = None, backend: str = "auto") -> Tensor:
    """Apply the IFM: per-pixel inverse kernels from a multi-scale dictionary.

    Args:
        image: (B, C, H, W) floating tensor.
        mu: (B, R, H, W) per-pixel scale weights.
        omega: (B, N, H, W) per-pixel atom weights.
        atoms: (R, N, K, K) dictionary, K odd.
        support: optional R odd sizes; atom r is used only inside its centred
            ``support[r] x support[r]`` window, as if zero outside (its gradient
            is zero there). Lets backends skip the zeros of small scales.
        backend: "auto" or a registered backend (:func:`backend_names`): the
            package's are "reference", "unfused", "cpp", "cuda" and "triton".
            Inside :func:`inik.ops.paths.plain_ops` the reference backend's
            PyTorch operators run inline, whatever ``backend`` says (no op call:
            for exporters that must see standard operators only).

    Returns:
        (B, C, H, W) tensor of the inputs' dtype. Differentiable in all four inputs
        (first-order gradients; no double backward). Any of B, C, H, W may be 0
        (an empty output; the gradients are then zero).
    """
    support = validate(image, mu, omega, atoms, support)
    if paths.plain():
        return _ref.ifm_reference(image, mu, omega, atoms, support)
    name = resolve_backend(image.device, backend)
    return torch.ops.inik.ifm(image, mu, omega, atoms, support, name)
