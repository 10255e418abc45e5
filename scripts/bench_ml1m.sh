#!/usr/bin/env bash
# Retrains a shipped ML-1M pipeline from scratch for several seeds and prints each run's summary.
# Usage: scripts/bench_ml1m.sh [PIPELINE] [WORKSPACE] [SEEDS...]
#   defaults: pipelines/ml-1m-diffrec.yaml, ${TMPDIR:-/tmp}/diffrec-ml1m, seeds 1 2 3
# Needs ../shared/data/ml-1m_clean (research data, not in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${1:-pipelines/ml-1m-diffrec.yaml}
ws=${2:-${TMPDIR:-/tmp}/diffrec-ml1m}
shift $(( $# > 2 ? 2 : $# )) || true
seeds=${*:-1 2 3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/diffrec-target}
cargo build --release --workspace
bin=$CARGO_TARGET_DIR/release/diffrec
name=$(sed -n 's/^name: *//p' "$pipeline")
for seed in $seeds; do
  # Earlier stages (ingest, cluster) run once and are skipped when up to date; the run itself
  # starts from scratch.
  rm -rf "$ws/runs/$name-seed$seed"
  "$bin" run "$pipeline" --workspace "$ws" --until train \
    --set "name=$name-seed$seed" --set "train.seed=$seed"
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); t=s['test']; print('seed', s['seed'], 'best_epoch', s['best_epoch'], 'epochs', s['epochs_run'], ' '.join(f'{k} {t[k]:.4f}' for k in ['recall@10','recall@20','ndcg@10','ndcg@20']), 'epoch_s', round(s['epoch_seconds_median'],2), 'eval_s', round(s['eval_seconds_median'],1), 'rss_GiB', round(s['peak_rss_bytes']/2**30,2))" "$ws/runs/$name-seed$seed/summary.json"
done
