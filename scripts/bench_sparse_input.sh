#!/usr/bin/env bash
# Where L-DiffRec's sparse encoder input pays (`model.autoencoder.input`, docs/benchmarks.md,
# "Sparse encoder input: where it pays"). Synthetic catalogues from the demo generator, USERS
# users each, over a grid of item counts and mean interactions per user (so of densities); on
# each, L-DiffRec trains BATCHES batches of 400 users with `dense` and with `sparse` input (two
# runs each, alternating) and evaluates all users once with each. Prints one CSV row per
# catalogue: items, mean interactions, training density, s/batch dense and sparse, s/evaluation
# dense and sparse.
# Usage: scripts/bench_sparse_input.sh [WORKDIR] [USERS] [BATCHES] [GRID]
#   GRID: space-separated ITEMS:MEAN pairs (default "5000:25 5000:250 20000:25 20000:250
#   50000:25 50000:250").
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-${TMPDIR:-/tmp}/diffrec-sparse-input}
users=${2:-20000}
batches=${3:-20}
grid=${4:-"5000:25 5000:250 20000:25 20000:250 50000:25 50000:250"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/diffrec-target}
cargo build --release -p diffrec-cli
bin=$CARGO_TARGET_DIR/release/diffrec
mkdir -p "$dir"

field() { # field FILE KEY: a number from a run's summary.json
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

echo "items,mean_interactions,train_density,dense_s_per_batch,sparse_s_per_batch,dense_s_per_eval,sparse_s_per_eval"
for cell in $grid; do
  items=${cell%:*}
  mean=${cell#*:}
  cdir="$dir/i$items-m$mean"
  mkdir -p "$cdir"
  [ -f "$cdir/log.csv" ] || "$bin" generate --out "$cdir/log.csv" --users "$users" \
    --items "$items" --clusters 16 --mean-interactions "$mean" >/dev/null 2>&1
  cat > "$cdir/p.yaml" <<YAML
name: sparse-input
data:
  source: {format: csv, path: log.csv}
# LightGCN for one epoch only: the clusters matter here for their sizes, not their quality.
cluster: {k: 2, lightgcn: {epochs: 1, batch_size: 65536, lr: 0.01, eval_every: 1000}}
model:
  variant: l-diffrec
  denoiser: {dims: [300]}
  diffusion: {noise_max: 0.02}
train: {epochs: 1, eval_every: 2, max_batches: $batches, lr: 0.0005}
YAML
  if [ ! -d "$cdir/ws/cluster" ]; then
    "$bin" run "$cdir/p.yaml" --workspace "$cdir/ws" --until ingest >/dev/null 2>&1
    "$bin" stage cluster "$cdir/p.yaml" --workspace "$cdir/ws" >/dev/null 2>&1
  fi
  train() { # train INPUT RUN [SETS...]: prints the run's summary path
    local input=$1 run=$2
    shift 2
    "$bin" stage train "$cdir/p.yaml" --workspace "$cdir/ws" --force --set "name=$run" \
      --set "model.autoencoder.input=$input" "$@" >/dev/null 2>&1
    echo "$cdir/ws/runs/$run/summary.json"
  }
  declare -A per_batch=()
  for round in 1 2; do
    order="dense sparse"
    [ "$round" = 2 ] && order="sparse dense"
    for input in $order; do
      s=$(train "$input" "$input-$round")
      per_batch[$input]="${per_batch[$input]:-} $(python3 -c "print(f'{$(field "$s" epoch_seconds_median) / $batches:.3f}')")"
    done
  done
  declare -A per_eval=()
  for input in dense sparse; do
    s=$(train "$input" "$input-eval" --set train.max_batches=1 --set train.eval_every=1)
    per_eval[$input]=$(python3 -c "print(f'{$(field "$s" eval_seconds_median):.2f}')")
  done
  density=$(field "$cdir/ws/data/stats.json" train_density)
  echo "$items,$mean,$density,${per_batch[dense]# },${per_batch[sparse]# },${per_eval[dense]},${per_eval[sparse]}"
  unset per_batch per_eval
done
