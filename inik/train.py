"""``inik train``: INIKNet training with the paper's protocol (docs/ARCHITECTURE.md section 4).

One config system: :class:`TrainConfig` (defaults = the paper's schedule), read
from a JSON or TOML file with ``--config`` and overridden by command-line flags.

Determinism: the n-th training sample of the whole run is a pure function of
(seed, n) - see :class:`SampleStream` - so ``--resume`` continues exactly where
an interrupted run stopped, and each DDP rank draws its own samples.
Checkpoints: ``OUT/last.safetensors`` (weights + model config, loadable by
``inik.INIKNet.load``) and ``OUT/last.state.safetensors`` (optimiser, scheduler,
RNG, fp16 loss scale, iteration; tensors and JSON, nothing that runs code when
read: :mod:`inik.safestate`), both written atomically. Ctrl-C stops a
single-process run after the step it is in and saves a checkpoint there (a second
Ctrl-C aborts); in the last step it lets the run finish as usual.

Logs (rank 0 only): ``OUT/log.csv`` gets a row every ``log_every`` iterations, at
each validation and at the end: ``loss`` and ``psnr`` (training PSNR) are the
means over the iterations since the previous row (since the resume point after
``--resume``, so a resumed run logs what the uninterrupted one did when it resumes
at a multiple of ``log_every``), ``lr`` the rate the row's iteration used,
``val_psnr`` the validation PSNR at validation rows. With the ``tensorboard``
package (``pip install 'inik[tensorboard]'``), the same rows go to TensorBoard
event files in ``OUT`` itself (TensorBoard names a run by its folder, so
``tensorboard --logdir runs`` lists each training run by its name; and OUT keeps
holding files only), by iteration: ``loss/total`` and ``loss/<term>`` (each
term's unweighted value summed over the three levels, see :class:`inik.losses.INIKLoss`),
``psnr/train``, ``lr``; at validations ``psnr/val``, ``ssim/val`` and images
``val/<i>`` (blurry | output | sharp, at most 128 px high). A resumed run adds an
event file whose first event drops what the earlier ones logged past the resume point.
``inik plot OUT`` draws log.csv's curves to a PNG.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import first_line
from .models import INIKNet, INIKNetConfig
from .models.iniknet import UNRECORDED_REVISION

DATASETS = ("synthetic", "folder", "dpdd", "lfdof")
LOSS_WEIGHTS = ("mse_weight", "freq_weight", "lpips_weight", "vgg_weight")
MAX_LOSS_WEIGHT = 1000.0
# Seeds run from 0 (numpy's generators take no negative seed) to 2**32 - 1: the paired
# datasets' permutation seed, seed * 1_000_003 + epoch, must stay below torch's 2**64.
MAX_SEED = 2**32
# Memory is batch * crop**2: bounded before anything is allocated (a config file is data).
MAX_CROP = 4096
MAX_BATCH = 1024
log = logging.getLogger("inik")


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults: the paper's schedule on DPDD-like data."""

    dataset: str = "synthetic"        # synthetic | folder | dpdd | lfdof
    data: Optional[str] = None        # dataset root; for synthetic: optional folder of sharp photos
    val_data: Optional[str] = None    # a folder with source/ and target/ for validation (else held-out synthetic)
    iters: int = 400_000
    batch: int = 4
    crop: int = 256
    lr: float = 2e-4
    lr_step: int = 100_000            # halve the learning rate every lr_step iterations
    lr_gamma: float = 0.5
    mse_weight: float = 1.0
    freq_weight: float = 0.1
    lpips_weight: float = 0.1
    vgg_weight: float = 0.0           # the authors' extra VGG-19 feature term (off, as in the paper)
    pretrained_backbones: bool = True  # False: random LPIPS/VGG backbones (wiring tests only)
    model: dict = field(default_factory=dict)  # INIKNetConfig fields
    init: Optional[str] = None        # INIKNet weights to start from (fine-tuning); kept (not reloaded) on --resume
    init_other_revision: bool = False  # --init may be weights of another network revision (a warm start)
    amp: str = "auto"                 # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    channels_last: bool = True
    seed: int = 0
    workers: int = 2
    log_every: int = 10
    val_every: int = 1000
    val_images: int = 8
    ckpt_every: int = 500
    max_blur: float = 12.0            # synthetic: largest circle-of-confusion radius, pixels
    photo_prob: float = 0.8           # synthetic with photos: fraction of photo scenes (rest procedural)
    out: str = "runs/inik"

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset != "synthetic" and not self.data:
            raise ValueError(f"dataset {self.dataset!r} needs --data DIR")
        if self.crop % 16 or not 32 <= self.crop <= MAX_CROP:
            raise ValueError(f"crop must be a multiple of 16 from 32 to {MAX_CROP}, got {self.crop}")
        if self.batch > MAX_BATCH:
            raise ValueError(f"batch must be at most {MAX_BATCH}, got {self.batch}")
        for name in ("iters", "batch", "lr_step", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        for name in _FLOAT_FIELDS:  # NaN and inf pass the comparisons below unnoticed (NaN) or fail later (inf)
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("lr", "max_blur"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (*LOSS_WEIGHTS, "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, most in (("lr", 1.0), ("max_blur", 64.0), *((w, MAX_LOSS_WEIGHT) for w in LOSS_WEIGHTS)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be <= {most:g}, got {getattr(self, name)}")
        if not any(getattr(self, name) > 0 for name in LOSS_WEIGHTS):
            raise ValueError(f"at least one loss weight ({', '.join(LOSS_WEIGHTS)}) must be > 0; all are 0")
        if not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if not 0 <= self.photo_prob <= 1:
            raise ValueError(f"photo_prob must be in [0, 1], got {self.photo_prob}")
        if self.val_images < 1:
            raise ValueError(f"val_images must be >= 1, got {self.val_images}")
        network = INIKNetConfig(**self.model)  # validates the model fields early
        if "revision" not in self.model:  # recorded, so that a resume builds the same network
            self.model = {**self.model, "revision": network.revision}


_FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if str(f.type) == "float")

# The type each TrainConfig field takes from a config file (ints are accepted for floats).
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "Optional[str]": (str, type(None)),
                "bool": (bool,), "dict": (dict,)}


