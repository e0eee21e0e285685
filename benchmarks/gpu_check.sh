#!/usr/bin/env bash
# One prepared pass on a GPU machine: the CUDA tests, the fleet engine on the GPU at 1024 and 4096
# twins, and the same fleets on all of that machine's CPU cores as a same-machine reference; then
# the torch CartPole backend (issue 20): its tests (CPU and CUDA), env-steps/s of the NumPy fleet env
# against the torch env and rollouts at 256..4096 twins (target: >= 20 M twin env-steps/s at 4096
# twins), one device training round of 16,384 twins, and a whole `fedtwin run` with
# execution.env_backend torch on the GPU (RUN_TWINS twins, 6 rounds: its held-out return and time).
# Each part has its own time limit so that one slow part still leaves the others' results.
#
#   bash benchmarks/gpu_check.sh            # every part, results under $OUT (default benchmarks/out/gpu)
#   PARTS=device-tests,device-env,round,torch-run bash benchmarks/gpu_check.sh   # the torch backend's (~8 min)
#   GPU_TWINS=64 CPU_TWINS=64 bash benchmarks/gpu_check.sh   # a quick pass
#
# Packages the machine lacks can travel as wheels in .whl/ (installed into /tmp/site first).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-benchmarks/out/gpu}
GPU_TWINS=${GPU_TWINS:-1024,4096}
CPU_TWINS=${CPU_TWINS:-1024,4096}
PARTS=${PARTS:-fleet,cuda-tests,host-cpu,device-tests,device-env,round,torch-run}
DEVICE_TWINS=${DEVICE_TWINS:-256,1024,4096}
ROUND_TWINS=${ROUND_TWINS:-16384}
RUN_TWINS=${RUN_TWINS:-1024}
RUN_DEVICE=${RUN_DEVICE:-cuda}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
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

if part fleet; then
  timeout 240 python3 benchmarks/fleet_scale.py --device cuda --twins "$GPU_TWINS" --engines fleet \
    --repeats 2 --wait-load 1000 --out benchmarks/out/fleet_scale_gpu.md 2>&1 | tee "$OUT/fleet_gpu.log"
fi

if part cuda-tests; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
fi

if part host-cpu; then
  timeout 150 python3 benchmarks/fleet_scale.py --device cpu --twins "$CPU_TWINS" --engines fleet-sharded \
    --workers "$(nproc)" --wait-load 1000 --out benchmarks/out/fleet_scale_gpu_host_cpu.md 2>&1 \
    | tee "$OUT/fleet_cpu.log"
fi

if part fleet && part host-cpu; then
  # The GPU page: both runs in one table (benchmarks/results/fleet_scale_gpu.md).
  python3 benchmarks/fleet_scale.py --render-gpu benchmarks/out/fleet_scale_gpu.json \
    benchmarks/out/fleet_scale_gpu_host_cpu.json >/dev/null
  cp benchmarks/results/fleet_scale_gpu.md benchmarks/out/fleet_scale_gpu.json \
    benchmarks/out/fleet_scale_gpu_host_cpu.json "$OUT/" 2>/dev/null
fi

# The torch backend: its tests (the CUDA ones run here), then the figures, each bounded on its own.
if part device-tests; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cartpole_torch.py 2>&1 \
    | tee "$OUT/test_cartpole_torch.log"
fi
if part device-env; then
  # exit 1 (recorded in the log) when the best env row at the largest size is under 20 M twin env-steps/s
  timeout 300 python3 benchmarks/device_env.py --devices cuda --twins "$DEVICE_TWINS" --compile cuda \
    --seconds 1 --min-env-rate 20e6 --out "$OUT/device_env_gpu.md" --json "$OUT/device_env_gpu.json" 2>&1 \
    | tee "$OUT/device_env.log"
  echo "device_env exit ${PIPESTATUS[0]}" | tee -a "$OUT/device_env.log"
fi
if part round; then
  timeout 240 python3 benchmarks/device_env.py --devices cuda --twins "" --round-twins "$ROUND_TWINS" \
    --out "$OUT/device_round_gpu.md" --json "$OUT/device_round_gpu.json" 2>&1 | tee "$OUT/device_round.log"
fi
if part torch-run; then
  rm -rf /tmp/fedtwin-gpu-run
  FEDTWIN_EXECUTION__DEVICE="$RUN_DEVICE" FEDTWIN_EXECUTION__ENV_BACKEND=torch timeout 300 python3 -m fedtwin run \
    --twins "$RUN_TWINS" --rounds 6 --store /tmp/fedtwin-gpu-run --run-id gpu-torch --no-progress 2>&1 \
    | tee "$OUT/torch_run.log"
  echo "torch-run exit ${PIPESTATUS[0]}" | tee -a "$OUT/torch_run.log"
fi
ls -la "$OUT"
