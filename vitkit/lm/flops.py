"""Model FLOPs of a prefill step of the decoder (``vitkit.lm.decoder``), counted from the shapes.

FLOPs (``prefill_flops``; 2 per multiply-add, counted from the shapes) for a step of windows
``(c_i, n_i)`` with ``N = sum n_i``, per layer:
  GEMMs      2 N (d (q + 2 kv) + q d + 2 d I + I d)        (QKV, output, gate+up, down)
  attention  4 H h sum_i n_i (c_i + n_i / 2)                (QK^T and PV; causal: each new token
                                                             sees its context and half the window)
plus the LM head 2 d V per finishing window (its last token only). d hidden, q = H h query width,
kv = H_kv h, I intermediate, V vocab. Norms, rotary, activations and the embedding lookup are not
counted (they are not matrix products).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitkit.lm.decoder import DecoderConfig, check_windows

FLOP_FORMULA = __doc__.split("FLOPs (", 1)[1].split("\n\n")[0]  # what the prefill results file records


@dataclass(frozen=True)
class PrefillFlops:
    """A step's FLOPs (2 per multiply-add) by kind; see the module docstring for the formula."""

    gemm: int
    attention: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.gemm + self.attention + self.lm_head


def prefill_flops(config: DecoderConfig, windows: Sequence[tuple[int, int]], *, causal: bool = True,
                  logits_rows: int | None = None) -> PrefillFlops:
    """FLOPs of prefilling ``windows`` (``(context, new)`` pairs); ``causal=False`` counts the whole score
    block (a masked dense reference); ``logits_rows``: rows through the LM head (default one per window)."""
    windows = check_windows(windows)
    c = config
    rows = sum(new for _, new in windows)
    per_row = c.hidden * (c.q_width + 2 * c.kv_width) + c.q_width * c.hidden + 3 * c.hidden * c.intermediate
    if causal:  # sum n (c + n/2), kept in integers: 4 n c + 2 n^2
        attn = sum(4 * new * ctx + 2 * new * new for ctx, new in windows)
    else:
        attn = sum(4 * new * (ctx + new) for ctx, new in windows)
    logits_rows = len(windows) if logits_rows is None else logits_rows
    return PrefillFlops(gemm=2 * rows * per_row * c.layers, attention=attn * c.heads * c.head_dim * c.layers,
                        lm_head=2 * logits_rows * c.hidden * c.vocab)
