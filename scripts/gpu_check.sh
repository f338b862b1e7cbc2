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
# Stages, in the order of STAGES, each with its own time limit (seconds, LIMIT below; what is left of BUDGET_S
# caps it further; 480 s in all, within the 8 minutes a lent GPU gives). Each logs to $OUT/<stage>.log, runs
# under `timeout`, and a failing stage does not stop the next:
#   env               15  nvidia-smi, versions
#   wheels            30  .whl/*.whl -> $WORK/site (scripts/fill_wheels.sh fills .whl/; carry it)
#   kernel_tests      45  kernels' self-check + pytest tests/kernels on CUDA
#   kernels          120  benchmarks/kernels.py, bert-base and deberta-v3-base shapes: the fused disentangled
#                         attention against flashdeberta 0.0.8 and disentangled-flash 1.1.1, padded and varlen;
#                         the BERT attention and bias-GeLU-LayerNorm against SDPA-flash and torch.compile
#   prepare           30  the built-in corpus (python-docs) into $WORK/shards
#   steps            100  end-to-end training steps, tokens/s and MFU, each against transformers in a DeepSpeed
#                         engine (ZeRO 1, bf16) on the same GPU: spanbert-base (benchmarks/train_step.py) and
#                         deberta-v3-base (benchmarks/deberta_step.py), 32 x 512
#   train_fp16_zero2  70  30 steps of `small` with DeepSpeed ZeRO-2 fp16 (ds_configs/zero2_fp16.json), exported
#                         to a Hugging Face folder that transformers must open with no missing weight
#   train_bf16_zero3  70  the same with ZeRO-3 bf16 (ds_configs/zero3_bf16.json)
#   bench_seq512, bench_seq128 (not in the default STAGES: name them) spanbert-ds bench, every attention backend
# $OUT/summary.txt: one line per stage (exit code: 124 timed out, 3 no pytest, 4 no DeepSpeed, 5 nothing from
# the stage before; "skipped": BUDGET_S spent), then the step tables, kernel table, last training metrics.
# --cpu-dry-run runs every stage on CPU with tiny settings (the kernels under Triton's interpreter; the fp16
# stage in fp32, as DeepSpeed's fp16 needs CUDA) and limits 4 x as long: it proves the script, not the speed.
#
# Environment: OUT (default ./gpu_check_out), BUDGET_S (all stages together, default 480; 1920 in the dry run),
# STAGES (which stages in which order, e.g. "env wheels steps"), KERNELS_ARGS (flags for benchmarks/kernels.py
# instead of the default shapes, e.g. "--no-compile"), WORK (scratch, default /tmp/gpu_check), PYTHON.
set -u

DRY=0
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) DRY=1 ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (use --cpu-dry-run or nothing)" >&2; exit 2 ;;
    esac
done

