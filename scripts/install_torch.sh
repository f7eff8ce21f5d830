#!/usr/bin/env sh
# Install torch into the environment of python "$1" unless it already has one.
# Without a GPU this must be the CPU build: plain `pip install torch` on Linux pulls the
# multi-GB CUDA build. A CPU wheel on pip's find-links path is used first, else PyTorch's CPU index.
set -eu
PY="$1"
VERSION="${TORCH_VERSION:-2.13.0}"
if "$PY" -c "import torch" 2>/dev/null; then
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    exec "$PY" -m pip install "torch==$VERSION"
fi
for dir in $("$PY" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p"); do
    for wheel in "$dir"/torch-"$VERSION"+cpu-*.whl; do
        [ -f "$wheel" ] && exec "$PY" -m pip install "$wheel"
    done
done
exec "$PY" -m pip install "torch==$VERSION" \
    --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
