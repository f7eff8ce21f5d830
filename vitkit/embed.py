"""One scheduler step: look up every window's items, encode the misses, assemble the chunks.

``mode="per_request"`` is SGLang's legacy path (one encoder call per request that has misses,
requests handled one after another); ``mode="batched"`` is PR 25910's cross-request path (the
misses of all requests in the step, de-duplicated by content hash, in one encoder call, or in a
few when ``max_tokens_per_call`` caps a call like vLLM's encoder budget).

How a step's misses become calls, per engine (``grouping``):

- ``"tower"``: one call for everything one tower encodes (Qwen's images and videos share it);
- ``"modality"``: one call per modality, images then videos: SGLang's ``embed_mm_inputs`` loops over
  ``Modality.all()`` and calls each modality's ``get_*_feature`` once;
- ``"consecutive"``: one call per run of consecutive same-modality items: vLLM's
  ``group_mm_kwargs_by_modality`` (``vllm/multimodal/utils.py``, a ``groupby`` over the step's encoder
  inputs in ``gpu_model_runner._execute_mm_encoder``), so an image, a video and an image make three calls
  (vLLM #15605).

``per_request_modalities`` (batched mode) takes the per-request path for those modalities only: SGLang
batches across requests only items with a single placeholder span (PR 25910), and a video, whose tokens
are several spans, is encoded whole in a call of its own request's items. Those requests run one after
another (``get_chunked_prefill_embedding_legacy``): a later one finds an earlier one's video only if its put
stayed in the cache, else encodes it again; nothing is de-duplicated across them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from vitkit.cache import EmbeddingCache
from vitkit.checks import positive_int
from vitkit.chunk import ChunkEntry, assemble_chunk, check_window, find_chunk_items, overlapping
from vitkit.item import MODALITIES, MultimodalItem
from vitkit.request import Request
from vitkit.span import Span

Encoder = Callable[[list[MultimodalItem]], Sequence[torch.Tensor]]
MODES = ("batched", "per_request")
GROUPINGS = ("tower", "modality", "consecutive")  # how a step's misses are split into calls (module docstring)
FATES = ("hit", "encoded", "shared", "re-encoded")
ENCODING_FATES = ("encoded", "re-encoded")  # the lookups that made their item's encode happen


@dataclass(frozen=True)
class ItemOutcome:
    """What happened to one item a window touched, in one step; ``fate`` is one of:

    - ``"hit"``: the cache had it (``call`` is None);
    - ``"encoded"``: this lookup missed, first in the step, and the item was encoded in ``call``;
    - ``"shared"``: an earlier lookup of this step (another window, or earlier in this one) missed
      the same content first; that one encode, in ``call``, served both (batched de-duplication);
    - ``"re-encoded"``: as ``"encoded"``, but ``needed_before``: one of the request's spans with this
      hash starts before the window (a straddling or repeated image the cache lost in between).

    ``lost`` is what pinning prevents, whichever lookup caused the encode (so ``"shared"`` too).
    """

    index: int  # into request.items
    hash: str
    fate: str
    call: int | None  # index of the encoder call within the step; None for a hit
    needed_before: bool = False

    @property
    def lost(self) -> bool:
        """A miss of content the request had already needed: it was lost between its windows."""
        return self.fate != "hit" and self.needed_before


@dataclass(frozen=True)
class EmbedResult:
    """What a step produced: one chunk embedding (or None) per batch entry, and what it cost.

    ``outcomes[k]`` lists, in prompt order, every item batch entry ``k``'s window touched and its
    ``ItemOutcome``; the step's counts follow from them. Calls are numbered in the order they ran,
    across requests in per-request mode.
    """

    embeddings: list[torch.Tensor | None]
    encoder_calls: int
    encoded_items: int
    encoded_tokens: int
    cache_hits: int
    cache_misses: int  # lookups that missed, before de-duplication
    call_tokens: tuple[int, ...] = field(default=())  # embedding rows per encoder call
    encoded_hashes: tuple[str, ...] = field(default=())  # content hashes encoded, in call order
    outcomes: tuple[tuple[ItemOutcome, ...], ...] = field(default=())  # per batch entry, prompt order
    call_modalities: tuple[tuple[str, ...], ...] = field(default=())  # per encoder call, first seen first


def _group(items: Sequence[MultimodalItem], grouping: str) -> list[list[MultimodalItem]]:
    """``items`` as the groups ``grouping`` calls together (module docstring), each in ``items``' order."""
    if grouping == "tower":
        return [list(items)] if items else []
    if grouping == "modality":
        return [[it for it in items if it.modality == m] for m in MODALITIES if any(it.modality == m for it in items)]
    runs: list[list[MultimodalItem]] = []
    for item in items:
        if not runs or runs[-1][-1].modality != item.modality:
            runs.append([])
        runs[-1].append(item)
    return runs


