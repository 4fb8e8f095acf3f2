"""The training loop: ``train`` (DDP set-up, resume, logging, checkpoints), one
optimisation step, ``--init`` weights and Ctrl-C handling."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import first_line
from ..models import INIKNet, INIKNetConfig
from .average import WeightAverage
from .checkpoint import LEGACY_STATE_FILE, STATE_FILE, read_state, save_checkpoint, state_path
from .config import RESUMABLE, TrainConfig, saved_settings
from .data import BatchSampler, SampleStream, build_source, validation_pairs
from .validation import tensorboard_writer, validate_and_show

log = logging.getLogger("inik")

#: the columns of a run's log.csv
LOG_FIELDS = ["iter", "loss", "psnr", "lr", "seconds", "val_psnr"]


def _ddp_env() -> tuple[int, int]:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # set by torchrun; by hand they may be anything
        if name in os.environ and not re.fullmatch(r"[0-9]+", os.environ[name].strip()):
            raise ValueError(f"{name}={os.environ[name]!r}: expected a whole number (torchrun sets it)")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if int(os.environ["RANK"]) >= int(os.environ["WORLD_SIZE"]):
            raise ValueError(f"RANK={os.environ['RANK']} must be below WORLD_SIZE={os.environ['WORLD_SIZE']}")
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
    model.load_weights(path, optional=("cascade_gate",), check_config=False)


def _foreign(out: Path) -> Optional[str]:
    """The file of ``out`` that a new run would replace and that no run wrote (config.json,
    log.csv), or None: absent, or left by a run that stopped before its first checkpoint."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in ("config.json", "log.csv"):
        path = out / name
        if not path.exists():
            continue
        try:
            if name == "log.csv":
                with open(path, encoding="utf-8") as f:
                    ours = f.readline().strip() == ",".join(LOG_FIELDS)
            else:
                saved = json.loads(path.read_text(encoding="utf-8"))
                ours = isinstance(saved, dict) and "out" in saved and set(saved) <= names
        except (OSError, UnicodeDecodeError, ValueError):
            ours = False
        if not ours:
            return name
    return None


