"""The compiled IFM extension ``inik._C`` (``csrc/``), if it was built.

Importing ``inik._C`` registers two native IFM ops (CPU kernels always, CUDA
kernels when the extension was built with them), the CPU-only fused ConvLSTM
update ``torch.ops.inik.lstm_cell_forward`` / ``lstm_cell_backward`` (see
:mod:`inik.ops.lstm`) and the CPU Winograd convolution
``torch.ops.inik.conv3x3_winograd`` (see :mod:`inik.ops.winograd`). The IFM ops:

* ``torch.ops.inik.ifm_native_forward(image, mu, omega, atoms, support) -> out``
* ``torch.ops.inik.ifm_native_backward(grad, image, mu, omega, atoms, support, needs)
  -> (d_image, d_mu, d_omega, d_atoms)``, an unneeded gradient being an empty tensor.

Both return contiguous tensors of the inputs' dtype (float16/bfloat16 are computed
in float32). :func:`cpp_backend` and :func:`cuda_backend` wrap them as
:class:`inik.ops.ifm.Backend` objects for the backend registry; they raise
ImportError when the extension is not built, so the registry reports the backend
as unavailable.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import settings
from .ifm import MAX_ATOM_SIZE, Backend

try:
    from .. import _C  # noqa: F401  (loading it registers the ops)
except ImportError as exc:  # not built
    _C = None
    _IMPORT_ERROR: Optional[str] = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None

NO_EXTENSION_ENV = "INIK_NO_EXTENSION"


def is_built() -> bool:
    """True when ``inik._C`` was found and loaded."""
    return _C is not None


def left_out_on_purpose() -> bool:
    """Whether ``INIK_NO_EXTENSION`` says the extension was left out (a bad value reads as unset)."""
    return bool(settings.SETTINGS[NO_EXTENSION_ENV].get_or_default())


def build_hint() -> str:
    """Why the extension is missing and how to build it."""
    if left_out_on_purpose():
        return f"{NO_EXTENSION_ENV} is set (the extension was not built on purpose)"
    return (f"inik._C is not built ({_IMPORT_ERROR}); build it with "
            "`pip install -v --no-build-isolation -e .` (torch must be installed first, and a C++ "
            "compiler present: -v shows why a build fails)")


def has_cuda_kernels() -> bool:
    """True when the loaded extension carries CUDA kernels."""
    return is_built() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "inik::ifm_native_forward", "CUDA")


def check_fake(op: str, **tensors) -> None:
    """The checks a fake (meta) kernel of a native op makes before inferring shapes:
    every tensor given (None skipped) on one device. A meta tensor among CPU tensors
    sends the call to the fake kernel, whose empty CPU result would otherwise pass for
    the op's output (the native checks never run)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    torch._check(len(set(devices.values())) <= 1,
                 lambda: f"{op}: all tensors must be on one device, got "
                         + ", ".join(f"{name} on {d}" for name, d in devices.items()))


def forbid_backward(op: str, instead: str) -> None:
    """A native op without a derivative refuses to be differentiated: without this,
    autograd only warns and treats it as constant (its inputs' gradients silently
    miss its contribution)."""
    def backward(ctx, *grads):
        raise RuntimeError(f"torch.ops.{op.replace('::', '.')} has no derivative; {instead}")

    torch.library.register_autograd(op, backward, setup_context=lambda ctx, inputs, output: None)


