"""Files from someone else: nothing a file holds runs as code.

Every file the package reads that a pickle could be planted in - the training
state, an older run's state, weights given to --weights/--init/INIKNet.load, the
AlexNet and VGG-19 backbone files in the torch hub cache - gets a payload whose
unpickling would create a marker file; the read must fail with a one-line error
naming the file, and the marker must not exist.
"""

import pathlib

import pytest
import torch

import inik
from inik import safestate
from inik.cli import main
from inik.train import LEGACY_STATE_FILE, STATE_FILE, read_state

SMALL = dict(width=4, scales=3, atoms=2)


class Payload:
    """Unpickling it calls Path.touch(marker): the proof that code ran."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _pickle_with_payload(path, marker, wrap=lambda p: {"x": p}):
    torch.save(wrap(Payload(marker)), path)


def _data(tmp_path):
    import numpy as np

    from inik.data.io import write_image
    rng = np.random.default_rng(0)
    for sub in ("source", "target"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(2):
        img = rng.uniform(0, 1, (48, 48, 3)).astype(np.float32)
        write_image(tmp_path / "data" / "source" / f"i{i}.png", img)
        write_image(tmp_path / "data" / "target" / f"i{i}.png", img)
    return tmp_path / "data"


def _train_args(data, out, iters):
    return ["train", "--dataset", "folder", "--data", str(data), "--crop", "32", "--batch", "1", "--iters",
            str(iters), "--lpips-weight", "0", "--workers", "0", "--amp", "off", "--out", str(out),
            "--no-progress"]


def _small_config(tmp_path):
    import json
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"model": SMALL, "val_images": 1, "ckpt_every": 1}))
    return str(path)


def test_resume_never_unpickles_code(tmp_path, capsys, monkeypatch):
    """An older run's last.state.pt holding a payload (the issue's reproduction) is refused
    by name, and nothing in it runs; so is a payload beside a real checkpoint's keys."""
    monkeypatch.chdir(tmp_path)
    data = _data(tmp_path)
    out = tmp_path / "evilrun"
    out.mkdir()
    marker = tmp_path / "PWNED"
    for wrap in (lambda p: {"x": p},
                 lambda p: {"iteration": 1, "model": {}, "optimizer": {}, "scheduler": {}, "torch_rng": p,
                            "config": {}}):
        _pickle_with_payload(out / LEGACY_STATE_FILE, marker, wrap)
        code = main(_train_args(data, out, 2) + ["--resume"])
        err = capsys.readouterr().err
        assert code == 2 and not marker.exists()
        assert f"cannot read checkpoint {out / LEGACY_STATE_FILE}" in err and "nothing in it was run" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_older_runs_pickled_state_still_resumes(tmp_path, capsys):
    """A last.state.pt of plain tensors and containers (what inik wrote before) resumes through
    the safe reader; the run then writes last.state.safetensors and drops the old file."""
    data = _data(tmp_path)
    out = tmp_path / "run"
    cfg = _small_config(tmp_path)
    assert main(_train_args(data, out, 1) + ["--config", cfg]) == 0
    state = read_state(out)
    torch.save(state, out / LEGACY_STATE_FILE)
    (out / STATE_FILE).unlink()
    assert read_state(out)["iteration"] == 1
    assert main(_train_args(data, out, 2) + ["--config", cfg, "--resume"]) == 0, capsys.readouterr().err
    assert read_state(out)["iteration"] == 2
    assert (out / STATE_FILE).is_file() and not (out / LEGACY_STATE_FILE).exists()


