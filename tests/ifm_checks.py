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


def case_inputs(case, dtype=torch.float32, device="cpu"):
    """([image, mu, omega, atoms], support) of a (B, C, H, W, R, N, K, support) case:
    standard normal values drawn in float64, then cast."""
    b, c, h, w, r, n, k, support = case
    shapes = ((b, c, h, w), (b, r, h, w), (b, n, h, w), (r, n, k, k))
    return [torch.randn(s, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes], support


def assert_matches_reference(backend, xs, support):
    """Output and all four gradients of ``backend`` against the reference (fp32 tolerances)."""
    grad_out = torch.randn_like(xs[0])
    out, grads = run_grads(backend, xs, support, grad_out)
    ref_out, ref_grads = run_grads("reference", xs, support, grad_out)
    close(out, ref_out, torch.float32, "output")
    for name, g, rg in zip(("image", "mu", "omega", "atoms"), grads, ref_grads):
        close(g, rg, torch.float32, f"d{name}")


def assert_image_grad_nans_as_reference(backend, xs, support):
    """The image gradient of ``backend`` is NaN at exactly the pixels where the reference's is."""
    grad_out = torch.randn_like(xs[0])
    needs = (True, False, False, False)
    got = run_grads(backend, xs, support, grad_out, needs=needs)[1][0]
    want = run_grads("reference", xs, support, grad_out, needs=needs)[1][0]
    assert torch.equal(got.isnan(), want.isnan()), (got.isnan().nonzero(), want.isnan().nonzero())


def ifm_oracle(image, mu, omega, atoms, support=None):
    """The IFM by naive loops straight from its definition (docs/ARCHITECTURE.md section 2),
    in float64; atom r is zero outside its centred support[r] x support[r] window. Tiny sizes."""
    b, c, h, w = image.shape
    r_, n_, k, _ = atoms.shape
    support = support or [k] * r_
    atoms = atoms.double().clone()
    for r, s in enumerate(support):
        lo = (k - s) // 2
        window = torch.zeros((k, k), dtype=torch.bool)
        window[lo:lo + s, lo:lo + s] = True
        atoms[r, :, ~window] = 0
    image, mu, omega = image.double(), mu.double(), omega.double()
    half = k // 2
    out = torch.zeros((b, c, h, w), dtype=torch.float64)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                kern = torch.zeros((k, k), dtype=torch.float64)
                for r in range(r_):
                    for n in range(n_):
                        kern += mu[bi, r, i, j] * omega[bi, n, i, j] * atoms[r, n]
                for u in range(k):
                    for v in range(k):
                        p, q = i + u - half, j + v - half
                        if 0 <= p < h and 0 <= q < w:
                            out[bi, :, i, j] += kern[u, v] * image[bi, :, p, q]
    return out


def assert_models_agree(backend, other, size=16, **tol):
    """INIKNet(width=8) with the same weights gives the same output on either IFM backend."""
    import inik
    torch.manual_seed(0)
    a = inik.INIKNet(width=8, ifm_backend=backend).eval()
    b = inik.INIKNet(width=8, ifm_backend=other).eval()
    b.load_state_dict(a.state_dict())
    y = torch.rand(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(y), b(y), **tol)
