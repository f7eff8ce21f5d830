#!/usr/bin/env sh
# Install torch into the environment of python "$1" unless it already has one.
# With an NVIDIA GPU: torch from pip's configured index, as pip is set up.
# Without one it must be the CPU build (plain `pip install torch` on Linux pulls the multi-GB
# CUDA build), so ask for it by its local version, torch==X+cpu: from what pip is configured
# with (a find-links folder or a mirror may hold it), else with PyTorch's CPU wheel index added as
# an EXTRA index. pip's own index settings are left as they are.
set -eu
PY="$1"
VERSION="${TORCH_VERSION:-2.13.0}"
CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if "$PY" -c "import torch" 2>/dev/null; then
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    exec "$PY" -m pip install "torch==$VERSION"
fi
# A dry run first: an unreachable extra index costs minutes of retries where pip's own
# configuration already has the wheel (an offline machine with a wheel folder).
if "$PY" -m pip install --dry-run --no-deps --quiet "torch==$VERSION+cpu" >/dev/null 2>&1; then
    exec "$PY" -m pip install "torch==$VERSION+cpu"
fi
exec "$PY" -m pip install "torch==$VERSION+cpu" --extra-index-url "$CPU_INDEX"
