"""Reconstruction-error reports: metrics, a table for people, and a side-by-side picture.

Three comparisons say how faithful a run was (DESIGN §5):
- `reconstruction_vs_input`: what the user sees;
- `vae_vs_input`: the VAE round trip of the input, the ceiling no inversion can beat;
- `reconstruction_vs_vae`: the inversion's own error, free of the VAE's: the number that tells
  inversion methods apart.
Metrics are computed on the float decoded pixels in [0, 1] of the image content (padding removed),
at the resolution actually fed to the VAE.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity

# Wang et al. 2004 ("Image quality assessment: from error visibility to structural similarity"):
# an 11×11 Gaussian window of σ = 1.5, population covariance, data range 1 on [0, 1] pixels.
SSIM_SETTINGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}
HEATMAP_FULL_SCALE = 0.1  # an absolute per-pixel error of 0.1 (10% of the range) is drawn at full colour


def to_unit(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] → (H, W, 3) float64 in [0, 1]."""
    return ((pixels.detach().double().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def image_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """PSNR (dB), SSIM and MSE between two (H, W, 3) images in [0, 1]."""
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    side = min(a.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        ssim = float("nan")  # too small for a structural comparison
    else:
        ssim = float(structural_similarity(a, b, channel_axis=-1, win_size=win if side < 11 else None,
                                           **SSIM_SETTINGS))
    return {"psnr": psnr, "ssim": ssim, "mse": mse}


def region_metrics(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """PSNR (dB), SSIM and MSE between two (H, W, 3) images in [0, 1] over the pixels where `region` (H, W) is
    true; SSIM is the mean of its full map over the region. An empty region gives NaNs."""
    region = region.astype(bool)
    if not region.any():
        return {"psnr": float("nan"), "ssim": float("nan"), "mse": float("nan"), "pixels": 0}
    mse = float(np.mean((a[region] - b[region]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    side = min(a.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    ssim = float("nan")
    if win >= 3:
        _, full = structural_similarity(a, b, channel_axis=-1, win_size=win if side < 11 else None, full=True,
                                        **SSIM_SETTINGS)
        ssim = float(full.mean(axis=2)[region].mean())
    return {"psnr": psnr, "ssim": ssim, "mse": mse, "pixels": int(region.sum())}


def reconstruction_metrics(original: torch.Tensor, vae: torch.Tensor, recon: torch.Tensor) -> dict[str, Any]:
    """The three comparisons for (3, H, W) tensors in [-1, 1]."""
    o, v, r = to_unit(original), to_unit(vae), to_unit(recon)
    return {"reconstruction_vs_input": image_metrics(r, o), "vae_vs_input": image_metrics(v, o),
            "reconstruction_vs_vae": image_metrics(r, v), "ssim_settings": dict(SSIM_SETTINGS)}


def latent_error(z_hat: torch.Tensor, z0: torch.Tensor) -> float:
    """‖ẑ_0 − z_0‖ / ‖z_0‖, the latent round-trip error."""
    return float((z_hat.double() - z0.double()).norm() / z0.double().norm().clamp(min=1e-30))


def error_heatmap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute error as an (H, W, 3) uint8 inferno heat-map at a fixed scale."""
    err = np.abs(a - b).mean(axis=2) / HEATMAP_FULL_SCALE
    gray = np.clip(err * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def side_by_side(panels: list[tuple[str, np.ndarray]], min_height: int = 256) -> np.ndarray:
    """Labelled panels of (H, W, 3) uint8 images in a row, small images enlarged by pixel repetition."""
    h = panels[0][1].shape[0]
    scale = max(1, -(-min_height // h))
    header = 22
    tiles = []
    for label, img in panels:
        big = np.repeat(np.repeat(img, scale, 0), scale, 1)
        tile = np.full((big.shape[0] + header, big.shape[1] + 4, 3), 255, np.uint8)
        tile[header:, 2:-2] = big
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def comparison_image(original: torch.Tensor, vae: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """input | VAE round trip | reconstruction | error heat-map, for (3, H, W) tensors in [-1, 1]."""
    o, v, r = to_unit(original), to_unit(vae), to_unit(recon)
    u8 = lambda a: (a * 255).round().astype(np.uint8)  # noqa: E731
    return side_by_side([("input", u8(o)), ("VAE round trip", u8(v)), ("reconstruction", u8(r)),
                         (f"|error|, full scale {HEATMAP_FULL_SCALE:g}", error_heatmap(r, o))])


def _fmt(value: float, digits: int = 2) -> str:
    return "inf" if value == math.inf else ("n/a" if value != value else f"{value:.{digits}f}")


def format_table(report: Mapping[str, Any]) -> str:
    """A short text table of a reconstruction report, for people."""
    m = report["metrics"]
    rows = [("reconstruction vs input", m["reconstruction_vs_input"]), ("VAE round trip vs input (ceiling)",
            m["vae_vs_input"]), ("reconstruction vs VAE round trip", m["reconstruction_vs_vae"])]
    lines = [f"{'':36s} {'PSNR dB':>8s} {'SSIM':>7s} {'MSE':>10s}"]
    for name, r in rows:
        lines.append(f"{name:36s} {_fmt(r['psnr']):>8s} {_fmt(r['ssim'], 4):>7s} {r['mse']:>10.3e}")
    inv = report["inversion"]
    lines.append(f"latent round-trip error ‖ẑ0−z0‖/‖z0‖: {report['latent_error']:.3e}")
    residual = inv["max_residual"]
    residual = "not measured" if residual != residual else f"{residual:.2e}"
    lines.append(f"method {inv['method']}, {inv['steps']} steps, guidance {inv['guidance']:g}, "
                 f"{inv['network_calls']} network calls, largest step residual {residual}")
    lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in report["seconds"].items()))
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """Replace non-finite floats (which JSON cannot hold) by strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
