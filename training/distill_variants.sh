#!/usr/bin/env bash
# Stage 3 of the bundled checkpoint: re-distil its MTP modules on one GPU, trunk frozen (bit-identical),
# several variants side by side (the model is tiny: they share the GPU). For each variant NAME it writes
# $OUT/NAME_mtp.safetensors (only the tensors that changed, so the file comes back from a lent machine)
# and the logs into $OUT/logs.tgz. training/merge_mtp.py puts the chosen variant into the checkpoint.
#
# Needs the tokenized corpora: python training/train_tiny_mtp.py token-cache --data ../shared/data \
#   --tokenizer mtp_ref/checkpoints/mtp-tiny/tokenizer.json --out .scratch/distill_cache.npz --max-train-tokens 6000000
# Run on the lent GPU: run(command="bash training/distill_variants.sh", carry=[".scratch/distill_cache.npz"])
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/distill_out}
W=/tmp/distill_work
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
CK=mtp_ref/checkpoints/mtp-tiny
# stories-heavy: the held-out stories are TinyStories, which are 8 % of the stage-1 mix
MIX='{"gutenberg": 0.30, "python": 0.25, "tinystories_cased": 0.25, "tinystories_lower": 0.20}'
STEPS=${STEPS:-1500}
common=(train --data none --tokenizer $CK/tokenizer.json --token-cache .scratch/distill_cache.npz --init $CK
        --steps 0 --no-compile --distill-mix "$MIX" --distill-steps "$STEPS" --distill-name distill2
        --eval-every 500 --distill-deadline ${DEADLINE:-470})
declare -A VARIANTS=(
  [untied_lr1]="--untie-mtp-heads --distill-lr 1e-3 --distill-ce 0.5"
  [untied_lr3]="--untie-mtp-heads --distill-lr 3e-3 --distill-ce 0.5"
  [tied_lr1]="--distill-lr 1e-3 --distill-ce 0.5"
)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for v in "${!VARIANTS[@]}"; do
  python3 training/train_tiny_mtp.py "${common[@]}" ${VARIANTS[$v]} ${EXTRA:-} --out "$W/$v" > "$W/$v.log" 2>&1 &
done
wait
for v in "${!VARIANTS[@]}"; do
  echo "== $v (${VARIANTS[$v]})"
  grep -E "stopped|stage 2 done|greedy chain|heldout @distill2" "$W/$v.log" | cut -c1-400
  python3 - "$W/$v/model.safetensors" "$CK/model.safetensors" "$OUT/${v}_mtp.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
import torch
new, old = load_file(sys.argv[1]), load_file(sys.argv[2])
changed = {k: v for k, v in new.items() if not torch.equal(v, old[k])}
trunk = [k for k in changed if not any(k.startswith(f"model.layers.{i}.") for i in (10, 11, 12))]
assert not trunk, f"trunk tensors changed: {trunk[:5]}"
save_file(changed, sys.argv[3], metadata={"format": "pt"})
print(f"{len(changed)} changed tensors -> {sys.argv[3]}")
EOF
done
tar czf "$OUT/logs.tgz" -C "$W" $(cd "$W" && ls -d *.log */train_log.txt */loss_curves.csv */heldout_metrics.json 2>/dev/null)
ls -la "$OUT"
