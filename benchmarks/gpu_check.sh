#!/usr/bin/env bash
# The GPU check of issue 15, for the day a GPU is lent: compute-only MFU of width-1.0 VGG13 (bf16,
# channels_last, with and without torch.compile) and end-to-end `facs pretrain` on one GPU over a
# 200,000-row synthetic corpus; writes benchmarks/results/gpu.json within about 8 minutes.
# Without a CUDA GPU it says so and exits 0 at once, leaving gpu.json as it is.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
# A broken interpreter or torch install fails here (set -e), not reads as "no GPU".
has_gpu="$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')"
if [ "$has_gpu" != 1 ]; then
    echo "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False):" \
        "nothing measured, benchmarks/results/gpu.json left as it is"
    exit 0
fi
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
# 8 minutes in all: what has not finished by then is reported as a failure, not left running.
exec timeout --signal=INT --kill-after=20 480 "$PYTHON" benchmarks/gpu_check.py "$@"
