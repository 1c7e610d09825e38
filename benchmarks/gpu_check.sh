#!/usr/bin/env bash
# The GPU paths on one CUDA GPU, in under 8 minutes (each step has a time limit; 7 min in all):
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: $OUT)
# 1. train_gpu        run.py trainer=gpu (bf16-mixed) on MiniLM: RTE, one epoch of 1,024 rows, the full dev set
# 2. sparse24_latency benchmarks/sparse24_latency.py: 2:4 semi-structured vs dense F.linear latency (sm80+)
# 3. wtacrs_memory    benchmarks/wtacrs_memory.py --device cuda: WTA-CRS saved activations + CUDA step peaks, MiniLM
# 4. train_fsdp       run.py trainer=fsdp trainer.devices=1 on tiny-t5 LoRA-WTACRS: the FSDP path (one unit per block)
# Writes <step>.log, summary.txt, the run record and the benchmarks' outputs under OUT_DIR; exits 1 if a step failed.
# Needs a CUDA build of torch in $PY (default .venv/bin/python) and the GLUE data (FTLAB_DATA_DIR, default ../shared/data).
set -uo pipefail
out=${1:-${OUT:?give an output folder as the first argument or set OUT}}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export FTLAB_DATA_DIR=${FTLAB_DATA_DIR:-../shared/data} HF_HUB_OFFLINE=1
status=0

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
if ! "$PY" -c "import torch, sys; print(torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and \
torch.cuda.get_device_name()); sys.exit(0 if torch.cuda.is_available() else 1)" | tee "$out/torch.txt"; then
    echo "no CUDA device visible to $PY's torch (a CPU build? install a CUDA wheel of the same torch version)" >&2
    exit 2
fi

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$out/summary.txt"
    tail -n 15 "$out/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

step train_gpu 180 "$PY" run.py trainer=gpu task=rte data.max_train_samples=1024 train.epochs=1 \
    train.save_checkpoints=false paths.records_dir="$out/records" paths.output_dir="$out/runs" hydra.run.dir="$out/hydra"
step sparse24_latency 90 "$PY" benchmarks/sparse24_latency.py
step wtacrs_memory 150 "$PY" benchmarks/wtacrs_memory.py --device cuda --setups minilm --steps 4 \
    --out "$out/wtacrs_memory"
step train_fsdp 90 "$PY" run.py trainer=fsdp trainer.devices=1 backbone=tiny-t5 method=lora_wtacrs task=rte \
    data.max_train_samples=256 data.max_eval_samples=64 train.epochs=1 train.save_checkpoints=false \
    paths.records_dir="$out/records_fsdp" paths.output_dir="$out/runs" hydra.run.dir="$out/hydra_fsdp"
exit $status
