#!/usr/bin/env bash
# Everything that needs the GPU, in ONE call of the device machine, inside a deadline (BUDGET s):
#   setup -> skinny-GEMM benchmark (+ copy bandwidth) -> 7B-class model benchmark (+ HF transformers)
#   -> kernel tests on the GPU -> backend tests (CUDA graphs) -> CLI cuda vs numpy on the bundled model.
# Full logs under /tmp/gpu_work, tarred into $OUT with the main files (8 files at most come back);
# the short tables are printed last.
# Needs .whl/numpy-2.4.6-*.whl (the image's numpy 2.5 breaks numba-cuda's import), carried with
# run(carry=[".whl"]); prepare it with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl numpy==2.4.6
set -u
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-540}       # seconds; 2026-11-25 the whole script took 240 s with the v1 config only
STEPS=${STEPS:-"gemv attn model7b profile delta ktests btests cli"}   # which steps to run, in this order
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
OUT=${OUT:-/tmp/gpu_out}
W=/tmp/gpu_work
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(date +%s) + T0 )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo $(( l > 5 ? l : 5 )); }

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "
import sys
from importlib.metadata import version
import numba.cuda
sys.exit(0 if tuple(int(x) for x in version('numba-cuda').split('.')[:2]) >= (0, 30) else 1)"; then
  echo "installing the carried numba-cuda 0.30.4 wheel"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/opt/*.whl
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  python3 -c "
import numpy, numba, torch, transformers
from importlib.metadata import version
print('numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', version('numba-cuda'),
      'cuda-bindings', version('cuda-bindings'), 'torch', torch.__version__, 'transformers', transformers.__version__)"
  date -u
} 2>&1 | tee "$W/env.txt"

if has gemv; then
  echo "== [$(el)s] skinny GEMM (+ copy bandwidth)"
  timeout "$(cap ${GEMV_S:-100})" python3 benchmarks/bench_gemv.py --json "$W/gemv.json" ${GEMV_ARGS:-} > "$W/gemv.log" 2>&1
  tail -n 3 "$W/gemv.log"
fi

if has attn; then
  echo "== [$(el)s] attention over the KV cache (MiMo-7B shapes), per version"
  timeout "$(cap ${ATTN_S:-120})" python3 benchmarks/bench_attention.py --json "$W/attn.json" ${ATTN_ARGS:-} > "$W/attn.log" 2>&1
  tail -n 3 "$W/attn.log"
fi

if has model7b; then
  echo "== [$(el)s] 7B-class model"
  timeout "$(cap ${MODEL7B_S:-300})" python3 benchmarks/bench_model7b.py --json "$W/model7b.json" ${MODEL7B_ARGS:-} \
      > "$W/model7b.log" 2>&1
  tail -n 3 "$W/model7b.log"
fi

if has profile && command -v ncu > /dev/null; then
  echo "== [$(el)s] per-kernel device time of 7B-shape forwards (ncu, 2 layers, n = 1 and 4)"
  for c in ${PROFILE_CONFIGS:-default}; do
    timeout "$(cap 90)" ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base \
        python3 benchmarks/profile_model7b.py --config $c --layers 2 > "$W/prof_$c.csv" 2> "$W/prof_$c.err"
    python3 benchmarks/profile_model7b.py --summarize "$W/prof_$c.csv" --layers 2 > "$W/prof_$c.md" 2>&1
    echo "config $c:"; grep -E "^###|^per layer" "$W/prof_$c.md"
  done
fi

if has delta; then
  echo "== [$(el)s] Gated DeltaNet verify kernel (Qwen3-Next/3.5 shapes)"
  timeout "$(cap 60)" python3 -m kernels_cuda.bench_delta --json "$W/delta.json" > "$W/delta.log" 2>&1; tail -n 8 "$W/delta.log"
fi

if has ktests; then
  echo "== [$(el)s] kernel tests on the GPU"
  timeout "$(cap ${KTESTS_S:-150})" python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py \
      ${KTESTS_K:+-k "$KTESTS_K"} > "$W/test_kernels.log" 2>&1
  tail -n 4 "$W/test_kernels.log"
fi

if has btests && [ "$(left)" -gt 30 ]; then
  echo "== [$(el)s] backend tests on the GPU (CUDA graphs)"
  timeout "$(cap ${BTESTS_S:-200})" python3 -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py -k "${BTESTS_K:-not cli}" \
      > "$W/test_backend.log" 2>&1
  tail -n 4 "$W/test_backend.log"
fi
if has cli && [ "$(left)" -gt 25 ]; then
  for b in numpy cuda; do
    timeout "$(cap 90)" python3 -m mtp_ref generate --prompt "Once upon a time" --max-new-tokens 24 --draft 2 \
        --json --backend $b > "$W/cli_$b.json" 2>>"$W/cli.err"
  done
  python3 -c "
import json; a = json.load(open('$W/cli_numpy.json')); b = json.load(open('$W/cli_cuda.json'))
print('bundled checkpoint, --draft 2: cuda tokens == numpy tokens:', a['token_ids'] == b['token_ids'], b['token_ids'])" 2>&1 | tail -n 2
fi

echo
echo "================ tables ================"
[ -f "$W/gemv.log" ] && sed -n '/^## Skinny GEMM/,$p' "$W/gemv.log"
[ -f "$W/attn.log" ] && sed -n '/^## Attention/,$p' "$W/attn.log"
[ -f "$W/model7b.log" ] && sed -n '/^## 7B-class/,$p' "$W/model7b.log"
for f in "$W"/prof_*.md; do [ -f "$f" ] && { echo "$f"; cat "$f"; }; done
echo "(total $(el)s)"
tar czf "$OUT/gpu_all_logs.tgz" -C "$W" .
cp "$W"/*.log "$W"/*.md "$W/env.txt" "$W"/*.json "$OUT/" 2>/dev/null
true
