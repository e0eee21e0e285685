#!/usr/bin/env bash
# One prepared pass on a GPU machine: the CUDA tests, the fleet engine on the GPU at 1024 and 4096
# twins, and the same fleets on all of that machine's CPU cores as a same-machine reference.
# Each part has its own time limit so that one slow part still leaves the others' results.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (default benchmarks/out/gpu)
#   GPU_TWINS=64 CPU_TWINS=64 bash benchmarks/gpu_check.sh   # a quick pass
#
# Packages the machine lacks can travel as wheels in .whl/ (installed into /tmp/site first).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-benchmarks/out/gpu}
GPU_TWINS=${GPU_TWINS:-1024,4096}
CPU_TWINS=${CPU_TWINS:-1024,4096}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
  python3 -m fedtwin.sim.cartpole_kernel
  nproc
} 2>&1 | tee "$OUT/machine.txt"

timeout 240 python3 benchmarks/fleet_scale.py --device cuda --twins "$GPU_TWINS" --engines fleet \
  --repeats 2 --wait-load 1000 --out benchmarks/out/fleet_scale_gpu.md 2>&1 | tee "$OUT/fleet_gpu.log"

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"

timeout 150 python3 benchmarks/fleet_scale.py --device cpu --twins "$CPU_TWINS" --engines fleet-sharded \
  --workers "$(nproc)" --wait-load 1000 --out benchmarks/out/fleet_scale_gpu_host_cpu.md 2>&1 \
  | tee "$OUT/fleet_cpu.log"

# The GPU page: both runs in one table (benchmarks/results/fleet_scale_gpu.md).
python3 benchmarks/fleet_scale.py --render-gpu benchmarks/out/fleet_scale_gpu.json \
  benchmarks/out/fleet_scale_gpu_host_cpu.json >/dev/null
cp benchmarks/results/fleet_scale_gpu.md benchmarks/out/fleet_scale_gpu.json \
  benchmarks/out/fleet_scale_gpu_host_cpu.json "$OUT/" 2>/dev/null
ls -la "$OUT"
