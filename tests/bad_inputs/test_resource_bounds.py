"""Sizes read from files or flags are bounded before anything is allocated: model
configurations in weights files, training settings, synthetic sizes; weights that
would compute NaN are refused on load. (Image dimensions: test_resource_bounds_images.py.)"""

import json

import pytest
import torch

import inik
from inik.cli import main

SMALL = dict(width=4, scales=3, atoms=2)


def _weights_with_config(path, **config):
    """A tiny real weights file whose stored config is then edited to ``config``: the tensors
    stay small, as in a crafted file."""
    from safetensors.torch import load_file, save
    inik.INIKNet(**SMALL).save(path)
    tensors = load_file(str(path))
    meta = {"format": "inik.INIKNet", "config": json.dumps({**SMALL, "revision": 2, **config})}
    path.write_bytes(save(tensors, metadata=meta))


@pytest.mark.parametrize("field, value", [("scales", 100_000), ("width", 1_000_000), ("atoms", 10**9)])
def test_a_weights_file_cannot_ask_for_a_huge_network(tmp_path, capsys, field, value):
    """The stored config is checked before the model is built: a one-line refusal at once
    (it took minutes and all memory, or gave a traceback)."""
    path = tmp_path / "w.safetensors"
    _weights_with_config(path, **{field: value})
    with pytest.raises(ValueError, match=f"w.safetensors.* refuses: INIKNet: {field} must be an integer from"):
        inik.INIKNet.read_config(path)
    img = tmp_path / "in.png"
    from inik.data.io import write_image
    write_image(img, torch.rand(3, 32, 32))
    assert main(["deblur", str(img), "-o", str(tmp_path / "o.png"), "--weights", str(path)]) != 0
    err = capsys.readouterr().err
    assert f"{field} must be an integer from" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_on_load(tmp_path, bad):
    """NaN weights made a black photo with exit 0; now the load names the file and a tensor."""
    model = inik.INIKNet(**SMALL)
    with torch.no_grad():
        model.mu_head.weight[0, 0] = bad
    model.save(tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=r"nan.safetensors.*NaN or Inf weights \(mu_head.weight\)"):
        inik.INIKNet.load(tmp_path / "nan.safetensors")


def test_weights_that_overflow_float32_are_refused_on_load(tmp_path):
    """A float64 file's 1e300 is finite in the file and Inf in the model (loaded without a
    word, it made NaN photos); load(None) names its argument."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    inik.INIKNet(**SMALL).save(tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k).double() for k in f.keys()}
    tensors["mu_head.bias"][0] = 1e300
    save_file(tensors, str(tmp_path / "w64.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"w64.safetensors.*NaN or Inf weights \(mu_head.bias\)"):
        inik.INIKNet.load(tmp_path / "w64.safetensors")
    tensors["mu_head.bias"][0] = 0.5  # float64 values that fit load as float32
    save_file(tensors, str(tmp_path / "w64.safetensors"), metadata=meta)
    assert inik.INIKNet.load(tmp_path / "w64.safetensors").mu_head.bias.dtype == torch.float32
    with pytest.raises(TypeError, match="INIKNet.load: path must be a file path .*, got NoneType"):
        inik.INIKNet.load(None)
    with pytest.raises(TypeError, match="INIKNet.load_weights: path must be a file path .*, got int"):
        inik.INIKNet(**SMALL).load_weights(3)
    with pytest.raises(TypeError, match="INIKNet.read_config: path must be a file path"):
        inik.INIKNet.read_config(None)


def test_synth_sizes_are_bounded_before_anything_is_written(tmp_path, capsys):
    """A huge --size is refused by name before any folder is made (it ended in a memory
    traceback with empty folders); a failure in drawing the first pair leaves no folder."""
    from inik.data.synthetic import SyntheticConfig, export_synthetic_pairs
    out = tmp_path / "set"
    assert main(["synth", str(out), "--count", "1", "--size", "1000000"]) == 2
    assert "--size must be from 8 to 4096" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="size must be from 8 to 4096"):
        export_synthetic_pairs(out, 1, config=SyntheticConfig(size=5000))
    assert not out.exists()


@pytest.mark.parametrize("flag, value, message", [("--crop", "65536", "crop must be a multiple of 16 from 32 to"),
                                                  ("--batch", "100000", "batch must be at most")])
def test_training_sizes_are_bounded(tmp_path, capsys, flag, value, message):
    assert main(["train", flag, value, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()
