"""An exponential moving average of the weights over training (``TrainConfig.ema``).

Single checkpoints of a run with a small batch are noisy samples of the weights
(docs/training.md, "Weight average"); their running average is a steadier model,
and the one a run with ``ema`` saves and validates.
"""

from __future__ import annotations

import copy

import torch

from ..models import INIKNet


class WeightAverage:
    """``average = d * average + (1 - d) * weights`` after every step, with the
    decay ``d = min(decay, n / (n + 1))`` after ``n`` updates: the plain mean of the
    weights of every step so far until ``1 / (1 - decay)`` steps, an exponential
    average over about that many after. The weights it was made from (``--init``'s,
    or those of a resume) drop out at the first update. Buffers are copied."""

    def __init__(self, model: INIKNet, decay: float, updates: int = 0):
        if not 0 < decay < 1:
            raise ValueError(f"ema must be in (0, 1), got {decay}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, updates

    def current_decay(self) -> float:
        return min(self.decay, self.updates / (self.updates + 1))

    @torch.no_grad()
    def update(self, model: INIKNet) -> None:
        weight = 1.0 - self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state(self) -> dict:
        """What a checkpoint keeps: the averaged state dict and the update count."""
        return {"ema": self.model.state_dict(), "ema_updates": self.updates}

    def load(self, state: dict) -> None:
        """Restore from a checkpoint's :meth:`state` (a KeyError/RuntimeError if it has none or another shape)."""
        self.model.load_state_dict(state["ema"])
        updates = state["ema_updates"]
        if not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
            raise ValueError(f"ema_updates must be a count, got {updates!r}")
        self.updates = updates
