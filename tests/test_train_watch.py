"""Watching training: every flag's help says its default, log.csv's loss and PSNR are
interval means, TensorBoard event files, ``inik plot``."""

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image
from test_train import _cfg, _log, _pairs_folder

import inik.training.loop as loop
from inik.cli import build_parser, main
from inik.train import TrainConfig, train
from inik.training.validation import validate_and_show

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_flag_has_a_help_that_says_its_default(capsys):
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, parser in _commands().items():
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([name, "--help"])
        assert exit_.value.code == 0 and "usage: inik " + name in capsys.readouterr().out
        for action in parser._actions:
            if "-h" in action.option_strings or not action.option_strings:
                continue
            flag, text = f"inik {name} {action.option_strings[-1]}", action.help or ""
            assert text.strip(), f"{flag}: no help"
            assert action.required or "default" in text, f"{flag}: help does not say its default: {text}"
            assert not re.search(r"\b20\d\d-\d\d-\d\d\b|development CPU|measured", text), f"{flag}: {text}"
            if name == "train" and action.dest in fields:
                value = fields[action.dest]
                shown = ({True: "on", False: "off", None: "none"}[value] if isinstance(value, bool) or value is None
                         else format(value, "g") if isinstance(value, float) else value)
                assert f"default: {shown}," in text, f"{flag}: help does not give TrainConfig's default: {text}"


def test_logged_loss_and_psnr_are_interval_means_also_across_a_resume(tmp_path):
    data = _pairs_folder(tmp_path / "data", n=3)
    train(_cfg(tmp_path, data, iters=8, out=str(tmp_path / "each")), progress=False)  # log_every=1
    train(_cfg(tmp_path, data, iters=8, log_every=2, out=str(tmp_path / "full")), progress=False)
    each, full = _log(tmp_path / "each"), _log(tmp_path / "full")
    assert [r["iter"] for r in full] == ["2", "4", "6", "8"]
    for column in ("loss", "psnr"):
        per_step = np.array([float(r[column]) for r in each])
        np.testing.assert_allclose([float(r[column]) for r in full], per_step.reshape(4, 2).mean(1), rtol=2e-5,
                                   atol=2e-4)
    # resumed at a multiple of log_every: the same rows
    train(_cfg(tmp_path, data, iters=4, log_every=2, out=str(tmp_path / "cut")), progress=False)
    train(_cfg(tmp_path, data, iters=8, log_every=2, out=str(tmp_path / "cut")), resume=True, progress=False)
    cut = _log(tmp_path / "cut")
    for column in ("iter", "loss", "psnr"):
        assert [r[column] for r in cut] == [r[column] for r in full], column


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = acc.Tags()
    return ({tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]},
            {tag: [(e.step, e.width, e.height) for e in acc.Images(tag)] for tag in tags["images"]})


def test_tensorboard_event_files_and_a_crashed_run_resumed(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    data = _pairs_folder(tmp_path / "data", n=3)
    train(_cfg(tmp_path, data, iters=8, log_every=2, val_every=4, out=str(tmp_path / "full")), progress=False)
    scalars, images = _scalars(tmp_path / "full")
    every, val = [2, 4, 6, 8], [4, 8]
    assert sorted(scalars) == ["loss/freq", "loss/mse", "loss/total", "lr", "psnr/train", "psnr/val", "ssim/val"]
    for tag in ("loss/freq", "loss/mse", "loss/total", "lr", "psnr/train"):
        assert [s for s, _ in scalars[tag]] == every, tag
    assert [s for s, _ in scalars["psnr/val"]] == [s for s, _ in scalars["ssim/val"]] == val
    rows = _log(tmp_path / "full")
    np.testing.assert_allclose([v for _, v in scalars["loss/total"]], [float(r["loss"]) for r in rows], rtol=1e-5)
    np.testing.assert_allclose([v for _, v in scalars["psnr/val"]],
                               [float(r["val_psnr"]) for r in rows if r["val_psnr"]], atol=1e-4)
    assert all(0 < v < 1 for _, v in scalars["ssim/val"])
    # the total is the weighted sum of the terms (unweighted, each summed over the levels)
    for (_, total), (_, mse), (_, freq) in zip(scalars["loss/total"], scalars["loss/mse"], scalars["loss/freq"]):
        assert total == pytest.approx(mse + 0.1 * freq, rel=1e-5)
    assert images == {"val/0": [(4, 96, 32), (8, 96, 32)], "val/1": [(4, 96, 32), (8, 96, 32)]}  # _cfg: 2 images

    # a crash after logging iterations 6 and 8 past the checkpoint at 4; the resumed run
    # logs them again and TensorBoard shows each step once
    real_save = loop.save_checkpoint

    def crash_at_8(out, model, opt, sched, it, *args):
        if it == 8:
            raise RuntimeError("crash")
        real_save(out, model, opt, sched, it, *args)

    monkeypatch.setattr(loop, "save_checkpoint", crash_at_8)
    cfg = _cfg(tmp_path, data, iters=8, log_every=2, val_every=4, ckpt_every=4, out=str(tmp_path / "cut"))
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(cfg, resume=True, progress=False)
    assert len(list((tmp_path / "cut").glob("events.out.tfevents.*"))) == 2  # a resume appends a file
    assert _scalars(tmp_path / "cut") == (scalars, images)


@pytest.mark.parametrize("board", [True, False])
def test_cli_train_says_where_its_logs_are_and_how_to_get_tensorboard_ones(tmp_path, monkeypatch, caplog, capsys,
                                                                           board):
    if board:
        pytest.importorskip("tensorboard")
    else:
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    data = _pairs_folder(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "folder", "--data", str(data), "--iters", "2", "--crop", "32", "--batch", "1",
               "--lpips-weight", "0", "--workers", "0", "--out", str(out), "--no-progress"])
    assert rc == 0 and [r["iter"] for r in _log(out)] == ["2"]
    said = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    printed = capsys.readouterr().out
    assert f"(curves: inik plot {out})" in printed
    if board:
        assert len(list(out.glob("events.out.tfevents.*"))) == 1 and not said
        assert f"TensorBoard: tensorboard --logdir {out}" in printed
    else:
        assert not list(out.glob("events.*")) and "TensorBoard" not in printed
        assert len(said) == 1 and "pip install 'inik[tensorboard]'" in said[0]


