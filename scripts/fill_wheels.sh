#!/usr/bin/env bash
# Fill .whl/ with what scripts/gpu_check.sh installs on a fresh GPU machine that cannot reach a package index:
#
#   bash scripts/fill_wheels.sh                       # wheels for this machine's Python
#   PY_VERSION=3.12 bash scripts/fill_wheels.sh       # for another Python on the GPU machine (manylinux x86_64)
#
# DeepSpeed and its dependencies, pytest and its own, flashdeberta and disentangled-flash (the disentangled
# attention's peers), at the versions constraints.txt pins; no dependencies beyond those listed (torch, triton,
# numpy, transformers, tokenizers are the GPU machine's own, and gpu_check.sh never shadows them). DeepSpeed
# ships only a source archive: it is built here into a pure-Python wheel (no ops compiled; they JIT on use).
# .whl/ is git-ignored; carry it to the machine beside the tree (the device tool's `carry: [".whl"]`).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
DEST=.whl
mkdir -p "$DEST"

# the binary (or universal) wheels, each without its dependencies: the list is the closure we need
BINARY=(
    einops hjson msgpack ninja packaging psutil py-cpuinfo pydantic pydantic-core annotated-types
    typing-extensions typing-inspection tqdm
    pytest pluggy iniconfig pygments
    flashdeberta disentangled-flash
)
target=()
if [ -n "${PY_VERSION:-}" ]; then
    target=(--python-version "$PY_VERSION" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
            --platform manylinux_2_28_x86_64 --implementation cp)
fi
"$PY" -m pip download --no-deps --only-binary=:all: -c constraints.txt -d "$DEST" "${target[@]}" "${BINARY[@]}"

# DeepSpeed: a source archive on PyPI, built into a py3-none-any wheel with no ops
DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --no-build-isolation -c constraints.txt -w "$DEST" deepspeed

ls -1 "$DEST"
echo "fill_wheels: $(find "$DEST" -name '*.whl' | wc -l) wheels in $DEST/ ($(du -sh "$DEST" | cut -f1));" \
     "carry $DEST to the GPU machine"
