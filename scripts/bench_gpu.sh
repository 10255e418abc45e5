#!/usr/bin/env bash
# ML-1M clean on one NVIDIA GPU (issues 3 and 5): diffrec's DiffRec and L-DiffRec epochs on
# `cuda` and on `wgpu`, L-DiffRec with two data-parallel and two model-parallel logical devices on
# the one GPU (the multi-device code paths on a real device), and, for scale, the authors' PyTorch
# code (`--cuda`) and the plain PyTorch loop of ../shared/bench/torch_denoiser_bench.py moved to
# the GPU. Every contender runs alone, one after the other.
# Usage: scripts/bench_gpu.sh BIN DATA L_WORKSPACE OUT [AUTHORS_DIFFREC_DIR [TORCH_BENCH]]
#   BIN          a diffrec binary built with `--features diffrec-cli/cuda` (wgpu is a default feature)
#   DATA         the ML-1M clean split (train/valid/test_list.npy)
#   L_WORKSPACE  a workspace where ingest and cluster of pipelines/ml-1m-l-diffrec.yaml completed;
#                it is copied, never written
#   OUT          folder for the logs, summaries and the table (gpu_table.txt)
#   AUTHORS_DIFFREC_DIR  the authors' DiffRec/ folder (main.py); skipped when absent
#   TORCH_BENCH  torch_denoiser_bench.py; skipped when absent
# Environment: EPOCHS (default 20, a multiple of 5), CUDA_DEV (cuda:0), WGPU_DEV (wgpu:0),
#   FULL_SECONDS (default 0: off) runs the shipped L-DiffRec pipeline to its stop on cuda, capped
#   at that many seconds, for a GPU accuracy figure; STEP_SECONDS (default 150) caps every other
#   contender (exit status 124 in the table when it ran out).
# GPU memory is the peak of `nvidia-smi`'s memory.used while a contender runs, less the idle
# figure before it (whole device, so run nothing else).
set -uo pipefail
# Paths are taken relative to the caller's folder, before moving to the repository root.
bin=$(realpath "${1:?usage: scripts/bench_gpu.sh BIN DATA L_WORKSPACE OUT [AUTHORS [TORCH_BENCH]]}")
data=$(realpath "${2:?DATA}")
lws_src=$(realpath "${3:?L_WORKSPACE}")
mkdir -p "${4:?OUT}"
out=$(realpath "$4")
authors=${5:+$(realpath "$5")}
torch_bench=${6:+$(realpath "$6")}
cd "$(dirname "$0")/.."
epochs=${EPOCHS:-20}
cuda_dev=${CUDA_DEV:-cuda:0}
wgpu_dev=${WGPU_DEV:-wgpu:0}
gpu_index=${cuda_dev#*:}
step_seconds=${STEP_SECONDS:-150}
: >"$out/runs.txt"
tmp=$(mktemp -d)
sampler=
trap '[ -n "$sampler" ] && kill "$sampler" 2>/dev/null; rm -rf "$tmp"' EXIT
cp -r "$lws_src" "$tmp/lws"
rm -rf "$tmp/lws/runs"

have_smi=0
command -v nvidia-smi >/dev/null && have_smi=1
# run NAME CMD…: runs one contender with its log at $out/NAME.log, its wall time and GPU memory
# (of the GPU of CUDA_DEV).
run() {
  local name=$1
  shift
  local idle=0 peak=0
  if [ $have_smi = 1 ]; then
    idle=$(nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits)
    nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
      >"$tmp/$name.mem" &
    sampler=$!
  fi
  local t0=$SECONDS
  timeout -k 10 "$step_seconds" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    sampler=
    peak=$(grep -E '^[0-9]+$' "$tmp/$name.mem" | sort -n | tail -1)
    [[ $idle =~ ^[0-9]+$ ]] || idle=0
  fi
  echo "$name rc=$rc wall_s=$((SECONDS - t0)) gpu_mib=$((${peak:-0} - idle))" | tee -a "$out/runs.txt"
}

# keep NAME WORKSPACE: copies the run's summary and metrics next to its log.
keep() {
  rm -f "$out/$1.summary.json" "$out/$1.metrics.parquet"
  cp "$2/runs/$1/summary.json" "$out/$1.summary.json" 2>/dev/null
  cp "$2/runs/$1/metrics.parquet" "$out/$1.metrics.parquet" 2>/dev/null
}

[ $have_smi = 1 ] && nvidia-smi >"$out/nvidia-smi.txt" 2>&1
common=(--set "train.epochs=$epochs" --set train.eval_every=5 --set train.patience=1000)
dws=$tmp/dws
for b in cuda wgpu; do
  dev=$cuda_dev
  [ $b = wgpu ] && dev=$wgpu_dev
  run "diffrec-$b" "$bin" run pipelines/ml-1m-diffrec.yaml --workspace "$dws" --until train \
    --set "name=diffrec-$b" --set "data.source.path=$data" --set "train.backend=$b" \
    --set "train.devices=[$dev]" "${common[@]}"
  keep "diffrec-$b" "$dws"
  run "l-diffrec-$b" "$bin" stage train pipelines/ml-1m-l-diffrec.yaml --workspace "$tmp/lws" \
    --set "name=l-diffrec-$b" --set "train.backend=$b" --set "train.devices=[$dev]" "${common[@]}"
  keep "l-diffrec-$b" "$tmp/lws"
done
# The multi-device paths on the one GPU: the same device twice. Fewer epochs: they check that
# the paths run on a GPU and show their overhead; the CPU tests check their arithmetic.
for par in data model; do
  run "l-diffrec-cuda-$par-2" "$bin" stage train pipelines/ml-1m-l-diffrec.yaml \
    --workspace "$tmp/lws" --set "name=l-diffrec-cuda-$par-2" --set train.backend=cuda \
    --set "train.devices=[$cuda_dev, $cuda_dev]" --set "train.parallel=$par" \
    --set train.epochs=10 --set train.eval_every=5 --set train.patience=1000
  keep "l-diffrec-cuda-$par-2" "$tmp/lws"
done

if [ -n "$authors" ] && [ -f "$authors/main.py" ]; then
  cp -r "$authors" "$tmp/authors"
  python3 scripts/instrument_authors.py "$tmp/authors/main.py" ||
    echo "authors' main.py could not be instrumented: its timings will be missing" >&2
  run authors-cuda bash -c "cd '$tmp/authors' && python3 main.py --cuda --gpu=$gpu_index --dataset=ml-1m_clean \
    --data_path='$data/' --lr=0.001 --weight_decay=0.0 --batch_size=400 --dims=[200,600] \
    --emb_size=10 --mean_type=x0 --steps=40 --noise_scale=0.005 --noise_min=0.005 \
    --noise_max=0.01 --sampling_steps=0 --reweight=1 --log_name=log --round=1 \
    --epochs=$epochs --save_path='$tmp/authors/saved/'"
fi
if [ -n "$torch_bench" ] && [ -f "$torch_bench" ]; then
  # The file unchanged, its tensors and module created on the GPU.
  run torch-cuda python3 -c "import runpy, sys, torch; torch.set_default_device('cuda'); \
sys.argv = ['torch_denoiser_bench.py', '$epochs']; runpy.run_path('$torch_bench', run_name='__main__')"
fi
if [ "${FULL_SECONDS:-0}" -gt 0 ]; then
  step_seconds=$FULL_SECONDS run l-diffrec-cuda-full "$bin" stage train pipelines/ml-1m-l-diffrec.yaml \
    --workspace "$tmp/lws" --set name=l-diffrec-cuda-full --set train.backend=cuda \
    --set "train.devices=[$cuda_dev]"
  keep l-diffrec-cuda-full "$tmp/lws"
fi

python3 - "$out" <<'PY' | tee "$out/gpu_table.txt"
import glob, json, os, re, statistics, sys
out = sys.argv[1]
runs = {l.split()[0]: dict(kv.split("=") for kv in l.split()[1:])
        for l in open(f"{out}/runs.txt") if l.strip()}
print("| contender | rc | epoch s (median) | evaluation s (median) | best epoch | test R@20 | test N@20 | GPU MiB | wall s |")
print("|---|---|---|---|---|---|---|---|---|")
for name, r in runs.items():
    ep = ev = best = r20 = n20 = "-"
    sj = f"{out}/{name}.summary.json"
    if os.path.exists(sj):
        s = json.load(open(sj))
        ep, ev = f"{s['epoch_seconds_median']:.3f}", f"{s['eval_seconds_median']:.3f}"
        best = s["best_epoch"]
        r20, n20 = f"{s['test']['recall@20']:.4f}", f"{s['test']['ndcg@20']:.4f}"
    log = open(f"{out}/{name}.log", errors="replace").read()
    rows = [dict(kv.split("=") for kv in l.split()[1:]) for l in log.splitlines() if l.startswith("TIMING")]
    if rows:
        ep = f"{statistics.median(float(x['train_s']) for x in rows):.3f}"
        evs = [float(x["eval_s"]) for x in rows if float(x["eval_s"]) > 0]
        ev = f"{statistics.median(evs):.3f}" if evs else "-"
    m = re.search(r"median_epoch_s=([0-9.]+).*eval_s=([0-9.]+)", log)
    if m:
        ep, ev = m.group(1), m.group(2)
    print(f"| {name} | {r['rc']} | {ep} | {ev} | {best} | {r20} | {n20} | {r['gpu_mib']} | {r['wall_s']} |")
# The multi-device runs against one device at the epochs both evaluated (same seed, same batches).
try:
    import pyarrow.parquet as pq
    def curve(name):
        rows = pq.read_table(f"{out}/{name}.metrics.parquet").to_pylist()
        return {r["epoch"]: (r["loss"], r["value"]) for r in rows
                if r["split"] == "valid" and r["metric"] == "recall" and r["k"] == 20}
    one = curve("l-diffrec-cuda")
    for par in ("data", "model"):
        other = curve(f"l-diffrec-cuda-{par}-2")
        for e in sorted(set(one) & set(other)):
            print(f"{par} parallel on 2 vs 1 device, epoch {e}: loss {other[e][0]:.6f} vs "
                  f"{one[e][0]:.6f}, valid R@20 {other[e][1]:.4f} vs {one[e][1]:.4f}")
except Exception as err:
    print(f"(multi-device comparison skipped: {err!r})")
PY