def plan_calls(items: Sequence[MultimodalItem], max_tokens_per_call: int | None,
               grouping: str = "tower") -> list[list[MultimodalItem]]:
    """Split ``items`` into ``grouping``'s groups, then each greedily, in order, into calls of at most
    ``max_tokens_per_call`` tokens (an item over the budget goes alone); without a budget, one call a group."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    calls: list[list[MultimodalItem]] = []
    for group in _group(items, grouping):
        used = None  # tokens in the group's open call; None: none open
        for item in group:
            if used is None or (max_tokens_per_call is not None and used + item.num_tokens > max_tokens_per_call):
                calls.append([])
                used = 0
            calls[-1].append(item)
            used += item.num_tokens
    return calls


def _requests_of(keys: Sequence[str], wanted_by: Mapping[str, Sequence[Hashable]] | None) -> str:
    rids = list(dict.fromkeys(rid for key in keys for rid in (wanted_by or {}).get(key, ())))
    return f" of request(s) {', '.join(map(repr, rids))}" if rids else ""


def run_encoder(
    encoder: Encoder, items: list[MultimodalItem], wanted_by: Mapping[str, Sequence[Hashable]] | None = None
) -> list[torch.Tensor]:
    """Call ``encoder``, checking it returned one ``(num_tokens, hidden)`` tensor per item;
    ``wanted_by`` (hash -> request ids) lets an error name the requests behind a bad output."""
    outputs = encoder(items)
    if not isinstance(outputs, (list, tuple)):
        raise TypeError(f"encoder must return a list of tensors, got {type(outputs).__name__}")
    if len(outputs) != len(items):
        raise ValueError(f"encoder returned {len(outputs)} tensors for {len(items)} items"
                         f"{_requests_of([item.hash for item in items], wanted_by)}")
    hidden = None
    for k, (item, out) in enumerate(zip(items, outputs)):
        name = f"encoder output {k} (item {item.hash[:12]}{_requests_of([item.hash], wanted_by)})"
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{name} is a {type(out).__name__}, not a tensor")
        if out.ndim != 2 or out.shape[0] != item.num_tokens:
            raise ValueError(f"{name} has shape {tuple(out.shape)}, expected ({item.num_tokens}, hidden)")
        if hidden is not None and out.shape[1] != hidden:
            raise ValueError(f"{name} has hidden size {out.shape[1]}, earlier outputs had {hidden}")
        hidden = out.shape[1]
    return list(outputs)


def _recording(encoder: Encoder, calls: list[tuple[list[MultimodalItem], Sequence[torch.Tensor]]]) -> Encoder:
    """``encoder``, keeping each call's items and outputs in ``calls`` for the finiteness check."""

    def call(items: list[MultimodalItem]) -> Sequence[torch.Tensor]:
        outputs = encoder(items)
        calls.append((items, outputs))
        return outputs

    return call


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every value is finite, with one host sync per device, not per item: each tensor's
    (min, max), which NaN and inf propagate to, is checked on its device. Unlike
    ``isfinite(cat(...))`` this makes no copy of the step's outputs (peak memory)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        if t.device.type != "meta" and t.numel():  # meta tensors (shape-only dry runs) hold no values
            by_device.setdefault(t.device, []).extend(torch.aminmax(t))
    flags = [torch.isfinite(torch.stack(extremes)).all() for extremes in by_device.values()]
    return all(bool(flag) for flag in flags)


def _check_finite(batch: Sequence[tuple[Request, Span]],
                  calls: Sequence[tuple[list[MultimodalItem], Sequence[torch.Tensor]]]) -> None:
    """Refuse NaN/inf encoder rows, naming each bad item and the requests whose windows hold it."""
    if _all_finite([out for _, outputs in calls for out in outputs]):
        return
    bad = {item.hash: item for items, outputs in calls for item, out in zip(items, outputs)
           if not bool(torch.isfinite(out).all())}  # error path only: per-item syncs are fine here
    where = {key: [] for key in bad}
    for request, window in batch:
        for item, span in overlapping(request, window):
            if item.hash in where:
                where[item.hash].append(_where(request, span))
    named = "; ".join(f"item {key[:12]} ({', '.join(where[key])})" for key in bad)
    raise ValueError(f"encoder returned non-finite values (NaN or inf) for {len(bad)} item(s): {named}; "
                     "nothing of this step was cached")


