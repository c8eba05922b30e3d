#!/usr/bin/env bash
# The GPU checks of issue #10 point 7, as one command for a lent CUDA machine (torch alone: no MLflow,
# pydicom or cohort there). Needs the bundle (bench/train_gpu.py bundle ...) at .gpu/bundle.npz.
# Each step has its own time limit and writes its JSON as it goes, so a slow step leaves the others'.
#   OUT=/some/dir bash bench/gpu_check.sh
set -u
OUT=${OUT:-/tmp/rgops-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
log="$OUT/log.txt"
step() { local limit=$1; shift; echo "== $* (limit ${limit} s) $(date -u +%T)" | tee -a "$log"
         timeout "$limit" "$@" 2>&1 | grep -v -i "warning" | tee -a "$log"; echo "== rc ${PIPESTATUS[0]}" | tee -a "$log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$log"
step 110 python3 bench/train_throughput.py --device cuda --steps 30 --out "$OUT/train_throughput_cuda.json"
step 140 python3 bench/train_gpu.py curves .gpu/bundle.npz --device cuda --seeds 0,1,2,3,4 --out "$OUT/train_gpu_curves_cuda.json"
step 170 python3 bench/train_gpu.py full .gpu/bundle.npz --device cuda --weights-dir "$OUT" --out "$OUT/train_gpu_full_cuda.json"
step 130 python3 bench/train_throughput.py --device cuda --compile --steps 30 --sizes 64 --batches 512 --no-plain \
    --out "$OUT/train_throughput_cuda_compile.json"
ls -la "$OUT" | tee -a "$log"
