#!/usr/bin/env bash
# One-command GPU check (issue 18), meant to take under 5 minutes on one GPU (not yet run on one:
# the per-row timeouts bound it at about 9 minutes):
#   1. the official output and gradient fixtures on CUDA, reference and FlexAttention backends;
#   2. bf16 forward / train throughput and peak memory of Swin-T, ConvNeXt-T, DAT-T, DAT++-T,
#      eager with the default ("auto" = flex) attention backend, DAT train with the reference
#      backend (to decide the CUDA default), then compiled training of Swin-T and DAT-T (a row
#      that runs over its time budget is reported as such).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default benchmarks/gpu_check_out; PYTHON=... to pick
# the interpreter; DAT_OFFICIAL_FIXTURES=... when the fixtures are not in ../shared/fixtures).
# Writes OUT_DIR/gpu_check.md (device, fixture table, throughput tables); exits non-zero when a
# fixture fails. Paste the tables into benchmarks/RESULTS.md with the device name.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT_DIR=${1:-benchmarks/gpu_check_out}
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"
MODELS="swin_tiny_patch4_window7_224 convnext_tiny dat_tiny dat_pp_tiny"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo '```'
} | tee "$REPORT"

status=0
"$PYTHON" benchmarks/gpu_check.py --device cuda | tee -a "$REPORT" || status=$?

BENCH="$PYTHON benchmarks/model_throughput.py --device cuda --dtype bf16 --batch 64 --warmup 2 --iters 8"
echo -e "\n## Eager, bf16 autocast, batch 64 at 224, attention backend auto (flex)\n" | tee -a "$REPORT"
$BENCH --models $MODELS --timeout 90 | tee -a "$REPORT"

echo -e "\n## Eager, attention backend reference (flex vs reference decides the CUDA default)\n" | tee -a "$REPORT"
$BENCH --models swin_tiny_patch4_window7_224 dat_tiny dat_pp_tiny --attention-backend reference \
  --modes train --timeout 60 | tee -a "$REPORT"

echo -e "\n## Compiled (inductor, default mode, train), bf16 autocast, batch 64 at 224\n" | tee -a "$REPORT"
$BENCH --models swin_tiny_patch4_window7_224 dat_tiny --compile --modes train --timeout 100 \
  | tee -a "$REPORT"

echo -e "\nwritten: $REPORT"
exit $status