def _unique_misses(
    batch: Sequence[tuple[Request, Span]], found: Sequence[Sequence[ChunkEntry]]
) -> tuple[list[MultimodalItem], dict[str, list[Hashable]]]:
    """Missed items, first occurrence first, one per content hash; and which requests missed each."""
    seen: dict[str, tuple[MultimodalItem, Request, Span]] = {}  # hash -> first miss, and where
    wanted_by: dict[str, list[Hashable]] = {}
    for (request, _), entries in zip(batch, found):
        for e in entries:
            if e.embedding is not None:
                continue
            wanted_by.setdefault(e.item.hash, []).append(request.rid)
            first, first_request, first_span = seen.setdefault(e.item.hash, (e.item, request, e.span))
            if first.num_tokens != e.item.num_tokens:
                raise ValueError(
                    f"items with hash {e.item.hash[:12]} disagree on num_tokens: {first.num_tokens} vs "
                    f"{e.item.num_tokens} ({_where(first_request, first_span)} vs {_where(request, e.span)})"
                )
    return [item for item, _, _ in seen.values()], wanted_by


def _where(request: Request, span: Span) -> str:
    return f"request {request.rid!r} item {request.spans.index(span)}"


@dataclass
class _Tally:
    calls: list[int] = field(default_factory=list)  # tokens per encoder call
    modalities: list[tuple[str, ...]] = field(default_factory=list)  # per encoder call
    hashes: list[str] = field(default_factory=list)  # per encoded item
    outcomes: list[tuple[ItemOutcome, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class _Options:
    """How a step encodes and keeps its misses (``embed_chunks``' keywords, checked there)."""

    max_tokens_per_call: int | None
    pin: bool
    pin_recurring: bool
    grouping: str
    per_request_modalities: frozenset[str]


@dataclass
class _Calls:
    """A step's encoder calls as they run: each call's outputs are put at once (pinned for their later
    windows), kept by ``(call, hash)``, and ``served`` says which call served each ``(rid, hash)`` miss."""

    encoder: Encoder
    cache: EmbeddingCache
    pin_owners: Mapping[str, Sequence[Hashable]]
    wanted_by: Mapping[str, Sequence[Hashable]]  # hash -> rids that missed it: names requests in errors
    tally: _Tally
    encoded: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    served: dict[tuple[Hashable, str], int] = field(default_factory=dict)

    def run(self, call: list[MultimodalItem], rid: Hashable | None = None) -> int:
        """Encode ``call``, put its outputs and mark it as serving request ``rid`` (None: every request that
        missed the item); returns the call's index within the step."""
        index = len(self.tally.calls)
        outputs = run_encoder(self.encoder, call, self.wanted_by)
        self.tally.calls.append(sum(item.num_tokens for item in call))
        self.tally.modalities.append(tuple(dict.fromkeys(item.modality for item in call)))
        for item, emb in zip(call, outputs):
            self.encoded[(index, item.hash)] = emb
            self.tally.hashes.append(item.hash)
            for asker in self.wanted_by[item.hash] if rid is None else (rid,):
                self.served[(asker, item.hash)] = index
            owners = self.pin_owners.get(item.hash, [])
            if self.cache.put(item.hash, emb, pin_owner=owners[0] if owners else None):
                for owner in owners[1:]:
                    self.cache.pin(item.hash, owner)
        return index

    def output(self, rid: Hashable, key: str) -> torch.Tensor:
        """The embedding of ``key`` from the call that served request ``rid``'s miss of it."""
        return self.encoded[(self.served[(rid, key)], key)]


def _encode_and_store(calls: _Calls, batch: Sequence[tuple[Request, Span]], found: Sequence[Sequence[ChunkEntry]],
                      misses: Sequence[MultimodalItem], options: _Options) -> None:
    """Run the step's calls: the cross-request misses (de-duplicated by hash) by ``options.grouping``, then
    the ``per_request_modalities`` misses request by request (``_encode_per_request``)."""
    own = options.per_request_modalities
    for call in plan_calls([it for it in misses if it.modality not in own], options.max_tokens_per_call,
                           options.grouping):
        calls.run(call)
    if own:
        _encode_per_request(calls, batch, found, options)


def _encode_per_request(calls: _Calls, batch: Sequence[tuple[Request, Span]], found: Sequence[Sequence[ChunkEntry]],
                        options: _Options) -> None:
    """SGLang's per-request path for ``per_request_modalities`` (``get_chunked_prefill_embedding_legacy``):
    request after request, in step order, each looks its items up, encodes its misses in calls of its own
    and puts them. A later request finds an earlier one's encode only if that put is still in the cache;
    content the cache refused (a video larger than it) is encoded again by every request of the step that
    asks for it, as in SGLang. Unlike the cross-request path, nothing is de-duplicated across requests."""
    own = options.per_request_modalities
    last_call: dict[str, int] = {}  # hash -> the step's latest call that encoded it
    for (request, _), entries in zip(batch, found):
        mine: dict[str, MultimodalItem] = {}
        for e in entries:
            key = e.item.hash
            if e.embedding is not None or e.item.modality not in own:
                continue
            if key in last_call and key in calls.cache:  # an earlier request of the step stored it: found now
                calls.served[(request.rid, key)] = last_call[key]
            else:
                mine.setdefault(key, e.item)
        for call in plan_calls(list(mine.values()), options.max_tokens_per_call, options.grouping):
            index = calls.run(call, request.rid)
            last_call.update({item.hash: index for item in call})


def _needed_later(request: Request, window: Span, entries: Sequence[ChunkEntry], recurring: bool = True) -> set[str]:
    """Hashes of this window's entries that a later window of the request needs again: items whose tokens
    run past the window, and (``recurring``) images that recur later in the same prompt. Without
    ``recurring``, as vLLM's encoder cache manager, a request's hold on an item ends once its tokens pass
    it (``free_encoder_input``); a later repeat finds it only if nothing evicted it."""
    if not recurring:
        return {e.item.hash for e in entries if e.span.stop > window.stop}
    later = {item.hash for item, span in zip(request.items, request.spans) if span.stop > window.stop}
    return {e.item.hash for e in entries if e.item.hash in later}


def _update_pins(cache: EmbeddingCache, request: Request, window: Span, entries: Sequence[ChunkEntry],
                 later: set[str]) -> None:
    """Hold this request's pins on exactly the entries a later window needs (``later``)."""
    if window.stop >= request.items_stop:
        # past the last item nothing of this request is needed again, whether or not the prompt
        # goes on with text (and whether or not the request knows its prompt_len)
        cache.release(request.rid)
        return
    for e in entries:
        key = e.item.hash
        if key in later:
            if key in cache and not cache.is_pinned(key, request.rid):
                cache.pin(key, request.rid)
        else:
            cache.unpin(key, request.rid)


def _outcomes(
    batch: Sequence[tuple[Request, Span]], found: Sequence[Sequence[ChunkEntry]],
    served: Mapping[tuple[Hashable, str], int],
) -> list[tuple[ItemOutcome, ...]]:
    """Each window's touched items and their fates; the first miss an encode served (in step order) is
    the one that encoded it, later misses it served shared it."""
    claimed: set[tuple[int, str]] = set()  # (call, hash): encodes already credited to a lookup
    out = []
    for (request, window), entries in zip(batch, found):
        earlier = {item.hash for item, span in zip(request.items, request.spans) if span.start < window.start}
        marks = []
        for e in entries:
            key = e.item.hash
            call = None if e.embedding is not None else served[(request.rid, key)]
            if call is None:
                fate = "hit"
            elif (call, key) in claimed:
                fate = "shared"
            else:
                fate = "re-encoded" if key in earlier else "encoded"
                claimed.add((call, key))
            index = request.spans.index(e.span)  # spans are unique; items may repeat
            marks.append(ItemOutcome(index, key, fate, call, key in earlier))
        out.append(tuple(marks))
    return out


def _fill(request: Request, entries: Sequence[ChunkEntry], calls: _Calls) -> list[ChunkEntry]:
    """``entries`` with each miss's embedding: the output of the call that served this request."""
    return [e if e.embedding is not None else replace(e, embedding=calls.output(request.rid, e.item.hash))
            for e in entries]


def _pin_owners(batch: Sequence[tuple[Request, Span]], later: Sequence[set[str]]) -> dict[str, list[Hashable]]:
    owners: dict[str, list[Hashable]] = {}
    for (request, _), keys in zip(batch, later):
        for key in keys:
            owners.setdefault(key, []).append(request.rid)
    return owners


def _step_batched(batch: Sequence[tuple[Request, Span]], encoder: Encoder, cache: EmbeddingCache, options: _Options,
                  tally: _Tally) -> list[torch.Tensor | None]:
    found = [find_chunk_items(request, window, cache) for request, window in batch]
    # What each window's request needs again later, computed once per window for pins.
    later = [_needed_later(request, window, entries, options.pin_recurring)
             if options.pin and window.stop < request.items_stop else set()
             for (request, window), entries in zip(batch, found)]
    owners = _pin_owners(batch, later)
    for key, rids in owners.items():  # pin hits first, so this step's puts cannot evict them
        if key in cache:
            for rid in rids:
                if not cache.is_pinned(key, rid):
                    cache.pin(key, rid)
    misses, wanted_by = _unique_misses(batch, found)
    calls = _Calls(encoder, cache, owners, wanted_by, tally)
    _encode_and_store(calls, batch, found, misses, options)
    tally.outcomes += _outcomes(batch, found, calls.served)
    out = []
    for (request, window), entries, keys in zip(batch, found, later):
        try:
            out.append(assemble_chunk(_fill(request, entries, calls), window))
        except ValueError as err:  # e.g. a cached entry of another width: say whose chunk it was
            raise ValueError(f"request {request.rid!r} window {window}: {err}") from None
        if options.pin:
            _update_pins(cache, request, window, entries, keys)
    return out


def _step_per_request(batch: Sequence[tuple[Request, Span]], encoder: Encoder, cache: EmbeddingCache,
                      options: _Options, tally: _Tally) -> list[torch.Tensor | None]:
    out = []
    for request, window in batch:  # a later request sees an earlier one's puts, as in SGLang
        out.extend(_step_batched([(request, window)], encoder, cache, options, tally))
    return out


def _check_batch(batch: Sequence[tuple[Request, Span | tuple[int, int]]]) -> list[tuple[Request, Span]]:
    checked, rids = [], set()
    for k, pair in enumerate(batch):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], Request)):
            raise TypeError(f"batch entry {k} must be a (Request, window) pair, got {pair!r}")
        request, window = pair
        if request.rid in rids:
            raise ValueError(f"request {request.rid!r} appears twice in one step (batch entry {k})")
        rids.add(request.rid)
        checked.append((request, check_window(request, window)))
    return checked


