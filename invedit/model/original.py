"""A diffusers folder's weights in the original single-file checkpoint layouts, for the single-file tests.

These are the inverses of the converters diffusers' `from_single_file` runs (diffusers.loaders.single_file_utils:
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_open_clip_checkpoint`), written out by hand so that a test can fail when the two disagree:

- sd1:  the UNet under "model.diffusion_model." (LDM block names), the VAE under "first_stage_model.", CLIP ViT-L
        under "cond_stage_model.transformer.text_model." (transformers' own names);
- sd2:  as sd1, but the text encoder is OpenCLIP ViT-H under "cond_stage_model.model.": "transformer.resblocks.i."
        layers with q, k and v fused into one in_proj, ln_final, positional_embedding, token_embedding;
- sdxl: as sd1, plus the UNet's added embedding (pooled text and time ids) as "label_emb.0.0" and "label_emb.0.2";
        CLIP ViT-L under "conditioner.embedders.0.transformer.text_model." and OpenCLIP bigG, with its
        text_projection, under "conditioner.embedders.1.model.".

Part of the model adapter (the only package that imports diffusers and transformers).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2", "sdxl")

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's weights under the original LDM key names ("model.diffusion_model.…"),
    for any number of blocks and layers; SDXL's added embedding (pooled text + time ids) is "label_emb.0"."""
    cfg = unet.config
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    L, n = cfg.layers_per_block, len(cfg.block_out_channels)
    for i in range(n):
        for j in range(L):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * (L + 1) + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * (L + 1) + j}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (L + 1)}.0.op."
        attention = "CrossAttn" in cfg.up_block_types[i]
        for j in range(L + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (L + 1) + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (L + 1) + j}.1."
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (L + 1) + L}.{2 if attention else 1}."
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})
    out = {}
    for key, value in unet.state_dict().items():
        hf = next(p for p in sorted(prefixes, key=len, reverse=True) if key.startswith(p))
        rest = key[len(hf):]
        if "resnets" in hf:
            for a, b in _RESNET:
                rest = rest.replace(a, b) if rest.startswith(a) else rest
        out["model.diffusion_model." + prefixes[hf] + rest] = value
    return out


def _vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's weights under the original key names ("first_stage_model.…")."""
    n = len(vae.config.block_out_channels)
    names = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"), ("mid_block.attentions.0.", "mid.attn_1."),
             ("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2.")]
    for i in range(n):
        names += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    attention = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in vae.state_dict().items():
        for a, b in names:
            key = key.replace(a, b)
        if "mid.attn_1." in key:
            for a, b in attention:
                key = key.replace(a, b)
            if value.dim() == 2:  # linear in diffusers, 1×1 conv in the original
                value = value[:, :, None, None]
        out["first_stage_model." + key] = value
    return out


def _text_weights(encoder) -> dict[str, torch.Tensor]:
    """transformers' CLIP text weights with the "text_model." prefix (transformers >= 5.6 flattened CLIPTextModel;
    CLIPTextModelWithProjection still has it)."""
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in encoder.state_dict().items()}


def _clip_to_ldm(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """CLIP ViT-L as SD 1.x and SDXL's first embedder store it: transformers' own names under `prefix`."""
    return {prefix + k: v for k, v in _text_weights(encoder).items()}


_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))


def _open_clip_to_ldm(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text model under OpenCLIP's names (SD 2.x's ViT-H, SDXL's bigG): "transformer.resblocks.i." layers
    with q, k and v fused into one `in_proj` (rows q, then k, then v), and `text_projection` stored transposed
    (OpenCLIP computes x @ P). A model without a projection (SD 2.x's CLIPTextModel) gets an identity one, as the
    real files carry a projection that diffusers reads only for its width."""
    weights, out = _text_weights(encoder), {}
    hidden = encoder.config.hidden_size
    out[prefix + "text_projection"] = weights["text_projection.weight"].T if "text_projection.weight" in weights \
        else torch.eye(hidden)
    for key, value in weights.items():
        if key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = value
        elif key.startswith("text_model.encoder.layers."):
            layer, rest = key.removeprefix("text_model.encoder.layers.").split(".", 1)
            if rest.split(".")[:2] in (["self_attn", "q_proj"], ["self_attn", "k_proj"], ["self_attn", "v_proj"]):
                continue  # fused into in_proj below
            for a, b in _OPEN_CLIP_LAYER:
                rest = rest.replace(a, b)
            out[f"{prefix}transformer.resblocks.{layer}.{rest}"] = value
        elif key != "text_projection.weight":
            raise ValueError(f"no OpenCLIP name for the text encoder weight {key!r}")
    for i in range(encoder.config.num_hidden_layers):
        for kind in ("weight", "bias"):
            qkv = [weights[f"text_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv)  # (3·hidden, …)
    return out


def _load_part(folder: Path, name: str, index: dict):
    library, class_name = index[name]
    return getattr(importlib.import_module(library), class_name).from_pretrained(str(folder), subfolder=name).eval()


def original_checkpoint(folder: str | Path, family: str | None = None) -> dict[str, torch.Tensor]:
    """A diffusers folder's UNet, VAE and text encoder(s) in the original single-file layout of `family` (the
    module docstring's table), contiguous and ready for safetensors. `family` defaults to "sdxl" for an SDXL
    folder, else "sd2" when the text width is SD 2.x's 1024 and "sd1" otherwise: a tiny SD 2.x-style model
    must say "sd2"."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    parts = {name: _load_part(folder, name, index) for name in ("unet", "vae", "text_encoder", "text_encoder_2")
             if (index.get(name) or [None])[0] is not None}
    xl = "text_encoder_2" in parts
    family = family or ("sdxl" if xl else "sd2" if parts["unet"].config.cross_attention_dim == 1024 else "sd1")
    if family not in FAMILIES or (family == "sdxl") != xl:
        raise ValueError(f"family {family!r} does not fit the folder {str(folder)!r} (an {'SDXL' if xl else 'SD'} "
                         f"pipeline); give one of {', '.join(FAMILIES)}")
    with torch.no_grad():
        if family == "sd1":
            text = _clip_to_ldm(parts["text_encoder"], "cond_stage_model.transformer.")
        elif family == "sd2":
            text = _open_clip_to_ldm(parts["text_encoder"], "cond_stage_model.model.")
        else:
            text = {**_clip_to_ldm(parts["text_encoder"], "conditioner.embedders.0.transformer."),
                    **_open_clip_to_ldm(parts["text_encoder_2"], "conditioner.embedders.1.model.")}
        weights = {**_unet_to_ldm(parts["unet"]), **_vae_to_ldm(parts["vae"]), **text}
    return {k: v.detach().contiguous() for k, v in weights.items()}