def _check_ifm_fake(op, image, mu, omega, atoms, support, grad=None) -> None:
    check_fake(op, grad=grad, image=image, mu=mu, omega=omega, atoms=atoms)
    torch._check(image.dim() == 4 and mu.dim() == 4 and omega.dim() == 4 and atoms.dim() == 4,
                 lambda: f"{op}: inputs must be 4-D")
    dtypes = {t.dtype for t in (image, mu, omega, atoms) + (() if grad is None else (grad,))}
    torch._check(len(dtypes) == 1 and next(iter(dtypes)).is_floating_point,
                 lambda: f"{op}: inputs must share one floating-point dtype, got {sorted(map(str, dtypes))}")
    # the shapes the kernels check (csrc/ifm_host.h), so tracing fails where running would
    b, _, h, w = image.shape
    r, n, k, k2 = atoms.shape
    torch._check(k == k2 and k % 2 == 1,
                 lambda: f"{op}: atoms must be (R, N, K, K) with K odd, got {list(atoms.shape)}")
    torch._check(k <= MAX_ATOM_SIZE, lambda: f"{op}: atoms' kernel size K must be at most {MAX_ATOM_SIZE}, got K={k}")
    torch._check(r >= 1 and n >= 1, lambda: f"{op}: atoms must have R >= 1 and N >= 1, got {list(atoms.shape)}")
    torch._check(tuple(mu.shape) == (b, r, h, w),
                 lambda: f"{op}: mu must be (B, R, H, W) = {(b, r, h, w)}, got {list(mu.shape)}")
    torch._check(tuple(omega.shape) == (b, n, h, w),
                 lambda: f"{op}: omega must be (B, N, H, W) = {(b, n, h, w)}, got {list(omega.shape)}")
    torch._check(len(support) == atoms.shape[0], lambda: f"{op}: support must give one size per scale")
    torch._check(all(s % 2 == 1 and 1 <= s <= k for s in support),
                 lambda: f"{op}: support sizes must be odd and in [1, K={k}], got {list(support)}")


if _C is not None:
    @torch.library.register_fake("inik::ifm_native_forward")
    def _(image, mu, omega, atoms, support, isa=""):
        _check_ifm_fake("ifm_native_forward", image, mu, omega, atoms, support)
        return image.new_empty(image.shape)

    @torch.library.register_fake("inik::ifm_native_backward")
    def _(grad, image, mu, omega, atoms, support, needs, isa=""):
        _check_ifm_fake("ifm_native_backward", image, mu, omega, atoms, support, grad=grad)
        torch._check(grad.shape == image.shape, lambda: "ifm_native_backward: grad must match image")
        torch._check(len(needs) == 4, lambda: f"ifm_native_backward: needs must give 4 booleans, got {list(needs)}")
        return tuple(x.new_empty(x.shape) if nd else x.new_empty(0)
                     for x, nd in zip((image, mu, omega, atoms), needs))

    for _op in ("inik::ifm_native_forward", "inik::ifm_native_backward"):
        forbid_backward(_op, "differentiate inik.ops.ifm (torch.ops.inik.ifm) instead")


def cpu_isa() -> str:
    """The instruction set asked of the native CPU kernels: ``INIK_CPU_ISA`` ("" for the
    best the CPU has), passed to each op as its ``isa`` argument."""
    return settings.get("INIK_CPU_ISA")


ISAS = ("generic", "avx2", "avx512", "avx512_bf16")  # lesser to greater


def cpu_isas() -> list[str]:
    """The instruction sets the native CPU kernels can run here: the best the CPU has and
    every lesser one (each can be asked for with ``INIK_CPU_ISA``, to test or time it)."""
    if _C is None:
        return []
    return list(ISAS[:ISAS.index(torch.ops.inik.conv3x3_winograd_isa("")) + 1])


def _isa_for(t: Tensor) -> str:
    return cpu_isa() if t.device.type == "cpu" else ""  # a GPU call does not read the CPU setting


def _forward(image: Tensor, mu: Tensor, omega: Tensor, atoms: Tensor, support: Sequence[int]) -> Tensor:
    return torch.ops.inik.ifm_native_forward(image, mu, omega, atoms, list(support), _isa_for(image))


def _backward(grad, image, mu, omega, atoms, support, needs):
    grads = torch.ops.inik.ifm_native_backward(grad, image, mu, omega, atoms, list(support),
                                               [bool(x) for x in needs], _isa_for(image))
    return tuple(g if nd else None for g, nd in zip(grads, needs))


def _require_built() -> None:
    if _C is None:
        raise ImportError(build_hint())


def cpp_backend() -> Backend:
    """The C++ CPU kernels as a Backend (ImportError when ``inik._C`` is not built)."""
    _require_built()

    def unavailable(device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got device {device}"
        return None

    return Backend("cpp", _forward, _backward, unavailable)


def cuda_backend() -> Backend:
    """The CUDA kernels as a Backend (ImportError when ``inik._C`` is not built)."""
    _require_built()

    def unavailable(device: torch.device) -> Optional[str]:
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got device {device}"
        if not has_cuda_kernels():
            return ("inik._C was built without CUDA kernels (rebuild with INIK_BUILD_CUDA=1 or with a "
                    "GPU visible)")
        return None

    return Backend("cuda", _forward, _backward, unavailable)
