"""The run's checkpoint files: the resume state (``OUT/last.state.safetensors``) and the
weights (``OUT/last.safetensors``), written atomically and read without running code."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from ..errors import first_line
from ..models import INIKNet
from .config import TrainConfig

STATE_FILE = "last.state.safetensors"
RAW_WEIGHTS_FILE = "last.raw.safetensors"  # with a weight average: the weights the optimiser left
LEGACY_STATE_FILE = "last.state.pt"  # written by inik before the state file held no pickle
_STATE_KEYS = ("iteration", "model", "optimizer", "scheduler", "torch_rng", "config")


def state_path(out: str | Path) -> Path:
    """The run's resume state: ``OUT/last.state.safetensors``, or an older run's
    ``OUT/last.state.pt`` when only that exists."""
    out = Path(out)
    new, old = out / STATE_FILE, out / LEGACY_STATE_FILE
    return old if old.is_file() and not new.is_file() else new


def read_state(out: str | Path) -> dict:
    """What ``--resume`` continues from; FileNotFoundError if absent, ValueError naming
    the file if it cannot be read (truncated, not a checkpoint). Reading never runs
    code: the state file is safetensors plus JSON (:mod:`inik.safestate`), and an
    older run's pickle is read with ``torch.load(weights_only=True)``, which builds
    tensors and plain containers only."""
    from .. import safestate
    out = Path(out)
    path = state_path(out)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {out} (expected {out / STATE_FILE})")
    try:
        if path.name == LEGACY_STATE_FILE:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = safestate.load(path)
    except Exception as exc:  # truncated zip, refused pickle, foreign file: whatever the readers raise
        first = first_line(exc, "no details")
        hint = (" (an older checkpoint holding objects other than tensors, numbers and strings is not read: "
                "nothing in it was run)" if isinstance(exc, pickle.UnpicklingError) else "")
        raise ValueError(f"--resume: cannot read checkpoint {path}: {type(exc).__name__}: {first}{hint}") from None
    missing = [k for k in _STATE_KEYS if k not in state] if isinstance(state, dict) else list(_STATE_KEYS)
    if not missing:
        it, rng = state["iteration"], state["torch_rng"]
        missing = ([] if isinstance(state["config"], dict) else ["a valid config"]) + \
                  ([] if isinstance(it, int) and not isinstance(it, bool) and it >= 0 else ["a valid iteration"]) + \
                  ([] if isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 else ["a valid torch_rng"])
    if missing:
        raise ValueError(f"--resume: cannot read checkpoint {path}: not an inik training checkpoint "
                         f"(missing {', '.join(missing)})")
    return state


def save_checkpoint(out: Path, model: INIKNet, opt, sched, it: int, cfg: TrainConfig, scaler=None,
                    average=None) -> None:
    """``last.state.safetensors`` (everything ``--resume`` needs, weights included;
    with ``--amp fp16`` the GradScaler's loss scale too, with a
    :class:`~inik.training.average.WeightAverage` the average) then
    ``last.safetensors`` (the weights for users: the average when there is one, the
    optimiser's own weights then also in ``last.raw.safetensors``), each replaced
    atomically: a crash at any point leaves a loadable, self-consistent previous
    checkpoint. An older run's ``last.state.pt`` is removed once its successor is
    written."""
    from .. import safestate
    from ..data.io import write_atomically
    state = {"iteration": it, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "config": dataclasses.asdict(cfg)}
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    if average is not None:
        state.update(average.state())
    write_atomically(out / STATE_FILE, safestate.dumps(state))
    (out / LEGACY_STATE_FILE).unlink(missing_ok=True)
    if average is not None:
        model.save(out / RAW_WEIGHTS_FILE)
    else:  # a resumed run that dropped its average: no stale raw weights beside the new ones
        (out / RAW_WEIGHTS_FILE).unlink(missing_ok=True)
    (average.model if average is not None else model).save(out / "last.safetensors")
