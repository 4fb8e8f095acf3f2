"""TrainConfig (a run's settings, checked) and its reading from JSON/TOML files and
from a checkpoint when a run is resumed."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..models import INIKNetConfig
from ..models.iniknet import UNRECORDED_REVISION

DATASETS = ("synthetic", "folder", "dpdd", "lfdof")
LOSS_WEIGHTS = ("mse_weight", "freq_weight", "lpips_weight", "vgg_weight")
MAX_LOSS_WEIGHT = 1000.0
# Seeds run from 0 (numpy's generators take no negative seed) to 2**32 - 1: the paired
# datasets' permutation seed, seed * 1_000_003 + epoch, must stay below torch's 2**64.
MAX_SEED = 2**32
# Memory is batch * crop**2: bounded before anything is allocated (a config file is data).
MAX_CROP = 4096
MAX_BATCH = 1024
#: validation pairs are all held in memory; loader processes
MAX_VAL_IMAGES = 10_000
MAX_WORKERS = 256


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
    ema: float = 0.0                  # decay of a running average of the weights (0: off), saved and validated
    max_blur: float = 12.0            # synthetic: largest circle-of-confusion radius, pixels
    photo_prob: float = 0.8           # synthetic with photos: fraction of photo scenes (rest procedural)
    radius_power: float = 0.5         # synthetic: a crop's largest radius is max_blur * u**radius_power (1: uniform)
    narrow_prob: float = 0.0          # synthetic: fraction of crops whose largest radius is drawn up to narrow_blur
    narrow_blur: float = 12.0         # synthetic: the narrow range's largest radius, pixels
    layouts: str = "random"           # synthetic: comma-separated depth layouts, one drawn per sample
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
        for name in ("lr", "max_blur", "narrow_blur"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (*LOSS_WEIGHTS, "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        limits = (("lr", 1.0), ("max_blur", 64.0), ("narrow_blur", 64.0), *((w, MAX_LOSS_WEIGHT) for w in LOSS_WEIGHTS))
        for name, most in limits:
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be <= {most:g}, got {getattr(self, name)}")
        if not any(getattr(self, name) > 0 for name in LOSS_WEIGHTS):
            raise ValueError(f"at least one loss weight ({', '.join(LOSS_WEIGHTS)}) must be > 0; all are 0")
        if not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0: no weight average), got {self.ema}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        for name in ("photo_prob", "narrow_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.radius_power <= 16:
            raise ValueError(f"radius_power must be in (0, 16], got {self.radius_power}")
        from ..data.synthesizer import parse_layouts
        try:
            self.layouts = ",".join(parse_layouts(self.layouts))
        except ValueError as exc:
            raise ValueError(f"layouts must be {exc}") from None
        if not 1 <= self.val_images <= MAX_VAL_IMAGES:
            raise ValueError(f"val_images must be in 1..{MAX_VAL_IMAGES}, got {self.val_images}")
        if self.workers > MAX_WORKERS:
            raise ValueError(f"workers must be at most {MAX_WORKERS} (loader processes), got {self.workers}")
        for name in ("data", "val_data", "init", "out"):  # "" would mean the current folder, or be ignored
            if getattr(self, name) == "":
                raise ValueError(f"{name} must name a path, got an empty string")
        try:
            network = INIKNetConfig(**self.model)  # validates the model fields early
        except TypeError as exc:  # an unknown field
            raise ValueError(f"model: {exc}") from None
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
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser, as a package
                import tomli as tomllib
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
# where its data lives, how many loader workers, and the weight average (which never
# changes the training itself). --init is not among them: a resumed run starts from its
# checkpoint, and its config keeps the weights it was started from.
RESUMABLE = ("iters", "log_every", "val_every", "ckpt_every", "ema", "workers", "data", "val_data", "out")


def saved_settings(config: dict) -> dict:
    """The settings of a run as saved in its checkpoint's ``config``: each field added
    to TrainConfig since it was saved at its default (which keeps what older runs
    did), and the model's revision filled in (a run saved before revisions existed
    trained revision 1)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    # runs saved before empty paths were refused meant "none" by them
    config = {k: (None if k in ("data", "val_data", "init") and v == "" else v) for k, v in config.items()}
    return {**defaults, **config, "model": {"revision": UNRECORDED_REVISION, **(config.get("model") or {})}}


def resumed_config(saved: dict, requested: dict, where: str) -> TrainConfig:
    """The config of a resumed run: the one it was saved with, updated by ``requested``
    (the fields set by --config and flags) where :data:`RESUMABLE` allows; a request
    to change anything else is a ValueError naming it."""
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {where}: its settings are not an object (a damaged or edited file)")
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"--resume: {where}: unknown settings {unknown} (a damaged or edited file, or one written "
                         f"by a newer inik)")
    values = saved_settings(_check_types(dict(saved), f"--resume: {where}"))
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