def _check_types(values: dict, where: str) -> dict:
    """``values`` with each key's value checked against its TrainConfig field type."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        allowed = _FIELD_TYPES[str(types[key])]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            wanted = str(types[key]).replace("Optional[str]", "a string or null")
            raise ValueError(f"{where}: key {key!r} must be {wanted}"
                             f", got {value!r}")
        if float in allowed and not isinstance(value, bool):
            try:
                values[key] = float(value)
            except OverflowError:  # an integer too large for a float
                raise ValueError(f"{where}: key {key!r} must be a finite number, got {value!r}") from None
    return values


def read_config_file(path: str) -> dict:
    """The TrainConfig fields a JSON/TOML file sets, checked by name and type."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: no file {path!r}")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib
            values = tomllib.loads(p.read_text())
        else:
            values = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # json and tomllib decode errors are ValueErrors
        raise ValueError(f"--config {path}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: "
                         f"{exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: must hold an object of TrainConfig fields, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return _check_types(values, f"--config {path}")


def load_config(path: Optional[str], overrides: dict) -> TrainConfig:
    """A TrainConfig from a JSON/TOML file (optional) plus overrides (None values ignored)."""
    values = read_config_file(path) if path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


# What may change when a run is resumed: how long it runs, how often it logs and saves,
# where its data lives and how many loader workers. --init is not among them: a resumed
# run starts from its checkpoint, and its config keeps the weights it was started from.
RESUMABLE = ("iters", "log_every", "val_every", "ckpt_every", "workers", "data", "val_data", "out")


def saved_settings(config: dict) -> dict:
    """The settings of a run as saved in its checkpoint's ``config``: each field added
    to TrainConfig since it was saved at its default (which keeps what older runs
    did), and the model's revision filled in (a run saved before revisions existed
    trained revision 1)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    return {**defaults, **config, "model": {"revision": UNRECORDED_REVISION, **(config.get("model") or {})}}


def resumed_config(saved: dict, requested: dict, where: str) -> TrainConfig:
    """The config of a resumed run: the one it was saved with, updated by ``requested``
    (the fields set by --config and flags) where :data:`RESUMABLE` allows; a request
    to change anything else is a ValueError naming it."""
    values = saved_settings(saved)
    # a request that does not name a revision asks for the run's
    if isinstance(requested.get("model"), dict) and "revision" not in requested["model"]:
        requested = {**requested, "model": {**requested["model"], "revision": values["model"]["revision"]}}
    for key, value in requested.items():
        if value is None or value == values.get(key):
            continue
        if key not in RESUMABLE:
            raise ValueError(f"--resume: {key} = {value!r} differs from the run's {saved.get(key)!r} ({where}); a "
                             f"resumed run keeps its settings (it may change {', '.join(RESUMABLE)}) - start a new "
                             f"run with --init to change them")
        values[key] = value
    return TrainConfig(**values)


# ------------------------------------------------------------------ data

class SampleStream(torch.utils.data.Dataset):
    """Sample n of the run (n = 0, 1, 2, ...) as (blurry, sharp) (3, S, S) tensors.

    Paired datasets: epoch e = n // len, a permutation seeded by (seed, e), and the
    dataset's own augmentation seeded by (seed, e, index). Synthetic: the
    generator's sample for seed (seed, n).
    """

    def __init__(self, source, seed: int):
        self.source, self.seed = source, seed
        self.paired = hasattr(source, "set_epoch")

    def __len__(self):  # indexed by sample number, not by epoch
        return sys.maxsize

    def __getitem__(self, n: int):
        if not self.paired:
            return self.source[n]
        size = len(self.source)
        epoch, pos = divmod(int(n), size)
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        self.source.set_epoch(epoch)
        return self.source[int(perm[pos])]


class _BatchSampler(torch.utils.data.Sampler):
    """Lists of sample numbers, one list per iteration from ``start``, for this rank."""

    def __init__(self, start: int, iters: int, batch: int, rank: int, world: int):
        self.start, self.iters, self.batch, self.rank, self.world = start, iters, batch, rank, world

    def __iter__(self):
        for it in range(self.start, self.iters):
            first = (it * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))

    def __len__(self):
        return max(0, self.iters - self.start)


def _synthetic(cfg: TrainConfig, held_out: bool, seed: int):
    """Synthetic pairs from cfg.data's sharp photos (90/10 train/held-out split by
    file) or, without photos, procedural scenes."""
    from .data.synthetic import SyntheticConfig, SyntheticDefocusDataset, select_photos
    photos = None
    if cfg.dataset == "synthetic" and cfg.data:
        try:
            photos = select_photos(cfg.data, "held-out" if held_out else "train")
        except ValueError as exc:
            raise ValueError(f"--data {exc} for synthetic training") from None
        if held_out and not photos:  # one photo: nothing to hold out
            log.warning("--data %s has one photo: validating on procedural scenes", cfg.data)
            photos = None
    config = SyntheticConfig(size=cfg.crop, max_radius=cfg.max_blur, photo_prob=cfg.photo_prob)
    return SyntheticDefocusDataset(photos, config,
                                   length=2**62, seed=seed)


def build_source(cfg: TrainConfig, seed: int):
    """The training dataset named by ``cfg.dataset``."""
    if cfg.dataset == "synthetic":
        return _synthetic(cfg, held_out=False, seed=seed)
    from .data import pairs
    layout = {"folder": "auto", "dpdd": "dpdd", "lfdof": "lfdof"}[cfg.dataset]
    found = pairs.find_pairs(cfg.data, layout=layout, split="train")
    # (every image is checked against the crop here, from the sizes pairing read)
    return pairs.PairedImageDataset(found, crop=cfg.crop, augment=True, seed=seed)


def validation_pairs(cfg: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: the val folder's images, or held-out synthetic samples
    (held-out photos, seeds disjoint from training)."""
    if cfg.val_data:
        from .data import pairs
        ds = pairs.PairedImageDataset(pairs.find_pairs(cfg.val_data, split="val"), crop=None, augment=False)
        return [ds[i] for i in range(min(len(ds), cfg.val_images))]
    ds = _synthetic(cfg, held_out=True, seed=cfg.seed + 7_777_777)
    return [ds[i] for i in range(cfg.val_images)]