def _options(max_tokens_per_call: int | None, pin: bool, pin_recurring: bool, grouping: str,
             per_request_modalities: Collection[str]) -> _Options:
    if max_tokens_per_call is not None:
        positive_int("max_tokens_per_call", max_tokens_per_call)
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    if isinstance(per_request_modalities, str) or not set(per_request_modalities) <= set(MODALITIES):
        raise ValueError(f"per_request_modalities must be a collection of {MODALITIES}, got {per_request_modalities!r}")
    return _Options(max_tokens_per_call, pin, pin_recurring, grouping, frozenset(per_request_modalities))


def embed_chunks(
    batch: Sequence[tuple[Request, Span | tuple[int, int]]],
    encoder: Encoder,
    cache: EmbeddingCache,
    *,
    mode: str = "batched",
    max_tokens_per_call: int | None = None,
    pin: bool = True,
    check_finite: bool = True,
    grouping: str = "tower",
    per_request_modalities: Collection[str] = (),
    pin_recurring: bool = True,
) -> EmbedResult:
    """Embed each request's window for one scheduler step; ``batch`` holds one ``(request, window)`` per request.

    Items whose tokens run past their window stay pinned for the request until a later window has
    used them; a request's pins go once its window passes its last item (``pin=False`` turns pinning
    off, to measure what it saves; ``pin_recurring=False`` keeps no pin for an image that only recurs
    later in the prompt, as vLLM). If the encoder raises, returns bad shapes or (``check_finite``:
    one fused check and one sync per step; benchmarks may turn it off) NaN or inf, the cache is left
    exactly as it was: a non-finite embedding would otherwise be served to every later request for
    that image. The result's ``outcomes`` say what became of each item a window touched, and which
    call encoded it; ``call_modalities`` what each call held. ``grouping`` and
    ``per_request_modalities`` choose an engine's calls (module docstring).
    """
    if not isinstance(cache, EmbeddingCache):
        raise TypeError(f"cache must be an EmbeddingCache, got {type(cache).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    options = _options(max_tokens_per_call, pin, pin_recurring, grouping, per_request_modalities)
    checked = _check_batch(batch)
    step = _step_batched if mode == "batched" else _step_per_request
    tally = _Tally()
    calls: list[tuple[list[MultimodalItem], Sequence[torch.Tensor]]] = []
    with cache.transaction():
        embeddings = step(checked, _recording(encoder, calls) if check_finite else encoder, cache, options, tally)
        if check_finite:
            _check_finite(checked, calls)
    hits = sum(o.fate == "hit" for marks in tally.outcomes for o in marks)
    return EmbedResult(
        embeddings=embeddings, encoder_calls=len(tally.calls), encoded_items=len(tally.hashes),
        encoded_tokens=sum(tally.calls), cache_hits=hits, cache_misses=sum(map(len, tally.outcomes)) - hits,
        call_tokens=tuple(tally.calls), encoded_hashes=tuple(tally.hashes), outcomes=tuple(tally.outcomes),
        call_modalities=tuple(tally.modalities),
    )
