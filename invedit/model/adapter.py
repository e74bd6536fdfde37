"""The model adapter: loads a Stable Diffusion model and reduces it to what the math needs.

`Model.eps(x, t, cond)` is ε whatever the network predicts (ε, v or x_0), in float32; the VAE gives
latents as posterior mean × scaling factor; the noise schedule is read from the model's own scheduler
config. This package is the only place in invedit that imports diffusers and transformers.

Families: Stable Diffusion 1.x and 2.x (`StableDiffusionPipeline`) and SDXL (`StableDiffusionXLPipeline`).
SDXL conditions on two text encoders' penultimate hidden states, concatenated, plus the second encoder's
pooled embedding and the time ids (original size, crop, target size). So that everything above the adapter
keeps one conditioning tensor per row (tiled, mixed, swapped between rows), an SDXL conditioning is packed as
(B, L + 1, D): the L hidden states, then one row holding the pooled embedding (zero-padded to D); `eps`
unpacks it. Cross-attention still sees the L text tokens only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..ddim import to_epsilon
from ..schedule import NoiseConfig, alphas_cumprod

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = (".safetensors",)
TILE_ABOVE = 2048 * 2048  # pixels: a larger image goes through the VAE in tiles (Model.vae_tiled)
TILE_LATENT = 64  # latent pixels: the side of a VAE tile (SD's 512 pixels), at least the model's native size
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")  # refused: unpickling a file can run its code
CONVERT_HINT = ("convert it once, in a trusted environment, with: python -c \"import torch, safetensors.torch as s; "
                "sd = torch.load('model.ckpt', weights_only=True); sd = sd.get('state_dict', sd); "
                "s.save_file({k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}, "
                "'model.safetensors')\"")


class ModelLoadError(ValueError):
    """The model argument could not be turned into a loaded model; the message says why."""


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user gave
    kind: str  # "folder" | "single-file" | "hub"
    location: str  # resolved folder or file path, or the hub id


def resolve_source(spec: str | os.PathLike) -> ModelSource:
    """Say what a --model argument is, before diffusers guesses (PITFALLS: a missing path is not a hub id).

    An existing folder with model_index.json → a diffusers folder; an existing .safetensors → a single
    file; a pickle checkpoint (.ckpt, .bin, …) → refused, with how to convert it; something that looks like a
    path but does not exist → an error; else a hub id.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"model folder {text!r} has no model_index.json: it is not a diffusers pipeline folder")
        return ModelSource(text, "folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(f"model file {text!r} is a pickle checkpoint, which invedit refuses for safety "
                                 f"(unpickling can run code hidden in the file); {CONVERT_HINT}")
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"model file {text!r} is not a .safetensors checkpoint")
        return ModelSource(text, "single-file", str(path.resolve()))
    # a hub id is "name" or "owner/name"; anything else that does not exist is a wrong path
    looks_like_path = (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
                       or path.suffix.lower() in SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES)
    if looks_like_path or not text:
        raise ModelLoadError(f"model path {text!r} does not exist (give a diffusers folder, a .safetensors file, "
                             "or a hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5')")
    return ModelSource(text, "hub", text)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ModelLoadError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but PyTorch sees no CUDA device")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ModelLoadError("device 'mps' asked for, but PyTorch sees no Apple GPU (MPS) on this machine")
    return torch.device(device)


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _check_folder(folder: Path) -> None:
    """Name the component a diffusers folder lacks (diffusers reports a missing subfolder against the root)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model folder {str(folder)!r}: its model_index.json is not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"model folder {str(folder)!r}: its model_index.json is not a JSON object")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        if not (folder / name).is_dir():
            raise ModelLoadError(f"model folder {str(folder)!r} lacks its {name}/ subfolder, which model_index.json "
                                 f"lists ({spec[0]}.{spec[1]})")


def _hub_message(source: ModelSource, exc: Exception) -> str:
    text = str(exc)
    if "not fully cached" in text or "outgoing traffic has been disabled" in text or "offline" in text.lower():
        return (f"could not load model {source.spec!r}: it is not in the local Hugging Face cache and the hub is "
                "offline (HF_HUB_OFFLINE=1, or no network); download it once with network, or pass a local "
                "diffusers folder or .safetensors file")
    return f"could not load model {source.spec!r}: {type(exc).__name__}: {text.split(' Please check out')[0]}"


FAMILIES = {"StableDiffusionPipeline": "Stable Diffusion 1.x/2.x", "StableDiffusionXLPipeline": "SDXL"}


def _pipeline_class(folder: Optional[str]):
    """The pipeline class a diffusers folder names (model_index.json's _class_name); SD 1.x/2.x when unknown
    (a hub id or a single file without a config folder). A family invedit does not support is refused."""
    import diffusers

    name = "StableDiffusionPipeline"
    if folder is not None and (Path(folder) / "model_index.json").is_file():
        try:
            name = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name", name)
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass  # _check_folder names a broken index
    if name not in FAMILIES:
        raise ModelLoadError(f"model family {name!r} is not supported: invedit runs "
                             f"{' and '.join(FAMILIES.values())} pipelines ({', '.join(FAMILIES)})")
    return getattr(diffusers, name)


def _single_file_family(path: str) -> Optional[str]:
    """The pipeline class an original-layout checkpoint is for, from its key names alone (no tensor is read):
    SDXL keeps its text encoders under "conditioner.embedders.", SD 1.x/2.x under "cond_stage_model."; None for
    a UNet-only file, whose text encoders then come from the config folder."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ModelLoadError(f"model file {path!r} is not a readable safetensors file ({exc})") from None
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "StableDiffusionXLPipeline"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "StableDiffusionPipeline"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelLoadError(f"model file {path!r} has no UNet under 'model.diffusion_model.': it is not a Stable "
                             "Diffusion or SDXL checkpoint in the original single-file layout")
    return None


def _single_file_class(path: str, config: Optional[str]):
    """A single file's pipeline class: the config folder's, which must be the file's own family; without a
    config folder, the file's (so that diffusers fetches the right config where a hub is reachable)."""
    import diffusers

    found = _single_file_family(path)
    if config is None or not (Path(config) / "model_index.json").is_file():
        return getattr(diffusers, found or "StableDiffusionPipeline")
    cls = _pipeline_class(config)
    if found is not None and cls.__name__ != found:
        raise ModelLoadError(f"model file {path!r} is laid out as {FAMILIES[found]} ({found}), but its config "
                             f"folder {config!r} is {FAMILIES[cls.__name__]} ({cls.__name__}): give --model-config "
                             "a folder of the file's own family")
    return cls


def _half_weights(source: ModelSource, dtype: torch.dtype) -> dict:
    """For fp16/bf16 from a folder that has them (hub repositories ship `*.fp16.safetensors` beside the fp32
    weights), the fp16 weights of the UNet and text encoders: half the bytes to read and map, so loading peaks
    lower; the VAE, which runs in fp32, still loads from its fp32 file when there is one."""
    if dtype == torch.float32 or source.kind != "folder":
        return {}
    folder = Path(source.location)
    if not any((folder / "unet").glob("*.fp16.safetensors")):
        return {}
    extra: dict = {"variant": "fp16"}
    if (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file():
        from diffusers import AutoencoderKL

        extra["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    for name in ("text_encoder", "text_encoder_2"):  # diffusers passes the variant to diffusers models only
        spec = index.get(name)
        if isinstance(spec, list) and spec[0] == "transformers" and (folder / name / "model.fp16.safetensors").is_file():
            extra[name] = getattr(transformers, spec[1]).from_pretrained(folder / name, variant="fp16", dtype=dtype)
    return extra


def _load_pipeline(source: ModelSource, config: Optional[str], dtype: torch.dtype = torch.float32):
    """Folders and hub ids load straight into `dtype` (the VAE into fp32), so a bf16/fp16 model never holds an
    fp32 copy of its UNet, and from a folder's fp16 weights when it has them (`_half_weights`); single files load
    in fp32 and are cast by `Model`."""
    if source.kind == "folder":
        _check_folder(Path(source.location))
    if source.kind == "single-file":
        cls = _single_file_class(source.location, config if config and Path(config).is_dir() else None)
    else:
        cls = _pipeline_class(source.location if source.kind == "folder" else None)
    common = dict(safety_checker=None, requires_safety_checker=False) if cls.__name__ == "StableDiffusionPipeline" \
        else {}
    in_dtype = dict(dtype={"vae": torch.float32, "default": dtype}) if dtype != torch.float32 else {}
    from diffusers.loaders.single_file_utils import SingleFileComponentError  # a component the file lacks

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if source.kind == "single-file":
                extra = {"config": config} if config else {}
                return cls.from_single_file(source.location, **extra, **common)
            return cls.from_pretrained(source.location, **common, **in_dtype, **_half_weights(source, dtype))
    except (OSError, ValueError, SingleFileComponentError) as exc:  # hub errors are OSError subclasses
        if source.kind == "hub":
            raise ModelLoadError(_hub_message(source, exc)) from exc
        hint = ""
        if source.kind == "single-file" and not config:
            hint = "; a single-file checkpoint needs its diffusers config: pass model_config / --model-config"
        text = str(exc).split("\nPlease load the component")[0]  # diffusers' advice on its Python API
        raise ModelLoadError(f"could not load model {source.spec!r}: {type(exc).__name__}: {text}{hint}") from exc


class Model:
    """A loaded Stable Diffusion model, reduced to eps / encode_text / encode_image / decode."""

    def __init__(self, pipe, source: ModelSource, device: torch.device, dtype: torch.dtype):
        self.source, self.device, self.dtype = source, device, dtype
        self.vae_dtype = torch.float32  # the SD VAEs overflow in fp16; the VAE is cheap next to the UNet loop
        self.unet = pipe.unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.text_encoder = pipe.text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.vae = pipe.vae.to(device=device, dtype=self.vae_dtype).eval().requires_grad_(False)
        self.tokenizer = pipe.tokenizer
        second = getattr(pipe, "text_encoder_2", None)  # SDXL
        self.text_encoder_2 = None if second is None else second.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer_2 = getattr(pipe, "tokenizer_2", None)
        self.xl = self.text_encoder_2 is not None and self.unet.config.addition_embed_type == "text_time"
        self.zero_empty_negative = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)) and self.xl
        self.scheduler_config = dict(pipe.scheduler.config)  # for reference loops and benchmarks
        self.noise = NoiseConfig.from_scheduler_config(self.scheduler_config)
        self.alphas_cumprod = alphas_cumprod(self.noise)  # (T,) float64
        self.prediction_type = self.noise.prediction_type
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)
        sample_size = self.unet.config.sample_size
        self.native_size = (sample_size if isinstance(sample_size, int) else max(sample_size)) * self.vae_scale_factor
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.fingerprint = self._fingerprint()
        self.controlled = False  # set by attention.attention_control while a controller is installed

    def _fingerprint(self) -> str:
        """A short hash of the configs and of every weight: tells models apart even under one name.

        Every parameter and buffer of the UNet, VAE and text encoder is hashed as float32 (so a model loaded
        in fp16 keeps the print of its fp32 weights only if they were fp16-exact; measured ~2.3 s for 4 GB of
        float32 at 1.7 GB/s). Config keys that start with "_" are left out: diffusers writes where a model
        was loaded from (`_name_or_path`), so a moved or re-saved copy keeps its print."""
        h = hashlib.sha256()
        for cfg in (self.unet.config, self.vae.config, self.noise.to_dict()):
            kept = {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}
            h.update(json.dumps(kept, sort_keys=True, default=str).encode())
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if module is None:
                continue
            for name, tensor in sorted(module.state_dict().items()):
                h.update(name.encode())
                values = tensor.detach().float().cpu().contiguous()
                h.update(memoryview(values.numpy()).cast("B"))
        return h.hexdigest()[:16]

    # --- the four things the rest of invedit uses -------------------------------------------------
    def eps(self, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """ε(x, t | cond) in float32 for latents x (B, 4, h, w) and text embeddings cond (B, L, D) (SDXL: packed,
        (B, L + 1, D), see the module docstring)."""
        timestep = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        extra = {"cross_attention_kwargs": {"timestep": int(t)}} if self.controlled else {}
        cond = cond.to(self.device, self.dtype)
        if self.xl:
            pooled = cond[:, -1, :self.text_encoder_2.config.projection_dim]
            size = [x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor]
            time_ids = torch.tensor([size + [0, 0] + size], device=self.device, dtype=self.dtype).expand(x.shape[0], -1)
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            cond = cond[:, :-1]
        out = self.unet(x.to(self.device, self.dtype), timestep, encoder_hidden_states=cond, return_dict=False,
                        **extra)[0]
        return to_epsilon(out.float(), x.float(), float(self.alphas_cumprod[int(t)]), self.prediction_type)

    def _tokens(self, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (B, 77, D) as Stable Diffusion conditions on them (last hidden state); SDXL: both
        encoders' penultimate hidden states concatenated, and the pooled embedding packed as one more row."""
        if not self.xl:
            return self.text_encoder(self._tokens(self.tokenizer, prompts), return_dict=False)[0].float()
        first = self.text_encoder(self._tokens(self.tokenizer, prompts), output_hidden_states=True)
        second = self.text_encoder_2(self._tokens(self.tokenizer_2, prompts), output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1).float()  # (B, L, D)
        pooled = second.text_embeds.float()  # (B, P), P <= D for SDXL (1280 <= 2048)
        row = torch.zeros(hidden.shape[0], 1, hidden.shape[-1], device=hidden.device)
        row[:, 0, :pooled.shape[-1]] = pooled
        return torch.cat([hidden, row], dim=1)

    def encode_negative(self, prompt: str) -> torch.Tensor:
        """The unconditional embedding (1, L, D) of guidance: SDXL zeroes an empty one when its config says so
        (`force_zeros_for_empty_prompt`), as its pipeline does."""
        emb = self.encode_text([prompt])
        return torch.zeros_like(emb) if self.zero_empty_negative and not prompt else emb

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt).input_ids)

    def token_ids(self, prompt: str) -> list[int]:
        """The prompt's token ids as the text encoder sees them (start and end tokens included, truncated)."""
        return list(self.tokenizer(prompt, truncation=True, max_length=self.tokenizer.model_max_length).input_ids)

    def word_positions(self, prompt: str, word: str) -> list[int]:
        """Token positions of every occurrence of `word` (a whole word, case-insensitive) in `prompt`, as
        P2P's `get_word_inds` finds them: the prompt split at spaces, each piece tokenized alone."""
        positions, cursor = [], 1  # position 0 is the start token
        for piece in prompt.split():
            n = len(self.tokenizer(piece, add_special_tokens=False).input_ids)
            bare = piece.strip(".,;:!?\"'")
            if bare.lower() == word.lower():  # the word's own tokens, not the punctuation around it
                start = cursor + len(self.tokenizer(piece[:piece.find(bare)], add_special_tokens=False).input_ids)
                positions += range(start, start + len(self.tokenizer(bare, add_special_tokens=False).input_ids))
            cursor += n
        return [p for p in positions if p < self.tokenizer.model_max_length - 1]

    # --- the VAE, whole or in tiles ---------------------------------------------------------------
    def vae_tiled(self, height: int, width: int) -> bool:
        """Whether an image of height × width pixels goes through the VAE in tiles: above TILE_ABOVE pixels, where
        the whole image's activations (and the VAE's mid-block attention, quadratic in the latent's size) would
        outgrow memory. Tiles of TILE_LATENT latent pixels (SD: 512 pixels; the mid-block attention's cost grows with
        the square of a tile's area) or the native size, if larger, overlap by a quarter and are blended (diffusers'
        tiled encode/decode), so a tiled image differs slightly from a whole one; reports say which was used."""
        return height * width > TILE_ABOVE

    @contextmanager
    def _vae_tiles(self, height: int, width: int):
        tiled = self.vae_tiled(height, width)
        if not tiled:
            yield
            return
        vae, tile = self.vae, max(TILE_LATENT * self.vae_scale_factor, self.native_size)
        saved = vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, tile, tile // self.vae_scale_factor
        try:
            yield
        finally:
            vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] → z_0 (B, 4, H/f, W/f): VAE posterior mean × scaling factor."""
        with self._vae_tiles(*pixels.shape[-2:]):
            posterior = self.vae.encode(pixels.to(self.device, self.vae_dtype)).latent_dist
        return posterior.mean.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) → pixels (B, 3, H, W) in [-1, 1], float32 on the CPU."""
        with self._vae_tiles(z.shape[-2] * self.vae_scale_factor, z.shape[-1] * self.vae_scale_factor):
            pixels = self.vae.decode(z.to(self.device, self.vae_dtype) / self.scaling_factor, return_dict=False)[0]
        return pixels.float().clamp(-1, 1).cpu()

    @property
    def family(self) -> str:
        """Which Stable Diffusion family the model is shaped like (SDXL by its added conditioning, SD 1.x and
        2.x by their UNet's text width)."""
        width = self.unet.config.cross_attention_dim
        if self.xl:
            return "sdxl" if width == 2048 else f"sdxl-like (text width {width})"
        return {768: "sd1", 1024: "sd2"}.get(width, f"sd-like (text width {width})")

    def describe(self) -> dict:
        import diffusers
        import transformers

        return {"model": self.source.spec, "model_kind": self.source.kind, "model_location": self.source.location,
                "fingerprint": self.fingerprint, "device": str(self.device), "dtype": str(self.dtype).split(".")[-1],
                "vae_dtype": str(self.vae_dtype).split(".")[-1], "prediction_type": self.prediction_type,
                "vae_scale_factor": self.vae_scale_factor, "size_multiple": self.multiple,
                "native_size": self.native_size, "noise": self.noise.to_dict(),
                "family": self.family, "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
                "vae_parameters": sum(p.numel() for p in self.vae.parameters()),
                "text_encoders": [type(e).__name__ for e in (self.text_encoder, self.text_encoder_2) if e is not None],
                "text_encoder_parameters": sum(p.numel() for e in (self.text_encoder, self.text_encoder_2)
                                               if e is not None for p in e.parameters()),
                "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                             "transformers": transformers.__version__}}


def load_model(spec: str | os.PathLike, *, device: str = "auto", dtype: str = "fp32",
               config: Optional[str] = None) -> Model:
    """Load a Stable Diffusion model from a hub id, a diffusers folder or a single checkpoint file."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = resolve_source(spec)
    dev = pick_device(device)
    if dev.type == "cpu" and dtype == "fp16":
        raise ModelLoadError("fp16 on the CPU is slow and unsupported for some layers: use fp32 or bf16 there")
    _quiet_libraries()
    return Model(_load_pipeline(source, config, DTYPES[dtype]), source, dev, DTYPES[dtype])
