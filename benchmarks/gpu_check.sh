#!/usr/bin/env bash
# GPU check (issue 13 item 6), < 8 minutes on one GPU:
#  1. fractional packing: the same small matrix through `harness run`, four cells per GPU (gpus: 0.25)
#     against one cell per GPU (gpus: 1); prints the throughput ratio;
#  2. 2:4 semi-structured sparsity: measured latency of a large fp16 linear layer, dense vs torch's
#     semi-structured sparse weight (cuSPARSELt / CUTLASS kernels), beside the theoretical 2x.
# Exits 2 with a message when no CUDA device is visible. Record the printed figures with the date
# and GPU in docs/reproduce.md.
#   usage: benchmarks/gpu_check.sh [RESULTS_DIR]     (default: a temporary folder, removed after)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}  # `make setup`'s environment; PYTHON=... to use another
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch; run make setup or pass PYTHON=/path/to/python" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to torch $("$PYTHON" -c 'import torch; print(torch.__version__)'); nothing was run" >&2
  exit 2
fi
WORK=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"
GPU=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name())')
echo "gpu_check on $GPU, $(date -u +%Y-%m-%dT%H:%MZ), torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"

# -- 1. packing: 16 cells (4 sparsities x 4 seeds share 4 dense models) ---------------------------
spec() {  # $1 name, $2 gpus per cell
  cat > "$WORK/$1.yaml" <<YAML
name: $1
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude]
sparsities: [0.5, 0.7, 0.8, 0.9]
seeds: [0, 1, 2, 3]
pretrain: {epochs: 10, optimizer: sgd, lr: 0.05, momentum: 0.9, batch_size: 64}
finetune: {epochs: 10, lr: 0.01}
resources: {cpus: 1, gpus: $2}
YAML
}
spec packing_one 1
spec packing_four 0.25
seconds() {  # wall seconds of one `harness run`
  local start=$SECONDS
  timeout 200 "$PYTHON" -m harness.cli run "$WORK/$1.yaml" --results "$WORK/$1" > "$WORK/$1.log" 2>&1 \
    || { echo "gpu_check: harness run $1 failed (log: $WORK/$1.log)" >&2; tail -5 "$WORK/$1.log" >&2; exit 1; }
  echo $((SECONDS - start))
}
ONE=$(seconds packing_one)
FOUR=$(seconds packing_four)
echo "packing: 16 cells, one per GPU ${ONE}s, four per GPU ${FOUR}s, throughput ratio" \
  "$("$PYTHON" -c "print(f'{$ONE / max($FOUR, 1):.2f}x')") (whole runs, pretraining included)"

# -- 2. 2:4 sparse vs dense latency of a large linear layer --------------------------------------
timeout 200 "$PYTHON" - <<'PY'
import torch
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

torch.manual_seed(0)
n, batch = 8192, 4096
weight = torch.randn(n, n, dtype=torch.half, device="cuda")
mask = torch.tensor([1, 1, 0, 0], dtype=torch.bool, device="cuda").repeat(n, n // 4)  # keep 2 of every 4
weight = weight * mask
x = torch.randn(batch, n, dtype=torch.half, device="cuda")
dense = torch.nn.Linear(n, n, bias=False).half().cuda()
dense.weight.data = weight.clone()
sparse = torch.nn.Linear(n, n, bias=False).half().cuda()
sparse.weight = torch.nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
assert isinstance(sparse.weight, SparseSemiStructuredTensor)


def milliseconds(layer: torch.nn.Module, repeats: int = 50) -> float:
    with torch.inference_mode():
        for _ in range(10):
            layer(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            layer(x)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


with torch.inference_mode():
    error = (sparse(x) - dense(x)).abs().max().item()
d, s = milliseconds(dense), milliseconds(sparse)
print(
    f"2:4 sparse linear {n}x{n}, batch {batch}, fp16: dense {d:.3f} ms, 2:4 sparse {s:.3f} ms, "
    f"measured speedup {d / s:.2f}x vs theoretical 2.00x (half the multiply-adds); max |diff| {error:.3g}"
)
PY
