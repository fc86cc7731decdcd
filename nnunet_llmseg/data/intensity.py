"""A strong intensity view of the unlabelled crops: perturbation without moving or cutting anything.

CutMix gives co-training its gain on ACDC, and also teaches the student to label a pasted box without its
surroundings (docs/methods.md). This view perturbs only intensities - contrast, brightness, gamma, noise - so every
voxel keeps its anatomical context, and a student taught on it by a teacher that saw the unperturbed crop learns
invariance to appearance, not to location (weak-to-strong consistency as in FixMatch, with an intensity-only
strong view). It acts on nnU-Net's already augmented, normalised crops, on the device, per sample.
"""

from __future__ import annotations

import torch


def _per_sample(x: torch.Tensor, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return (torch.rand(shape, generator=generator) * (hi - lo) + lo).to(x.device, x.dtype)


def _applied(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return (torch.rand(shape, generator=generator) < p).to(x.device)


def strong_intensity_view(x: torch.Tensor, contrast: tuple[float, float] = (0.6, 1.5),
                          brightness: tuple[float, float] = (-0.5, 0.5), gamma: tuple[float, float] = (0.6, 1.6),
                          noise_std: tuple[float, float] = (0.0, 0.15), p_contrast: float = 0.8,
                          p_brightness: float = 0.8, p_gamma: float = 0.5, p_noise: float = 0.5,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (``(B, C, *spatial)``, z-scored intensities) with random per-sample intensity changes, same shape.

    Contrast scales around each sample's mean; brightness adds a shift in units of the normalised intensity;
    gamma acts on each sample rescaled to [0, 1] and is mapped back to its range; noise is Gaussian. Each is
    applied to a sample with its probability ``p_*``. No voxel moves, so labels in the crop's frame stay valid.
    """
    dims = tuple(range(1, x.ndim))
    out = x
    mean = out.mean(dim=dims, keepdim=True)
    c = _per_sample(out, *contrast, generator)
    out = torch.where(_applied(out, p_contrast, generator), (out - mean) * c + mean, out)
    b = _per_sample(out, *brightness, generator)
    out = torch.where(_applied(out, p_brightness, generator), out + b, out)
    lo, hi = out.amin(dim=dims, keepdim=True), out.amax(dim=dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    g = _per_sample(out, *gamma, generator)
    gam = ((out - lo) / span).clamp(0, 1) ** g * span + lo
    out = torch.where(_applied(out, p_gamma, generator), gam, out)
    sd = _per_sample(out, *noise_std, generator)
    noise = torch.randn_like(out) if generator is None else \
        torch.randn(out.shape, generator=generator).to(out.device, out.dtype)  # seeded on the CPU (tests)
    noise = noise * sd
    return torch.where(_applied(out, p_noise, generator), out + noise, out)
