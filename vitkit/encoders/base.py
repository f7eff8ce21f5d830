"""What every vitkit encoder shares: item checks, one host-to-device copy per batch, row checks."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from vitkit.encoders.graphs import GraphCache
from vitkit.encoders.presets import EncoderPreset
from vitkit.item import MultimodalItem

# "vitkit": fused layers over the tower's weights, and on CUDA torch.compile'd layers replayed from
# CUDA graphs; "vitkit-eager": the same fused layers without compile or graphs (an ablation);
# "stock": the transformers model's own forward (sdpa), the eager baseline.
IMPLS = ("vitkit", "vitkit-eager", "stock")
FUSED_ATTR = "_vitkit_fused_weights"


class VisionEncoder:
    """A vision tower as vitkit's encoder contract: ``encoder(items) -> list[Tensor]``.

    Each returned tensor is (item.num_tokens, hidden_size) on ``device``; which rows they are is
    the preset's ``rows_note``. ``model`` is the transformers module holding the weights; both
    ``impl="stock"`` (its own forward) and ``impl="vitkit"`` (vitkit's forward over the same
    parameters) read it. Subclasses implement ``_batch_input``, ``forward`` and ``_graph_key``.

    ``compiled`` (``torch.compile`` of the layer function) and ``cuda_graphs`` (one captured graph
    per input shape) are on by default for ``impl="vitkit"`` on CUDA and off elsewhere.
    """

    def __init__(self, preset: EncoderPreset, model: nn.Module, impl: str, *,
                 compile: bool | None = None, cuda_graphs: bool | None = None) -> None:
        if impl not in IMPLS:
            raise ValueError(f"encoder {preset.name!r}: impl must be one of {IMPLS}, got {impl!r}")
        self.preset = preset
        self.model = model.eval()
        self.impl = impl
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        accelerate = impl == "vitkit" and self.device.type == "cuda"
        self.compiled = accelerate if compile is None else bool(compile)
        self.cuda_graphs = accelerate if cuda_graphs is None else bool(cuda_graphs)
        if (self.compiled or self.cuda_graphs) and impl != "vitkit":
            raise ValueError(f"encoder {preset.name!r}: compile and cuda_graphs apply to impl='vitkit', not {impl!r}")
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"encoder {preset.name!r}: cuda_graphs needs a CUDA device, got {self.device}")
        self.graphs = GraphCache() if self.cuda_graphs else None

    name = property(lambda self: self.preset.name)
    config = property(lambda self: self.model.config, doc="The transformers vision config.")
    hidden_size = property(lambda self: self.preset.hidden_size, doc="Width of each embedding row.")
    variable_resolution = property(lambda self: self.preset.variable_resolution)
    patch_size = property(lambda self: self.preset.patch_size)

    def variant(self, *, impl: str | None = None, dtype: torch.dtype | None = None,
                compile: bool | None = None, cuda_graphs: bool | None = None) -> VisionEncoder:
        """The same tower with another ``impl`` and/or ``dtype``: shares this one's module when the
        dtype is unchanged (an A/B of stock vs vitkit over the very same weights), otherwise works
        on a cast copy (e.g. a float32 reference and its bf16 twin with equal weights)."""
        model = self.model
        if dtype is not None and dtype != self.dtype:
            model = copy.deepcopy(model)
            model.__dict__.pop(FUSED_ATTR, None)  # casting breaks the fused views: fuse again
            model = model.to(dtype)
        return type(self)(self.preset, model, impl or self.impl, compile=compile, cuda_graphs=cuda_graphs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, impl={self.impl!r}, device={self.device}, "
                f"dtype={self.dtype}, hidden_size={self.hidden_size}, compiled={self.compiled}, "
                f"cuda_graphs={self.cuda_graphs})")

    def fused_weights(self, build) -> list[tuple[torch.Tensor, ...]]:
        """Per-layer fused weight tuples, built once per model (``build(model)``) and shared by
        every encoder over that model, so a ``variant`` fuses nothing twice."""
        cached = self.model.__dict__.get(FUSED_ATTR)
        if cached is None:
            # Normal tensors even when first called under inference_mode: the fused buffers back
            # the model's own parameters, which must stay usable outside it.
            with torch.inference_mode(False), torch.no_grad():
                cached = build(self.model)
            self.model.__dict__[FUSED_ATTR] = cached
        return cached

    @torch.inference_mode()
    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        items = list(items)
        if not items:
            return []
        for k, item in enumerate(items):
            if not isinstance(item, MultimodalItem):
                raise TypeError(f"encoder {self.name!r}: item {k} is {type(item).__name__}, not a MultimodalItem")
        inputs = self._batch_input(items)
        if self.graphs is None:
            out = self.forward(*inputs)
        else:
            out = self._forward_graphed(*inputs)
        return self._split_rows(items, out)

    def _forward_graphed(self, *inputs) -> torch.Tensor:
        """``forward`` replayed from the CUDA graph captured for these input shapes."""
        raise NotImplementedError

    def _batch_input(self, items: list[MultimodalItem]) -> tuple:
        raise NotImplementedError

    def forward(self, *args) -> torch.Tensor:
        """The batched forward on device tensors (subclasses document the shapes)."""
        raise NotImplementedError

    def _split_rows(self, items: list[MultimodalItem], out: torch.Tensor) -> list[torch.Tensor]:
        """Split the packed (sum rows, hidden) output per item, checking each count."""
        counts = [item.num_tokens for item in items]
        if out.shape[0] != sum(counts):
            raise ValueError(
                f"encoder {self.name!r}: produced {out.shape[0]} rows for {len(items)} items whose "
                f"num_tokens sum to {sum(counts)} (per item: {counts})"
            )
        return list(torch.split(out, counts))

    def gather_features(self, items: list[MultimodalItem], combine: str) -> torch.Tensor:
        """The items' features combined on the encoder's device (``combine``: "stack" or "cat").

        Features already on the device are combined there. Otherwise the CPU copies
        (``item.cpu_feature``) are combined on the host, pinned when the target is CUDA, and moved
        in one non-blocking copy: one transfer per batch instead of one per item. The result is
        cast to the encoder's dtype on the device (the host copy stays float32).
        """
        if all(item.feature.device == self.device for item in items):
            join = torch.stack if combine == "stack" else torch.cat
            return join([item.feature for item in items]).to(self.dtype)
        parts = [item.cpu_feature if item.cpu_feature is not None else item.feature.cpu() for item in items]
        if self.device.type != "cuda":
            return join_host(parts, combine, pin=False).to(self.device, self.dtype)
        host = join_host(parts, combine, pin=True)
        return host.to(self.device, non_blocking=True).to(self.dtype)


def join_host(parts: list[torch.Tensor], combine: str, pin: bool) -> torch.Tensor:
    """Stack or concatenate host tensors straight into one new (optionally page-locked) buffer:
    one host copy, where ``torch.cat(...).pin_memory()`` makes two."""
    if combine not in ("stack", "cat"):
        raise ValueError(f"combine must be 'stack' or 'cat', got {combine!r}")
    first = parts[0]
    if combine == "stack":
        shape = (len(parts), *first.shape)
    else:
        shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
    out = torch.empty(shape, dtype=first.dtype, pin_memory=pin)
    (torch.stack if combine == "stack" else torch.cat)(parts, out=out)
    return out
