"""vitkit.bench: batched versus per-request ViT on the attached device.

``python -m vitkit.bench`` runs a named sweep (``vitkit.bench.sweeps``) through both modes of
``embed_chunks`` (``vitkit.bench.run``), writes one JSON per run (``vitkit.bench.results``) and
PNG figures (``vitkit.bench.plot``). FLOPs are counted from the model shapes
(``vitkit.bench.flops``); MFU is against a matmul peak measured in the same run
(``vitkit.bench.machine``). ``python -m vitkit.bench.prefill`` measures the language model's chunked
prefill instead (``vitkit.bench.decoder``: Qwen2.5-VL-7B's decoder with a KV cache). Submodules are imported on demand, so importing this package is cheap.
"""
