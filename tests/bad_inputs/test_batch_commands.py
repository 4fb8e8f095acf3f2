"""Commands over many items: a bad item is reported in one line, the rest are done,
the exit status says so (1: some items failed, 2: all of them); Ctrl-C prints one line and exits 130."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import inik
import inik.data.io
import inik.explain
import inik.infer
import inik.metrics
import inik.train
from inik.cli import main
from inik.data.io import read_image, write_image


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    inik.INIKNet(width=4, scales=3, atoms=2).save(path)
    return path


def _image(seed, shape=(16, 16, 3)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _with_nan(path, seed):
    """A float TIFF with one NaN pixel."""
    img = _image(seed)
    img[3, 3] = np.nan
    tifffile.imwrite(path, img, photometric="rgb")


def _photos(folder):
    """good a.png and b.png; bad: c.png (random bytes), d.tif (NaN)."""
    folder.mkdir()
    write_image(folder / "a.png", _image(0))
    write_image(folder / "b.png", _image(1))
    (folder / "c.png").write_bytes(np.random.default_rng(2).bytes(300))
    _with_nan(folder / "d.tif", 3)
    return folder


def _errors(err):
    """stderr less the progress bars' lines and the note about compiled kernels."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("inik ") and "note:" not in line]


def _files(errors, command):
    """The file each line of ``errors`` starts with ("inik COMMAND: FILE: what was wrong")."""
    prefix = f"inik {command}: "
    assert all(e.startswith(prefix) for e in errors), errors
    return [Path(e[len(prefix):].split(": ")[0]) for e in errors]


