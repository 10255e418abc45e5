#!/usr/bin/env bash
# Times the ingest stage alone on a generated CSV of ~10 M rows (dedup, rating threshold, 5-core,
# per-user split, temporal weights), three runs, wall time and peak memory from /usr/bin/time.
# Usage: scripts/bench_ingest.sh [WORK_DIR]   (needs ~2 GB free disk)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-${TMPDIR:-/tmp}/diffrec-bench-ingest}
mkdir -p "$work"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/diffrec-target}
cargo build --release --workspace
bin=$CARGO_TARGET_DIR/release/diffrec
[ -f "$work/10m.csv" ] || "$bin" generate --out "$work/10m.csv" --users 100000 --items 50000 --mean-interactions 100.2
cat >"$work/p.yaml" <<'YAML'
name: bench-10m
data:
  source: {format: csv, path: 10m.csv, columns: {user: user_id, item: item_id, timestamp: timestamp, rating: rating}}
  min_rating: 3
  k_core: 5
  temporal: {w_min: 0.1, w_max: 1.0}
YAML
for run in 1 2 3; do
  rm -rf "$work/ws"
  /usr/bin/time -f "run $run: %e s wall, %M KB peak RSS" "$bin" stage ingest "$work/p.yaml" --workspace "$work/ws" 2>&1 \
    | grep -E '^run |^ingest: [0-9]'
done
