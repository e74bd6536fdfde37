"""Attention control inside the UNet: processors that hand every attention map to a controller.

Installed only through diffusers' public `set_attn_processor`, inside a context manager that puts the
original processors back even when the edit raises. The controller is a plain callable (see
`invedit.control`): `controller(probs (B, H, Q, L), place, is_cross, timestep) -> probs`. The timestep
reaches the processors through `cross_attention_kwargs`, set by `Model.eps`, so controllers are keyed on
the step and not on how many times the network was called. A controller may say which layers it needs
(`controller.wants(is_cross, queries) -> bool`); the others run fused attention (no map is materialised:
SD's 64² self-attention would otherwise hold a 4096² map per head).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

Controller = Callable[[torch.Tensor, str, bool, int], torch.Tensor]


class ControlledAttnProcessor:
    """diffusers' classic `AttnProcessor` (explicit softmax, so the maps exist), with a controller between
    the attention probabilities and their product with the values."""

    def __init__(self, place: str, controller: Controller):
        self.place, self.controller = place, controller

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 timestep: Optional[int] = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, Q, C)
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], context.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B·H, Q, d)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        wants = getattr(self.controller, "wants", None)
        if timestep is None or attention_mask is not None or wants is None or wants(is_cross, query.shape[1]):
            probs = attn.get_attention_scores(query, key, attention_mask)  # (B·H, Q, L)
            if timestep is not None:
                B = probs.shape[0] // attn.heads
                probs = self.controller(probs.view(B, attn.heads, *probs.shape[1:]), self.place, is_cross, timestep)
                probs = probs.reshape(B * attn.heads, *probs.shape[2:])
            out = torch.bmm(probs, value)
        else:  # the controller leaves this layer alone: fused attention, no (Q × L) map in memory
            out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        hidden_states = attn.batch_to_head_dim(out)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear projection, dropout
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def attention_control(model, controller: Controller) -> Iterator[None]:
    """Route every attention map of `model`'s UNet through `controller` for the duration of the block."""
    unet = model.unet
    original = unet.attn_processors
    unet.set_attn_processor({place: ControlledAttnProcessor(place, controller) for place in original})
    model.controlled = True
    try:
        yield
    finally:
        unet.set_attn_processor(original)
        model.controlled = False
