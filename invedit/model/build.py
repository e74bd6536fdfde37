"""Build Stable-Diffusion-shaped pipelines from configs in code, with no hub: tokenizers written to a
folder, tiny random models for tests, and the pieces the training script of the shipped model uses.

Part of the model adapter (the only package that imports diffusers and transformers).
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterable, Sequence

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # Stable Diffusion's text length; transformers 5 needs it stated (PITFALLS)

# Stable Diffusion 1.x's DDIM scheduler config (CompVis/stable-diffusion-v1-4, scheduler_config.json)
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                    timestep_spacing="leading")


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one lowercase word: merge the best-ranked adjacent pair until none is left."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 30), k) for k, p in enumerate(zip(symbols, symbols[1:]))]
        rank, k = min(pairs)
        if rank == 1 << 30:
            break
        symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]
    return symbols


def tokenizer_files(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """vocab and merges under which every word in `words` is one token, and any other text still tokenizes.

    Merges are added greedily at the lowest priority, so a word that is already one token is never split
    by a merge added for a later word.
    """
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab: list[str] = [BOS, EOS] + list(chars) + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words if w):
        while len(symbols := _bpe(word, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in vocab:
                vocab.append(pair[0] + pair[1])
    return {tok: i for i, tok in enumerate(vocab)}, [f"{a} {b}" for a, b in merges]


def write_tokenizer(folder: str | Path, words: Iterable[str]):
    """Write a CLIPTokenizer (vocab.json, merges.txt) covering `words` to `folder` and load it back."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files(words)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH,
                        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
    tok.save_pretrained(folder)
    return tok


def text_encoder_for(tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0):
    """A CLIPTextModel whose vocabulary and special ids match `tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=MAX_LENGTH,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def tiny_unet(cross_attention_dim: int = 32, channels: Sequence[int] = (32, 64), sample_size: int = 16,
              seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(channels), norm_num_groups=min(32, channels[0]),
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(channels) - 1),
        up_block_types=("UpBlock2D",) * (len(channels) - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8).eval()


def tiny_vae(channels: Sequence[int] = (32, 32), seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(channels),
                         down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels), norm_num_groups=min(32, channels[0]),
                         layers_per_block=1, sample_size=64).eval()


def save_pipeline(folder: str | Path, *, unet, vae, text_encoder, tokenizer, scheduler_config: dict | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Save the components as a complete StableDiffusionPipeline folder (safetensors, no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**(scheduler_config or SD_SCHEDULER)),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_pipeline(folder: str | Path, words: Iterable[str] = (), prediction_type: str = "epsilon",
                       seed: int = 0) -> Path:
    """A tiny random SD-shaped pipeline (VAE factor 2, UNet multiple 4) for tests; seconds to build."""
    folder = Path(folder)
    base = "a photo of cat dog on sofa red blue circle square background".split()
    tokenizer = write_tokenizer(folder / "tokenizer", [*base, *words])
    text_encoder = text_encoder_for(tokenizer, seed=seed)
    return save_pipeline(folder, unet=tiny_unet(text_encoder.config.hidden_size, seed=seed), vae=tiny_vae(seed=seed),
                         text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler_config={**SD_SCHEDULER, "prediction_type": prediction_type})


def tiny_xl_unet(cross_attention_dim: int = 80, pooled_dim: int = 48, time_embed_dim: int = 8,
                 channels: Sequence[int] = (32, 64), sample_size: int = 16, prediction_type: str = "epsilon",
                 seed: int = 0):
    """An SDXL-shaped UNet: added conditioning "text_time" (pooled text embedding + 6 time ids)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(channels), norm_num_groups=min(32, channels[0]),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim).eval()


def save_tiny_xl_pipeline(folder: str | Path, words: Iterable[str] = (), prediction_type: str = "epsilon",
                          seed: int = 0) -> Path:
    """A tiny random SDXL-shaped pipeline for tests: two CLIP text encoders of different widths, 32 and 48 (SDXL's
    are 768 and 1280; the second has a projection, whose pooled output conditions the UNet with the time ids), VAE
    factor 2, `force_zeros_for_empty_prompt`. The widths must differ, as in SDXL: diffusers' single-file loader
    tells the two encoders apart by width; with equal widths it read the first one's weights for the second too,
    and failed on the second's projection, left unloaded."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = Path(folder)
    base = "a photo of cat dog on sofa red blue circle square background".split()
    tokenizer = write_tokenizer(folder / "tokenizer", [*base, *words])
    tokenizer_2 = write_tokenizer(folder / "tokenizer_2", [*base, *words])
    text_encoder = text_encoder_for(tokenizer, seed=seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer_2), hidden_size=48, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=48,
                            bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
                            pad_token_id=tokenizer_2.pad_token_id)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(config).eval()
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed=seed), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=tiny_xl_unet(32 + 48, 48, seed=seed),
        scheduler=DDIMScheduler(**{**SD_SCHEDULER, "prediction_type": prediction_type}),
        force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
