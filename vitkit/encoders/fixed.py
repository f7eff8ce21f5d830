"""Fixed-resolution towers (CLIP, SigLIP): a batch is one stacked (B, 3, H, W) forward.

``impl="vitkit"`` runs the tower's own submodules (embeddings, layer norms, linear layers, MLPs)
through ``vit_layer``, a plain function of tensors with one fused SDPA call per layer: easy to
``torch.compile`` per block or capture in a CUDA graph for a fixed batch shape, and it stops at the
layer the rows come from (CLIP's penultimate layer: the last layer is never computed, as SGLang's
and vLLM's LLaVA towers also skip it). ``impl="stock"`` calls the transformers model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.encoders.base import VisionEncoder
from vitkit.item import MultimodalItem


def vit_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One pre-norm encoder layer of CLIP or SigLIP (they share attribute names) on (B, N, D)."""
    attn = layer.self_attn
    b, n, d = x.shape
    h = layer.layer_norm1(x)
    q, k, v = (proj(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    # Default SDPA scale is head_dim ** -0.5, the towers' own ``attn.scale``.
    o = F.scaled_dot_product_attention(q, k, v)
    x = x + attn.out_proj(o.transpose(1, 2).reshape(b, n, d))
    return x + layer.mlp(layer.layer_norm2(x))


class FixedResolutionEncoder(VisionEncoder):
    """CLIP / SigLIP tower. Item feature: pixel values (3, image_size, image_size)."""

    def __init__(self, preset, model, impl) -> None:
        super().__init__(preset, model, impl)
        # The per-layer function; replace with e.g. torch.compile(vit_layer) to fuse each layer.
        self.layer_fn = vit_layer

    def _batch_input(self, items: list[MultimodalItem]) -> tuple[torch.Tensor]:
        side = self.preset.image_size
        expected = (self.model.config.num_channels, side, side)
        for k, item in enumerate(items):
            if tuple(item.feature.shape) != expected:
                raise ValueError(
                    f"encoder {self.name!r}: item {k} (hash {item.hash[:12]}) has feature shape "
                    f"{tuple(item.feature.shape)}, expected {expected} pixel values"
                )
            if item.num_tokens != self.preset.fixed_num_tokens:
                raise ValueError(
                    f"encoder {self.name!r}: item {k} (hash {item.hash[:12]}) has num_tokens="
                    f"{item.num_tokens}, but this tower returns {self.preset.fixed_num_tokens} rows per image"
                )
        return (self.gather_features(items, "stack"),)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) on device -> (B * rows_per_image, hidden), items end to end."""
        if self.impl == "stock":
            out = self._stock(pixel_values)
        else:
            out = self._vitkit(pixel_values)
        if self.preset.drop_cls:
            out = out[:, 1:]
        return out.reshape(-1, out.shape[-1])

    def _stock(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.preset.feature_layer == -1:
            return self.model(pixel_values=pixel_values).last_hidden_state
        return self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.preset.feature_layer]

    def _vitkit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = model.embeddings(pixel_values)
        if hasattr(model, "pre_layrnorm"):  # CLIP normalises the embeddings first
            x = model.pre_layrnorm(x)
        for layer in self.layers:
            x = self.layer_fn(layer, x)
        if self.preset.family == "siglip" and self.preset.feature_layer == -1:
            x = model.post_layernorm(x)  # part of SigLIP's last_hidden_state (not of CLIP's)
        return x

    @property
    def layers(self) -> list[nn.Module]:
        """The encoder layers the rows need (all but the last for ``feature_layer=-2``)."""
        layers = list(self.model.encoder.layers)
        return layers if self.preset.feature_layer == -1 else layers[: len(layers) + 1 + self.preset.feature_layer]
