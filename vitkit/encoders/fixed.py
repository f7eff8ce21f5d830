"""Fixed-resolution towers (CLIP, SigLIP): a batch is one stacked (B, 3, H, W) forward.

``impl="vitkit"`` runs ``fused_vit_layer`` over the tower's own weights (fused QKV, residuals
added inside the GEMMs, the patch embedding as a GEMM), on CUDA compiled once for all layers and
replayed from a CUDA graph per batch size. It stops at the layer the rows come from: CLIP's rows
are the penultimate layer's, so its last layer is never computed (SGLang's and vLLM's LLaVA
towers skip it too). ``impl="stock"`` calls the transformers model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.encoders.base import VisionEncoder
from vitkit.encoders.fused import compile_layer, fused_vit_layer, patch_embed_gemm, vit_layer_weights
from vitkit.item import MultimodalItem


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

    def __init__(self, preset, model, impl, **flags) -> None:
        super().__init__(preset, model, impl, **flags)
        self.layer_fn = fused_vit_layer
        self.embed_fn = vit_embed
        if impl != "stock":
            self.fused_weights(self._fuse)  # fuse now, outside any inference_mode of a caller
        if self.compiled:
            # One compiled graph per batch size serves every layer (weights are arguments).
            self.layer_fn = compile_layer(fused_vit_layer)
            self.embed_fn = compile_layer(vit_embed)

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
        out = self._stock(pixel_values) if self.impl == "stock" else self._vitkit(pixel_values)
        if self.preset.drop_cls:
            out = out[:, 1:]
        return out.reshape(-1, out.shape[-1])

    def _forward_graphed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.graphs.run(tuple(pixel_values.shape), self.forward, (pixel_values,))

    def _stock(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.preset.feature_layer == -1:
            return self.model(pixel_values=pixel_values).last_hidden_state
        return self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.preset.feature_layer]

    def _vitkit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model, cfg = self.model, self.model.config
        emb = model.embeddings
        pre_ln = getattr(model, "pre_layrnorm", None)  # CLIP normalises the embeddings first
        x = self.embed_fn(
            pixel_values, emb.patch_embedding.weight, emb.patch_embedding.bias,
            getattr(emb, "class_embedding", None), emb.position_embedding.weight,
            None if pre_ln is None else pre_ln.weight, None if pre_ln is None else pre_ln.bias, cfg.layer_norm_eps,
        )
        for weights in self.fused_weights(self._fuse)[: len(self.layers)]:
            x = self.layer_fn(x, cfg.num_attention_heads, cfg.layer_norm_eps, cfg.hidden_act, *weights)
        if self.preset.family == "siglip" and self.preset.feature_layer == -1:
            x = model.post_layernorm(x)  # part of SigLIP's last_hidden_state (not of CLIP's)
        return x

    @staticmethod
    def _fuse(model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        return [vit_layer_weights(layer) for layer in model.encoder.layers]

    @property
    def layers(self) -> list[nn.Module]:
        """The encoder layers the rows need (all but the last for ``feature_layer=-2``)."""
        layers = list(self.model.encoder.layers)
        return layers if self.preset.feature_layer == -1 else layers[: len(layers) + 1 + self.preset.feature_layer]