def test_deblur_reports_each_bad_image_in_one_line_and_writes_the_others(tmp_path, weights, monkeypatch, capsys):
    src = _photos(tmp_path / "in")
    write_image(src / "e.png", _image(4, (16, 20, 3)))
    real = inik.infer.deblur

    def odd_model(image, *args, **kw):  # the model fails on e.png, as torch does: over several lines
        if image.shape[1] == 20:
            raise RuntimeError("the model cannot run on this\nsecond line of torch's message")
        return real(image, *args, **kw)

    monkeypatch.setattr(inik.infer, "deblur", odd_model)
    out = tmp_path / "out"
    assert main(["deblur", str(src), "-o", str(out), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    errors = _errors(err)
    assert "second line" not in err
    assert _files(errors, "deblur") == [src / "c.png", src / "d.tif", src / "e.png"], errors
    assert errors[1:] == [f"inik deblur: {src / 'd.tif'}: image contains NaN or Inf values",
                          f"inik deblur: {src / 'e.png'}: the model cannot run on this"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # nothing partial, no temporary file


def test_deblur_does_not_report_a_programming_error_as_a_bad_image(tmp_path, weights, monkeypatch):
    """A bug (TypeError) is not an image's fault: it is raised, not printed per image."""
    write_image(tmp_path / "a.png", _image(0))

    def broken(*args, **kw):
        raise TypeError("a bug")

    monkeypatch.setattr(inik.infer, "deblur", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["deblur", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"), "--weights", str(weights)])


def _pairs(root, names):
    for side in ("source", "target"):
        (root / side).mkdir(parents=True)
    for i, name in enumerate(names):
        write_image(root / "source" / f"{name}.png", _image(10 + i))
        write_image(root / "target" / f"{name}.png", _image(20 + i))
    return root


def test_eval_scores_the_other_pairs_and_lists_the_failed_ones(tmp_path, weights, capsys):
    """One bad pair (sizes that differ, random bytes, NaN) fails alone: the report holds
    the others' scores, their mean and count, and the failures with their errors."""
    data = _pairs(tmp_path / "data", ["a", "e"])
    write_image(data / "source" / "b.png", _image(1))
    write_image(data / "target" / "b.png", _image(2, (16, 20, 3)))
    (data / "source" / "c.png").write_bytes(np.random.default_rng(2).bytes(300))
    write_image(data / "target" / "c.png", _image(3))
    _with_nan(data / "source" / "d.tif", 4)
    tifffile.imwrite(data / "target" / "d.tif", _image(5), photometric="rgb")
    report = tmp_path / "r.json"
    rc = main(["eval", "--data", str(data), "--weights", str(weights), "--bits", "native", "--lpips", "off",
               "--out", str(report)])
    captured = capsys.readouterr()
    assert rc == 1
    errors = _errors(captured.err)
    assert len(errors) == 3 and _files(errors[1:], "eval") == [data / "source" / "c.png", data / "source" / "d.tif"]
    assert errors[0] == (f"inik eval: size mismatch: {data / 'source' / 'b.png'} is 16x16 but its partner "
                         f"{data / 'target' / 'b.png'} is 20x16")
    assert errors[2] == f"inik eval: {data / 'source' / 'd.tif'}: holds NaN or Inf pixels"
    assert "over 2 of 5 pairs (3 failed, listed in" in captured.out
    result = json.loads(report.read_text())
    assert [r["name"] for r in result["images"]] == ["a", "e"] and result["scored"] == 2
    assert result["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["images"]]))
    assert [(f["name"], f["blurry"]) for f in result["failed"]] == [
        ("b", str(data / "source" / "b.png")), ("c", str(data / "source" / "c.png")),
        ("d", str(data / "source" / "d.tif"))]
    assert [f"inik eval: {f['error']}" for f in result["failed"]] == errors
    with open(report.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], bool(r["psnr"]), bool(r["error"])) for r in rows] == [
        ("a", True, False), ("e", True, False), ("b", False, True), ("c", False, True), ("d", False, True)]
    # no pair scored: nothing could be done, no report
    bad = _pairs(tmp_path / "bad", [])
    (bad / "source" / "x.png").write_bytes(b"not an image")
    write_image(bad / "target" / "x.png", _image(0))
    rc = main(["eval", "--data", str(bad), "--identity", "--lpips", "off", "--out", str(tmp_path / "n.json")])
    errors = _errors(capsys.readouterr().err)
    assert rc == 2 and not (tmp_path / "n.json").exists() and not (tmp_path / "n.csv").exists()
    assert _files(errors[:1], "eval") == [bad / "source" / "x.png"]
    assert errors[1:] == ["inik eval: none of the 1 pairs could be scored; no report written"]


def test_explain_does_the_other_images(tmp_path, weights, capsys):
    src = _photos(tmp_path / "in")
    out = tmp_path / "maps"
    assert main(["explain", str(src), "-o", str(out), "--weights", str(weights)]) == 1
    errors = _errors(capsys.readouterr().err)
    assert _files(errors, "explain") == [src / "c.png", src / "d.tif"], errors
    assert errors[1] == f"inik explain: {src / 'd.tif'}: INIKNet: y contains NaN or Inf values"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert read_image(out / "a" / "defocus_size.png")[0].shape == (16, 16, 3)
    assert json.loads((out / "b" / "explain.json").read_text())["atom_sizes"] == [3, 5]
    # one image file: its maps go into the folder itself, as before
    assert main(["explain", str(src / "a.png"), "-o", str(tmp_path / "one"), "--weights", str(weights)]) == 0
    assert (tmp_path / "one" / "explain.json").is_file()
    # two images that would share a folder: refused before anything is written
    write_image(src / "a.tif", _image(5))
    capsys.readouterr()
    assert main(["explain", str(src / "a.png"), str(src / "a.tif"), "-o", str(tmp_path / "two"),
                 "--weights", str(weights)]) == 2
    assert "would both be explained into" in capsys.readouterr().err and not (tmp_path / "two").exists()


def test_explain_leaves_no_partial_set_of_maps(tmp_path, weights, monkeypatch, capsys):
    """A write that fails half-way through an image's maps removes the ones it wrote."""
    io = inik.data.io
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", _image(0))
    write_image(src / "b.png", _image(1))
    real, calls = io.write_atomically, []

    def disk_full_in_b(path, data):
        calls.append(path)
        if path.parent.name == "b" and len([p for p in calls if p.parent.name == "b"]) == 3:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(io, "write_atomically", disk_full_in_b)
    out = tmp_path / "maps"
    assert main(["explain", str(src), "-o", str(out), "--weights", str(weights)]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and str(src / "b.png") in errors[0] and "No space left" in errors[0], errors
    assert not (out / "b").exists() and len(list((out / "a").iterdir())) == 8
    # with --overwrite, a failed write leaves the earlier maps as they were (new ones go in
    # only when all are written)
    before = {p.name: p.read_bytes() for p in (out / "a").iterdir()}
    calls.clear()
    monkeypatch.setattr(io, "write_atomically", lambda path, data: (calls.append(path), disk_full(path, data))[1])

    def disk_full(path, data):
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(path, data)

    torch.manual_seed(5)
    other = tmp_path / "other.safetensors"
    inik.INIKNet(width=4, scales=3, atoms=2).save(other)
    assert main(["explain", str(src / "a.png"), "-o", str(out / "a"), "--weights", str(other), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in (out / "a").iterdir()} == before


def _interrupt(*args, **kw):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["deblur", "eval", "explain", "train", "synth"])
def test_ctrl_c_prints_one_line_and_exits_130(command, tmp_path, weights, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        write_image(src / f"{name}.png", _image(0))
    calls = []

    def second_call_interrupted(real):
        def wrapper(*args, **kw):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args, **kw)
        return wrapper

    if command == "deblur":
        monkeypatch.setattr(inik.infer, "deblur", second_call_interrupted(inik.infer.deblur))
        argv, said = ["deblur", str(src), "-o", str(tmp_path / "out")], "interrupted after 1 of 3 images"
    elif command == "eval":
        monkeypatch.setattr(inik.metrics, "evaluate", second_call_interrupted(inik.metrics.evaluate))
        data = _pairs(tmp_path / "data", ["a", "b", "c"])
        argv = ["eval", "--data", str(data), "--lpips", "off", "--out", str(tmp_path / "r.json")]
        said = "interrupted after 1 of 3 pairs; no report written"
    elif command == "explain":
        monkeypatch.setattr(inik.explain, "explain", second_call_interrupted(inik.explain.explain))
        argv, said = ["explain", str(src), "-o", str(tmp_path / "out")], "interrupted after 1 of 3 images"
    elif command == "synth":
        monkeypatch.setattr(inik.data.io, "write_image", second_call_interrupted(inik.data.io.write_image))
        argv = ["synth", str(tmp_path / "set"), "--count", "3", "--size", "32"]
        said = (f"interrupted after 0 of 3 pairs; {tmp_path / 'set'} holds an unfinished set (no params.jsonl): "
                f"write it again with --overwrite")
    else:  # a second Ctrl-C aborts training without the checkpoint of its first (TrainingInterrupted)
        monkeypatch.setattr(inik.train, "train", _interrupt)
        (tmp_path / "data").mkdir()
        argv, said = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")], "interrupted"
    if command not in ("train", "synth"):
        argv += ["--weights", str(weights)]
    try:
        rc = main(argv)
    except KeyboardInterrupt:
        pytest.fail(f"inik {command}: Ctrl-C escaped main()")
    assert rc == 130
    assert _errors(capsys.readouterr().err) == [f"inik {command}: {said}"]
    if command == "deblur":  # the image done is whole, the one interrupted absent
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    if command == "eval":
        assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("program", ["inik", "script.py"])
def test_ctrl_c_while_the_command_starts(program):
    """Ctrl-C in the seconds the ``inik`` command spends importing torch: one line and 130,
    not a traceback through torch's import; a program that imports inik keeps its
    KeyboardInterrupt. SIGALRM stands in for Ctrl-C, 50 ms into the import."""
    import subprocess
    import sys
    code = (f"import signal, sys; sys.argv[0] = {program!r}; "
            "signal.signal(signal.SIGALRM, signal.default_int_handler); "
            "signal.setitimer(signal.ITIMER_REAL, 0.05); import inik")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if program == "inik":
        assert proc.returncode == 130 and proc.stderr == "inik: interrupted\n", proc.stderr
    else:
        assert proc.returncode == -2 and proc.stderr.rstrip().endswith("KeyboardInterrupt"), proc.stderr  # SIGINT


def test_ctrl_c_while_python_m_inik_starts(tmp_path):
    """``python -m inik`` too (its argv[0] is "-m" while the package imports). SIGALRM, set by
    a sitecustomize before ``-m`` runs, stands in for Ctrl-C 0.2 s into the import (on a slow
    start it may land in the command instead: one line either way)."""
    import os
    import re
    import subprocess
    import sys
    (tmp_path / "sitecustomize.py").write_text(
        "import signal\nsignal.signal(signal.SIGALRM, signal.default_int_handler)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.2)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "inik", "info"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 130 and re.fullmatch(r"inik( info)?: interrupted\n", proc.stderr), proc.stderr


@pytest.mark.parametrize("argv, orig, command", [
    (["/usr/bin/inik"], ["python", "/usr/bin/inik", "info"], True),
    (["-m"], ["python", "-m", "inik", "info"], True),
    (["-m"], ["python", "-minik"], True),
    (["-m"], ["python", "-X", "dev", "-m", "inik"], True),
    (["-m"], ["python", "-m", "pytest", "-m", "inik"], False),  # pytest's own -m
    (["run.py"], ["python", "run.py", "-m", "inik"], False),  # a script's arguments
    (["-c"], ["python", "-c", "import inik"], False),
])
def test_which_processes_are_the_command(monkeypatch, argv, orig, command):
    """Ctrl-C during the import exits 130 in the inik command only; a program importing inik
    keeps its KeyboardInterrupt, whatever its own arguments say."""
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert inik._is_the_command() is command


def test_ctrl_c_in_training_keeps_its_own_message(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kw):
        raise inik.train.TrainingInterrupted(tmp_path / "run", 2)

    monkeypatch.setattr(inik.train, "train", interrupted)
    (tmp_path / "data").mkdir()
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 130
    assert _errors(capsys.readouterr().err) == [
        f"inik train: interrupted after iteration 2; checkpoint saved in {tmp_path / 'run'} (continue with --resume)"]


def test_a_reader_that_goes_away_stops_the_lines_not_the_work(tmp_path, weights):
    """``inik deblur ... | head -1``: every image is still deblurred, none is reported as
    failed, and the exit status is 0; ``inik info --json`` into a closed pipe exits 1
    without a traceback."""
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write_image(src / f"m{i}.png", _image(i))
    code = "import sys; from inik.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in ([str(src), "-o", str(tmp_path / "out"), "--weights", str(weights), "--device", "cpu"],):
        proc = subprocess.Popen([sys.executable, "-c", code, "deblur", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader is gone before the first line
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "Broken pipe" not in err and "Traceback" not in err, err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"m{i}.png" for i in range(4)]
    proc = subprocess.Popen([sys.executable, "-c", code, "info", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    """write_atomically's error names the file asked for (the temporary file beside it is
    an inner detail) and leaves nothing behind."""
    from inik.data.io import write_atomically

    missing = tmp_path / "no" / "such" / "x.png"
    with pytest.raises(FileNotFoundError, match="No such file or directory") as info:
        write_atomically(missing, b"data")
    assert info.value.filename == str(missing)
    assert sorted(tmp_path.iterdir()) == []


def test_file_names_that_are_not_utf8(tmp_path, weights, capsys):
    """A name the file system holds as bytes that are not UTF-8: eval scores it and writes
    its CSV with those bytes (a traceback after the JSON was written); deblur and explain
    report it, escaped, on a strict stdout (they counted it as failed, or stopped); plot
    draws a run folder so named (a matplotlib traceback)."""
    import os
    import subprocess
    name = os.fsdecode(b"x\xff")
    for sub in ("source", "target"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        write_image(tmp_path / "d" / sub / f"{name}.png", np.full((16, 16, 3), 0.5, np.float32))
    assert main(["eval", "--data", str(tmp_path / "d"), "--identity", "--lpips", "off",
                 "--out", str(tmp_path / "r.json")]) == 0
    assert b"x\xff," in (tmp_path / "r.csv").read_bytes()
    (tmp_path / "r2.csv").mkdir()  # the CSV's name taken by a folder: refused before scoring, no half report
    assert main(["eval", "--data", str(tmp_path / "d"), "--identity", "--lpips", "off",
                 "--out", str(tmp_path / "r2.json")]) == 2
    assert "r2.csv is a folder" in capsys.readouterr().err and not (tmp_path / "r2.json").exists()
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    src = tmp_path / "d" / "source" / f"{name}.png"
    for argv in (["deblur", str(src), "-o", str(tmp_path / "out") + "/"],
                 ["explain", str(src), "-o", str(tmp_path / f"maps{name}")]):
        proc = subprocess.run([sys.executable, "-m", "inik", *argv, "--weights", str(weights)], capture_output=True,
                              env=env, timeout=300)
        assert proc.returncode == 0 and b"x\\udcff" in proc.stdout and b"Traceback" not in proc.stderr, proc.stderr
    assert os.path.exists(tmp_path / "out" / f"{name}.png") and os.path.exists(tmp_path / f"maps{name}" / "omega.png")
    run = tmp_path / name
    run.mkdir()
    (run / "log.csv").write_text("iter,loss,psnr,lr,seconds,val_psnr\n10,0.5,20,0.1,1,\n20,0.4,21,0.1,2,\n")
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()


def test_eval_mean_psnr_leaves_out_identical_pairs(tmp_path, capsys):
    """A pair equal to its reference scores an infinite PSNR: the mean was "inf", saying
    nothing of the other pairs; it is now over the pairs that differ, and says so."""
    rng = np.random.default_rng(0)
    sharp = rng.random((16, 16, 3)).astype(np.float32)
    for sub in ("source", "target"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        write_image(tmp_path / "d" / sub / "same.png", sharp)
    write_image(tmp_path / "d" / "target" / "other.png", sharp)
    write_image(tmp_path / "d" / "source" / "other.png", np.clip(sharp + 0.05, 0, 1))
    assert main(["eval", "--data", str(tmp_path / "d"), "--identity", "--lpips", "off",
                 "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    other = next(r for r in report["images"] if r["name"] == "other")
    assert report["identical"] == 1 and report["mean"]["psnr"] == pytest.approx(other["psnr"])
    assert "psnr over the 1 pairs that differ from their reference (1 identical)" in capsys.readouterr().out
