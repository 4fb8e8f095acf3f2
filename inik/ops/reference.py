"""Pure PyTorch implementations of the IFM: the reference and the authors' unfused form.

Both take already-validated inputs (see :mod:`inik.ops.ifm`):

* ``image`` (B, C, H, W), ``mu`` (B, R, H, W), ``omega`` (B, N, H, W),
  ``atoms`` (R, N, K, K) with K odd, all of one floating dtype and device;
* ``support``: R odd sizes ``s_r <= K``; atom ``r`` is read only inside its
  centred ``s_r x s_r`` window (the op behaves as if it were zero outside,
  and the atom gradient is zero there).

Half-precision inputs are computed in float32 and the results cast back.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_aten = torch.ops.aten


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _upcast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dt = _compute_dtype(tensors[0].dtype)
    return [t.to(dt) for t in tensors]


def _window(atoms_r: torch.Tensor, size: int) -> torch.Tensor:
    """The centred ``size x size`` window of (N, K, K) atoms, as a (N, 1, s, s) conv weight."""
    k = atoms_r.shape[-1]
    lo = (k - size) // 2
    return atoms_r[:, lo:lo + size, lo:lo + size].unsqueeze(1)


def _scale_response(y_bc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Correlate every (b, c) plane with the N atoms of one scale: (B*C, N, H, W)."""
    return F.conv2d(y_bc, weight, padding=weight.shape[-1] // 2)


def ifm_reference(image, mu, omega, atoms, support: Sequence[int]):
    """Reference forward, one scale at a time.

    Peak extra memory is one scale's responses, (B*C, N, H, W) - never the
    (B, R, N*C, H, W) tensor of the unfused form.
    """
    out_dtype = image.dtype
    image, mu, omega, atoms = _upcast(image, mu, omega, atoms)
    b, c, h, w = image.shape
    y_bc = image.reshape(b * c, 1, h, w)
    out = torch.zeros_like(image)
    om = omega.unsqueeze(1)  # (B, 1, N, H, W)
    for r, s in enumerate(support):
        resp = _scale_response(y_bc, _window(atoms[r], s)).view(b, c, -1, h, w)
        out += mu[:, r:r + 1] * (resp * om).sum(2)
    return out.to(out_dtype)


def ifm_reference_backward(grad, image, mu, omega, atoms, support: Sequence[int], needs):
    """Gradients of :func:`ifm_reference` for (image, mu, omega, atoms).

    ``needs`` is four booleans; a gradient not needed is returned as None.
    Works scale by scale with the same peak memory as the forward.
    """
    dtypes = [t.dtype for t in (image, mu, omega, atoms)]
    grad, image, mu, omega, atoms = _upcast(grad, image, mu, omega, atoms)
    b, c, h, w = image.shape
    n = omega.shape[1]
    k = atoms.shape[-1]
    y_bc = image.reshape(b * c, 1, h, w)
    om = omega.unsqueeze(1)
    g_image = torch.zeros_like(image) if needs[0] else None
    g_mu = torch.empty_like(mu) if needs[1] else None
    g_omega = torch.zeros_like(omega) if needs[2] else None
    g_atoms = torch.zeros_like(atoms) if needs[3] else None
    for r, s in enumerate(support):
        weight = _window(atoms[r], s)
        mu_r = mu[:, r:r + 1]
        if needs[1] or needs[2]:
            resp = _scale_response(y_bc, weight).view(b, c, n, h, w)
            if needs[1]:
                g_mu[:, r] = (grad.unsqueeze(2) * resp * om).sum((1, 2))
            if needs[2]:
                g_omega += (grad * mu_r).unsqueeze(2).mul(resp).sum(1)
            del resp
        if needs[0] or needs[3]:
            # d out / d resp[b, c, n] = grad[b, c] * mu[b, r] * omega[b, n]
            g_resp = ((grad * mu_r).unsqueeze(2) * om).reshape(b * c, n, h, w)
            gi, gw, _ = _aten.convolution_backward(
                g_resp, y_bc, weight, None, [1, 1], [s // 2, s // 2], [1, 1],
                False, [0, 0], 1, [needs[0], needs[3], False])
            if needs[0]:
                g_image += gi.view(b, c, h, w)
            if needs[3]:
                lo = (k - s) // 2
                g_atoms[r, :, lo:lo + s, lo:lo + s] = gw.squeeze(1)
    grads = (g_image, g_mu, g_omega, g_atoms)
    return tuple(None if g is None else g.to(dt) for g, dt in zip(grads, dtypes))


def _masked_atoms(atoms: torch.Tensor, support: Sequence[int]) -> torch.Tensor:
    k = atoms.shape[-1]
    mask = torch.zeros((len(support), 1, k, k), dtype=atoms.dtype, device=atoms.device)
    for r, s in enumerate(support):
        lo = (k - s) // 2
        mask[r, :, lo:lo + s, lo:lo + s] = 1
    return atoms * mask


def _unfused_responses(y_bc, atoms, support, b, h, w):
    """All R*N responses at once, (B, R, C, N, H, W), each atom at its own size."""
    return torch.stack([_scale_response(y_bc, _window(atoms[r], s)).view(b, -1, atoms.shape[1], h, w)
                        for r, s in enumerate(support)], dim=1)


def ifm_unfused(image, mu, omega, atoms, support: Sequence[int]):
    """The authors' algorithm: correlate the image with all R*N atoms (each at its
    own size), keep the stacked (B, R, N*C, H, W) responses, then take the
    mu-omega weighted sum. Kept as the baseline every benchmark compares against.
    """
    out_dtype = image.dtype
    image, mu, omega, atoms = _upcast(image, mu, omega, atoms)
    b, c, h, w = image.shape
    responses = _unfused_responses(image.reshape(b * c, 1, h, w), atoms, support, b, h, w)
    weights = mu.unsqueeze(2) * omega.unsqueeze(1)  # (B, R, N, H, W)
    return (responses * weights.unsqueeze(2)).sum((1, 3)).to(out_dtype)


def ifm_unfused_backward(grad, image, mu, omega, atoms, support: Sequence[int], needs):
    """The backward autograd runs for :func:`ifm_unfused`: it holds all responses
    and their gradients, (B, R, C, N, H, W) each, as the authors' training does."""
    dtypes = [t.dtype for t in (image, mu, omega, atoms)]
    grad, image, mu, omega, atoms = _upcast(grad, image, mu, omega, atoms)
    b, c, h, w = image.shape
    n, k = atoms.shape[1], atoms.shape[-1]
    y_bc = image.reshape(b * c, 1, h, w)
    responses = _unfused_responses(y_bc, atoms, support, b, h, w)
    g_resp = grad[:, None, :, None] * (mu.unsqueeze(2) * omega.unsqueeze(1)).unsqueeze(2)
    g_image = torch.zeros_like(image) if needs[0] else None
    g_atoms = torch.zeros_like(atoms) if needs[3] else None
    g_mu = (grad[:, None, :, None] * responses * omega[:, None, None]).sum((2, 3)) if needs[1] else None
    g_omega = (grad[:, None, :, None] * responses * mu[:, :, None, None]).sum((1, 2)) if needs[2] else None
    if needs[0] or needs[3]:
        for r, s in enumerate(support):
            gi, gw, _ = _aten.convolution_backward(
                g_resp[:, r].reshape(b * c, n, h, w), y_bc, _window(atoms[r], s), None, [1, 1],
                [s // 2, s // 2], [1, 1], False, [0, 0], 1, [needs[0], needs[3], False])
            if needs[0]:
                g_image += gi.view(b, c, h, w)
            if needs[3]:
                lo = (k - s) // 2
                g_atoms[r, :, lo:lo + s, lo:lo + s] = gw.squeeze(1)
    grads = (g_image, g_mu, g_omega, g_atoms)
    return tuple(None if g is None else g.to(dt) for g, dt in zip(grads, dtypes))
