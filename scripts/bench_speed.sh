#!/usr/bin/env bash
# Side-by-side speed on ML-1M clean (issue 3), one after the other on the same (idle) machine:
#   1. the authors' PyTorch DiffRec (github.com/YiyanXu/DiffRec, a checkout outside this repo),
#   2. the plain PyTorch loop of ../shared/bench/torch_denoiser_bench.py (MKL, 2 threads),
#   3. diffrec's shipped pipeline (pipelines/ml-1m-diffrec.yaml),
#   4. scripts/torch_same_work_bench.py: a plain PyTorch loop doing all of diffrec's epoch work
#      (noise, dropout, step sampling, SNR loss, parameter average), not just the bare MLP.
# Usage: scripts/bench_speed.sh AUTHORS_CHECKOUT [EPOCHS]     (EPOCHS default 10, a multiple of 5)
#   PYTHON: a Python with torch, numpy, scipy and bottleneck (default: python3).
#   DATA:   the ML-1M clean split (default: ../shared/data/ml-1m_clean).
# The authors' script is copied to a temporary folder and instrumented there by
# scripts/instrument_authors.py (never in this repository); peak memory comes from /usr/bin/time.
# Prints one line per contender and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
authors=${1:?usage: scripts/bench_speed.sh AUTHORS_CHECKOUT [EPOCHS]}
epochs=${2:-10}
py=${PYTHON:-python3}
data=$(realpath "${DATA:-../shared/data/ml-1m_clean}")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/diffrec-target}
cargo build --release --workspace --offline
bin=$CARGO_TARGET_DIR/release/diffrec
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. The authors' code, instrumented in a copy.
cp -r "$authors/DiffRec" "$tmp/authors"
"$py" scripts/instrument_authors.py "$tmp/authors/main.py"
(cd "$tmp/authors" && /usr/bin/time -f "PEAK_KB %M" "$py" main.py --dataset=ml-1m_clean \
  --data_path="$data/" --lr=0.001 --weight_decay=0.0 --batch_size=400 --dims=[200,600] \
  --emb_size=10 --mean_type=x0 --steps=40 --noise_scale=0.005 --noise_min=0.005 \
  --noise_max=0.01 --sampling_steps=0 --reweight=1 --log_name=log --round=1 \
  --epochs="$epochs" --save_path="$tmp/authors/saved/") >"$tmp/authors.log" 2>&1

# 2. The plain PyTorch loop (prints a RESULT line on stdout).
"$py" ../shared/bench/torch_denoiser_bench.py "$epochs" >"$tmp/torch.log" 2>"$tmp/torch.err"
"$py" scripts/torch_same_work_bench.py "$epochs" >"$tmp/same.log" 2>"$tmp/same.err"

# 3. diffrec, the shipped pipeline, evaluating every 5 epochs like the authors' script.
ws=$tmp/ws
/usr/bin/time -f "PEAK_KB %M" "$bin" run pipelines/ml-1m-diffrec.yaml --workspace "$ws" \
  --until train --set name=speed --set "train.epochs=$epochs" --set train.eval_every=5 \
  --set train.patience=1000 >"$tmp/ours.log" 2>&1

"$py" - "$tmp" "$ws/runs/speed/summary.json" <<'PY'
import json, re, statistics, sys
tmp, summary = sys.argv[1], sys.argv[2]
a = open(f"{tmp}/authors.log").read()
rows = [dict(kv.split("=") for kv in l.split()[1:]) for l in a.splitlines() if l.startswith("TIMING")]
a_train = statistics.median(float(r["train_s"]) for r in rows)
a_eval = statistics.median(float(r["eval_s"]) for r in rows if float(r["eval_s"]) > 0)
a_peak = int(re.findall(r"PEAK_KB (\d+)", a)[-1]) * 1024
t = dict(kv.split("=", 1) for kv in open(f"{tmp}/torch.log").read().split("RESULT", 1)[1].split()
         if "=" in kv and not kv.startswith("epoch_times"))
t_train, t_eval = float(t["median_epoch_s"]), float(t["eval_s"])
w_train = float(re.findall(r"median_epoch_s=([0-9.]+)", open(f"{tmp}/same.log").read())[-1])
s = json.load(open(summary))
o_train, o_eval = s["epoch_seconds_median"], s["eval_seconds_median"]
o_peak = int(re.findall(r"PEAK_KB (\d+)", open(f"{tmp}/ours.log").read())[-1]) * 1024
gib = lambda b: b / 2**30
print(f"authors' code : epoch {a_train:.2f} s, evaluation {a_eval:.1f} s, peak {gib(a_peak):.2f} GiB")
print(f"plain PyTorch : epoch {t_train:.2f} s, evaluation {t_eval:.1f} s (bare MLP, random data)")
print(f"PyTorch, same work: epoch {w_train:.2f} s (noise, dropout, steps, SNR loss, average)")
print(f"diffrec       : epoch {o_train:.2f} s, evaluation {o_eval:.1f} s, peak {gib(o_peak):.2f} GiB "
      f"(whole process: ingest + train + evaluations)")
print(f"ratios diffrec/authors : epoch {o_train/a_train:.2f} (target <= 0.5), "
      f"evaluation {o_eval/a_eval:.2f} (target <= 0.3), peak {o_peak/a_peak:.2f} (target < 1)")
print(f"ratios diffrec/PyTorch : epoch {o_train/t_train:.2f}, evaluation {o_eval/t_eval:.2f} (target <= 1.0)")
print(f"ratio diffrec/PyTorch doing the same work : epoch {o_train/w_train:.2f}")
PY
