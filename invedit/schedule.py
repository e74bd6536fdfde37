"""Noise schedules: the ᾱ table of a model and the immutable `Schedule` that DDIM walks.

Notation (DDIM, Song et al. 2021; diffusers' `scheduling_ddim.py` in brackets):

| here              | paper        | diffusers                 |
|-------------------|--------------|---------------------------|
| `alphas_cumprod`  | ᾱ_t (α_t)    | `alphas_cumprod`          |
| `Schedule.alphas` | ᾱ at levels  | `alpha_prod_t(_prev)`     |
| `final_alpha`     | ᾱ of x_0     | `final_alpha_cumprod`     |

A `Schedule` of N steps has N timesteps t_0 > t_1 > … > t_{N-1} (the labels the network is called
with) and N + 1 noise levels: level i sits at ᾱ(t_i) and level N is the clean end (ᾱ = 1, or the
model's `set_alpha_to_one=False` rule: ᾱ(0)). Sampling step i goes from level i to level i + 1 with
ε evaluated at timestep t_i; inversion walks the same steps backwards. One Schedule serves both
directions, so N inversion steps always match N sampling steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

SPACINGS = ("leading", "trailing", "linspace")
MAX_TRAIN_TIMESTEPS = 100_000  # diffusers' models use 1,000; a bound keeps a hostile config from allocating GBs
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class NoiseConfig:
    """The parts of a diffusers scheduler config that decide the noise levels."""

    num_train_timesteps: int = 1000  # T, the number of training noise levels
    beta_start: float = 0.00085  # Stable Diffusion's values
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    timestep_spacing: str = "leading"  # how N inference timesteps are picked among T
    steps_offset: int = 1  # added to "leading" timesteps (SD uses 1)
    set_alpha_to_one: bool = False  # clean end at ᾱ = 1 (True) or at ᾱ(0) (SD: False)
    rescale_betas_zero_snr: bool = False  # Lin et al. 2024, Algorithm 1
    prediction_type: str = "epsilon"  # what the network predicts: epsilon | v_prediction | sample

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing {self.timestep_spacing!r} is not one of {SPACINGS}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not epsilon, v_prediction or sample")
        T = self.num_train_timesteps
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_TRAIN_TIMESTEPS:
            raise ValueError(f"num_train_timesteps {T!r} is not an integer between 1 and {MAX_TRAIN_TIMESTEPS}")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} {value!r} is not a number in [0, 1)")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) or not 0 <= self.steps_offset < T:
            raise ValueError(f"steps_offset {self.steps_offset!r} is not an integer in [0, {T})")

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> "NoiseConfig":
        """Read a diffusers scheduler config (any scheduler of the DDPM family); unknown keys are ignored."""
        if config.get("trained_betas") is not None:
            raise ValueError("schedulers with trained_betas are not supported yet")
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: config[k] for k in names if k in config and config[k] is not None})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _betas(config: NoiseConfig) -> torch.Tensor:
    T = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    if config.beta_schedule == "scaled_linear":  # latent diffusion: linear in √β
        return torch.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=torch.float64) ** 2
    # squaredcos_cap_v2: Nichol & Dhariwal 2021, eq. 17, β capped at 0.999
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)  # shift so √ᾱ_T = 0, scale so √ᾱ_0 is kept
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def alphas_cumprod(config: NoiseConfig) -> torch.Tensor:
    """ᾱ_t for t = 0 … T−1, in float64 ("use float64 for accuracy", guided-diffusion)."""
    betas = _betas(config)
    if config.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return torch.cumprod(1 - betas, 0)  # (T,)


def inference_timesteps(config: NoiseConfig, steps: int) -> list[int]:
    """The N sampling timesteps, noisiest first, exactly as diffusers' DDIMScheduler.set_timesteps picks them."""
    T = config.num_train_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and {T}, got {steps}")
    if config.timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1]
    elif config.timestep_spacing == "leading":
        ts = np.arange(steps)[::-1] * (T // steps) + config.steps_offset
    else:  # trailing
        ts = np.round(np.arange(T, 0, -T / steps)) - 1
    return [int(t) for t in ts]


@dataclass(frozen=True)
class Schedule:
    """N DDIM steps over N + 1 noise levels; immutable, shared by sampling and inversion."""

    timesteps: tuple[int, ...]  # (N,) network labels t_0 > … > t_{N-1}
    alphas: tuple[float, ...]  # (N+1,) ᾱ of level i = ᾱ(t_i); the last is the clean end
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self) -> None:
        if len(self.alphas) != len(self.timesteps) + 1:
            raise ValueError(f"a schedule of {len(self.timesteps)} steps needs {len(self.timesteps) + 1} levels")
        if any(not 0.0 < a <= 1.0 for a in self.alphas):
            raise ValueError("every ᾱ must lie in (0, 1]; a zero-SNR level (ᾱ = 0) cannot be inverted by DDIM")

    @classmethod
    def create(cls, noise: NoiseConfig, steps: int) -> "Schedule":
        """The schedule diffusers' DDIM would use for `steps` steps, levels chained step to step."""
        table = alphas_cumprod(noise)
        ts = inference_timesteps(noise, steps)
        final = 1.0 if noise.set_alpha_to_one else float(table[0])
        alphas = [float(table[t]) for t in ts] + [final]
        return cls(tuple(ts), tuple(alphas), noise)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def step_alphas(self, i: int) -> tuple[float, float]:
        """(ᾱ_from, ᾱ_to) of sampling step i (level i → level i + 1)."""
        return self.alphas[i], self.alphas[i + 1]

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": list(self.timesteps), "alphas": list(self.alphas), "noise": self.noise.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Schedule":
        return cls(tuple(int(t) for t in data["timesteps"]), tuple(float(a) for a in data["alphas"]),
                   NoiseConfig(**data["noise"]))
