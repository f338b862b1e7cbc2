#!/usr/bin/env bash
# One pass over everything that needs a GPU, on a fresh CUDA machine, from the repo root:
#
#   OUT=/path/to/results bash scripts/gpu_check.sh           # on the GPU (~6-7 min)
#   OUT=/tmp/gpu_check_out bash scripts/gpu_check.sh --cpu-dry-run   # same stages, tiny settings, on CPU
#
# The machine needs PyTorch with CUDA, triton, tokenizers, transformers, numpy; our package is used from
# the working tree (PYTHONPATH), not installed. Wheels in .whl/ (DeepSpeed and its dependencies, pytest)
# are installed into $WORK/site, skipping any distribution the machine already has.
#
# Stages, in the order of STAGES; each logs to $OUT/<stage>.log, runs under `timeout` (capped by what is left of
# BUDGET_S), and a failing stage does not stop the next:
#   env            nvidia-smi, versions                          wheels         .whl/*.whl -> $WORK/site
#   kernel_tests   kernels' self-check + pytest tests/kernels on CUDA
#   kernels        benchmarks/kernels.py (fused kernels vs eager, torch.compile, SDPA-flash)
#   bench_seq512   spanbert-ds bench, spanbert-base, batch 32 x 512, every attention backend
#   bench_seq128   the same at batch 128 x 128
#   prepare, train, export   a 30-step DeepSpeed ZeRO-2 bf16 pretraining of `small` on the built-in corpus,
#                  exported to a Hugging Face folder (needs DeepSpeed importable; skipped otherwise)
# $OUT/summary.txt: one line per stage (exit code: 124 timed out, 3 no pytest, 4 no DeepSpeed, 5 nothing from
# the stage before; "skipped": BUDGET_S spent), then the bench tables, kernel table, last training metrics.
#
# Environment: OUT (default ./gpu_check_out), BUDGET_S (all stages together, default 400),
# STAGES (which stages in which order, e.g. "env wheels bench_seq512 train"), KERNELS_ARGS (extra flags for
# benchmarks/kernels.py, e.g. "--no-compile"), WORK (scratch, default /tmp/gpu_check), PYTHON.
set -u

DRY=0
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) DRY=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (use --cpu-dry-run or nothing)" >&2; exit 2 ;;
    esac
done

OUT=${OUT:-$PWD/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check}
BUDGET_S=${BUDGET_S:-400}
STAGES=${STAGES:-"env wheels kernel_tests kernels bench_seq512 bench_seq128 prepare train export"}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK/site"
: > "$OUT/summary.txt"
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"  # the tree first, then the carried wheels
export PYTHONUNBUFFERED=1  # logs keep what a stage printed even when its timeout kills it
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
export PY WORK DRY OUT KERNELS_ARGS=${KERNELS_ARGS:-}
START=$SECONDS

# run_stage NAME TIMEOUT FUNCTION: FUNCTION under `timeout` (whole process group), tee'd to $OUT/NAME.log.
run_stage() {
    local name=$1 limit=$2 fn=$3
    local left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 20)); then
        printf '%-13s skipped   (%ss of BUDGET_S=%s left)\n' "$name" "$left" "$BUDGET_S" | tee -a "$OUT/summary.txt"
        return 0
    fi
    ((limit > left)) && limit=$left
    local t0=$SECONDS
    echo "=== $name (timeout ${limit}s) $(date -u +%H:%M:%S)" | tee "$OUT/$name.log"
    timeout --kill-after=10 "$limit" bash -c "$fn" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local what=ok; ((rc == 124 || rc == 137)) && what="TIMED OUT"; ((rc != 0 && rc != 124 && rc != 137)) && what=FAILED
    printf '%-13s rc=%-4s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$what" | tee -a "$OUT/summary.txt"
}

# ------------------------------------------------------------------------------------------------ stages

