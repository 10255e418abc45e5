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
#   DIFFREC_BIN: a diffrec binary to time instead of building this checkout (e.g. an earlier
#           commit's, for a before/after comparison on the same host).
#   ROUNDS: run the four contenders in turn this many times (default 1). This host's speed
#           drifts by ±15 % between minutes, so ratios are taken within each round (contenders
#           minutes apart), then their median over the rounds is printed.
#   TORCH_MKL_INTEL_PATH: auto (default), on or off. On an AMD CPU, oneMKL runs its generic
#           sgemm path, not its AVX-512 kernels; "on" preloads scripts/mkl_intel_path.c (built
#           here with $CC, default cc) into every PyTorch process so MKL takes its Intel path.
#           auto = on where /proc/cpuinfo says AuthenticAMD. The report says which it was.
# The authors' script is copied to a temporary folder and instrumented there by
# scripts/instrument_authors.py (never in this repository); peak memory comes from /usr/bin/time.
# Prints, per round, one line per contender and the ratios; with ROUNDS > 1 also the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
authors=${1:?usage: scripts/bench_speed.sh AUTHORS_CHECKOUT [EPOCHS]}
epochs=${2:-10}
py=${PYTHON:-python3}
data=$(realpath "${DATA:-../shared/data/ml-1m_clean}")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/diffrec-target}
if [ -n "${DIFFREC_BIN:-}" ]; then
  bin=$DIFFREC_BIN
else
  cargo build --release --workspace --offline
  bin=$CARGO_TARGET_DIR/release/diffrec
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# PyTorch's MKL at its best on this CPU (see TORCH_MKL_INTEL_PATH above).
mkl_path=${TORCH_MKL_INTEL_PATH:-auto}
case "$mkl_path" in
  auto) grep -q AuthenticAMD /proc/cpuinfo && mkl_path=on || mkl_path=off ;;
  on | off) ;;
  *) echo "TORCH_MKL_INTEL_PATH must be auto, on or off, not '$mkl_path'" >&2; exit 2 ;;
esac
torch_env=(env)
if [ "$mkl_path" = on ]; then
  "${CC:-cc}" -shared -fPIC -O2 -o "$tmp/libmkl_intel_path.so" scripts/mkl_intel_path.c
  torch_env=(env "LD_PRELOAD=$tmp/libmkl_intel_path.so")
fi

rounds=${ROUNDS:-1}
# 1. The authors' code, instrumented in a copy.
cp -r "$authors/DiffRec" "$tmp/authors"
"$py" scripts/instrument_authors.py "$tmp/authors/main.py"
for r in $(seq 1 "$rounds"); do
  [ "$rounds" -gt 1 ] && echo "round $r of $rounds" >&2
  rm -rf "$tmp/authors/saved"
  (cd "$tmp/authors" && /usr/bin/time -f "PEAK_KB %M" "${torch_env[@]}" "$py" main.py --dataset=ml-1m_clean \
    --data_path="$data/" --lr=0.001 --weight_decay=0.0 --batch_size=400 --dims=[200,600] \
    --emb_size=10 --mean_type=x0 --steps=40 --noise_scale=0.005 --noise_min=0.005 \
    --noise_max=0.01 --sampling_steps=0 --reweight=1 --log_name=log --round=1 \
    --epochs="$epochs" --save_path="$tmp/authors/saved/") >"$tmp/authors.$r.log" 2>&1

  # 2. The plain PyTorch loops (each prints a RESULT line on stdout).
  "${torch_env[@]}" "$py" ../shared/bench/torch_denoiser_bench.py "$epochs" >"$tmp/torch.$r.log" 2>"$tmp/torch.$r.err"
  "${torch_env[@]}" "$py" scripts/torch_same_work_bench.py "$epochs" >"$tmp/same.$r.log" 2>"$tmp/same.$r.err"

  # 3. diffrec, the shipped pipeline, evaluating every 5 epochs like the authors' script.
  ws=$tmp/ws.$r
  /usr/bin/time -f "PEAK_KB %M" "$bin" run pipelines/ml-1m-diffrec.yaml --workspace "$ws" \
    --until train --set name=speed --set "train.epochs=$epochs" --set train.eval_every=5 \
    --set train.patience=1000 >"$tmp/ours.$r.log" 2>&1
done