# ------------------------------------------------------------------ checkpoints

STATE_FILE = "last.state.safetensors"
LEGACY_STATE_FILE = "last.state.pt"  # written by inik before the state file held no pickle
_STATE_KEYS = ("iteration", "model", "optimizer", "scheduler", "torch_rng", "config")


def state_path(out: Path) -> Path:
    """The run's resume state: ``OUT/last.state.safetensors``, or an older run's
    ``OUT/last.state.pt`` when only that exists."""
    new, old = out / STATE_FILE, out / LEGACY_STATE_FILE
    return old if old.is_file() and not new.is_file() else new


def read_state(out: Path) -> dict:
    """What ``--resume`` continues from; FileNotFoundError if absent, ValueError naming
    the file if it cannot be read (truncated, not a checkpoint). Reading never runs
    code: the state file is safetensors plus JSON (:mod:`inik.safestate`), and an
    older run's pickle is read with ``torch.load(weights_only=True)``, which builds
    tensors and plain containers only."""
    from . import safestate
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


def save_checkpoint(out: Path, model: INIKNet, opt, sched, it: int, cfg: TrainConfig, scaler=None) -> None:
    """``last.state.safetensors`` (everything ``--resume`` needs, weights included;
    with ``--amp fp16`` the GradScaler's loss scale too) then ``last.safetensors``
    (the weights for users), each replaced atomically: a crash at any point leaves a
    loadable, self-consistent previous checkpoint. An older run's ``last.state.pt``
    is removed once its successor is written."""
    from . import safestate
    from .data.io import write_atomically
    state = {"iteration": it, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "config": dataclasses.asdict(cfg)}
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    write_atomically(out / STATE_FILE, safestate.dumps(state))
    (out / LEGACY_STATE_FILE).unlink(missing_ok=True)
    model.save(out / "last.safetensors")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = F.mse_loss(x.clamp(0, 1).float(), y.float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ------------------------------------------------------------------ loop

def _ddp_env() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


def train_step(net, loss_fn, opt, scaler, blurry, sharp, amp: Optional[torch.dtype]):
    """One optimisation step: the three levels' outputs (under autocast to ``amp``
    when given), the loss, backward, optimiser step. Returns (loss, outputs)."""
    with torch.autocast(blurry.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outputs = net(blurry, levels=True)
    loss, _ = loss_fn(outputs, sharp)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss, outputs


def init_weights(model: INIKNet, path: str, other_revision: bool = False) -> None:
    """Load the weights of an INIKNet file into ``model`` (``--init``: fine-tuning).

    The file's architecture must match the model's; options that only change
    how the weights are used (``zero_mean_atoms``, ``cascade``) may differ (a
    warning says so: the start then computes another function), and with
    ``other_revision`` the network revision too: the revisions share their
    tensors' layout, but not their function, so such a start is a warm start
    that first loses quality (stage 3's revision-1 weights read as revision 2:
    docs/MODEL_CARD.md gives the drop) and regains it in training
    (docs/MODEL_CARD.md, stage 4).
    """
    stored = INIKNet.read_config(path)  # clear errors for a missing or foreign file
    usage = ("zero_mean_atoms", "cascade")
    mine = dataclasses.replace(model.config, **{k: getattr(stored, k) for k in usage})
    if other_revision:
        mine = dataclasses.replace(mine, revision=stored.revision)
    if stored != mine:
        hint = (f" (set \"model\": {{\"revision\": {stored.revision}}} to fine-tune it as the network it was "
                f"trained as, or \"init_other_revision\": true to warm-start revision {model.config.revision} "
                f"from it)" if dataclasses.replace(mine, revision=stored.revision) == stored else "")
        raise ValueError(f"--init {path}: its architecture {stored} does not match the model's "
                         f"{model.config}{hint}")
    for k in usage:
        if getattr(stored, k) != getattr(model.config, k):
            log.warning("--init %s was trained with %s=%s; this run uses %s=%s (a warm start: same tensors, "
                        "another function)", path, k, getattr(stored, k), k, getattr(model.config, k))
    # a ValueError naming the file for missing, renamed or misshapen tensors; the cascade's gates
    # are new to a file without it (they start at 0: the file's function)
    model.load_weights(path, optional=("cascade_gate",))


def train(cfg: TrainConfig, resume: bool = False, device: Optional[str] = None,
          progress: bool = True) -> INIKNet:
    """Run (or resume) training into ``cfg.out``; returns the trained model."""
    from .losses import INIKLoss
    rank, world = _ddp_env()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    state = None
    if resume:
        state = read_state(out)
        saved = saved_settings(state["config"])
        changed = [k for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE and saved.get(k) != v]
        if changed:
            raise ValueError(f"--resume: the run in {out} was saved with other settings ({', '.join(changed)}): "
                             f"resume it with its own (inik.train.resumed_config) or start a new run")
        if cfg.iters <= state["iteration"]:
            raise ValueError(f"--resume: the run in {out} is at iteration {state['iteration']} already; ask for more "
                             f"with --iters (got {cfg.iters})")
    elif any((out / f).exists() for f in (STATE_FILE, LEGACY_STATE_FILE, "last.safetensors")):
        raise FileExistsError(f"--out {out} holds a run already: pass --resume to continue it, or choose another "
                              f"--out (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = INIKNet(INIKNetConfig(**cfg.model)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    amp = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    start = 0
    if cfg.init and not resume:
        init_weights(model, cfg.init, other_revision=cfg.init_other_revision)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if state.get("scaler") and scaler.is_enabled():  # fp16's loss scale (checkpoints before it had none)
                scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            first = first_line(exc)
            raise ValueError(f"--resume: checkpoint {state_path(out)} does not match its own settings "
                             f"(a damaged or edited file): {first}") from None
        start = state["iteration"]
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_fn = INIKLoss(mse_weight=cfg.mse_weight, freq_weight=cfg.freq_weight, lpips_weight=cfg.lpips_weight,
                       vgg_weight=cfg.vgg_weight, pretrained_backbones=cfg.pretrained_backbones).to(device)

    stream = SampleStream(build_source(cfg, cfg.seed), cfg.seed)
    loader = torch.utils.data.DataLoader(
        stream, batch_sampler=_BatchSampler(start, cfg.iters, cfg.batch, rank, world),
        num_workers=cfg.workers, persistent_workers=False, pin_memory=device.type == "cuda")
    val = validation_pairs(cfg) if rank == 0 else []

    log_path = out / "log.csv"
    fields = ["iter", "loss", "psnr", "lr", "seconds", "val_psnr"]
    if rank == 0 and (not resume or not log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)
    spent = 0.0  # training seconds before this process: the log's clock runs on after a resume
    if rank == 0 and resume:  # drop log rows past the checkpoint (they will be recomputed)
        with open(log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= start]
        spent = float(rows[-1]["seconds"]) if rows and rows[-1].get("seconds") else 0.0
        with open(log_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=cfg.iters, initial=start, desc="train", dynamic_ncols=True)
    board = tensorboard_writer(out, start) if rank == 0 else None
    terms: dict[str, torch.Tensor] = {}  # the loss terms of the last step
    loss_fn.register_forward_hook(lambda module, inputs, result: terms.update(result[1]))
    sums: dict[str, torch.Tensor] = {}  # since the last log row (device tensors: no sync per step)
    steps = 0
    t0 = time.perf_counter() - spent
    model.train()
    it = start
    stop = _StopOnInterrupt(enabled=world == 1)
    with stop, board if board is not None else contextlib.nullcontext():
        for blurry, sharp in loader:
            blurry, sharp = blurry.to(device, non_blocking=True), sharp.to(device, non_blocking=True)
            if cfg.channels_last:
                blurry = blurry.contiguous(memory_format=torch.channels_last)
            lr = sched.get_last_lr()[0]  # the rate this step uses
            loss, outputs = train_step(net, loss_fn, opt, scaler, blurry, sharp, amp)
            sched.step()
            it += 1
            if rank == 0:
                if bar is not None:
                    bar.update()
                mse = F.mse_loss(outputs[-1].detach().clamp(0, 1).float(), sharp.float())
                step = {"loss/total": loss.detach().float(), "psnr/train": -10 * torch.log10(mse.clamp_min(1e-12)),
                        **{f"loss/{name}": value.float() for name, value in terms.items()}}
                for tag, value in step.items():
                    sums[tag] = sums[tag] + value if tag in sums else value
                steps += 1
                do_val = bool(val) and (it % cfg.val_every == 0 or it == cfg.iters)
                if do_val or it % cfg.log_every == 0 or it == cfg.iters:
                    means = {tag: (total / steps).item() for tag, total in sums.items()}
                    sums, steps = {}, 0
                    val_psnr = _validate_and_show(model, val, device, board, it) if do_val else None
                    row = {"iter": it, "loss": f"{means['loss/total']:.6g}", "psnr": f"{means['psnr/train']:.4f}",
                           "lr": f"{lr:.6g}", "seconds": f"{time.perf_counter() - t0:.1f}",
                           "val_psnr": f"{val_psnr:.4f}" if do_val else ""}
                    model.train()
                    with open(log_path, "a", newline="") as f:
                        csv.DictWriter(f, fieldnames=fields).writerow(row)
                    if board is not None:
                        for tag, value in {**means, "lr": lr}.items():
                            board.add_scalar(tag, value, it)
                    if bar is not None:
                        bar.set_postfix(loss=row["loss"], psnr=row["psnr"])
                if it % cfg.ckpt_every == 0 or it == cfg.iters:
                    save_checkpoint(out, model, opt, sched, it, cfg, scaler)
            if stop.requested:
                if it < cfg.iters:  # at the last step the run's final checkpoint is saved already
                    save_checkpoint(out, model, opt, sched, it, cfg, scaler)
                break
    if bar is not None:
        bar.close()
    if stop.requested and it < cfg.iters:
        raise TrainingInterrupted(out, it)
    if stop.requested:
        print(f"inik train: Ctrl-C came during the last step; the run is complete (iteration {it})", file=sys.stderr)
    if world > 1:
        dist.barrier()
    return model


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a whole step; its checkpoint is saved."""

    def __init__(self, out: Path, iteration: int):
        super().__init__(f"interrupted after iteration {iteration}; checkpoint saved in {out} "
                         f"(continue with --resume)")
        self.out, self.iteration = out, iteration


class _StopOnInterrupt:
    """While active, the first SIGINT (Ctrl-C) only asks the loop to stop after the
    step it is in, so the checkpoint saved is a consistent one; a second one aborts.
    Single-process runs in the main thread only (DDP ranks would have to agree)."""

    def __init__(self, enabled: bool):
        import threading
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested, self._pid = False, os.getpid()

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a data-loader worker forked with this handler: the main process decides
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninik train: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)

    def __enter__(self):
        if self.enabled:
            import signal
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            import signal
            signal.signal(signal.SIGINT, self._previous)
        return False


@torch.no_grad()
def validation_outputs(model: INIKNet, pairs, device) -> list[torch.Tensor]:
    """The model's (3, H, W) output, on the CPU, for each (blurry, sharp) pair."""
    model.eval()
    return [model(b[None].to(device))[0].float().cpu() for b, _ in pairs]


def validate(model: INIKNet, pairs, device) -> float:
    """Mean PSNR of the model's output over (blurry, sharp) pairs."""
    return _validate_and_show(model, pairs, device, None, 0)


#: validation images shown in TensorBoard, and their height at most [px]
SHOWN_IMAGES, SHOWN_HEIGHT = 3, 128


def _validate_and_show(model: INIKNet, pairs, device, board, it: int) -> float:
    """Mean validation PSNR; to TensorBoard (``board``, unless None) also that, the mean
    SSIM and the first few pairs as blurry | output | sharp strips."""
    outputs = validation_outputs(model, pairs, device)
    val_psnr = float(np.mean([psnr(o, s) for o, (_, s) in zip(outputs, pairs)]))
    if board is not None:
        from .metrics import ssim
        board.add_scalar("psnr/val", val_psnr, it)
        board.add_scalar("ssim/val", float(np.mean([ssim(o, s, backend="torch") for o, (_, s) in zip(outputs, pairs)])),
                         it)
        for i, (o, (b, s)) in enumerate(zip(outputs[:SHOWN_IMAGES], pairs)):
            strip = torch.cat([b.float(), o.clamp(0, 1), s.float()], dim=-1)[None]
            if strip.shape[-2] > SHOWN_HEIGHT:
                strip = F.interpolate(strip, scale_factor=SHOWN_HEIGHT / strip.shape[-2], mode="bilinear",
                                      antialias=True).clamp(0, 1)
            board.add_image(f"val/{i}", strip[0], it)
        board.flush()
    return val_psnr


def tensorboard_writer(out: Path, start: int):
    """A SummaryWriter into ``OUT`` (event files beside log.csv), or None (and a line
    saying how to get one) without the tensorboard package. Its first event drops what
    earlier event files logged past ``start``, the iteration this run starts from."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("no TensorBoard logs (log.csv only): pip install 'inik[tensorboard]' to get them in %s",
                    out)
        return None
    return SummaryWriter(str(out), purge_step=start + 1, flush_secs=10)


# ------------------------------------------------------------------ command line

def _default(name: str) -> str:
    """"(default: X, ...)" for the flag of TrainConfig field ``name``: the flag itself
    defaults to None, so that a --config file may set the field instead."""
    value = TrainConfig.__dataclass_fields__[name].default
    if isinstance(value, bool) or value is None:
        value = {True: "on", False: "off", None: "none"}[value]
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"(default: {value}, or as --config sets it)"


def configure_parser(p) -> None:
    p.add_argument("--config", help="JSON or TOML file of TrainConfig fields; flags given override it (default: "
                                    "none: TrainConfig's defaults, the paper's schedule)")
    p.add_argument("--dataset", choices=DATASETS,
                   help=f"training data: synthetic (pairs generated on the fly), folder (source/ and target/), "
                        f"dpdd or lfdof (the datasets' roots) {_default('dataset')}")
    p.add_argument("--data", help=f"dataset root; for synthetic, an optional folder of sharp photos "
                                  f"{_default('data')}")
    p.add_argument("--val-data", dest="val_data",
                   help=f"validation folder with source/ and target/; none: held-out synthetic pairs "
                        f"{_default('val_data')}")
    p.add_argument("--iters", type=int, help=f"training iterations in all {_default('iters')}")
    p.add_argument("--crop", type=int, help=f"side of the square training crops [px], a multiple of 16 "
                                            f"{_default('crop')}")
    p.add_argument("--batch", type=int, help=f"crops per iteration (per process under DDP) {_default('batch')}")
    p.add_argument("--lr", type=float, help=f"Adam's learning rate at the start {_default('lr')}")
    p.add_argument("--lr-step", dest="lr_step", type=int,
                   help=f"scale the learning rate by lr_gamma every this many iterations {_default('lr_step')}")
    p.add_argument("--lpips-weight", dest="lpips_weight", type=float,
                   help=f"weight of the LPIPS (AlexNet) loss term; 0 needs no AlexNet weights "
                        f"{_default('lpips_weight')}")
    p.add_argument("--freq-weight", dest="freq_weight", type=float,
                   help=f"weight of the frequency (FFT) loss term {_default('freq_weight')}")
    p.add_argument("--vgg-weight", dest="vgg_weight", type=float,
                   help=f"weight of the VGG-19 feature loss term {_default('vgg_weight')}")
    p.add_argument("--max-blur", dest="max_blur", type=float,
                   help=f"synthetic data: largest blur (circle-of-confusion) radius [px] {_default('max_blur')}")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"],
                   help=f"mixed precision: auto = bf16 on CUDA, off on a CPU {_default('amp')}")
    p.add_argument("--workers", type=int, help=f"data-loader worker processes {_default('workers')}")
    p.add_argument("--seed", type=int, help=f"seed of the initial weights, data order and augmentation "
                                            f"{_default('seed')}")
    p.add_argument("--log-every", dest="log_every", type=int, metavar="N",
                   help=f"a row of OUT/log.csv (and TensorBoard scalars) every N iterations; loss and PSNR "
                        f"are the means over them {_default('log_every')}")
    p.add_argument("--val-every", dest="val_every", type=int, metavar="N",
                   help=f"validate (PSNR; with TensorBoard also SSIM and images) every N iterations and at the "
                        f"end {_default('val_every')}")
    p.add_argument("--ckpt-every", dest="ckpt_every", type=int, metavar="N",
                   help=f"save the checkpoint OUT/last.* every N iterations and at the end {_default('ckpt_every')}")
    p.add_argument("--init", help=f"INIKNet weights to start from (fine-tuning); none: random weights "
                                  f"{_default('init')}")
    p.add_argument("--init-other-revision", dest="init_other_revision", action="store_true", default=None,
                   help=f"--init may hold weights of another network revision (a warm start: same tensors, "
                        f"another function) {_default('init_other_revision')}")
    p.add_argument("--out", help=f"output folder: checkpoints, log.csv, TensorBoard event files "
                                 f"{_default('out')}")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last checkpoint (default: off: start a new run)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: show one)")


def _without_worker_traceback(exc: BaseException) -> str:
    """The message of ``exc``; for an error a data-loader worker raised (which
    DataLoader re-raises with the worker's whole traceback as its message), the
    worker's own message only."""
    text = str(exc)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    tail = []
    for line in reversed(text.rstrip().splitlines()):  # the lines after the traceback's last frame
        if line.startswith(" "):
            break
        tail.insert(0, line)
    last = "\n".join(tail)
    name, sep, message = last.partition(": ")  # "inik.data.io.ImageReadError: <message>"
    return message if sep and " " not in name else last


def run(args) -> int:
    from .data.io import ImageReadError
    from .infer import check_device
    from .losses import MissingWeightsError
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in keys}
    try:
        if args.device:
            check_device(args.device)
        if args.resume:
            requested = {**(read_config_file(args.config) if args.config else {}),
                         **{k: v for k, v in overrides.items() if v is not None}}
            out = Path(requested.get("out") or TrainConfig.out)
            cfg = resumed_config(read_state(out)["config"], requested, str(state_path(out)))
        else:
            cfg = load_config(args.config, overrides)
    except (ValueError, OSError, TypeError) as exc:
        print(f"inik train: {exc}", file=sys.stderr)
        return 2
    try:
        train(cfg, resume=args.resume, device=args.device, progress=args.progress)
    except TrainingInterrupted as exc:
        print(f"inik train: {exc}", file=sys.stderr)
        return 130
    except (MissingWeightsError, ImageReadError, OSError, ValueError) as exc:
        # bad data, a bad --init or --out, settings the data cannot serve (a crop larger than the images)
        print(f"inik train: {_without_worker_traceback(exc)}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    board = f"; TensorBoard: tensorboard --logdir {out}" if any(out.glob("events.out.tfevents.*")) else ""
    print(f"inik train: weights in {out / 'last.safetensors'}, log in {out / 'log.csv'} (curves: inik plot {out})"
          f"{board}")
    return 0
