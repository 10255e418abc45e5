#!/usr/bin/env bash
# Resources of DiffRec vs L-DiffRec on a large synthetic catalogue (issue 5): 200,000 items ×
# 100,000 users from the demo generator. Trains each model for MAX_BATCHES batches of 400 users
# (no evaluation: DiffRec's 40-step reverse pass over 100k × 200k would take hours here) and
# prints parameters, seconds per batch, the extrapolated epoch time and the peak RSS.
# Usage: scripts/bench_large.sh [WORKDIR] [MAX_BATCHES]   (defaults: /tmp/diffrec-large, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-${TMPDIR:-/tmp}/diffrec-large}
batches=${2:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/diffrec-target}
cargo build --release --workspace
bin=$CARGO_TARGET_DIR/release/diffrec
mkdir -p "$dir"
[ -f "$dir/log.csv" ] || "$bin" generate --out "$dir/log.csv" --users 100000 --items 200000 \
  --clusters 64 --mean-interactions 40
cat > "$dir/large.yaml" <<YAML
name: large
data:
  source: {format: csv, path: log.csv}
# LightGCN for one epoch only: the clusters matter here for their sizes, not their quality.
cluster: {k: 2, lightgcn: {epochs: 1, batch_size: 65536, lr: 0.01, eval_every: 1000}}
model:
  variant: diffrec
  denoiser: {dims: [200, 600]}
train: {epochs: 1, eval_every: 2, max_batches: $batches}
YAML
"$bin" run "$dir/large.yaml" --workspace "$dir/ws" --until ingest
for variant in diffrec l-diffrec; do
  sets=(--set "name=large-$variant" --set "model.variant=$variant")
  if [ "$variant" = l-diffrec ]; then
    "$bin" stage cluster "$dir/large.yaml" --workspace "$dir/ws" "${sets[@]}"
    sets+=(--set "model.denoiser.dims=[300]" --set "model.diffusion.noise_max=0.02"
           --set "train.lr=0.0005")
  fi
  /usr/bin/time -v "$bin" stage train "$dir/large.yaml" --workspace "$dir/ws" --force "${sets[@]}" \
    2> "$dir/time-$variant.txt"
  python3 - "$dir/ws/runs/large-$variant/summary.json" "$dir/time-$variant.txt" "$batches" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1]))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1))
b = int(sys.argv[3])
per = s["epoch_seconds_median"] / b
print(f"{s['variant']}: {s['params']:,} parameters; {per:.2f} s/batch over {b} batches "
      f"→ {per * 250 / 60:.1f} min per 250-batch epoch; peak RSS {rss / 2**20:.2f} GiB")
PY
done
