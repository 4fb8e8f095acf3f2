"""Test-wide settings.

Without a GPU, Triton kernels run under the interpreter on CPU tensors; the
variable must be set before triton (or inik) is imported.
"""

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
