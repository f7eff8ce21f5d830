"""A prompt's multimodal layout: which items it holds and where their placeholder tokens sit."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from vitkit.checks import non_negative_int
from vitkit.item import MultimodalItem
from vitkit.span import Span


@dataclass(frozen=True)
class Request:
    """A request's items and their placeholder spans (``spans[i]`` holds ``items[i]``'s tokens).

    A given ``prompt_len`` (tokens) bounds the windows. Without it (``None``) the request does
    not know where its prompt ends: windows past the last item are valid (text after the last
    image), and nothing of the request is needed once a window has passed ``items_stop``.
    """

    rid: Hashable
    items: tuple[MultimodalItem, ...]
    spans: tuple[Span, ...]
    prompt_len: int | None = None

    def __post_init__(self) -> None:
        try:
            hash(self.rid)  # rids key pins and step bookkeeping
        except TypeError:
            raise TypeError(f"request id must be hashable, got {type(self.rid).__name__} {self.rid!r}") from None
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "spans", tuple(self._coerce_span(i, s) for i, s in enumerate(self.spans)))
        for item in self.items:
            if not isinstance(item, MultimodalItem):
                raise TypeError(f"request {self.rid!r}: items must be MultimodalItem, got {type(item).__name__}")
        if len(self.items) != len(self.spans):
            raise ValueError(f"request {self.rid!r}: {len(self.items)} items but {len(self.spans)} spans")
        self._check_spans()
        if self.prompt_len is not None:  # None: unbounded, only the items' layout is known
            non_negative_int(f"request {self.rid!r}: prompt_len", self.prompt_len)
            if self.spans and self.spans[-1].stop > self.prompt_len:
                raise ValueError(f"request {self.rid!r}: last span {self.spans[-1]} ends past "
                                 f"prompt_len={self.prompt_len}")

    def _coerce_span(self, i: int, span: object) -> Span:
        try:
            return Span.coerce(span)
        except (TypeError, ValueError) as err:
            raise type(err)(f"request {self.rid!r} item {i}: bad span {span!r}: {err}") from None

    def _check_spans(self) -> None:
        for i, (item, span) in enumerate(zip(self.items, self.spans)):
            if len(span) != item.num_tokens:
                raise ValueError(f"request {self.rid!r} item {i} (hash {item.hash[:12]}): span {span} holds "
                                 f"{len(span)} tokens but the item has num_tokens={item.num_tokens}")
        for i in range(1, len(self.spans)):
            prev, cur = self.spans[i - 1], self.spans[i]
            if cur.start < prev.stop:
                what = "overlaps" if cur.start >= prev.start else "comes before"
                raise ValueError(f"request {self.rid!r}: span of item {i} {cur} {what} span of item {i - 1} {prev}; "
                                 "spans must be sorted and must not overlap")

    @property
    def items_stop(self) -> int:
        """Token position just past the last item's span (0 without items): a window that reaches
        it has used every item, so the request needs nothing more from the cache."""
        return self.spans[-1].stop if self.spans else 0

    @property
    def image_tokens(self) -> int:
        """Placeholder tokens over all items."""
        return sum(len(s) for s in self.spans)

    @classmethod
    def from_segments(cls, rid: Hashable, segments: Sequence[int | MultimodalItem]) -> Request:
        """Lay out a prompt from segments in order: an int is that many text tokens, an item
        is its run of placeholder tokens."""
        items: list[MultimodalItem] = []
        spans: list[Span] = []
        pos = 0
        for k, seg in enumerate(segments):
            if isinstance(seg, MultimodalItem):
                items.append(seg)
                spans.append(Span(pos, pos + seg.num_tokens))
                pos += seg.num_tokens
            elif isinstance(seg, int) and not isinstance(seg, bool) and seg >= 0:
                pos += seg
            else:
                raise TypeError(f"request {rid!r} segment {k}: expected a text token count (int >= 0) or a "
                                f"MultimodalItem, got {seg!r}")
        return cls(rid, tuple(items), tuple(spans), prompt_len=pos)