def test_the_state_file_holds_no_pickle_and_round_trips(tmp_path):
    """safestate keeps tensors (any dtype, 0-d), int and str keys, tuples, None and floats;
    it refuses objects it cannot store instead of pickling them."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    opt.zero_grad()
    opt.param_groups[0]["params"][0].sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "rng": torch.get_rng_state(), "t": (1, 2.5, None, "$x"),
             "half": torch.ones(2, dtype=torch.bfloat16), "$odd": {1: "a", "b": [0.5]}}
    (tmp_path / "s.safetensors").write_bytes(safestate.dumps(state))
    back = safestate.load(tmp_path / "s.safetensors")
    assert back["t"] == (1, 2.5, None, "$x") and back["$odd"] == {1: "a", "b": [0.5]}
    assert torch.equal(back["rng"], state["rng"]) and back["half"].dtype == torch.bfloat16
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert b"\x80\x02" not in safestate.dumps(state)[:16]  # not a pickle stream
    with pytest.raises(TypeError, match="cannot store a Payload"):
        safestate.dumps({"x": Payload("nowhere")})


@pytest.mark.parametrize("content", [b"", b"garbage", "pickle"])
def test_a_damaged_or_foreign_state_file_is_named(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    if content == "pickle":
        _pickle_with_payload(out / STATE_FILE, tmp_path / "PWNED")
    else:
        (out / STATE_FILE).write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read checkpoint {out / STATE_FILE}"):
        read_state(out)
    assert not (tmp_path / "PWNED").exists()


def test_weights_files_with_a_payload_are_refused(tmp_path, capsys):
    """--weights, --init and INIKNet.load read safetensors only: a pickle is not read."""
    marker = tmp_path / "PWNED"
    bad = tmp_path / "evil.safetensors"
    _pickle_with_payload(bad, marker)
    with pytest.raises(ValueError, match="evil.safetensors"):
        inik.INIKNet.load(bad)
    img = tmp_path / "in.png"
    from inik.data.io import write_image
    write_image(img, torch.rand(3, 32, 32))
    assert main(["deblur", str(img), "-o", str(tmp_path / "o.png"), "--weights", str(bad)]) != 0
    assert main(_train_args(_data(tmp_path), tmp_path / "run", 1) + ["--init", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "evil.safetensors" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("arch", ["alexnet", "vgg19"])
def test_backbone_files_in_the_hub_cache_are_read_without_code(tmp_path, monkeypatch, arch):
    """The LPIPS (AlexNet) and VGG-19 files are read with weights_only=True: a payload is refused
    by name (as missing weights, which eval can go without); real-shaped weights load."""
    import torchvision.models as tvm

    from inik.losses import MissingWeightsError, VGG19Features, build_lpips, hub_weights_path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    path, _ = hub_weights_path(arch)
    pathlib.Path(path).parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    _pickle_with_payload(path, marker)
    build = (lambda: build_lpips("alex")) if arch == "alexnet" else (lambda: VGG19Features(pretrained=True))
    with pytest.raises(MissingWeightsError, match=f"{path}: not torchvision's {arch} weights"):
        build()
    assert not marker.exists()
    for foreign in ({"x": torch.zeros(1)}, {k: v * float("nan") for k, v in getattr(tvm, arch)().state_dict().items()}):
        torch.save(foreign, path)  # other tensors, or NaN: refused by name, not a load_state_dict traceback
        with pytest.raises(MissingWeightsError, match=f"{path}: not torchvision's {arch} weights"):
            build()
    torch.manual_seed(0)
    net = getattr(tvm, arch)()
    torch.save(net.state_dict(), path)
    built = build()
    if arch == "alexnet":  # every conv of the LPIPS backbone is the file's
        convs = [m for m in built.net.modules() if isinstance(m, torch.nn.Conv2d)]
        want = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == len(want) == 5
        for a, b in zip(convs, want):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    else:
        assert torch.equal(built.features[0].weight, net.features[0].weight)


def test_a_checkpoint_whose_settings_do_not_match_its_tensors_is_named(tmp_path, capsys):
    """Stored settings for another network than the stored tensors, or a malformed iteration:
    one line naming the file (it was a 57-line traceback)."""
    data = _data(tmp_path)
    out = tmp_path / "run"
    cfg = _small_config(tmp_path)
    assert main(_train_args(data, out, 1) + ["--config", cfg]) == 0
    good = read_state(out)
    for edit, message in ((lambda s: s["config"]["model"].update(width=8), "does not match its own settings"),
                          (lambda s: s.update(iteration="1"), "missing a valid iteration"),
                          (lambda s: s["optimizer"].update(state={}, param_groups=[]), "does not match its own"),
                          (lambda s: s.update(torch_rng=[1, 2]), "missing a valid torch_rng")):
        state = read_state(out) if out.joinpath(STATE_FILE).exists() else good
        edit(state)
        (out / STATE_FILE).write_bytes(safestate.dumps(state))
        capsys.readouterr()
        assert main(_train_args(data, out, 3) + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(out / STATE_FILE) in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        (out / STATE_FILE).write_bytes(safestate.dumps(good))