def test_optional_dependencies_are_extras_also_installed_for_tests():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "tensorboard" in extras["tensorboard"] and "matplotlib" in extras["plot"]
    assert {"tensorboard", "matplotlib"} <= set(extras["test"])


LOG = """iter,loss,psnr,lr,seconds,val_psnr
10,0.9,14.0,0.0002,1.0,
20,0.5,17.5,0.0002,2.0,16.0
30,0.3,19.0,0.0002,3.0,
40,0.25,20.5,0.0002,4.0,18.5
"""


def test_plot_draws_the_curves_to_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text(LOG)
    assert main(["plot", str(run)]) == 0
    png = run / "curves.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (800, 600)
        pixels = np.asarray(im.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)  # the validation points
    assert red.sum() > 50
    before = png.read_bytes()
    assert main(["plot", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err and png.read_bytes() == before
    (run / "log.csv").write_text(LOG.replace("40,0.25,20.5,0.0002,4.0,18.5", "40,0.25,20.5,0.0002,4.0,"))
    assert main(["plot", str(run), "--overwrite"]) == 0 and png.read_bytes() != before
    assert main(["plot", str(run), "-o", str(tmp_path / "other.png")]) == 0
    assert (tmp_path / "other.png").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "log.csv"]  # no temporary left


LAST = "70,0.2,21.0,0.0002,7.0,\n"


def test_plot_leaves_out_a_cut_off_last_row(tmp_path, capsys):
    """A run writing its log (or stopped while it did) leaves a cut-off last row: plotted
    without it, as resume drops it (the whole log was refused)."""
    (tmp_path / "log.csv").write_text(LOG + "50,0.2")
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().err == f"inik plot: {tmp_path / 'log.csv'}, line 6: a cut-off last row, left out\n"
    assert (tmp_path / "curves.png").is_file()


@pytest.mark.parametrize("content, says", [
    (None, "no training log {log}"),
    ("", "{log}: not a training log (no column iter, loss, psnr, val_psnr)"),
    ("iter,loss,psnr,lr,seconds,val_psnr\n", "{log}: holds no rows yet"),
    (LOG + "50,oops,1,1,1,\n" + LAST, "{log}, line 6: not a training log row: '50,oops,1,1,1,'"),
    (LOG + "60,0.1\n" + LAST, "{log}, line 6: not a training log row"),
    (LOG + "1" + "0" * 310 + ",0.1,1,1,1,\n" + LAST,
     "{log}, line 6: not a training log row: '1000"),  # overflowed the plot
    (LOG + "50,\x00\n" + LAST, "{log}, line 6: not a training log row: '50,\\x00,None"),  # escaped, one line
    (LOG + "\x00" * 150_000, "{log}: not a training log (field larger than field limit"),  # a NUL-filled tail
    ("iter,loss,psnr,lr,seconds,val_psnr\n10,1e308,20,0.1,1,\n20,-1e308,22,0.1,2,\n",
     "cannot draw the curves of {log}: "),  # a traceback from matplotlib
])
def test_plot_names_a_missing_or_malformed_log(tmp_path, capsys, content, says):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "log.csv").write_text(content)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inik plot: " + says.format(log=run / "log.csv")) and err.count("\n") == 1
    assert not (run / "curves.png").exists()


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "log.csv").write_text(LOG)
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "inik plot: needs matplotlib: pip install 'inik[plot]' (or matplotlib)\n"
    assert not (tmp_path / "curves.png").exists()


def test_validation_images_are_small_strips_of_the_first_few_pairs():
    import torch

    import inik

    class Board:
        def __init__(self):
            self.scalars, self.images = {}, {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (step, value)

        def add_image(self, tag, image, step):
            self.images[tag] = (step, image)

        def flush(self):
            pass

    pairs = [(torch.rand(3, 160, 192), torch.rand(3, 160, 192)) for _ in range(4)]
    model, board = inik.INIKNet(width=8, scales=4, atoms=3), Board()
    val_psnr = validate_and_show(model, pairs, "cpu", board, 7)
    assert board.scalars["psnr/val"] == (7, val_psnr) and board.scalars["ssim/val"][0] == 7
    assert sorted(board.images) == ["val/0", "val/1", "val/2"]
    for step, image in board.images.values():
        assert step == 7 and image.shape == (3, 128, 460) and 0 <= image.min() and image.max() <= 1
    assert validate_and_show(model, pairs, "cpu", None, 7) == val_psnr  # without TensorBoard: the PSNR alone
