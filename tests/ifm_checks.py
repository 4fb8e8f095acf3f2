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
