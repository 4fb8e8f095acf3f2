"""Choosing an IFM backend: by name, by INIK_IFM_BACKEND, by "auto", and the raw ops
loading the backend they name. What every backend must do (the pure PyTorch ones
included: against the oracle, gradients, opcheck, compile, validation) is checked
by tests/test_ifm_conformance.py."""

import pytest
import torch

import inik
from inik.ops import ifm


def make_inputs(b=2, c=3, h=5, w=7, r=3, n=2, k=5, dtype=torch.float64):
    return [torch.randn(s, dtype=dtype) for s in ((b, c, h, w), (b, r, h, w), (b, n, h, w), (r, n, k, k))]


def test_backend_choice(monkeypatch):
    assert inik.ops.resolve_backend("cpu", "unfused") == "unfused"
    assert "reference" in inik.ops.available_backends("cpu")
    monkeypatch.setenv(inik.ops.ENV_BACKEND, "unfused")
    assert inik.ops.resolve_backend("cpu") == "unfused"
    for bad in ("nope", "CPP", None):  # a bad argument value: ValueError naming it
        with pytest.raises(ValueError, match=f"backend={bad!r}: unknown backend; expected 'auto' or one of"):
            inik.ops.resolve_backend("cpu", bad)
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run on cpu"):
        inik.ops.resolve_backend("cpu", "cuda")
    monkeypatch.setenv(inik.ops.ENV_BACKEND, "nope")  # the variable is named when it is the culprit
    with pytest.raises(ValueError, match="INIK_IFM_BACKEND='nope': unknown backend"):
        ifm(*make_inputs())


def test_raw_ops_load_their_backend_and_reject_unusable_ones():
    """torch.ops.inik.ifm / ifm_backward called directly (no inik.ops.ifm first) load the
    backend they name, and an unknown or unusable one is a ValueError naming it."""
    x, mu, om = torch.rand(1, 3, 6, 7), torch.rand(1, 2, 6, 7), torch.rand(1, 3, 6, 7)
    at = torch.rand(2, 3, 3, 3)
    grads = torch.ops.inik.ifm_backward(torch.ones_like(x), x, mu, om, at, [3, 1], "reference",
                                        [True, False, False, True])
    assert grads[0].shape == x.shape and grads[1].numel() == 0 and grads[3].shape == at.shape
    with pytest.raises(ValueError, match="backend 'bogus'.*unknown backend"):
        torch.ops.inik.ifm(x, mu, om, at, [3, 3], "bogus")
    with pytest.raises(ValueError, match="backend 'cuda' cannot run on cpu"):
        torch.ops.inik.ifm_backward(x, x, mu, om, at, [3, 3], "cuda", [True] * 4)
