"""INIKNet: implicit neural inverse kernels for single-image defocus deblurring.

Quan, Yao, Ji, ICCV 2023; every architectural fact is in docs/ARCHITECTURE.md section 3.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ifm
from ..ops.ifm import backend_names
from ..runtime import keep_freed_memory
from .dictionary import KINDS, Dictionary
from .recurrent import DuplexRecurrence, UnidirectionalRecurrence
from .unet import UNet

LEVELS = 3  # image pyramid y/4, y/2, y
# The U-Net runs on y/4 and halves it twice more, so the padded input must be a
# multiple of 16, and at least 32 so that its coarsest maps are 2x2 (reflect padding).
MULTIPLE = 16
MIN_SIZE = 32
RECURRENCES = ("duplex", "unidirectional")
MIXINGS = ("sum", "conv")
FORMAT = "inik.INIKNet"
#: The revision of weights and runs saved before the field existed (see INIKNetConfig.revision).
UNRECORDED_REVISION = 1
#: The largest width, scales and atoms a config may ask for (the authors': 32, 8, 10). A
#: configuration comes from files too; it is checked before anything is built, so that a
#: file cannot ask for a network that takes all memory.
LIMITS = {"width": 256, "scales": 32, "atoms": 64}
#: INIKNetConfig.cascade's gates are this times the parameter ``cascade_gate``.
CASCADE_GATE_SCALE = 25.0


@dataclass(frozen=True)
class INIKNetConfig:
    """Architecture of an INIKNet; the defaults are the authors' configuration.

    width: U-Net base width (= ConvLSTM hidden size).
    scales: R, dictionary scales incl. the delta scale 0; atom sizes 3..2R-1.
    atoms: N, atoms per scale.
    dictionary: "ms-inr" (default), "per-scale-inr" ("Non-MS Dict") or "upsampled" ("Non-INR Dict").
    recurrence: "duplex" (default) or "unidirectional" (each level also sees the previous level's output).
    mixing: "sum" (the paper's Eq. 8, default) or "conv" (the authors' code: a learned
        1x1 convolution over all R*N*3 weighted responses).
    zero_mean_atoms: subtract from every atom its mean over its own k x k support
        (not in the paper; off by default). The IFM output is the residual
        x_hat - y, i.e. the inverse kernel minus the delta, whose DC gain is 0
        for any blur kernel that preserves brightness; zero-mean atoms make that
        exact, so flat regions keep their brightness and colour whatever mu and
        omega are.
    revision: 2 (default) is the authors' network; 1 is what inik built before
        2026-12-02, for weights trained then (the bundled default weights until
        that day; a weights file without this field is revision 1): no ReLU after the
        first convolution of each U-Net stage (the authors' BasicConv has one),
        the atoms' polar grid from a float32 linspace whose centre is off zero by
        rounding for sizes 7, 11, 13 and 15 (so the centre tap's angle feature
        was -3pi/4's, not 0's, there), and with ``mixing="conv"`` y, not zeros,
        as scale 0's responses.
    cascade: coarse to fine restoration (not in the paper; off by default). Each
        finer level's IFM works on its pyramid image plus the coarser level's
        correction, upsampled: z = y_l + up(x_{l-1} - y_{l-1}). The 1/4 level's
        atoms reach 4x as far at full resolution (a 15x15 atom spans 60 px), so
        blur wider than the finest atoms is undone coarse and refined fine; where
        the coarse levels leave their input unchanged, z is y_l exactly. A learned
        gate per level scales the correction; it starts at 0, so that weights of
        the network without the cascade are a warm start that computes what they
        computed. (The parameter ``cascade_gate`` holds the gates divided by
        :data:`CASCADE_GATE_SCALE`: Adam moves every parameter by about the
        learning rate per step, which would take thousands of steps to open a gate
        to 1.) Inference then runs the IFM at every level.
    """

    width: int = 32
    scales: int = 8
    atoms: int = 10
    dictionary: str = "ms-inr"
    recurrence: str = "duplex"
    mixing: str = "sum"
    zero_mean_atoms: bool = False
    revision: int = 2
    cascade: bool = False

    def __post_init__(self):
        if self.dictionary not in KINDS:
            raise ValueError(f"INIKNet: dictionary must be one of {KINDS}, got {self.dictionary!r}")
        if self.recurrence not in RECURRENCES:
            raise ValueError(f"INIKNet: recurrence must be one of {RECURRENCES}, got {self.recurrence!r}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"INIKNet: mixing must be one of {MIXINGS}, got {self.mixing!r}")
        if isinstance(self.revision, bool) or not isinstance(self.revision, numbers.Integral) \
                or self.revision not in (1, 2):
            raise ValueError(f"INIKNet: revision must be 1 (inik before 2026-12-02) or 2 (the authors' network), "
                             f"got {self.revision!r}")
        object.__setattr__(self, "revision", int(self.revision))  # saved as JSON: no numpy integers
        for name in ("zero_mean_atoms", "cascade"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"INIKNet: {name} must be a bool, got {getattr(self, name)!r}")
        for name in ("width", "scales", "atoms"):
            value, least = getattr(self, name), 2 if name == "scales" else 1
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not least <= value <= LIMITS[name]:
                raise ValueError(f"INIKNet: {name} must be an integer from {least} to {LIMITS[name]}, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers as plain ints (saved as JSON)


@dataclass
class Interpretation:
    """What the model computed, per level (coarse to fine), cropped to the input.

    outputs: (B, 3, H_l, W_l) restored images.
    mu: (B, R, H_l, W_l) softmax scale weights (channel 0 is the delta / in-focus scale).
    omega: (B, N, H_l, W_l) atom weights.
    atoms: per scale 1..R-1, the (N, k, k) atoms, k = 3, 5, ..., 2R-1.
    """

    outputs: list
    mu: list
    omega: list
    atoms: list


def _pad_mode(size: int, pad: int) -> str:
    return "reflect" if pad < size else "replicate"


def pad_to_valid(y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right to a size the network accepts; returns it and (H, W)."""
    h, w = y.shape[-2:]
    ph = max(MIN_SIZE, -(-h // MULTIPLE) * MULTIPLE) - h
    pw = max(MIN_SIZE, -(-w // MULTIPLE) * MULTIPLE) - w
    if ph:
        y = F.pad(y, (0, 0, 0, ph), mode=_pad_mode(h, ph))
    if pw:
        y = F.pad(y, (0, pw, 0, 0), mode=_pad_mode(w, pw))
    return y, (h, w)


class INIKNet(nn.Module):
    """INIKNet. ``model(y)``: (B, 3, H, W) float in [0, 1], any H, W >= 1 -> restored (B, 3, H, W).

    Build with keyword arguments of :class:`INIKNetConfig` (``INIKNet()`` is the
    authors' configuration). ``ifm_backend`` picks the IFM implementation
    (see :func:`inik.ops.ifm`); it is a runtime choice, not part of the weights.
    """

    def __init__(self, config: Optional[INIKNetConfig] = None, *, ifm_backend: str = "auto", **kwargs):
        super().__init__()
        if config is None:
            config = INIKNetConfig(**kwargs)
        elif not isinstance(config, INIKNetConfig):
            raise TypeError(f"INIKNet: config must be an INIKNetConfig (or pass options as keywords, "
                            f"e.g. INIKNet(width=8)), got {type(config).__name__}")
        elif kwargs:
            raise TypeError("INIKNet: pass either config or keyword arguments, not both")
        names = backend_names()  # read now: a backend registered after import counts
        if not isinstance(ifm_backend, str) or ifm_backend not in ("auto",) + names:
            raise ValueError(f"INIKNet: ifm_backend must be 'auto' or one of {names}, got {ifm_backend!r}")
        self.config = config
        self.ifm_backend = ifm_backend
        c = config
        self.unet = UNet(in_ch=6 if c.recurrence == "unidirectional" else 3, width=c.width, stage_relu=c.revision >= 2)
        branch = DuplexRecurrence if c.recurrence == "duplex" else UnidirectionalRecurrence
        self.mu_branch = branch(c.width)
        self.omega_branch = branch(c.width)
        self.mu_head = nn.Conv2d(c.width, c.scales, 1)
        self.omega_head = nn.Conv2d(c.width, c.atoms, 1)
        self.dictionary = Dictionary(c.scales, c.atoms, c.dictionary, zero_mean=c.zero_mean_atoms,
                                     exact_grid=c.revision >= 2)
        if c.mixing == "conv":
            self.mix = nn.Conv2d(c.scales * c.atoms * 3, 3, 1)
        if c.cascade:
            self.cascade_gate = nn.Parameter(torch.zeros(LEVELS - 1))

    # ------------------------------------------------------------ core

    def _check_input(self, y: torch.Tensor) -> None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"INIKNet: y must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() != 4 or y.shape[1] != 3:
            raise ValueError(f"INIKNet: y must have shape (B, 3, H, W), got {tuple(y.shape)}")
        if not y.is_floating_point():
            raise TypeError(f"INIKNet: y must be a floating-point image in [0, 1], got dtype {y.dtype}")
        if min(y.shape) < 1:
            raise ValueError(f"INIKNet: y must be non-empty, got shape {tuple(y.shape)}")
        device = next(self.parameters()).device
        if y.device != device:
            raise ValueError(f"INIKNet: y is on {y.device} but the model is on {device} (y.to({str(device)!r}) "
                             f"or model.to({str(y.device)!r}))")
        # The finiteness check reads a value back to the host: not while compiling or
        # while a CUDA graph is being recorded (replays cannot re-check anyway).
        capturing = y.is_cuda and torch.cuda.is_current_stream_capturing()
        if not torch.compiler.is_compiling() and not capturing and not bool(torch.isfinite(y).all()):
            raise ValueError("INIKNet: y contains NaN or Inf values")

    def _restore(self, y, mu_feat, omega_feat, atoms):
        """One level's output and its (mu, omega)."""
        mu = torch.softmax(self.mu_head(mu_feat), 1)
        omega = self.omega_head(omega_feat)
        dt = y.dtype
        if self.config.mixing == "sum":
            x = y + ifm(y, mu[:, 1:].to(dt), omega.to(dt), atoms.to(dt),
                        support=self.dictionary.support, backend=self.ifm_backend)
        else:
            x = y + self.mix(self._weighted_responses(y, mu, omega))
        return x, mu, omega

    def _weighted_responses(self, y, mu, omega):
        """(B, R*3*N, H, W): every scale's per-channel atom responses times mu * omega
        - the authors' unfused form, whose scale 0 responds with zeros (the residual y
        is the delta atom; revision 1 gave y itself there)."""
        b, c, h, w = y.shape
        n = omega.shape[1]
        y_bc = y.reshape(b * c, 1, h, w)
        scale0 = y if self.config.revision < 2 else torch.zeros_like(y)
        resp = [scale0.unsqueeze(2).expand(b, c, n, h, w)]
        for s in range(1, self.config.scales):
            a = self.dictionary.scale_atoms(s).to(y.dtype).unsqueeze(1)
            resp.append(F.conv2d(y_bc, a, padding=s).view(b, c, n, h, w))
        weights = mu.to(y.dtype)[:, :, None, None] * omega.to(y.dtype)[:, None, None]  # (B, R, 1, N, H, W)
        return (torch.stack(resp, 1) * weights).reshape(b, -1, h, w)

    def _run(self, y: torch.Tensor, all_levels: bool):
        """Outputs, mu and omega of the levels that are computed (coarse to fine)."""
        if y.device.type == "cpu" and not torch.compiler.is_compiling():
            # A CPU forward frees and re-allocates activations of tens of MB; without this
            # (process-wide) allocator setting every one costs fresh page faults.
            keep_freed_memory()  # once; INIK_MALLOC=system opts out
        # Sizes as integers (y's are multiples of 16; the same scale, 2 or 4, as scale_factor
        # gives): a graph exported with dynamic sizes keeps them exact (inik.export).
        h, w = y.shape[-2:]
        factors = [2 ** (LEVELS - 1 - l) for l in range(LEVELS)]
        pyramid = [F.interpolate(y, size=(h // s, w // s), mode="bilinear", align_corners=False) if s > 1 else y
                   for s in factors]
        atoms = self.dictionary()
        cascade = self.config.cascade
        results = []
        if self.config.recurrence == "duplex":
            feats = [self.unet(p) for p in pyramid]
            mu_feats, omega_feats = self.mu_branch(feats), self.omega_branch(feats)
            # without the cascade only the returned levels need their IFM
            for l in (range(LEVELS) if all_levels or cascade else [LEVELS - 1]):
                z = self._cascaded(pyramid, l, results[-1][0]) if cascade and l else pyramid[l]
                results.append(self._restore(z, mu_feats[l], omega_feats[l], atoms))
            return results if all_levels else results[-1:]
        mu_state = omega_state = None
        prev = pyramid[0]
        for l, p in enumerate(pyramid):
            z = self._cascaded(pyramid, l, results[-1][0]) if cascade and l else p
            prev = F.interpolate(prev, size=p.shape[-2:], mode="bilinear", align_corners=False)
            feat = self.unet(torch.cat([p, prev], 1))
            mu_feat, mu_state = self.mu_branch.step(feat, mu_state)
            omega_feat, omega_state = self.omega_branch.step(feat, omega_state)
            results.append(self._restore(z, mu_feat, omega_feat, atoms))
            prev = results[-1][0]
        return results if all_levels else results[-1:]

    def cascade_gates(self) -> torch.Tensor:
        """The cascade's gates, level 1/2 then full resolution (see INIKNetConfig.cascade)."""
        return self.cascade_gate * CASCADE_GATE_SCALE

    def _cascaded(self, pyramid, l: int, coarser: torch.Tensor) -> torch.Tensor:
        """Level l's IFM input with the cascade: its pyramid image plus the coarser
        level's correction (output minus input), upsampled x2, times the level's gate."""
        correction = (coarser - pyramid[l - 1]) * self.cascade_gates()[l - 1].to(coarser.dtype)
        return pyramid[l] + F.interpolate(correction, size=pyramid[l].shape[-2:], mode="bilinear",
                                          align_corners=False)

    def _prepare(self, y):
        self._check_input(y)
        dtype = next(self.parameters()).dtype
        return pad_to_valid(y.to(dtype))

    # ------------------------------------------------------------ public

    def forward(self, y: torch.Tensor, levels: bool = False):
        """(B, 3, H, W) float in [0, 1] -> restored (B, 3, H, W), same dtype.

        Any H, W >= 1: the input is padded (reflect) to a valid size and the
        output cropped back. Only the finest level's IFM runs (duplex recurrence,
        without ``cascade``).
        ``levels=True`` returns :meth:`forward_levels` instead (so that wrappers
        such as DistributedDataParallel, which only see ``forward``, can train).
        """
        if levels:
            return self.forward_levels(y)
        yp, (h, w) = self._prepare(y)
        # The network runs channels_last whatever the caller's layout (its fast kernels
        # take that layout), and the output comes back in the caller's.
        caller_cl = y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        x = self._run(yp.contiguous(memory_format=torch.channels_last), all_levels=False)[-1][0]
        x = x[..., :h, :w].to(y.dtype)
        return x.contiguous(memory_format=torch.channels_last if caller_cl else torch.contiguous_format)

    def forward_levels(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The three levels' outputs, coarse to fine: (B, 3, H/4, W/4), (B, 3, H/2, W/2), (B, 3, H, W).

        For the multi-scale training loss; H and W must be multiples of 16 (and >= 32).
        """
        self._check_input(y)
        h, w = y.shape[-2:]
        if h % MULTIPLE or w % MULTIPLE or h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"INIKNet.forward_levels: H and W must be multiples of {MULTIPLE} and at "
                             f"least {MIN_SIZE} (training crops), got {h}x{w}; use model(y) for any size")
        # in the parameters' dtype, as forward() takes it
        return [x for x, _, _ in self._run(y.to(next(self.parameters()).dtype), all_levels=True)]

    @torch.no_grad()
    def interpret(self, y: torch.Tensor) -> Interpretation:
        """mu, omega and outputs at every level (in y's dtype, as :meth:`forward`
        returns), and the atoms at every scale (in the parameters' dtype)."""
        yp, (h, w) = self._prepare(y)
        levels = self._run(yp, all_levels=True)
        crops = [(-(-h // 2 ** (LEVELS - 1 - l)), -(-w // 2 ** (LEVELS - 1 - l))) for l in range(LEVELS)]
        pick = lambda i: [lv[i][..., :ch, :cw].to(y.dtype) for lv, (ch, cw) in zip(levels, crops)]  # noqa: E731
        atoms = [self.dictionary.scale_atoms(s) for s in range(1, self.config.scales)]
        return Interpretation(outputs=pick(0), mu=pick(1), omega=pick(2), atoms=atoms)

    # ------------------------------------------------------------ weights

    def save(self, path: str | os.PathLike) -> None:
        """Write weights and configuration to one safetensors file (atomically: a
        temporary file in the same folder, renamed over ``path``; a symbolic link's
        target is what gets replaced)."""
        from safetensors.torch import save

        from .. import __version__
        from ..data.io import write_atomically
        shown = os.fsdecode(os.fspath(path))
        if not shown:
            raise ValueError("INIKNet.save: path is empty")
        target = os.path.realpath(shown)  # through symbolic links: the file they name is updated
        directory = os.path.dirname(target)
        if os.path.isdir(target):
            raise IsADirectoryError(f"INIKNet.save: {shown!r} is a folder; name a .safetensors file")
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"INIKNet.save: the folder of {shown!r} does not exist")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = asdict(self.config)
        if not config["cascade"]:  # an option off is left out, so that versions before it read the file
            del config["cascade"]
        meta = {"format": FORMAT, "config": json.dumps(config), "inik_version": __version__}
        # written by write_atomically, with the usual permissions (safetensors' own save_file
        # leaves 0600: a weights file the owner's group could not read)
        write_atomically(target, save(state, metadata=meta))

    @staticmethod
    def read_config(path: str | os.PathLike) -> INIKNetConfig:
        """The configuration stored in an INIKNet safetensors file."""
        return INIKNet._stored_config(path, required=True)

    @staticmethod
    def _stored_config(path, required: bool = False) -> Optional[INIKNetConfig]:
        """:meth:`read_config`; None for a safetensors file without inik's metadata unless ``required``."""
        from safetensors import safe_open
        path = _weights_path(path, "read_config")  # load and load_weights have checked theirs
        if not os.path.isfile(path):
            raise FileNotFoundError(f"INIKNet.load: no weights file at {path!r}")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:
            raise ValueError(f"INIKNet.load: {path!r} is not a readable safetensors file ({exc})") from exc
        if meta.get("format") != FORMAT or "config" not in meta:
            if not required:
                return None
            raise ValueError(f"INIKNet.load: {path!r} is not an INIKNet weights file (no inik metadata)")
        try:
            stored = json.loads(meta["config"])
        except ValueError as exc:
            raise ValueError(f"INIKNet.load: {path!r} has a malformed config ({exc})") from exc
        if not isinstance(stored, dict):
            raise ValueError(f"INIKNet.load: {path!r} has a malformed config (not a JSON object)")
        # Options missing from the file take their defaults (files from before they existed),
        # except the revision: a file without one was written by revision 1's inik.
        # Options this version does not know would change the network unseen, so they stop the load.
        stored.setdefault("revision", UNRECORDED_REVISION)
        unknown = sorted(set(stored) - {f.name for f in fields(INIKNetConfig)})
        if unknown:
            raise ValueError(f"INIKNet.load: {path!r} sets options this version of inik does not know: "
                             f"{unknown} (written by version {meta.get('inik_version', '?')})")
        try:
            return INIKNetConfig(**stored)
        except ValueError as exc:  # sizes out of bounds, unknown kinds: the file's, named
            raise ValueError(f"INIKNet.load: {path!r} holds a configuration this version refuses: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
             ifm_backend: str = "auto") -> "INIKNet":
        """Rebuild a model from a file written by :meth:`save`."""
        from ..devices import usable_device
        path = _weights_path(path, "load")
        map_location = usable_device(map_location, "map_location=")
        model = cls(cls.read_config(path), ifm_backend=ifm_backend)
        model.load_weights(path, map_location, check_config=False)  # built from the file's configuration
        return model.to(map_location)

    def load_weights(self, path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                     optional: tuple[str, ...] = (), check_config: bool = True) -> None:
        """Load the tensors of an INIKNet safetensors file into this model; a
        ValueError naming the file when they are not this model's tensors (some
        missing, renamed, of another shape or not floating point), cannot be read,
        or were saved (by :meth:`save`) with another configuration (:meth:`load`
        builds the file's model; ``check_config=False`` loads them all the same, as
        ``inik train --init`` does after its own check). Tensors named in ``optional``
        may be missing (they keep their values) or extra (ignored)."""
        from safetensors.torch import load_file

        from ..devices import usable_device
        shown = path = _weights_path(path, "load_weights")
        map_location = usable_device(map_location, "map_location=")
        stored = self._stored_config(path) if check_config else None  # None: a file without inik's metadata
        if stored is not None and stored != self.config:
            differ = [f"{f.name}={getattr(stored, f.name)!r} (this model: {getattr(self.config, f.name)!r})"
                      for f in fields(INIKNetConfig) if getattr(stored, f.name) != getattr(self.config, f.name)]
            raise ValueError(f"INIKNet.load: {shown!r} was saved with {', '.join(differ)}: "
                             f"INIKNet.load(path) builds the model it was saved from")
        try:
            tensors = load_file(shown, device=str(map_location))
        except Exception as exc:
            raise ValueError(f"INIKNet.load: {shown!r} is not a readable safetensors file ({exc})") from None
        expected = self.state_dict()
        tensors = {k: v for k, v in tensors.items() if k in expected or k not in optional}
        missing = [k for k in expected if k not in tensors and k not in optional]
        unexpected = [k for k in tensors if k not in expected]

        def first(keys):
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        if missing or unexpected:
            problems = ([f"missing tensors {first(missing)}"] if missing else []) + \
                       ([f"unexpected tensors {first(unexpected)}"] if unexpected else [])
            raise ValueError(f"INIKNet.load: {shown!r} does not hold this model's weights: {'; '.join(problems)} "
                             f"(a file from another version of inik, or edited?)")
        shapes = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
                  for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
        if shapes:
            raise ValueError(f"INIKNet.load: {shown!r} does not hold this model's weights: tensors of another "
                             f"shape: {first(shapes)}")
        kinds = [f"{k} ({tensors[k].dtype})" for k, v in expected.items()
                 if k in tensors and tensors[k].is_floating_point() != v.is_floating_point()]
        if kinds:
            raise ValueError(f"INIKNet.load: {shown!r} does not hold this model's weights: tensors of another "
                             f"kind (floating point expected): {first(kinds)}")
        # NaN or Inf weights would turn every photo into NaN, written as black; checked in the model's
        # dtype, which a float64 file's large values overflow
        bad = [k for k, v in tensors.items() if v.is_floating_point()
               and not bool(torch.isfinite(v.to(expected[k].dtype) if k in expected else v).all())]
        if bad:
            raise ValueError(f"INIKNet.load: {shown!r} holds NaN or Inf weights ({first(bad)}): a damaged file, "
                             f"or a run that diverged")
        self.load_state_dict(tensors, strict=not optional)


def _weights_path(path, caller: str) -> str:
    """A weights file's path as str (bytes paths too, as save takes them); TypeError naming it."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"INIKNet.{caller}: path must be a file path (str or os.PathLike), got {type(path).__name__}")
    return os.fsdecode(os.fspath(path))