def _log_rows(log_path: Path, fields: list[str], last: int) -> list[dict]:
    """The rows of a run's log.csv up to iteration ``last``; a damaged tail after them is
    dropped (a cut-off write past the checkpoint). ValueError naming the file when it is
    not such a log (another program's, or damaged before the checkpoint)."""
    kept: list[dict] = []
    try:
        with open(log_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            if "iter" not in names or not set(names) <= set(fields):  # older logs may lack a column
                raise ValueError(f"its columns are {names}, not {fields}")
            rows = list(reader)
        for i, row in enumerate(rows):
            fault = _row_fault(row)
            if fault is not None:
                if any(_row_before(later, last) for later in rows[i + 1:]):  # damage before the checkpoint
                    raise ValueError(f"the row after iteration {kept[-1]['iter'] if kept else 0} {fault}")
                break
            if int(row["iter"]) > last:
                break
            kept.append(row)
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise ValueError(f"--resume: {log_path} is not this run's training log ({first_line(exc)}); move it away "
                         f"to resume with a new log") from None
    return kept


def _row_fault(row: dict) -> Optional[str]:
    """What is damaged in a log row (fields missing or extra, an iteration or time that is
    not a number), or None."""
    if None in row or None in row.values():
        return "does not match the header"
    for name, kind in (("iter", int), ("seconds", float)):
        if name == "iter" or row.get(name):  # an empty time: a row written before the clock
            try:
                kind(row[name])
            except ValueError:
                return f"has {name} = {row[name]!r}, not a number"
    return None


def _row_before(row: dict, last: int) -> bool:
    """Whether a row after a damaged one is a row of iteration ``last`` or earlier (its
    fields all there, its iteration a number), which makes the damage not a cut-off tail."""
    try:
        return None not in row and None not in row.values() and int(row["iter"]) <= last
    except ValueError:
        return False


def _check_finite(model: torch.nn.Module, it: int, out: Path) -> None:
    """Refuse to checkpoint weights that hold NaN or Inf (a diverged run, or NaN in the
    data): the last good checkpoint stays as it was."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError(f"training diverged: the weights hold NaN or Inf at iteration {it} (see {out / 'log.csv'}); "
                         f"nothing was saved, the last checkpoint in {out} is unchanged")


def train(cfg: TrainConfig, resume: bool = False, device: Optional[str] = None,
          progress: bool = True) -> INIKNet:
    """Run (or resume) training into ``cfg.out``; returns the trained model (with
    ``cfg.ema``, on rank 0, the weight average: what ``last.safetensors`` holds)."""
    from ..losses import INIKLoss
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
    elif foreign := _foreign(out):
        raise FileExistsError(f"--out {out}: {foreign} was not written by a run, and a run would replace it: "
                              f"choose another --out or move it away (nothing was changed)")

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
    average = _weight_average(cfg, model, state, out) if rank == 0 else None
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_fn = INIKLoss(mse_weight=cfg.mse_weight, freq_weight=cfg.freq_weight, lpips_weight=cfg.lpips_weight,
                       vgg_weight=cfg.vgg_weight, pretrained_backbones=cfg.pretrained_backbones).to(device)

    stream = SampleStream(build_source(cfg, cfg.seed), cfg.seed)
    loader = torch.utils.data.DataLoader(
        stream, batch_sampler=BatchSampler(start, cfg.iters, cfg.batch, rank, world),
        num_workers=cfg.workers, persistent_workers=False, pin_memory=device.type == "cuda")
    log_path = out / "log.csv"
    fields = LOG_FIELDS
    val, rows, problem = [], None, None
    if rank == 0:  # what only rank 0 reads; its failure must stop every rank, not leave them waiting
        try:
            val = validation_pairs(cfg)
            if resume and log_path.exists():  # its rows past the checkpoint are recomputed
                rows = _log_rows(log_path, fields, start)
        except (OSError, ValueError) as exc:
            problem = exc
    if world > 1:
        said = [f"rank 0: {first_line(problem)}" if problem is not None else None]
        dist.broadcast_object_list(said, src=0)
        if problem is None and said[0] is not None:
            raise ValueError(said[0])
    if problem is not None:
        raise problem

    out.mkdir(parents=True, exist_ok=True)  # once the weights, the data and the device are known to work
    if rank == 0 and rows is None:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)
    spent = 0.0  # training seconds before this process: the log's clock runs on after a resume
    if rows is not None:
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
            if average is not None:
                average.update(model)
            if it % cfg.ckpt_every == 0 or it == cfg.iters:  # every rank: the weights are the same on all
                _check_finite(model, it, out)
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
                    shown = average.model if average is not None else model
                    val_psnr = validate_and_show(shown, val, device, board, it) if do_val else None
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
                    save_checkpoint(out, model, opt, sched, it, cfg, scaler, average)
            if stop.requested:
                if it < cfg.iters:  # at the last step the run's final checkpoint is saved already
                    _check_finite(model, it, out)
                    save_checkpoint(out, model, opt, sched, it, cfg, scaler, average)
                break
    if bar is not None:
        bar.close()
    if stop.requested and it < cfg.iters:
        raise TrainingInterrupted(out, it)
    if stop.requested:
        print(f"inik train: Ctrl-C came during the last step; the run is complete (iteration {it})", file=sys.stderr)
    if world > 1:
        dist.barrier()
    return average.model if average is not None else model


def _weight_average(cfg: TrainConfig, model: INIKNet, state: Optional[dict], out: Path) -> Optional[WeightAverage]:
    """The run's weight average (``cfg.ema``), restored from a resumed checkpoint when it
    has one; a resumed run without one starts its average at the iteration it resumes."""
    if not cfg.ema:
        if state is not None and "ema" in state:
            log.warning("--resume: ema is 0: the run's weight average (%d updates) is dropped; last.safetensors "
                        "and validation now hold the raw weights", state.get("ema_updates", 0))
        return None
    average = WeightAverage(model, cfg.ema)
    if state is not None and "ema" in state:
        try:
            average.load(state)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"--resume: checkpoint {state_path(out)} holds a weight average that does not match "
                             f"the model (a damaged or edited file): {first_line(exc)}") from None
    elif state is not None:
        log.warning("--resume: the run in %s had no weight average; it starts at iteration %d",
                    out, state["iteration"])
    return average


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