OUT=${OUT:-$PWD/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check}
BUDGET_S=${BUDGET_S:-$( ((DRY)) && echo 1920 || echo 480)}
STAGES=${STAGES:-"env wheels kernel_tests kernels prepare steps train_fp16_zero2 train_bf16_zero3"}
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
        printf '%-17s skipped   (%ss of BUDGET_S=%s left)\n' "$name" "$left" "$BUDGET_S" | tee -a "$OUT/summary.txt"
        return 0
    fi
    ((DRY)) && limit=$((4 * limit))  # the interpreter and CPU DeepSpeed are slow; the dry run proves, not times
    ((limit > left)) && limit=$left
    local t0=$SECONDS
    echo "=== $name (timeout ${limit}s) $(date -u +%H:%M:%S)" | tee "$OUT/$name.log"
    timeout --kill-after=10 "$limit" bash -c "$fn" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local what=ok; ((rc == 124 || rc == 137)) && what="TIMED OUT"; ((rc != 0 && rc != 124 && rc != 137)) && what=FAILED
    printf '%-17s rc=%-4s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$what" | tee -a "$OUT/summary.txt"
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
    local rc=0
    # never shadow what the machine already has; the rest in one pip call (one per wheel took seconds each)
    mapfile -t missing < <("$PY" - "${wheels[@]}" <<'EOF'
import importlib.metadata as m, os, sys
try:  # a wheel built for another Python would fail the whole pip call: leave it out, named
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
except ImportError:  # pip's own copy, where the machine has no packaging yet
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import parse_wheel_filename
here = set(sys_tags())
for wheel in sys.argv[1:]:
    dist = os.path.basename(wheel).split("-")[0]
    try:
        print("have", dist, m.version(dist), file=sys.stderr)
        continue
    except m.PackageNotFoundError:
        pass
    if not here & set(parse_wheel_filename(os.path.basename(wheel))[3]):
        print(f"skip {os.path.basename(wheel)} (built for another Python or platform: "
              f"PY_VERSION={sys.version_info[0]}.{sys.version_info[1]} bash scripts/fill_wheels.sh)", file=sys.stderr)
        continue
    print(wheel)
EOF
)
    if ((${#missing[@]})); then
        echo "install ${missing[*]##*/}"
        "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "${missing[@]}" || rc=1
    fi
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
    if ((DRY)); then TRITON_INTERPRET=1 "$PY" benchmarks/kernels.py --smoke; return; fi
    # bert-base and deberta-v3-base shapes only, one sequence length each: the 120 s limit
    # shellcheck disable=SC2086  # KERNELS_ARGS is a list of flags, e.g. "--no-compile"
    "$PY" benchmarks/kernels.py ${KERNELS_ARGS:---models bert-base deberta-v3-base --seq 512 --deberta-seq 512}
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

stage_steps() {
    have_deepspeed || return 4
    [ -f "$WORK/shards/meta.json" ] || { echo "no shards (the prepare stage failed)"; return 5; }
    local device=cuda span=spanbert-base deberta=deberta-v3-base batch=32 seq=512 rounds=5 warmup=2 rc=0
    ((DRY)) && device=cpu span=tiny deberta=deberta-tiny batch=2 seq=64 rounds=1 warmup=1
    "$PY" benchmarks/train_step.py --presets $span --device $device --engine deepspeed --dtype bf16 \
        --batch-size $batch --seq-len $seq --rounds $rounds --warmup $warmup || rc=$?
    "$PY" benchmarks/deberta_step.py --presets $deberta --device $device --engine deepspeed --dtype bf16 \
        --batch-size $batch --seq-lens $seq --rounds $rounds --shards "$WORK/shards" || rc=$?
    return $rc
}

# train_and_export NAME DS_CONFIG STAGE DTYPE: 30 steps of `small` (4 of `tiny` in the dry run) with the shipped
# config at ZeRO stage STAGE and DTYPE, a small batch and a short warmup; then export the run to a Hugging Face
# folder and open it with transformers (no weight may be missing, the logits must be finite).
train_and_export() {
    local name=$1 base=$2 stage=$3 dtype=$4
    have_deepspeed || return 4
    [ -f "$WORK/shards/meta.json" ] || { echo "no shards (the prepare stage failed)"; return 5; }
    local batch=64 model=small steps=30 seq=128 every=5 workers=2 run="$WORK/run_$name" hf="$WORK/hf_$name"
    if ((DRY)); then
        batch=8 model=tiny steps=4 seq=64 every=2 workers=1
        if [ "$dtype" = fp16 ]; then
            echo "dry run: DeepSpeed's fp16 needs CUDA; this stage trains in fp32 on CPU instead"
            dtype=fp32
        fi
    fi
    # torch's AdamW: DeepSpeed's FusedAdam would be JIT-compiled first, which needs nvcc (a bare PyTorch
    # image has none) and a minute.
    "$PY" - "$base" "$WORK/ds_$name.json" "$batch" "$stage" "$dtype" <<'EOF' || return 6
import json, sys
source, target, batch, stage, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
config = json.load(open(source))
config.update(train_batch_size=batch, train_micro_batch_size_per_gpu=batch)
config["scheduler"]["params"]["warmup_num_steps"] = 5
config["optimizer"]["params"]["torch_adam"] = True
config.setdefault("zero_optimization", {})["stage"] = stage
for key in ("bf16", "fp16"):
    config.setdefault(key, {})["enabled"] = key == dtype
print(f"ds_config: {source} with ZeRO {stage}, {dtype}, batch {batch}/{batch}, warmup 5 steps, torch_adam")
json.dump(config, open(target, "w"), indent=2)
EOF
    "$PY" train.py --deepspeed_config "$WORK/ds_$name.json" --model $model --data "$WORK/shards" \
        --output "$run" --steps $steps --max-seq-len $seq --log-every $every --save-every $steps \
        --num-workers $workers
    local rc=$?
    [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$OUT/${name}_metrics.jsonl"
    ((rc == 0)) || return $rc
    "$PY" -m spanbert_ds.cli export "$run" "$hf" || return $?
    ls -l "$hf"
    "$PY" - "$hf" <<'EOF'
import sys, torch, transformers
folder = sys.argv[1]
model, info = transformers.AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
print("transformers loads the export:", type(model).__name__, sum(p.numel() for p in model.parameters()),
      "parameters;", {k: v for k, v in info.items() if v} or "no missing or unexpected weights")
inputs = tokenizer(["The quick brown fox jumps over the lazy dog.", "import os"], return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model.eval()(**inputs).logits
print("logits", tuple(logits.shape), "finite", bool(torch.isfinite(logits).all()))
if info["missing_keys"]:
    sys.exit(f"the export lacks {info['missing_keys']}: transformers initialised them at random")
if not torch.isfinite(logits).all():
    sys.exit("the exported model's logits are not finite")
EOF
}
stage_train_fp16_zero2() { train_and_export train_fp16_zero2 ds_configs/zero2_fp16.json 2 fp16; }
stage_train_bf16_zero3() { train_and_export train_bf16_zero3 ds_configs/zero3_bf16.json 3 bf16; }

export -f stage_env stage_wheels stage_kernel_tests stage_kernels bench stage_bench_seq512 stage_bench_seq128 \
    have_deepspeed stage_prepare stage_steps train_and_export stage_train_fp16_zero2 stage_train_bf16_zero3

# ------------------------------------------------------------------------------------------------ run

echo "gpu_check: OUT=$OUT WORK=$WORK BUDGET_S=$BUDGET_S$( ((DRY)) && echo ' (CPU dry run: tiny settings)')"
# each stage's own time limit (seconds); what is left of BUDGET_S caps it further
declare -A LIMIT=([env]=15 [wheels]=30 [kernel_tests]=45 [kernels]=120 [prepare]=30 [steps]=100
                  [train_fp16_zero2]=70 [train_bf16_zero3]=70 [bench_seq512]=150 [bench_seq128]=150)
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
    if [ -f "$OUT/steps.log" ]; then
        echo; echo "--- steps (tokens/s, MFU; ours against transformers, both in DeepSpeed engines)"
        grep -e '^train step (fwd+bwd' -e '^MFU: ' -e '^preset ' -e '^DeBERTa training step' -e '^model  ' \
            -e '^spanbert-base \|^tiny \|^deberta-' "$OUT/steps.log"
    fi
    for name in train_fp16_zero2 train_bf16_zero3; do
        [ -f "$OUT/${name}_metrics.jsonl" ] || continue
        echo; echo "--- $name: last metrics"; tail -n 1 "$OUT/${name}_metrics.jsonl"
        grep -e '^transformers loads the export' -e '^logits' "$OUT/$name.log"
    done
} >> "$OUT/summary.txt"
echo; echo "==================== summary ($OUT/summary.txt)"; cat "$OUT/summary.txt"
# exit 1 when a stage failed or timed out, so a caller sees it without reading the summary
! grep -qE '^[a-z_0-9]+ +rc=[0-9]+ .*(FAILED|TIMED OUT)$' "$OUT/summary.txt"
