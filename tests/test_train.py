"""`inik train` and `inik eval`: learning, exact resume, atomic checkpoints, DDP, metrics."""

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import inik
from inik import safestate
from inik.cli import main
from inik.data.io import write_image
from inik.train import TrainConfig, TrainingInterrupted, load_config, read_state, save_checkpoint, train

SMALL = dict(width=8, scales=4, atoms=3)


def _pairs_folder(root, n=2, size=48, seed=0):
    """source/ and target/ with n pairs: target a blocky image, source its 5x5 box blur."""
    rng = np.random.default_rng(seed)
    (root / "source").mkdir(parents=True)
    (root / "target").mkdir()
    for i in range(n):
        sharp = np.kron(rng.random((size // 8, size // 8, 3)), np.ones((8, 8, 1))).astype(np.float32)
        t = torch.from_numpy(sharp.transpose(2, 0, 1))[None]
        blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(t, (2, 2, 2, 2), mode="replicate"), 5, 1)
        write_image(root / "target" / f"img{i}.png", sharp)
        write_image(root / "source" / f"img{i}.png", blur[0].permute(1, 2, 0).numpy())
    return root


def _fill_the_disk(monkeypatch):
    """Every file written through os.fdopen (io.write_atomically) gets a few bytes,
    then OSError("disk full"); monkeypatch.undo() ends it."""
    real_fdopen = os.fdopen

    class DiskFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(b"partial")
            raise OSError("disk full")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: DiskFull(real_fdopen(fd, *a, **k)))


def _log(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cfg(tmp_path, data, **kw):
    base = dict(dataset="folder", data=str(data), crop=32, batch=2, lpips_weight=0.0, workers=0,
                log_every=1, val_every=1000, ckpt_every=1000, val_images=2, model=SMALL, amp="off",
                out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_lowers_the_loss(tmp_path):
    data = _pairs_folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data, iters=60, lr=2e-3)
    model = train(cfg, progress=False)
    rows = _log(tmp_path / "run")
    assert [int(r["iter"]) for r in rows] == list(range(1, 61))
    first = np.mean([float(r["loss"]) for r in rows[:5]])
    last = np.mean([float(r["loss"]) for r in rows[-5:]])
    assert last < 0.5 * first, (first, last)
    loaded = inik.INIKNet.load(tmp_path / "run" / "last.safetensors")
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = _pairs_folder(tmp_path / "data", n=3)
    full = train(_cfg(tmp_path, data, iters=8, out=str(tmp_path / "full")), progress=False)
    train(_cfg(tmp_path, data, iters=5, ckpt_every=5, out=str(tmp_path / "cut")), progress=False)
    resumed = train(_cfg(tmp_path, data, iters=8, out=str(tmp_path / "cut")), resume=True, progress=False)
    losses = lambda d: [r["loss"] for r in _log(tmp_path / d)]  # noqa: E731
    assert losses("cut") == losses("full") and len(losses("full")) == 8
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_init_fine_tunes_from_weights(tmp_path):
    """--init starts from a weights file (here with zero-mean atoms switched on) and
    refuses a file of another architecture with a message naming it."""
    data = _pairs_folder(tmp_path / "data")
    torch.manual_seed(1)
    start = inik.INIKNet(**SMALL)
    start.save(tmp_path / "start.safetensors")
    zero = dict(SMALL, zero_mean_atoms=True)
    cfg = _cfg(tmp_path, data, iters=1, lr=1e-12, model=zero, init=str(tmp_path / "start.safetensors"))
    tuned = train(cfg, progress=False)
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=name)
    assert tuned.config.zero_mean_atoms
    inik.INIKNet(width=4, scales=4, atoms=3).save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="other.safetensors.*does not match"):
        train(_cfg(tmp_path, data, iters=1, init=str(tmp_path / "other.safetensors"), out=str(tmp_path / "r2")),
              progress=False)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        train(_cfg(tmp_path, data, iters=1, init=str(tmp_path / "missing.safetensors"), out=str(tmp_path / "r3")),
              progress=False)


def test_init_warm_starts_the_cascade_from_weights_without_it(tmp_path, caplog):
    """A file without the cascade starts a cascade run: the gates are new (0, so the start
    computes the file's function), the other tensors are the file's, and a warning says
    that the function differs; the reverse drops the gates."""
    from inik.train import init_weights
    torch.manual_seed(3)
    start = inik.INIKNet(**SMALL)
    start.save(tmp_path / "plain.safetensors")
    casc = inik.INIKNet(**dict(SMALL, cascade=True))
    with torch.no_grad():
        casc.cascade_gate.fill_(0.5)
    with caplog.at_level("WARNING", logger="inik"):
        init_weights(casc, str(tmp_path / "plain.safetensors"))
    assert "cascade=False; this run uses cascade=True" in caplog.text
    assert torch.equal(casc.cascade_gate, torch.full((2,), 0.5))  # not in the file: kept
    y = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        casc.cascade_gate.zero_()
        torch.testing.assert_close(casc.eval()(y), start.eval()(y), rtol=0, atol=0)
        casc.cascade_gate.fill_(0.5)
    casc.save(tmp_path / "casc.safetensors")
    plain = inik.INIKNet(**SMALL)
    init_weights(plain, str(tmp_path / "casc.safetensors"))
    for name, t in plain.state_dict().items():
        assert torch.equal(t, casc.state_dict()[name]), name


