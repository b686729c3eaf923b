#!/usr/bin/env bash
# llama.cpp beside ours on the GPU machine: build llama-bench from the llama.cpp that the llama-cpp-python
# 0.3.36 sdist vendors, write bench_model7b's random weights as a qwen2 GGUF, run llama-bench.
#
# Prepare here (the GPU machine reaches no registry), then carry .scratch:
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/x && tar xzf /tmp/x/*.tar.gz -C /tmp/x
#   cd /tmp/x/llama_cpp_python-0.3.36/vendor && mkdir -p /tmp/trim && cp -r llama.cpp /tmp/trim/ && cd /tmp/trim/llama.cpp
#   (keep CMakeLists.txt cmake ggml src include common vendor tools app gguf-py LICENSE; drop tools/ui,
#    tools/server and the ggml backends other than cpu, cuda, hip, rpc, zendnn) -> 26 MB
#   tar cJf .scratch/llama.cpp-0c1e570.tar.xz -C /tmp/trim llama.cpp                              # 3.9 MB
#
#   bash benchmarks/llamacpp_bench.sh [build] [gguf] [bench]     (default: all three; build runs in the
#                                                                  background beside gguf, bench waits for it)
# Outputs under $OUT: llama_build.log, llamabench.jsonl (one line per test), llamabench.md (the table).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/llama_out}
SRC=${LLAMA_SRC:-.scratch/llama.cpp-0c1e570.tar.xz}
W=${LLAMA_WORK:-/tmp/llama_work}
GGUF=${GGUF:-$W/mimo7b-shapes-bf16.gguf}
STEPS=${*:-build gguf bench}
BENCH_ARGS=${BENCH_ARGS:--ngl 99 -fa 1 -d 512,4096 -p 1,2,4,8 -n 128 -r 10}
BENCH_S=${BENCH_S:-240}
mkdir -p "$OUT" "$W"
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
BIN=$W/build/bin/llama-bench

if has build && [ ! -x "$BIN" ]; then
  [ -d "$W/llama.cpp" ] || tar xJf "$SRC" -C "$W"
  # setsid: the build goes on if this command returns first (a later call on the same machine finds it)
  setsid bash -c "
    cmake -S $W/llama.cpp -B $W/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF && cmake --build $W/build --target llama-bench -j $(nproc)
    echo build_rc=\$? " > "$W/llama_build.log" 2>&1 < /dev/null &
  echo "llama.cpp build started in the background ($W/llama_build.log)"
fi

if has gguf && [ ! -s "$GGUF" ]; then
  [ -d "$W/llama.cpp" ] || tar xJf "$SRC" -C "$W"
  PYTHONPATH="$W/llama.cpp/gguf-py:${PYTHONPATH:-}" python3 benchmarks/llamacpp_gguf.py "$GGUF" 2>&1 | tail -n 3
fi

if has bench; then
  t0=$(date +%s)
  while ! grep -q "build_rc=" "$W/llama_build.log" 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt 600 ]; do sleep 5; done
  echo "build: $(grep -c . "$W/llama_build.log") log lines, $(grep build_rc= "$W/llama_build.log"), waited $(( $(date +%s) - t0 )) s"
  cp "$W/llama_build.log" "$OUT/" 2>/dev/null
  if [ -x "$BIN" ] && [ -s "$GGUF" ]; then
    echo "llama-bench -m GGUF $BENCH_ARGS"
    timeout "$BENCH_S" "$BIN" -m "$GGUF" $BENCH_ARGS -o jsonl > "$OUT/llamabench.jsonl" 2> "$OUT/llamabench.err"
    echo "llama-bench rc=$?"
    python3 - "$OUT/llamabench.jsonl" <<'EOF' | tee "$OUT/llamabench.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if rows:
    r = rows[0]
    print(f"llama.cpp {r.get('build_commit')} ({r.get('build_number')}), {r.get('gpu_info')}, {r.get('backends')}, "
          f"{r.get('model_type')}, flash attn {r.get('flash_attn')}, {r.get('test_time')}")
print("| test | depth | tokens/s | stddev | ms per call |")
print("|---|---|---|---|---|")
for r in rows:
    t = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    n = r["n_prompt"] or r["n_gen"]
    print(f"| {t} | {r['n_depth']} | {r['avg_ts']:.1f} | {r['stddev_ts']:.1f} | {1e3 * n / r['avg_ts']:.2f} |")
EOF
    tail -n 5 "$OUT/llamabench.err"
  else
    tail -n 30 "$W/llama_build.log"
  fi
fi
