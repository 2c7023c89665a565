#!/usr/bin/env bash
# One prepared GPU check for a lent accelerator (issue 9's rollout target), ~3-5 min on an H200:
# the 0.39B Qwen2-shaped model, batch 64, 128 prompt + 128 new tokens, bf16; HF model.generate vs
# posttrain's native decoder (eager) and its static decoder (each step a CUDA graph), with the sampling
# log-probs compared against one full forward. Runs with the machine's own python3 (torch, transformers,
# tqdm, yaml are there); posttrain is imported from the working tree. Output goes to stdout and $OUT/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
  transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/gpu_check.log"
for backend in static native; do
  python3 benchmarks/rollout_bench.py --device cuda --dtype bf16 --models qwen2-0.5b --batch 64 \
      --prompt-len 128 --new 128 --repeats 2 --backend "$backend" --check-logprobs 2>&1 | tee -a "$OUT/gpu_check.log"
done
