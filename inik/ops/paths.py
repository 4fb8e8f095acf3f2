"""One switch over the ways the model's ops compute: their fast paths, or PyTorch operators only.

By default each op picks its fastest path: the native Winograd convolution, the
convolution with recomputed borders, the fused ConvLSTM cell, the IFM as the
registered op ``torch.ops.inik.ifm`` on the best backend. Inside :func:`plain_ops`
every one of them runs standard PyTorch operators instead - ``F.pad(mode="reflect")``
then ``conv2d``, the cell's sigmoid and tanh, the IFM as the ``reference``
backend's per-scale convolutions and weighted sum, traced inline - the same
function, for exporters whose output must hold standard operators only (ONNX,
AOTInductor; :mod:`inik.export`). The switch is process-wide, like the
``INIK_*`` settings the ops read.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

_plain = False


def plain() -> bool:
    """Whether the ops run PyTorch operators only (inside :func:`plain_ops`)."""
    return _plain


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Run the model's ops as PyTorch operators only while the block runs (see the module doc)."""
    global _plain
    before, _plain = _plain, True
    try:
        yield
    finally:
        _plain = before
