"""Checks shared by the tests of the fast IFM backends (cpp, triton)."""

import torch

from inik.ops import ifm

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def close(got, want, dtype, what):
    """Max error within TOL[dtype], relative to the larger of 1 and max |want|."""
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


def check_partial_needs(backend, xs, support, needs):
    """Only the gradients in ``needs`` come back, and they match the reference's."""
    grad_out = torch.randn_like(xs[0])
    _, got = run_grads(backend, xs, support, grad_out, needs)
    _, ref_grads = run_grads("reference", xs, support, grad_out, needs)
    for nd, g, rg in zip(needs, got, ref_grads):
        assert (g is None) == (not nd)
        if nd:
            close(g, rg, torch.float32, "grad")


def check_half_precision(backend, xs, support, dtype):
    """fp16/bf16 output and gradients keep the dtype and match the fp32 reference."""
    xs = list(xs)
    xs[1] = xs[1].float().softmax(1).to(dtype)  # realistic magnitudes, as the model feeds the op
    grad_out = torch.randn_like(xs[0])
    out, got = run_grads(backend, xs, support, grad_out)
    ref_out, ref_grads = run_grads("reference", [x.float() for x in xs], support, grad_out.float())
    assert out.dtype == dtype and all(g.dtype == dtype for g in got)
    close(out, ref_out, dtype, "output")
    for name, g, rg in zip(("image", "mu", "omega", "atoms"), got, ref_grads):
        close(g, rg, dtype, f"d{name}")


def check_compile_keeps_one_opaque_call(xs, support, backend):
    """torch.compile(fullgraph=True) around ifm(..., backend) makes one graph with one
    inik.ifm call, and its output and gradients equal eager's."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(image, mu, omega, atoms):
        return ifm(image * 1.5, mu, omega, atoms, support=support, backend=backend).sin().sum()

    torch._dynamo.reset()
    torch.compile(f, fullgraph=True, backend=counting_backend)(*xs)
    calls = [n for g in graphs for n in g.graph.nodes
             if n.target in (torch.ops.inik.ifm, torch.ops.inik.ifm.default)]
    assert len(graphs) == 1 and len(calls) == 1

    torch._dynamo.reset()
    eager = [x.clone().requires_grad_() for x in xs]
    compiled = [x.clone().requires_grad_() for x in xs]
    want = f(*eager)
    want.backward()
    got = torch.compile(f, fullgraph=True)(*compiled)
    got.backward()
    close(got.detach(), want.detach(), torch.float32, "compiled output")
    for a, b in zip(eager, compiled):
        close(b.grad, a.grad, torch.float32, "compiled grad")