def test_failed_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    data = _pairs_folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data, iters=2, ckpt_every=2)
    model = train(cfg, progress=False)
    out = tmp_path / "run"
    before = inik.INIKNet.load(out / "last.safetensors").state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    _fill_the_disk(monkeypatch)  # the weights file's write stops part-way
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out, model, opt, torch.optim.lr_scheduler.StepLR(opt, 1), 3, cfg)
    monkeypatch.undo()
    after = inik.INIKNet.load(out / "last.safetensors").state_dict()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"iters": 10, "crop": 64, "lr": 1e-3}))
    cfg = load_config(str(path), {"crop": 96, "lr": None})
    assert (cfg.iters, cfg.crop, cfg.lr) == (10, 96, 1e-3)
    toml = tmp_path / "c.toml"  # the same in TOML (tomllib, or tomli before Python 3.11)
    toml.write_text('iters = 10\ncrop = 64\nlr = 1e-3\n[model]\ncascade = true\n')
    cfg = load_config(str(toml), {})
    assert (cfg.iters, cfg.crop, cfg.lr, cfg.model["cascade"]) == (10, 64, 1e-3, True)
    toml.write_text("iters = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(str(toml), {})
    assert TrainConfig().iters == 400_000 and TrainConfig().lr == 2e-4 and TrainConfig().batch == 4
    path.write_text(json.dumps({"iterz": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(str(path), {})
    with pytest.raises(ValueError, match="multiple of 16"):
        TrainConfig(crop=50)
    with pytest.raises(ValueError, match="needs --data"):
        TrainConfig(dataset="dpdd")


def test_cli_train_synthetic(tmp_path):
    out = tmp_path / "syn"
    rc = main(["train", "--dataset", "synthetic", "--iters", "2", "--crop", "32", "--batch", "1",
               "--lpips-weight", "0", "--workers", "0", "--log-every", "1", "--val-every", "2", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    rows = _log(out)
    assert [r["iter"] for r in rows] == ["1", "2"] and rows[-1]["val_psnr"]
    assert inik.INIKNet.load(out / "last.safetensors").config == inik.INIKNetConfig()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = train(cfg, device="cpu", progress=False)
    torch.save(model.state_dict(), os.path.join(result_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_keep_identical_weights(tmp_path):
    data = _pairs_folder(tmp_path / "data", n=4)
    cfg = _cfg(tmp_path, data, iters=3, batch=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    start = inik.INIKNet(**SMALL).state_dict()
    moved = False
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        moved |= not torch.equal(a[k], start[k])
    assert moved


def _ddp_failing_worker(rank, world, port, cfg, result_dir):
    """_ddp_worker, writing each rank's error instead of the weights."""
    try:
        _ddp_worker(rank, world, port, cfg, result_dir)
    except ValueError as exc:
        Path(result_dir, f"error{rank}.txt").write_text(str(exc))


def test_ddp_stops_every_rank_when_rank_0_cannot_start(tmp_path):
    """What only rank 0 reads (the validation set, the log on resume) failed there alone,
    and the other ranks waited for it in the first all-reduce until a timeout."""
    data = _pairs_folder(tmp_path / "data", n=2)
    tiny = _pairs_folder(tmp_path / "tiny", n=1, size=8)
    for name in ("source", "target"):
        write_image(tiny / name / "img0.png", np.zeros((5, 6, 3), np.float32), overwrite=True)
    cfg = _cfg(tmp_path, data, iters=2, batch=1, val_data=str(tiny), val_images=1)
    mp.spawn(_ddp_failing_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    errors = [(tmp_path / f"error{r}.txt").read_text() for r in (0, 1)]
    assert "validation needs at least 7x7" in errors[0] and errors[1].startswith("rank 0: --val-data: "), errors
    assert not (tmp_path / "run").exists()


def _ddp_ema_worker(rank, world, port, cfg, result_dir):
    """_ddp_worker, recording on each rank the weights the average is updated with."""
    seen = _recording_updates()
    _ddp_worker(rank, world, port, cfg, result_dir)
    torch.save(seen, os.path.join(result_dir, f"seen{rank}.pt"))


def test_ddp_with_ema_averages_on_rank_0(tmp_path):
    """Under DDP rank 0 keeps, validates and saves the average of the (identical) weights
    of every step; the other ranks train without one."""
    data = _pairs_folder(tmp_path / "data", n=4)
    cfg = _cfg(tmp_path, data, iters=3, batch=1, ema=0.5)
    mp.spawn(_ddp_ema_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    average, raw = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    seen, none = (torch.load(tmp_path / f"seen{r}.pt") for r in (0, 1))
    assert len(seen) == 3 and none == []
    state = read_state(tmp_path / "run")
    assert state["ema_updates"] == 3
    for k in raw:
        torch.testing.assert_close(state["model"][k], raw[k], rtol=0, atol=0)
    expected = _averaged(seen, 0.5)
    _assert_weights({k: average[k].double() for k in expected}, expected)
    _assert_weights(_weights(tmp_path / "run" / "last.safetensors"), expected)
    assert any(not torch.equal(average[k], raw[k]) for k in raw)


def test_eval_matches_skimage(tmp_path):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    data = _pairs_folder(tmp_path / "data", n=2, size=40)
    torch.manual_seed(0)
    model = inik.INIKNet(**SMALL).eval()
    weights = tmp_path / "w.safetensors"
    model.save(weights)
    report_path = tmp_path / "report.json"
    rc = main(["eval", "--data", str(data), "--weights", str(weights), "--out", str(report_path),
               "--lpips", "off"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert [r["name"] for r in report["images"]] == ["img0", "img1"]  # the pair names (unique in a dataset)
    assert report["layout"] == "realdof" and report["split"] is None  # as detected; split is DPDD's only
    from PIL import Image
    psnrs = []
    for row in report["images"]:
        blurry = np.asarray(Image.open(data / "source" / f"{row['name']}.png"), dtype=np.float64) / 255
        sharp = np.asarray(Image.open(data / "target" / f"{row['name']}.png"), dtype=np.float64) / 255
        with torch.no_grad():
            out = model(torch.from_numpy(blurry.transpose(2, 0, 1)).float()[None])[0]
        out = np.clip(out.double().numpy().transpose(1, 2, 0), 0, 1)
        psnrs.append(peak_signal_noise_ratio(sharp, out, data_range=1))
        assert row["psnr"] == pytest.approx(psnrs[-1], abs=1e-4)
        assert row["ssim"] == pytest.approx(structural_similarity(sharp, out, channel_axis=-1, data_range=1), abs=1e-5)
        assert row["mae"] == pytest.approx(np.abs(out - sharp).mean(), abs=1e-6)
        assert row["seconds"] > 0
    assert report["mean"]["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert (tmp_path / "report.csv").is_file()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_eval_half_runs_what_deblur_half_runs(tmp_path, monkeypatch, native_bf16):
    """--half is bf16 autocast where the CPU has native bfloat16, float32 where it only
    emulates it (as `inik deblur --half`); the report records that --half was asked."""
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio

    import inik.loading
    from inik.tiling import restore
    monkeypatch.setattr(inik.loading, "cpu_has_bf16", lambda: native_bf16)
    data = _pairs_folder(tmp_path / "data", n=2, size=40)
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    inik.INIKNet(**SMALL).eval().save(weights)
    reports = {}
    for name, extra in (("full", []), ("half", ["--half"])):
        assert main(["eval", "--data", str(data), "--weights", str(weights), "--out", str(tmp_path / f"{name}.json"),
                     "--lpips", "off", *extra]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    half, full = reports["half"], reports["full"]
    assert half["half"] is True and full["half"] is False
    loaded, _ = inik.loading.load_model(weights)
    for row in half["images"]:
        blurry = np.asarray(Image.open(data / "source" / f"{row['name']}.png"), dtype=np.float32) / 255
        sharp = np.asarray(Image.open(data / "target" / f"{row['name']}.png"), dtype=np.float64) / 255
        out = restore(loaded, torch.from_numpy(blurry.transpose(2, 0, 1))[None],
                      autocast_dtype=torch.bfloat16 if native_bf16 else None)
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(sharp, out[0].double().numpy().transpose(1, 2, 0),
                                                                    data_range=1), abs=1e-4)
    same = [r["psnr"] for r in half["images"]] == [r["psnr"] for r in full["images"]]
    assert same is not native_bf16


def test_cli_train_without_lpips_weights_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    rc = main(["train", "--dataset", "synthetic", "--iters", "1", "--crop", "128", "--batch", "1",
               "--workers", "0", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "alexnet" in err and str(tmp_path / "torch_home") in err and "--lpips-weight 0" in err


def test_short_synthetic_run_lowers_the_held_out_loss(tmp_path):
    """On fresh synthetic pairs every step, the held-out PSNR (the loss it is
    trained on, measured on pairs it never sees) rises within a few dozen steps."""
    from inik.train import validate, validation_pairs
    cfg = TrainConfig(dataset="synthetic", crop=32, batch=4, iters=40, lr=1e-3, lpips_weight=0.0, workers=0,
                      log_every=40, val_every=40, val_images=8, model=SMALL, amp="off", max_blur=4.0,
                      out=str(tmp_path / "syn"))
    torch.manual_seed(cfg.seed)
    before = validate(inik.INIKNet(**SMALL), validation_pairs(cfg), "cpu")
    train(cfg, progress=False)
    after = float(_log(tmp_path / "syn")[-1]["val_psnr"])
    assert after > before + 1.0, (before, after)


def test_eval_identity_scores_the_input(tmp_path):
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    assert main(["eval", "--data", str(data), "--identity", "--out", str(tmp_path / "r.json"), "--lpips", "off"]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["images"][0]
    blurry = np.asarray(Image.open(data / "source" / "img0.png"), dtype=np.float64) / 255
    sharp = np.asarray(Image.open(data / "target" / "img0.png"), dtype=np.float64) / 255
    assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(sharp, blurry, data_range=1), abs=1e-6)


def test_eval_refuses_flags_that_would_be_ignored(tmp_path, capsys):
    """--identity runs no model, and a folder of pairs has no splits: such flags are
    refused by name rather than ignored."""
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    base = ["eval", "--data", str(data), "--lpips", "off", "--out", str(tmp_path / "r.json")]
    for extra, msg in ((["--identity", "--weights", "w.safetensors"], "--weights does not apply"),
                       (["--identity", "--half", "--tile", "512"], "--half, --tile do not apply"),
                       (["--identity", "--split", "train"], "--split train: ")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.json").exists()
    assert main(base + ["--identity", "--tile", "0"]) == 0  # 0: the whole image, as without --tile


def _config_file(tmp_path, data, **kw):
    values = dict(dataset="folder", data=str(data), crop=32, batch=1, lpips_weight=0.0, workers=0, log_every=1,
                  val_every=1000, ckpt_every=1000, val_images=1, model=SMALL, amp="off")
    values.update(kw)
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.json')))}.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_resume_keeps_the_runs_settings(tmp_path, capsys):
    """--resume takes the settings the run was saved with (a flag may extend --iters,
    not change the loss or the seed), refuses conflicting ones by name, and a new run
    never replaces an existing one."""
    data = _pairs_folder(tmp_path / "data")
    out = str(tmp_path / "run")
    cfg = _config_file(tmp_path, data, iters=2, seed=5, freq_weight=0.5)
    assert main(["train", "--config", cfg, "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    # no --config at all: the saved settings, not TrainConfig's defaults
    assert main(["train", "--out", out, "--resume", "--iters", "3", "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["seed"] == 5 and saved["freq_weight"] == 0.5 and saved["iters"] == 3
    assert saved["model"] == {**SMALL, "revision": 2}
    assert read_state(tmp_path / "run")["iteration"] == read_state(str(tmp_path / "run"))["iteration"] == 3
    capsys.readouterr()
    for flags, message in ((["--lr", "0.1", "--iters", "4"], "lr = 0.1 differs from the run's 0.0002"),
                           (["--config", _config_file(tmp_path, data, iters=4, seed=6)], "seed = 6 differs"),
                           (["--iters", "3"], "is at iteration 3 already")):
        assert main(["train", "--out", out, "--resume", "--no-progress"] + flags) == 2
        assert message in capsys.readouterr().err
    # a new run into the folder: refused, nothing touched
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert main(["train", "--config", cfg, "--out", out, "--no-progress"]) == 2
    assert "holds a run already: pass --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    with pytest.raises(ValueError, match="saved with other settings \\(seed\\)"):
        train(load_config(cfg, {"out": out, "seed": 9, "iters": 5}), resume=True, progress=False)


def test_config_file_values_are_checked(tmp_path, capsys):
    data = _pairs_folder(tmp_path / "data")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"iters": 3,}')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    cases = [(_config_file(tmp_path, data, iters="3"), "key 'iters' must be int, got '3'"),
             (_config_file(tmp_path, data, lr="fast"), "key 'lr' must be float, got 'fast'"),
             (_config_file(tmp_path, data, iters=3.5), "key 'iters' must be int, got 3.5"),
             (_config_file(tmp_path, data, val_data=3), "key 'val_data' must be a string or null, got 3"),
             (_config_file(tmp_path, data, lr=-1), "lr must be > 0, got -1.0"),
             (_config_file(tmp_path, data, workers=-1), "workers must be >= 0"),
             (str(bad_json), f"--config {bad_json}: not valid JSON"),
             (str(listed), "must hold an object of TrainConfig fields, got list")]
    for path, message in cases:
        assert main(["train", "--config", path, "--out", str(tmp_path / "r"), "--no-progress"]) == 2, path
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (path, err)
    assert load_config(_config_file(tmp_path, data, lr=1), {}).lr == 1.0  # an int for a float is fine


def test_train_reports_data_errors_without_a_traceback(tmp_path, capsys):
    data = _pairs_folder(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    cases = [(["--data", str(tmp_path / "empty")], "no known dataset layout"),
             (["--crop", "64"], "crop 64 is larger than"),
             (["--device", "nonsense"], "--device nonsense: not a torch device"),
             (["--device", "meta"], "--device meta: the meta device holds no data")]
    for i, (flags, message) in enumerate(cases):
        rc = main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(tmp_path / f"r{i}"),
                   "--no-progress"] + flags)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (flags, err)
        assert not (tmp_path / f"r{i}").exists(), flags  # a refused run leaves no folder behind


def test_a_few_photos_still_hold_one_out():
    from inik.data.synthetic import split_photos
    for n in (2, 3, 5):
        train_photos, held = split_photos([f"p{i}.png" for i in range(n)])
        assert len(held) == 1 and len(train_photos) == n - 1
    assert split_photos(["only.png"]) == ([__import__("pathlib").Path("only.png")], [])
    assert len(split_photos([f"p{i}.png" for i in range(310)])[1]) == 31  # the default model's split


def read_image_u8(path):
    from PIL import Image
    return np.asarray(Image.open(path))


def test_eval_checks_its_report_and_images_first(tmp_path, capsys):
    data = _pairs_folder(tmp_path / "data", n=1, size=40)
    report = tmp_path / "report.json"
    base = ["eval", "--data", str(data), "--identity", "--lpips", "off"]
    assert main(base + ["--out", str(report)]) == 0
    first = report.read_bytes()
    capsys.readouterr()
    (tmp_path / "adir.json").mkdir()
    for out, message in ((report, "exists (pass --overwrite"), (tmp_path / "r.csv", "name a .json report"),
                         (tmp_path / "adir.json", "is a folder")):
        assert main(base + ["--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert report.read_bytes() == first
    assert main(base + ["--out", str(report), "--overwrite"]) == 0
    # an image equal to its reference: PSNR inf, kept valid JSON
    same = _pairs_folder(tmp_path / "same", n=1, size=40)
    write_image(same / "source" / "img0.png", read_image_u8(same / "target" / "img0.png"), overwrite=True)
    assert main(["eval", "--data", str(same), "--identity", "--lpips", "off", "--out", str(tmp_path / "s.json")]) == 0
    strict = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert strict["images"][0]["psnr"] == "inf" and strict["mean"]["psnr"] == "inf"
    tiny = _pairs_folder(tmp_path / "tiny", n=1, size=8)
    write_image(tiny / "source" / "img0.png", np.zeros((5, 5, 3), np.float32), overwrite=True)
    write_image(tiny / "target" / "img0.png", np.zeros((5, 5, 3), np.float32), overwrite=True)
    capsys.readouterr()
    assert main(["eval", "--data", str(tiny), "--identity", "--lpips", "off", "--out", str(tmp_path / "t.json")]) == 2
    assert "too small for SSIM's 7x7 window" in capsys.readouterr().err
    import tifffile  # a float TIFF pair has no 8-bit reading: refused under --bits 8, scored natively
    floats = tmp_path / "floats"
    for side in ("source", "target"):
        (floats / side).mkdir(parents=True)
        tifffile.imwrite(floats / side / "img0.tif", np.full((12, 12, 3), 0.5, np.float32), photometric="rgb")
    base = ["eval", "--data", str(floats), "--identity", "--lpips", "off"]
    assert main(base + ["--bits", "8", "--out", str(tmp_path / "f.json")]) == 2
    assert "a floating-point image cannot be read as 8-bit" in capsys.readouterr().err
    assert main(base + ["--bits", "native", "--out", str(tmp_path / "f.json")]) == 0


def test_ctrl_c_saves_a_checkpoint_after_the_step(tmp_path, monkeypatch):
    """SIGINT during a step: the step finishes, its checkpoint is saved, training stops
    with TrainingInterrupted, and --resume then ends where an uninterrupted run does."""
    import signal

    import inik.training.loop as tr  # where train() looks train_step up

    data = _pairs_folder(tmp_path / "data")
    full = train(_cfg(tmp_path, data, iters=4, out=str(tmp_path / "full")), progress=False)
    real_step, calls = tr.train_step, []

    def step_with_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of step 2
        return real_step(*args)

    monkeypatch.setattr(tr, "train_step", step_with_ctrl_c)
    cfg = _cfg(tmp_path, data, iters=4, out=str(tmp_path / "cut"))
    with pytest.raises(TrainingInterrupted, match="interrupted after iteration 2"):
        train(cfg, progress=False)
    assert read_state(tmp_path / "cut")["iteration"] == 2
    assert signal.getsignal(signal.SIGINT) is not None and len(calls) == 2
    monkeypatch.setattr(tr, "train_step", real_step)
    resumed = train(cfg, resume=True, progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    rows = _log(tmp_path / "cut")
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4]
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds)  # the clock runs on across the resume
    assert float(rows[0]["lr"]) == cfg.lr  # the rate the first step used


def test_fp16_resume_keeps_the_loss_scale(tmp_path):
    """--amp fp16: the GradScaler's loss scale is saved with the checkpoint, so a cut and
    resumed run equals the uninterrupted one; a checkpoint without it still resumes."""
    data = _pairs_folder(tmp_path / "data", n=3)
    full = train(_cfg(tmp_path, data, iters=5, amp="fp16", lr=1e-3, out=str(tmp_path / "full")), progress=False)
    train(_cfg(tmp_path, data, iters=3, amp="fp16", lr=1e-3, out=str(tmp_path / "cut")), progress=False)
    state = read_state(tmp_path / "cut")
    assert state["scaler"]["scale"] < 2.0**16  # the first steps overflowed and lowered it
    resumed = train(_cfg(tmp_path, data, iters=5, amp="fp16", lr=1e-3, out=str(tmp_path / "cut")), resume=True,
                    progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    scale = lambda d: read_state(tmp_path / d)["scaler"]  # noqa: E731
    assert scale("cut") == scale("full")
    del state["scaler"]  # a checkpoint from before the scale was saved
    _write_state(state, tmp_path / "cut")
    train(_cfg(tmp_path, data, iters=4, amp="fp16", lr=1e-3, out=str(tmp_path / "cut")), resume=True, progress=False)


def test_float_settings_must_be_finite_and_sensible(tmp_path, capsys):
    """NaN, inf and absurd magnitudes are refused by name before anything runs (a NaN
    compares false with every bound; inf overflowed in the synthetic generator and a
    huge lr in Adam); config.json stays strict JSON."""
    data = _pairs_folder(tmp_path / "data")
    big_int = tmp_path / "big.json"
    with open(_config_file(tmp_path, data, iters=1)) as f:  # an integer too large for a float
        big_int.write_text(f.read()[:-1] + ', "lr": 1' + "0" * 400 + "}")
    cases = [(["--lr", "inf"], "lr must be a finite number, got inf"),
             (["--freq-weight", "nan"], "freq_weight must be a finite number, got nan"),
             (["--lr", "1e300"], "lr must be <= 1, got 1e+300"),
             (["--max-blur", "inf"], "max_blur must be a finite number, got inf"),
             (["--max-blur", "1e300"], "max_blur must be <= 64"),
             (["--vgg-weight", "1e9"], "vgg_weight must be <= 1000"),
             (["--radius-power", "0"], "radius_power must be in (0, 16], got 0"),
             (["--narrow-prob", "1.5"], "narrow_prob must be in [0, 1], got 1.5"),
             (["--narrow-blur", "0"], "narrow_blur must be > 0, got 0"),
             (["--layouts", "subject,tilted"], "layouts must be a comma-separated list of random, subject"),
             (["--config", _config_file(tmp_path, data, mse_weight=float("nan"))], "mse_weight must be a finite"),
             (["--config", str(big_int)], "key 'lr' must be a finite number")]
    for flags, message in cases:
        rc = main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(tmp_path / "r"),
                   "--no-progress"] + flags)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (flags, err)
        assert not (tmp_path / "r").exists(), flags
    with pytest.raises(ValueError, match="photo_prob must be a finite number, got nan"):
        TrainConfig(photo_prob=float("nan"))
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(tmp_path / "ok"),
                 "--no-progress"]) == 0
    json.loads((tmp_path / "ok" / "config.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_synthetic_training_data_takes_the_layouts_and_radius_law():
    """The training pairs follow the config's layouts and radius law (the wide-blur stages
    train on the depth layouts of real photos)."""
    from inik.training.data import build_source
    cfg = TrainConfig(crop=32, layouts="subject, reverse", radius_power=2.0, max_blur=6.0, workers=0,
                      narrow_prob=0.25, narrow_blur=2.0)
    assert cfg.layouts == "subject,reverse"
    source = build_source(cfg, seed=0)
    synth = source.synth
    assert synth.config.layouts == ("subject", "reverse") and synth.config.radius_power == 2.0
    assert (synth.config.narrow_prob, synth.config.narrow_radius) == (0.25, 2.0)
    assert {synth.sample(i).params["layout"] for i in range(8)} == {"subject", "reverse"}
    assert build_source(TrainConfig(crop=32), seed=0).synth.config.layouts == ("random",)


def test_eval_reports_images_too_small_for_lpips_and_scores_the_others(tmp_path, monkeypatch, capsys):
    """LPIPS's AlexNet needs 31x31 px: with LPIPS on, a smaller image fails by name and
    the others are scored (it crashed after scoring them); --lpips off scores it."""
    import inik.metrics
    from inik.losses import LPIPS_MIN_SIZE
    real = inik.metrics.LPIPSMetric
    monkeypatch.setattr(inik.metrics, "LPIPSMetric", lambda device: real(device, pretrained_backbone=False))
    data = _pairs_folder(tmp_path / "data", n=1, size=LPIPS_MIN_SIZE + 1)
    small = _pairs_folder(tmp_path / "small", n=1, size=24)
    for name in ("source", "target"):
        os.replace(small / name / "img0.png", data / name / "img1.png")  # scored after img0
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["eval", "--data", str(data), "--identity", "--lpips", "on", "--out", str(report)]) == 1
    err = capsys.readouterr().err
    assert str(data / "source" / "img1.png") in err and "--lpips off" in err and "Traceback" not in err, err
    scored = json.loads(report.read_text())
    assert [r["name"] for r in scored["images"]] == ["img0"] and [f["name"] for f in scored["failed"]] == ["img1"]
    assert main(["eval", "--data", str(data), "--identity", "--lpips", "off", "--out", str(report),
                 "--overwrite"]) == 0


def test_all_loss_weights_zero_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="at least one loss weight .* must be > 0"):
        TrainConfig(mse_weight=0, freq_weight=0, lpips_weight=0)
    TrainConfig(mse_weight=0, freq_weight=0, lpips_weight=0, vgg_weight=0.5)  # any one term is a loss
    data = _pairs_folder(tmp_path / "data")
    rc = main(["train", "--config", _config_file(tmp_path, data, iters=1, mse_weight=0, freq_weight=0),
               "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "at least one loss weight" in err and "Traceback" not in err, err


def test_seed_is_checked(tmp_path, capsys):
    """Seeds run from 0 to 2**32 - 1 (numpy takes no negative seed; the paired datasets'
    permutation seed must fit torch's 64 bits)."""
    for seed in (-1, 2**32, 10**20):
        with pytest.raises(ValueError, match=f"seed must be in \\[0, 2\\*\\*32\\), got {seed}"):
            TrainConfig(seed=seed)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    data = _pairs_folder(tmp_path / "data")
    for seed in ("-1", "99999999999999999999"):
        rc = main(["train", "--config", _config_file(tmp_path, data, iters=1), "--seed", seed,
                   "--out", str(tmp_path / "r"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "seed must be in" in err and "Traceback" not in err, err
    out = tmp_path / "big"  # the largest seed trains on paired data
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--seed", str(2**32 - 1),
                 "--out", str(out), "--no-progress"]) == 0


def test_resume_names_an_unreadable_checkpoint(tmp_path, capsys):
    data = _pairs_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(out), "--no-progress"]) == 0
    state = out / "last.state.safetensors"
    whole = state.read_bytes()
    for content in (whole[: len(whole) // 2], b"garbage\n", safestate.dumps({"iteration": 1})):
        state.write_bytes(content)
        capsys.readouterr()
        assert main(["train", "--out", str(out), "--resume", "--iters", "2", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"cannot read checkpoint {state}" in err and "Traceback" not in err, err


def _write_state(state, out):
    (out / "last.state.safetensors").write_bytes(safestate.dumps(state))


def test_resume_names_edited_settings_in_the_checkpoint(tmp_path, capsys):
    """The settings saved in a checkpoint are checked by name and type, as a config file's
    are (an edited crop gave "not all arguments converted during string formatting")."""
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    out = tmp_path / "run"
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(out), "--no-progress"]) == 0
    good = read_state(out)
    for key, value, msg in (("crop", "abc", "key 'crop' must be int, got 'abc'"),
                            ("model", "abc", "key 'model' must be dict"),
                            ("colour", 1, "unknown settings ['colour']")):
        _write_state(good, out)
        state = read_state(out)
        state["config"][key] = value
        _write_state(state, out)
        capsys.readouterr()
        assert main(["train", "--out", str(out), "--resume", "--iters", "2", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"--resume: {out / 'last.state.safetensors'}: " in err and msg in err and err.count("\n") == 1, err
    good["config"]["val_data"] = ""  # saved before empty paths were refused: it meant none
    _write_state(good, out)
    assert main(["train", "--out", str(out), "--resume", "--iters", "2", "--no-progress"]) == 0


def test_weights_with_missing_or_renamed_tensors_are_refused_by_name(tmp_path, capsys):
    """A file with valid INIKNet metadata whose tensors are not the model's (another
    version, edited): a ValueError naming the file and the keys, rc 2 for --init and eval."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    model = inik.INIKNet(**SMALL)
    model.save(tmp_path / "ok.safetensors")
    with safe_open(str(tmp_path / "ok.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    first = next(iter(tensors))
    save_file({k: v for k, v in tensors.items() if k != first}, str(tmp_path / "missing.safetensors"), metadata=meta)
    renamed = {("old." + k if k == first else k): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=f"missing.safetensors.*missing tensors {first}"):
        inik.INIKNet.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=f"renamed.safetensors.*missing tensors {first}; unexpected tensors old"):
        inik.INIKNet.load(tmp_path / "renamed.safetensors")
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    capsys.readouterr()
    for command in (["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(tmp_path / "r"),
                     "--no-progress", "--init"],
                    ["eval", "--data", str(data), "--lpips", "off", "--out", str(tmp_path / "e.json"), "--weights"]):
        assert main(command + [str(tmp_path / "missing.safetensors")]) == 2
        err = capsys.readouterr().err
        assert "missing.safetensors" in err and first in err and "Traceback" not in err, err


def test_train_checks_image_sizes_first_and_hides_worker_tracebacks(tmp_path, capsys):
    """An image smaller than the crop is found before training starts (not when it is
    drawn, maybe hours in); an error in a data-loader worker is reported by its message,
    without the worker's traceback."""
    data = _pairs_folder(tmp_path / "data", n=2, size=48)
    small = _pairs_folder(tmp_path / "small", n=1, size=40)
    for name in ("source", "target"):
        os.replace(small / name / "img0.png", data / name / "small.png")
    out = tmp_path / "r"
    rc = main(["train", "--config", _config_file(tmp_path, data, iters=3), "--crop", "48", "--out", str(out),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{data / 'source' / 'small.png'}: crop 48 is larger than the image (40x40)" in err, err
    assert not (out / "log.csv").exists() and not (out / "last.state.safetensors").exists()
    broken = data / "source" / "img1.png"  # its header is intact: only decoding it fails, in the worker
    broken.write_bytes(broken.read_bytes()[:200])
    rc = main(["train", "--config", _config_file(tmp_path, data, iters=3, workers=1), "--out", str(tmp_path / "w"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and str(broken) in err and "Traceback" not in err and "worker" not in err, err


def test_ctrl_c_during_the_last_step_completes_the_run(tmp_path, monkeypatch, capsys):
    """SIGINT in the last step: the run reached its iterations and saved its final
    checkpoint, so it ends normally (rc 0), saying so."""
    import signal

    import inik.training.loop as tr  # where train() looks train_step up
    data = _pairs_folder(tmp_path / "data")
    real_step, calls = tr.train_step, []

    def step_with_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(tr, "train_step", step_with_ctrl_c)
    out = tmp_path / "run"
    rc = main(["train", "--config", _config_file(tmp_path, data, iters=2), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "the run is complete" in err and "--resume" not in err, err
    assert read_state(out)["iteration"] == 2
    assert [int(r["iter"]) for r in _log(out)] == [1, 2]


def test_resume_refuses_another_init(tmp_path, capsys):
    """--init is where a new run starts; a resumed run starts from its checkpoint, so a
    different --init is refused by name instead of being recorded as the run's."""
    data = _pairs_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    rc = main(["train", "--out", str(out), "--resume", "--iters", "2",
               "--init", str(tmp_path / "nonexistent.safetensors"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "init = " in err and "differs from the run's None" in err, err
    assert json.loads((out / "config.json").read_text())["init"] is None
    assert read_state(out)["config"]["init"] is None
    with pytest.raises(ValueError, match="saved with other settings \\(init\\)"):
        train(load_config(_config_file(tmp_path, data, iters=2, init="x.safetensors", out=str(out)), {}), resume=True,
              progress=False)


def test_eval_checks_the_reports_folder_first_and_writes_it_atomically(tmp_path, monkeypatch, capsys):
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    (tmp_path / "afile").write_text("")
    base = ["eval", "--data", str(data), "--identity", "--lpips", "off", "--out"]
    assert main(base + [str(tmp_path / "afile" / "sub" / "rep.json")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile'} is not a folder" in err and "Traceback" not in err, err
    report = tmp_path / "new" / "rep.json"  # a folder that does not exist yet is created
    assert main(base + [str(report)]) == 0
    before = {p.name: p.read_bytes() for p in report.parent.iterdir()}
    assert sorted(before) == ["rep.csv", "rep.json"]
    _fill_the_disk(monkeypatch)  # the report's write stops part-way
    capsys.readouterr()
    assert main(base + [str(report), "--overwrite"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "cannot write the report" in err and "disk full" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in report.parent.iterdir()} == before  # no partial or temporary file


def test_runs_record_their_network_revision(tmp_path, capsys):
    """A new run records the revision it trains (2); a run saved before revisions existed
    trained revision 1 and resumes as such, with or without the revision in the request;
    --init of a revision-1 file into a revision-2 run says how to fine-tune it."""
    data = _pairs_folder(tmp_path / "data")
    out = tmp_path / "run"
    cfg = _config_file(tmp_path, data, iters=1)
    assert main(["train", "--config", cfg, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == {**SMALL, "revision": 2}
    assert inik.INIKNet.load(out / "last.safetensors").config.revision == 2
    # the same run as an older inik saved it: no revision in its config
    state = read_state(out)
    state["config"]["model"] = dict(SMALL)
    _write_state(state, out)
    assert main(["train", "--config", cfg, "--out", str(out), "--resume", "--iters", "2", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == {**SMALL, "revision": 1}
    assert inik.INIKNet.load(out / "last.safetensors").config.revision == 1
    capsys.readouterr()
    assert main(["train", "--config", _config_file(tmp_path, data, iters=3, model={**SMALL, "revision": 2}),
                 "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "model = " in capsys.readouterr().err
    old = tmp_path / "old.safetensors"
    inik.INIKNet(**SMALL, revision=1).save(old)
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1, init=str(old)), "--out",
                 str(tmp_path / "ft"), "--no-progress"]) == 2
    assert '"init_other_revision": true to warm-start revision 2' in capsys.readouterr().err
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1, init=str(old),
                                                   model={**SMALL, "revision": 1}),
                 "--out", str(tmp_path / "ft"), "--no-progress"]) == 0


def test_init_other_revision_warm_starts_from_the_same_tensors(tmp_path, capsys):
    """init_other_revision (--init-other-revision) loads a revision-1 file into a
    revision-2 run tensor for tensor (they share a layout) and trains revision 2;
    it does not relax any other architecture check; a run saved before the field
    existed resumes (its missing field is the default, False)."""
    data = _pairs_folder(tmp_path / "data")
    torch.manual_seed(3)
    old = tmp_path / "old.safetensors"
    start = inik.INIKNet(**SMALL, revision=1)
    start.save(old)
    out = tmp_path / "warm"
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1, lr=1e-12, init=str(old)),
                 "--init-other-revision", "--out", str(out), "--no-progress"]) == 0
    tuned = inik.INIKNet.load(out / "last.safetensors")
    assert tuned.config.revision == 2 and json.loads((out / "config.json").read_text())["init_other_revision"]
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=name)
    inik.INIKNet(**dict(SMALL, atoms=SMALL["atoms"] + 1), revision=1).save(tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="wide.safetensors.*does not match"):
        train(_cfg(tmp_path, data, iters=1, init=str(tmp_path / "wide.safetensors"), init_other_revision=True,
                   out=str(tmp_path / "w")), progress=False)
    # the run as an inik without the field saved it
    state = read_state(out)
    del state["config"]["init_other_revision"]
    state["config"]["init"] = None
    _write_state(state, out)
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(out), "--resume",
                 "--iters", "2", "--no-progress"]) == 0, capsys.readouterr().err


def test_eval_crop_multiple_scores_the_authors_crop(tmp_path, capsys):
    """--crop-multiple 32 crops both images top-left to multiples of 32 before scoring,
    as the authors' test script does; the report records it; bad values are refused."""
    from inik.data.io import read_image
    from inik.metrics import evaluate
    data = _pairs_folder(tmp_path / "data", n=1, size=56)
    base = ["eval", "--data", str(data), "--identity", "--lpips", "off"]
    assert main(base + ["--crop-multiple", "32", "--out", str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    blurry, sharp = (read_image(data / sub / "img0.png")[0][:32, :32] for sub in ("source", "target"))
    want = evaluate(torch.from_numpy(blurry.transpose(2, 0, 1)).clamp(0, 1), sharp)
    assert report["crop_multiple"] == 32 and abs(report["mean"]["psnr"] - want["psnr"]) < 1e-9
    assert main(base + ["--out", str(tmp_path / "w.json")]) == 0
    assert json.loads((tmp_path / "w.json").read_text())["mean"]["psnr"] != report["mean"]["psnr"]
    capsys.readouterr()
    assert main(base + ["--crop-multiple", "0", "--out", str(tmp_path / "z.json")]) == 2
    assert "--crop-multiple must be >= 1" in capsys.readouterr().err
    assert main(base + ["--crop-multiple", "64", "--out", str(tmp_path / "z.json")]) == 2  # nothing left
    assert "too small for SSIM" in capsys.readouterr().err
    from inik.evaluate import evaluate_folder
    with pytest.raises(ValueError, match="crop_multiple must be an integer >= 1, got 0"):
        evaluate_folder(None, [], crop_multiple=0)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    """Every config in configs/ passes TrainConfig's checks (keys, types, values) and
    names a network that builds; a stage that starts from weights names the run whose
    output it reads (the model card's chain: runs/<earlier stage>/last.safetensors),
    never the bundled weights, which change when a new default is trained."""
    cfg = load_config(str(path), {"data": "DATA"})  # the data folder comes with --data
    inik.models.iniknet.INIKNetConfig(**cfg.model)
    if cfg.init is not None:  # an earlier stage's output
        assert cfg.init.startswith("runs/") and cfg.init.endswith("/last.safetensors"), cfg.init


def test_configs_are_shipped():
    """The check above runs on something: an empty configs/ would leave it no case."""
    shipped = {f"{p.parent.name}/{p.name}" for p in CONFIGS}
    assert {"configs/paper.json", "default/stage1.json", "default/stage4.json", "wide/ablation_cascade.json"} <= shipped


def test_weight_average_follows_its_formula():
    """average = d * average + (1 - d) * weights with d = min(decay, n / (n + 1)):
    the plain mean of every update's weights, then exponential; parameters averaged,
    buffers copied; a decay outside (0, 1) is refused."""
    from inik.training.average import WeightAverage
    torch.manual_seed(0)
    model = inik.INIKNet(**SMALL)
    average = WeightAverage(model, 0.7)
    seen = []
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        seen.append({k: p.detach().double().clone() for k, p in model.named_parameters()})
        average.update(model)
    assert average.updates == 6
    # n = 0, 1, 2: the mean of the first three (d = 0, 1/2, 2/3), then d = 0.7
    expected = {k: sum(w[k] for w in seen[:3]) / 3 for k in seen[0]}
    for w in seen[3:]:
        expected = {k: 0.7 * expected[k] + 0.3 * w[k] for k in expected}
    for name, p in average.model.named_parameters():
        torch.testing.assert_close(p.double(), expected[name], rtol=1e-6, atol=1e-6, msg=name)
        assert not p.requires_grad
    for mine, theirs in zip(average.model.buffers(), model.buffers()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema must be in"):
            WeightAverage(model, bad)


def _recording_updates(patch=setattr):
    """The raw weights after each training step, as WeightAverage.update sees them
    (``patch``: monkeypatch.setattr in a test; plain setattr in a spawned worker)."""
    from inik.training.average import WeightAverage
    seen, update = [], WeightAverage.update

    def record(self, model):
        seen.append({k: p.detach().clone().double() for k, p in model.named_parameters()})
        update(self, model)

    patch(WeightAverage, "update", record)
    return seen


def _averaged(seen, decay):
    """The average of the recorded weights ``seen``, from the first update on."""
    expected = None
    for n, raw in enumerate(seen):
        d = min(decay, n / (n + 1))
        expected = raw if d == 0 else {k: d * expected[k] + (1 - d) * raw[k] for k in raw}
    return expected


def _weights(path):
    return {k: p.detach().double() for k, p in inik.INIKNet.load(path).named_parameters()}


def _assert_weights(got, want):
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_ema_run_saves_validates_and_resumes_the_average(tmp_path, monkeypatch):
    """With ema: training itself is unchanged (the raw weights equal a run without it),
    last.safetensors holds the average of the raw weights of every step and
    last.raw.safetensors the raw ones, the validation PSNR is the average's, and a
    resumed run continues it exactly."""
    from inik.train import validate, validation_pairs
    data = _pairs_folder(tmp_path / "data", n=3)
    plain = train(_cfg(tmp_path, data, iters=6, out=str(tmp_path / "plain")), progress=False)
    seen = _recording_updates(monkeypatch.setattr)
    cfg = _cfg(tmp_path, data, iters=6, ema=0.6, val_every=6, out=str(tmp_path / "ema"))
    returned = train(cfg, progress=False)
    assert len(seen) == 6
    state = read_state(tmp_path / "ema")
    assert state["ema_updates"] == 6
    raw = inik.INIKNet.load(tmp_path / "ema" / "last.raw.safetensors").state_dict()
    for name, p in plain.state_dict().items():
        torch.testing.assert_close(state["model"][name], p, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(raw[name], p, rtol=0, atol=0, msg=name)
    _assert_weights(_weights(tmp_path / "ema" / "last.safetensors"), _averaged(seen, 0.6))
    saved = inik.INIKNet.load(tmp_path / "ema" / "last.safetensors")
    for a, b in zip(saved.state_dict().values(), returned.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    val_psnr = float(_log(tmp_path / "ema")[-1]["val_psnr"])
    assert val_psnr == pytest.approx(validate(saved, validation_pairs(cfg), "cpu"), abs=1e-3)
    assert val_psnr != pytest.approx(validate(plain, validation_pairs(cfg), "cpu"), abs=1e-3)
    # cut at 3 and resumed: the same average, bit for bit
    train(_cfg(tmp_path, data, iters=3, ema=0.6, ckpt_every=3, out=str(tmp_path / "cut")), progress=False)
    train(_cfg(tmp_path, data, iters=6, ema=0.6, out=str(tmp_path / "cut")), resume=True, progress=False)
    resumed = inik.INIKNet.load(tmp_path / "cut" / "last.safetensors")
    for a, b in zip(saved.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert read_state(tmp_path / "cut")["ema_updates"] == 6


def test_ema_added_changed_and_dropped_on_resume(tmp_path, capsys, caplog):
    """A run without an average resumed with --ema: its training goes on unchanged and the
    average starts at the iteration resumed; a new decay goes on from the saved average;
    --ema 0 drops it with a warning; a damaged average is named."""
    data = _pairs_folder(tmp_path / "data", n=3)
    out = tmp_path / "run"
    cfg = _config_file(tmp_path, data, iters=3)
    assert main(["train", "--config", cfg, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="inik"):
        assert main(["train", "--out", str(out), "--resume", "--iters", "4", "--ema", "0.9", "--no-progress"]) == 0
    assert "had no weight average; it starts at iteration 3" in caplog.text
    state = read_state(out)
    w4 = {k: v.double() for k, v in state["model"].items()}
    assert state["ema_updates"] == 1 and json.loads((out / "config.json").read_text())["ema"] == 0.9
    _assert_weights(_weights(out / "last.safetensors"), w4)  # one update: the weights themselves
    # a new decay: 0.3 < n / (n + 1) = 1/2, so it applies at the second update
    assert main(["train", "--out", str(out), "--resume", "--iters", "5", "--ema", "0.3", "--no-progress"]) == 0
    state = read_state(out)
    w5 = {k: v.double() for k, v in state["model"].items()}
    assert state["ema_updates"] == 2
    _assert_weights(_weights(out / "last.safetensors"), {k: 0.3 * w4[k] + 0.7 * w5[k] for k in w5})
    _assert_weights(_weights(out / "last.raw.safetensors"), w5)
    damaged = dict(state, ema={k: v[..., :1] if v.dim() else v for k, v in state["ema"].items()})
    _write_state(damaged, out)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--iters", "6", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a weight average that does not match the model" in err and "Traceback" not in err, err
    _write_state(state, out)
    caplog.clear()
    with caplog.at_level("WARNING", logger="inik"):
        assert main(["train", "--out", str(out), "--resume", "--iters", "6", "--ema", "0", "--no-progress"]) == 0
    assert "the run's weight average (2 updates) is dropped" in caplog.text
    state = read_state(out)
    assert "ema" not in state and not (out / "last.raw.safetensors").exists()
    _assert_weights(_weights(out / "last.safetensors"), {k: v.double() for k, v in state["model"].items()})
    assert main(["train", "--config", cfg, "--out", str(tmp_path / "r2"), "--ema", "1", "--no-progress"]) == 2
    assert "ema must be in [0, 1)" in capsys.readouterr().err


def test_nan_in_the_data_never_reaches_a_checkpoint(tmp_path, capsys):
    """A float TIFF holding NaN is refused by name (it trained "successfully" into NaN
    weights), and weights that go non-finite are never saved over the last checkpoint."""
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    sharp = np.full((32, 32, 3), 0.5, np.float32)
    sharp[::4, ::4] = np.nan
    (data / "target" / "img0.png").unlink()
    import tifffile
    tifffile.imwrite(data / "target" / "img0.tif", sharp, photometric="rgb")
    assert main(["train", "--config", _config_file(tmp_path, data, iters=2), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "img0.tif: holds NaN or Inf pixels" in err and err.count("inik train: ") == 1, err
    assert not (tmp_path / "r" / "last.safetensors").exists()
    (data / "target" / "img0.tif").unlink()  # mended: the same --out takes the run, which left no checkpoint
    write_image(data / "target" / "img0.png", np.full((32, 32, 3), 0.5, np.float32))
    assert main(["train", "--config", _config_file(tmp_path, data, iters=2), "--out", str(tmp_path / "r")]) == 0

    good = _pairs_folder(tmp_path / "good", n=1, size=32)
    cfg = _cfg(tmp_path, good, iters=2, batch=1, val_images=1, ckpt_every=1)
    train(cfg, progress=False)
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    cfg = _cfg(tmp_path, good, iters=4, batch=1, val_images=1, ckpt_every=1)
    real_step = inik.training.loop.train_step

    def poisoned(net, *args):
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
        return real_step(net, *args)
    inik.training.loop.train_step = poisoned
    try:
        with pytest.raises(ValueError, match="training diverged: the weights hold NaN or Inf at iteration 3"):
            train(cfg, resume=True, progress=False)
    finally:
        inik.training.loop.train_step = real_step
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before


def test_validation_images_and_out_folder_are_checked_before_training(tmp_path, capsys):
    """Validation images smaller than SSIM's window failed at the first validation, after
    the training since the last checkpoint; an --out holding another program's config.json
    or log.csv had them replaced; empty paths meant the current folder."""
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    tiny = _pairs_folder(tmp_path / "tiny", n=1, size=8)
    for name in ("source", "target"):
        write_image(tiny / name / "img0.png", np.zeros((5, 6, 3), np.float32), overwrite=True)
    cfg = _config_file(tmp_path, data, iters=2)
    assert main(["train", "--config", cfg, "--val-data", str(tiny), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "--val-data: " in err and "img0.png is 6x5 px; validation needs at least 7x7" in err, err
    assert not (tmp_path / "v").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.csv").write_text("mine\n")
    assert main(["train", "--config", cfg, "--out", str(mine)]) == 2
    assert "log.csv was not written by a run" in capsys.readouterr().err
    assert (mine / "log.csv").read_text() == "mine\n" and sorted(p.name for p in mine.iterdir()) == ["log.csv"]

    for flag in ("--out", "--init", "--val-data"):
        out = [] if flag == "--out" else ["--out", str(tmp_path / "e")]
        assert main(["train", "--config", cfg, flag, ""] + out) == 2
        assert "must name a path, got an empty string" in capsys.readouterr().err
    for key, value, msg in (("val_images", 10**8, "val_images must be in 1..10000"),
                            ("workers", 10**6, "workers must be at most 256"),
                            ("model", {"foo": 1}, "model: ")):
        assert main(["train", "--config", _config_file(tmp_path, data, **{key: value}),
                     "--out", str(tmp_path / "e")]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_resume_names_a_log_that_is_not_the_runs(tmp_path, capsys):
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    out = tmp_path / "run"
    assert main(["train", "--config", _config_file(tmp_path, data, iters=2), "--out", str(out)]) == 0
    capsys.readouterr()
    good = (out / "log.csv").read_text()
    header, rows = good.split("\n", 1)
    seconds = header.split(",").index("seconds")
    timeless = "".join(",".join(f if i != seconds else "x" for i, f in enumerate(r.split(","))) + "\n"
                       for r in rows.splitlines())  # every row before the checkpoint damaged the same way
    for text, says in (("foo,bar\n1,2\n", "columns"), ("\x00\xff\xfe\n", ""),
                       (f"{header}\nabc,1,2,3,4,\n{rows}", "has iter = 'abc', not a number"),
                       (f"{header}\n{timeless}", "the row after iteration 0 has seconds = 'x', not a number")):
        (out / "log.csv").write_bytes(text.encode("latin-1"))
        assert main(["train", "--resume", "--out", str(out), "--iters", "3"]) == 2
        err = capsys.readouterr().err
        assert f"{out / 'log.csv'} is not this run's training log" in err and err.count("\n") == 1, (text, err)
        assert says in err, (says, err)
    for n, tail in enumerate(("3,0.4\n", "abc,1,2,3,4,\n")):  # a cut-off tail past the checkpoint: dropped
        (out / "log.csv").write_text(good + tail)
        assert main(["train", "--resume", "--out", str(out), "--iters", str(3 + n)]) == 0
        assert [r["iter"] for r in _log(out)] == [str(i) for i in range(1, 4 + n)]
        good = (out / "log.csv").read_text()


@pytest.mark.parametrize("env, msg", [({"RANK": "0", "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc': expected a whole number"),
                                      ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK=5 must be below WORLD_SIZE=2")])
def test_distributed_variables_set_by_hand_are_checked(tmp_path, monkeypatch, capsys, env, msg):
    """A rank past the world size waited forever in torch's rendezvous."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = _pairs_folder(tmp_path / "data", n=1, size=32)
    assert main(["train", "--config", _config_file(tmp_path, data, iters=1), "--out", str(tmp_path / "r")]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "r").exists()
