"""Image quality metrics with the paper's protocol (docs/ARCHITECTURE.md section 5).

* Images in [0, 1]: 8-bit or 16-bit files divided by 255 or 65535
  (``inik.data.read_image``); the restored output is clipped to [0, 1]; full
  images, no border crop; computed in float64.
* PSNR: ``skimage.metrics.peak_signal_noise_ratio(target, output, data_range=1)``.
* SSIM: ``skimage.metrics.structural_similarity(target, output,
  channel_axis=-1, data_range=1)`` (7x7 uniform window, sample covariance).
  ``backend="torch"`` computes the same thing with ``avg_pool2d`` (faster, any
  device); it is tested equal to scikit-image to 1e-6.
* MAE: mean absolute error.
* LPIPS (AlexNet) on inputs scaled to [-1, 1], via :class:`LPIPSMetric`.

Images are accepted as numpy ``(H, W, C)`` or torch ``(C, H, W)`` /
``(1, C, H, W)``; the argument order is (output, target) throughout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: SSIM's window side [px] (skimage's default): images must be at least this large
SSIM_WINDOW = 7

__all__ = ["as_eval_array", "psnr", "ssim", "mae", "LPIPSMetric", "evaluate", "RadiusBins"]


def as_eval_array(image, clip: bool = True) -> np.ndarray:
    """numpy ``(H, W, C)`` or torch ``(C, H, W)``/``(1, C, H, W)`` -> float64
    numpy ``(H, W, C)``, clipped to [0, 1] when ``clip``."""
    if isinstance(image, torch.Tensor):
        from .data.io import tensor_to_image
        arr = tensor_to_image(image, np.float64)
    else:
        arr = np.asarray(image, dtype=np.float64)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"expected an (H, W, C) array; got shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0) if clip else arr


def _pair(output, target) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_eval_array(output, clip=True), as_eval_array(target, clip=False)
    if x.shape != y.shape:
        raise ValueError(f"output shape {x.shape} differs from target shape {y.shape} (both as H, W, C)")
    return x, y


def psnr(output, target) -> float:
    """PSNR in dB (data range 1) of the clipped output against the target; inf when
    they are equal."""
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _pair(output, target)
    with np.errstate(divide="ignore"):  # equal images: inf, which is the answer, not a warning
        return float(peak_signal_noise_ratio(y, x, data_range=1.0))


def mae(output, target) -> float:
    """Mean absolute error of the clipped output, in units of the [0, 1] range."""
    x, y = _pair(output, target)
    return float(np.abs(x - y).mean())


def _ssim_torch(x: np.ndarray, y: np.ndarray, win: int = SSIM_WINDOW) -> float:
    """scikit-image's SSIM (uniform window, sample covariance, data range 1,
    mean over the image minus a (win-1)/2 border, then over channels)."""
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[:, None]
    Y = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[:, None]
    if min(X.shape[-2:]) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels; got {tuple(X.shape[-2:])}")

    # skimage filters with reflect padding and then crops (win-1)/2 pixels off each
    # border; the cropped region only ever reads real pixels, so a valid
    # (unpadded) average gives exactly the values that are kept.
    def mean(t):
        return F.avg_pool2d(t, win, stride=1)

    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = mean(X), mean(Y)
    vx = cov_norm * (mean(X * X) - ux * ux)
    vy = cov_norm * (mean(Y * Y) - uy * uy)
    vxy = cov_norm * (mean(X * Y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean(dim=(1, 2, 3)).mean())


def ssim(output, target, backend: str = "skimage") -> float:
    """SSIM of the clipped output against the target (protocol: module doc).

    backend: ``"skimage"`` (the reference) or ``"torch"`` (same values, faster)."""
    x, y = _pair(output, target)
    if backend == "torch":
        return _ssim_torch(x, y)
    if backend != "skimage":
        raise ValueError(f"backend must be 'skimage' or 'torch'; got {backend!r}")
    from skimage.metrics import structural_similarity

    return float(structural_similarity(y, x, channel_axis=-1, data_range=1.0))


class RadiusBins:
    """PSNR and SSIM per blur-radius bin, pooled over a set of images, so that a
    change on wide blur is seen apart from the mean. Bins are [lo, hi) between
    consecutive ``edges`` [px], the last one closed; pixels beyond it are not scored.
    A bin's PSNR is that of the mean squared error over all its pixels (of every
    image); its SSIM is the mean of scikit-image's SSIM map over its pixels (the
    map's 3-px border left out, as :func:`ssim` leaves it out).
    """

    def __init__(self, edges):
        edges = [float(e) for e in edges]
        if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])) \
                or not all(np.isfinite(edges)):
            raise ValueError(f"radius bin edges must be at least two increasing finite numbers >= 0; got {edges}")
        self.edges = edges
        self.pixels = np.zeros(len(edges) - 1, np.int64)
        self.sse = np.zeros(len(edges) - 1)
        self.ssim_pixels = np.zeros(len(edges) - 1, np.int64)
        self.ssim_sum = np.zeros(len(edges) - 1)

    def _bins(self, radius: np.ndarray) -> np.ndarray:
        """Each pixel's bin index, -1 outside the edges."""
        index = np.searchsorted(self.edges, radius, side="right") - 1
        index[radius == self.edges[-1]] = len(self.edges) - 2  # the last bin is closed
        index[(radius < self.edges[0]) | (radius > self.edges[-1]) | ~np.isfinite(radius)] = -1
        return index

    def add(self, output, target, radius) -> None:
        """Score one image; ``radius``: (H, W) blur radius [px] of each pixel."""
        from skimage.metrics import structural_similarity

        x, y = _pair(output, target)
        radius = np.asarray(radius, dtype=np.float64)
        if radius.shape != x.shape[:2]:
            raise ValueError(f"radius map shape {radius.shape} differs from the image's {x.shape[:2]}")
        index = self._bins(radius)
        n = len(self.edges) - 1
        err = ((x - y) ** 2).mean(-1)
        _, smap = structural_similarity(y, x, channel_axis=-1, data_range=1.0, full=True)
        inner = (slice(3, -3), slice(3, -3))
        smap, sidx = smap.mean(-1)[inner], index[inner]
        sums = (np.bincount(index[index >= 0], minlength=n),
                np.bincount(index[index >= 0], weights=err[index >= 0], minlength=n),
                np.bincount(sidx[sidx >= 0], minlength=n),
                np.bincount(sidx[sidx >= 0], weights=smap[sidx >= 0], minlength=n))
        # added together once all are computed: an image that fails counts nowhere
        self.pixels += sums[0]
        self.sse += sums[1]
        self.ssim_pixels += sums[2]
        self.ssim_sum += sums[3]

    def result(self) -> list[dict]:
        """One dict per bin: ``{"bin": "lo-hi", "lo", "hi", "pixels", "psnr", "ssim"}``
        (psnr and ssim None for a bin without pixels)."""
        rows = []
        for i, (lo, hi) in enumerate(zip(self.edges, self.edges[1:])):
            mse = self.sse[i] / self.pixels[i] if self.pixels[i] else None
            rows.append({"bin": f"{lo:g}-{hi:g}", "lo": lo, "hi": hi, "pixels": int(self.pixels[i]),
                         "psnr": None if mse is None else (float("inf") if mse == 0 else float(-10 * np.log10(mse))),
                         "ssim": float(self.ssim_sum[i] / self.ssim_pixels[i]) if self.ssim_pixels[i] else None})
        return rows


