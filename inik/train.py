"""``inik train``: INIKNet training with the paper's protocol (docs/ARCHITECTURE.md section 4).

This module is the command (its flags and ``run``); the training itself lives in
:mod:`inik.training` (config, data, checkpoint, validation, loop), whose public names it re-exports.

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

import dataclasses
import sys
from pathlib import Path

from .training.checkpoint import LEGACY_STATE_FILE, STATE_FILE, read_state, save_checkpoint, state_path
from .training.config import (
    DATASETS,
    LOSS_WEIGHTS,
    MAX_BATCH,
    MAX_CROP,
    MAX_LOSS_WEIGHT,
    MAX_SEED,
    RESUMABLE,
    TrainConfig,
    load_config,
    read_config_file,
    resumed_config,
    saved_settings,
)
from .training.data import SampleStream, build_source, validation_pairs
from .training.loop import TrainingInterrupted, init_weights, train, train_step
from .training.validation import SHOWN_HEIGHT, SHOWN_IMAGES, psnr, tensorboard_writer, validate, validation_outputs

__all__ = [
    "DATASETS", "LOSS_WEIGHTS", "MAX_BATCH", "MAX_CROP", "MAX_LOSS_WEIGHT", "MAX_SEED", "RESUMABLE", "TrainConfig",
    "load_config", "read_config_file", "resumed_config", "saved_settings",
    "SampleStream", "build_source", "validation_pairs",
    "LEGACY_STATE_FILE", "STATE_FILE", "read_state", "save_checkpoint", "state_path",
    "TrainingInterrupted", "init_weights", "train", "train_step",
    "SHOWN_HEIGHT", "SHOWN_IMAGES", "psnr", "tensorboard_writer", "validate", "validation_outputs",
    "configure_parser", "run",
]


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
    p.add_argument("--radius-power", dest="radius_power", type=float,
                   help=f"synthetic data: a crop's largest radius is max-blur * u**radius-power, u uniform in "
                        f"[0, 1] (1: uniform; smaller favours wide blur) {_default('radius_power')}")
    p.add_argument("--narrow-prob", dest="narrow_prob", type=float,
                   help=f"synthetic data: the fraction of crops whose largest radius is drawn up to --narrow-blur "
                        f"instead of --max-blur {_default('narrow_prob')}")
    p.add_argument("--narrow-blur", dest="narrow_blur", type=float,
                   help=f"synthetic data: the narrow range's largest radius [px] {_default('narrow_blur')}")
    p.add_argument("--layouts", help=f"synthetic data: comma-separated depth layouts, one drawn per sample: "
                                     f"random, subject, reverse, slanted, small-sharp {_default('layouts')}")
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
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help=f"keep a running average of the weights (e.g. 0.999: the mean over the iterations so far, "
                        f"up to about the last 1000); OUT/last.safetensors and validation then hold the average, "
                        f"OUT/last.raw.safetensors the optimiser's weights; 0: off; may be added or changed on "
                        f"--resume {_default('ema')}")
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
    from .commands import check_device
    from .data.io import ImageReadError
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