"$py" - "$tmp" "$rounds" "$mkl_path" <<'PY'
import json, re, statistics, sys
tmp, rounds, mkl_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mkl_path == "on":
    logs = [f"{tmp}/{n}.{r}.{e}" for r in range(1, rounds + 1)
            for n, e in (("authors", "log"), ("torch", "err"), ("same", "err"))]
    # One line per process that loaded the library (worker processes print calls=0): a run took
    # the path when one of its processes asked MKL at least once.
    missed = [f for f in logs
              if not any(int(c) > 0 for c in re.findall(r"MKL_INTEL_PATH calls=(\d+)", open(f).read()))]
    print(f"PyTorch's MKL: Intel path forced (scripts/mkl_intel_path.c), "
          f"{'taken in every PyTorch run' if not missed else 'NOT taken in: ' + ', '.join(missed)}")
else:
    print("PyTorch's MKL: its own CPU dispatch")
gib = lambda b: b / 2**30
med = statistics.median
ratios = []
for r in range(1, rounds + 1):
    a = open(f"{tmp}/authors.{r}.log").read()
    rows = [dict(kv.split("=") for kv in l.split()[1:]) for l in a.splitlines() if l.startswith("TIMING")]
    a_train = med(float(x["train_s"]) for x in rows)
    a_eval = med(float(x["eval_s"]) for x in rows if float(x["eval_s"]) > 0)
    a_peak = int(re.findall(r"PEAK_KB (\d+)", a)[-1]) * 1024
    t = dict(kv.split("=", 1) for kv in open(f"{tmp}/torch.{r}.log").read().split("RESULT", 1)[1].split()
             if "=" in kv and not kv.startswith("epoch_times"))
    t_train, t_eval = float(t["median_epoch_s"]), float(t["eval_s"])
    w_train = float(re.findall(r"median_epoch_s=([0-9.]+)", open(f"{tmp}/same.{r}.log").read())[-1])
    s = json.load(open(f"{tmp}/ws.{r}/runs/speed/summary.json"))
    o_train, o_eval = s["epoch_seconds_median"], s["eval_seconds_median"]
    o_peak = int(re.findall(r"PEAK_KB (\d+)", open(f"{tmp}/ours.{r}.log").read())[-1]) * 1024
    if rounds > 1:
        print(f"round {r}")
    print(f"authors' code : epoch {a_train:.2f} s, evaluation {a_eval:.1f} s, peak {gib(a_peak):.2f} GiB")
    print(f"plain PyTorch : epoch {t_train:.2f} s, evaluation {t_eval:.1f} s (bare MLP, random data)")
    print(f"PyTorch, same work: epoch {w_train:.2f} s (noise, dropout, steps, SNR loss, average)")
    print(f"diffrec       : epoch {o_train:.2f} s, evaluation {o_eval:.1f} s, peak {gib(o_peak):.2f} GiB "
          f"(whole process: ingest + train + evaluations)")
    q = dict(ae=o_train / a_train, av=o_eval / a_eval, am=o_peak / a_peak,
             te=o_train / t_train, tv=o_eval / t_eval, we=o_train / w_train)
    ratios.append(q)
    print(f"ratios diffrec/authors : epoch {q['ae']:.2f} (target <= 0.5), "
          f"evaluation {q['av']:.2f} (target <= 0.3), peak {q['am']:.2f} (target < 1)")
    print(f"ratios diffrec/PyTorch : epoch {q['te']:.2f}, evaluation {q['tv']:.2f} (target <= 1.0)")
    print(f"ratio diffrec/PyTorch doing the same work : epoch {q['we']:.2f}")
if rounds > 1:
    m = {k: med(q[k] for q in ratios) for k in ratios[0]}
    span = lambda k: f"{min(q[k] for q in ratios):.2f}-{max(q[k] for q in ratios):.2f}"
    print(f"median of {rounds} rounds (range)")
    print(f"ratios diffrec/authors : epoch {m['ae']:.2f} ({span('ae')}), "
          f"evaluation {m['av']:.2f} ({span('av')}), peak {m['am']:.2f} ({span('am')})")
    print(f"ratios diffrec/PyTorch : epoch {m['te']:.2f} ({span('te')}), evaluation {m['tv']:.2f} ({span('tv')})")
    print(f"ratio diffrec/PyTorch doing the same work : epoch {m['we']:.2f} ({span('we')})")
PY