class LPIPSMetric:
    """LPIPS (AlexNet, v0.1) of the clipped output against the target.

    Args:
        device: where to run the network.
        pretrained_backbone: see :func:`inik.losses.build_lpips` (raises
            ``MissingWeightsError`` naming the file to provide when the
            AlexNet weights are missing; False only for tests).
    """

    def __init__(self, device="cpu", pretrained_backbone: bool = True):
        from .losses import build_lpips

        self.device = torch.device(device)
        self.net = build_lpips("alex", pretrained_backbone).to(self.device)

    @torch.no_grad()
    def __call__(self, output, target) -> float:
        x, y = _pair(output, target)

        def prep(a):
            return torch.from_numpy(a.transpose(2, 0, 1).copy()).float()[None].to(self.device) * 2 - 1

        return float(self.net(prep(x), prep(y)).mean())


def evaluate(output, target, lpips: LPIPSMetric | None = None, ssim_backend: str = "skimage") -> dict[str, float]:
    """All metrics of one image pair: ``{"psnr", "ssim", "mae"}`` plus
    ``"lpips"`` when an :class:`LPIPSMetric` is given."""
    out = {"psnr": psnr(output, target), "ssim": ssim(output, target, ssim_backend), "mae": mae(output, target)}
    if lpips is not None:
        out["lpips"] = lpips(output, target)
    return out
