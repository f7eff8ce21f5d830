"""Fixed-resolution towers (CLIP, SigLIP): a batch is one stacked (B, 3, H, W) forward.

``impl="vitkit"`` runs ``fused_vit_layer`` over the tower's weights, padded with blank images to a
batch-size bucket (attention is per image, so they touch no real row). It stops at the layer the rows
come from: CLIP's last layer is never computed (as in SGLang's and vLLM's LLaVA towers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitkit.encoders.base import VisionEncoder
from vitkit.encoders.buckets import Buckets
from vitkit.encoders.fused import compile_layer, fused_vit_layer, patch_embed_gemm
from vitkit.item import MultimodalItem

# Batch sizes 1-4, then steps of 4 up to 64: low padding with few graphs (each costs a compile and a
# capture in warm-up), against powers of two and steps of 8; figures in results/README.md.
FIXED_BUCKETS = Buckets((1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64), max_items=64)


def vit_embed(pixel_values: torch.Tensor, patch_w: torch.Tensor, patch_b: torch.Tensor | None,
              cls: torch.Tensor | None, pos: torch.Tensor, ln_w: torch.Tensor | None, ln_b: torch.Tensor | None,
              eps: float) -> torch.Tensor:
    """Patch embedding (+ class token) + position embedding (+ CLIP's pre-layernorm): (B, N, D)."""
    x = patch_embed_gemm(pixel_values, patch_w, patch_b)
    if cls is not None:
        x = torch.cat([cls.view(1, 1, -1).expand(x.shape[0], 1, -1), x], dim=1)
    x = x + pos
    return x if ln_w is None else F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps)


class FixedResolutionEncoder(VisionEncoder):
    """CLIP / SigLIP tower. Item feature: pixel values (3, image_size, image_size)."""

    def __init__(self, preset, model, impl, **kwargs) -> None:
        super().__init__(preset, model, impl, **kwargs)
        self.layer_fn, self.embed_fn = fused_vit_layer, vit_embed
        if self.accelerated:
            # One compiled graph per bucket serves every layer (weights are arguments).
            variants = len(self.buckets.sizes) + 1
            self.layer_fn = compile_layer(fused_vit_layer, variants)
            self.embed_fn = compile_layer(vit_embed, variants)

    @staticmethod
    def buckets_for(preset) -> Buckets:
        return FIXED_BUCKETS

    def units_to_rows(self, units: int) -> int:
        return units * self.preset.fixed_num_tokens

    def item_units(self, k: int, item: MultimodalItem) -> int:
        side = self.preset.image_size
        expected = (self.model.config.num_channels, side, side)
        if tuple(item.feature.shape) != expected:
            raise self._bad_item(k, item, f"has feature shape {tuple(item.feature.shape)}, "
                                          f"expected {expected} pixel values")
        if item.num_tokens != self.preset.fixed_num_tokens:
            raise self._bad_item(k, item, f"has num_tokens={item.num_tokens}, but this tower returns "
                                          f"{self.preset.fixed_num_tokens} rows per image")
        return 1

    def _batch_input(self, items: list[MultimodalItem]) -> tuple[torch.Tensor]:
        return (self.gather_features(items, "stack"),)

    def allocate_buffers(self) -> dict[str, torch.Tensor]:
        side = self.preset.image_size
        shape = (self.buckets.largest, self.model.config.num_channels, side, side)
        return {"pixels": torch.zeros(shape, device=self.device, dtype=self.dtype)}

    def fill(self, group: list[MultimodalItem], bucket: int) -> bool:
        pixels, n = self.buffer("pixels"), len(group)
        if n:
            pixels[:n].copy_(self.gather_features(group, "stack"))
        pixels[n:bucket].zero_()  # blank images: finite, and their rows are dropped
        return True

    def bucket_args(self, bucket: int) -> tuple[torch.Tensor]:
        return (self.buffer("pixels")[:bucket],)

    def bucket_fn(self, bucket: int):
        return self._vitkit_rows

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) on device -> (B * rows_per_image, hidden), items end to end."""
        if self.impl == "stock":
            return self._rows(self._stock(pixel_values))
        return self.forward_eager(pixel_values)

    def forward_eager(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._rows(self._vitkit(pixel_values, fused_vit_layer, vit_embed))

    def _vitkit_rows(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._rows(self._vitkit(pixel_values, self.layer_fn, self.embed_fn))

    def _rows(self, out: torch.Tensor) -> torch.Tensor:
        if self.preset.drop_cls:
            out = out[:, 1:]
        return out.reshape(-1, out.shape[-1])

    def _stock(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.preset.feature_layer == -1:
            return self.model(pixel_values=pixel_values).last_hidden_state
        return self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.preset.feature_layer]

    def _vitkit(self, pixel_values: torch.Tensor, layer_fn, embed_fn) -> torch.Tensor:
        model, cfg = self.model, self.model.config
        emb = model.embeddings
        pre_ln = getattr(model, "pre_layrnorm", None)  # CLIP normalises the embeddings first
        x = embed_fn(pixel_values, emb.patch_embedding.weight, emb.patch_embedding.bias,
                     getattr(emb, "class_embedding", None), emb.position_embedding.weight,
                     None if pre_ln is None else pre_ln.weight, None if pre_ln is None else pre_ln.bias,
                     cfg.layer_norm_eps)
        for weights in self.fused[: self.num_layers]:
            x = layer_fn(x, cfg.num_attention_heads, cfg.layer_norm_eps, cfg.hidden_act, *weights)
        if self.preset.family == "siglip" and self.preset.feature_layer == -1:
            x = model.post_layernorm(x)  # part of SigLIP's last_hidden_state (not of CLIP's)
        return x

    @property
    def num_layers(self) -> int:
        """Encoder layers the rows need (all but the last for ``feature_layer=-2``)."""
        layers = len(self.model.encoder.layers)
        return layers if self.preset.feature_layer == -1 else layers + 1 + self.preset.feature_layer
