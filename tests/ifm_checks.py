"""Helpers shared by the IFM backend tests (the conformance suite and the
backend-specific files)."""

import torch

from inik.ops import ifm

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def close(got, want, dtype, what):
    """Same shape, and max error within TOL[dtype], relative to the larger of 1 and max |want|."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    tol = TOL[dtype]
    scale = want.abs().max().clamp_min(1.0)
    err = (got.double().cpu() - want.double().cpu()).abs().max()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} * {scale:.3g}"


def run_grads(backend, xs, support, grad_out, needs=(True, True, True, True)):
    """(output, [d_image, d_mu, d_omega, d_atoms]) of ifm(..., backend) for ``grad_out``;
    a gradient not in ``needs`` is None."""
    leaves = [x.detach().clone().requires_grad_(nd) for x, nd in zip(xs, needs)]
    out = ifm(*leaves, support=support, backend=backend)
    out.backward(grad_out)
    return out.detach(), [x.grad for x in leaves]