stage_env() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    echo "repo: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
    echo "cpus: $(nproc); memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}'); python: $PY"
    "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "triton", "numpy", "tokenizers", "transformers", "tensorboard", "pytest", "deepspeed"):
    try:
        print(f"{name:13s}", getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(f"{name:13s} missing ({type(e).__name__}: {e})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
import spanbert_ds
print("spanbert_ds from", spanbert_ds.__file__)
EOF
}

stage_wheels() {
    shopt -s nullglob
    local wheels=(.whl/*.whl)
    if ((${#wheels[@]} == 0)); then echo "no wheels in .whl/ (carry it to the machine to get DeepSpeed, pytest)"; return 0; fi
    local rc=0 w dist
    for w in "${wheels[@]}"; do
        dist=$(basename "$w" | cut -d- -f1)
        if "$PY" -c "import importlib.metadata as m, sys; print('have', sys.argv[1], m.version(sys.argv[1]))" "$dist" 2>/dev/null; then
            continue  # never shadow what the machine already has
        fi
        echo "install $(basename "$w")"
        "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$w" || rc=1
    done
    # DeepSpeed's own requirements: name any that still does not import (the train stage needs them)
    "$PY" - <<'EOF'
import importlib
missing = []
for module in ("deepspeed", "hjson", "pydantic", "msgpack", "psutil", "cpuinfo", "ninja", "einops", "packaging", "tqdm"):
    try:
        importlib.import_module(module)
    except Exception as e:
        missing.append(f"{module} ({e})")
print("deepspeed requirements missing:", ", ".join(missing) if missing else "none")
EOF
    return $rc
}

stage_kernel_tests() {
    "$PY" -c "
import torch
from spanbert_ds import kernels
device = 'cuda' if torch.cuda.is_available() else 'cpu'
ok = kernels.self_check(device)
print('fused_available', kernels.fused_available(), '| self_check on', device, ok)
raise SystemExit(0 if ok or device == 'cpu' else 1)"
    local check=$?
    if ! "$PY" -c "import pytest" 2>/dev/null; then
        echo "pytest is missing: put its wheels in .whl/ (pytest, pluggy, iniconfig) to run tests/kernels"
        return 3
    fi
    if ((DRY)); then  # the interpreter is slow: the dispatch tests only
        TRITON_INTERPRET=1 "$PY" -m pytest -q -x tests/kernels/test_dispatch.py
    else
        # first configs only: the tests check numbers, and tuning every odd test shape took minutes
        SPANBERT_DS_AUTOTUNE=0 TRITON_INTERPRET=0 "$PY" -m pytest -q -x tests/kernels
    fi
    local rc=$?
    ((rc == 0)) && rc=$check
    return $rc
}

stage_kernels() {
    # shellcheck disable=SC2086  # KERNELS_ARGS is a list of flags, e.g. "--no-compile"
    if ((DRY)); then TRITON_INTERPRET=1 "$PY" benchmarks/kernels.py --smoke; else "$PY" benchmarks/kernels.py ${KERNELS_ARGS:-}; fi
}

bench() {  # bench SEQ BATCH
    if ((DRY)); then
        "$PY" -m spanbert_ds.cli bench --model tiny --seq-len 64 --batch 2 --steps 2 --warmup 1
    else
        "$PY" -m spanbert_ds.cli bench --model spanbert-base --seq-len "$1" --batch "$2" --steps 10 --warmup 3
    fi
}
stage_bench_seq512() { bench 512 32; }
stage_bench_seq128() { bench 128 128; }

have_deepspeed() {
    "$PY" -c "import deepspeed" 2>/dev/null && return 0
    echo "DeepSpeed does not import here: put its wheel and dependencies in .whl/ (see the wheels log)"
    return 1
}

stage_prepare() {
    have_deepspeed || return 4
    "$PY" -m spanbert_ds.cli prepare python-docs "$WORK/shards" --vocab-size 8000 --valid-fraction 0.05
}

stage_train() {
    have_deepspeed || return 4
    [ -f "$WORK/shards/meta.json" ] || { echo "no shards (the prepare stage failed)"; return 5; }
    local base=ds_configs/zero2_bf16.json batch=64 model=small steps=30 seq=128 every=5 workers=2
    ((DRY)) && base=ds_configs/cpu_zero2.json batch=8 model=tiny steps=4 seq=64 every=2 workers=1
    # The shipped config with a small batch and a short warmup. torch's AdamW: DeepSpeed's FusedAdam
    # would be JIT-compiled first, which needs nvcc (a bare PyTorch image has none) and a minute.
    "$PY" - "$base" "$WORK/ds_config.json" "$batch" <<'EOF' || return 6
import json, sys
source, target, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = json.load(open(source))
config.update(train_batch_size=batch, train_micro_batch_size_per_gpu=batch)
config["scheduler"]["params"]["warmup_num_steps"] = 5
config["optimizer"]["params"]["torch_adam"] = True
json.dump(config, open(target, "w"), indent=2)
print(f"ds_config: {source} with batch {batch}/{batch}, warmup 5 steps, torch_adam")
EOF
    "$PY" train.py --deepspeed_config "$WORK/ds_config.json" --model $model --data "$WORK/shards" \
        --output "$WORK/run" --steps $steps --max-seq-len $seq --log-every $every --save-every $steps \
        --num-workers $workers
    local rc=$?
    for f in metrics.jsonl run_config.json; do [ -f "$WORK/run/$f" ] && cp "$WORK/run/$f" "$OUT/"; done
    return $rc
}

stage_export() {
    have_deepspeed || return 4
    [ -f "$OUT/metrics.jsonl" ] || { echo "no run to export (the train stage failed)"; return 5; }
    "$PY" -m spanbert_ds.cli export "$WORK/run" "$WORK/hf" || return $?
    ls -l "$WORK/hf"
    "$PY" - "$WORK/hf" <<'EOF'
import sys, transformers
model = transformers.AutoModelForMaskedLM.from_pretrained(sys.argv[1])
print("transformers loads the export:", type(model).__name__, sum(p.numel() for p in model.parameters()), "parameters")
EOF
}

export -f stage_env stage_wheels stage_kernel_tests stage_kernels bench stage_bench_seq512 stage_bench_seq128 \
    have_deepspeed stage_prepare stage_train stage_export

# ------------------------------------------------------------------------------------------------ run

echo "gpu_check: OUT=$OUT WORK=$WORK BUDGET_S=$BUDGET_S$( ((DRY)) && echo ' (CPU dry run: tiny settings)')"
# each stage's own time limit (seconds); what is left of BUDGET_S caps it further
declare -A LIMIT=([env]=30 [wheels]=60 [kernel_tests]=150 [kernels]=240 [bench_seq512]=150 [bench_seq128]=150
                  [prepare]=60 [train]=150 [export]=60)
for name in $STAGES; do
    if [ -z "${LIMIT[$name]:-}" ]; then
        echo "unknown stage $name (known: ${!LIMIT[*]})" | tee -a "$OUT/summary.txt"
        continue
    fi
    run_stage "$name" "${LIMIT[$name]}" "stage_$name"
done

{
    echo "total $((SECONDS - START))s"
    for log in "$OUT/bench_seq512.log" "$OUT/bench_seq128.log"; do
        [ -f "$log" ] || continue
        echo; echo "--- $(basename "$log" .log)"
        sed -n '/^spanbert-ds bench:/,/^auto resolved to/p;/^note:/p' "$log"
    done
    if [ -f "$OUT/kernels.log" ]; then
        echo; echo "--- kernels (table and goals)"
        sed -n '/^device: /,$p' "$OUT/kernels.log"
    fi
    if [ -f "$OUT/metrics.jsonl" ]; then
        echo; echo "--- train: last metrics"; tail -n 1 "$OUT/metrics.jsonl"
    fi
} >> "$OUT/summary.txt"
echo; echo "==================== summary ($OUT/summary.txt)"; cat "$OUT/summary.txt"
# exit 1 when a stage failed or timed out, so a caller sees it without reading the summary
! grep -qE '^[a-z_0-9]+ +rc=[0-9]+ .*(FAILED|TIMED OUT)$' "$OUT/summary.txt"
