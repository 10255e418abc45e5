"""Instruments a copy of the authors' DiffRec `main.py` for timing (never the checkout itself).

SciPy's removed `.A` becomes `.toarray()`, and each epoch prints one line
`TIMING epoch=E train_s=S eval_s=S` (training seconds, evaluation seconds of valid + test, 0 when
the epoch does not evaluate) with sub-second resolution.
Usage: python scripts/instrument_authors.py COPY/main.py
Used by scripts/bench_speed.sh (CPU) and scripts/bench_gpu.sh (CUDA).
"""
import sys

p = sys.argv[1]
s = open(p).read().replace(".A)", ".toarray())")
s = s.replace("    if epoch % 5 == 0:\n",
              "    train_s = time.time() - start_time\n    eval_start = time.time()\n"
              "    if epoch % 5 == 0:\n", 1)
s = s.replace("    print(\"Runing Epoch",
              "    print(f\"TIMING epoch={epoch} train_s={train_s:.3f} \"\n"
              "          f\"eval_s={time.time() - eval_start if epoch % 5 == 0 else 0:.3f}\")\n"
              "    print(\"Runing Epoch", 1)
assert s.count("TIMING") == 1 and s.count("eval_start = time.time()") == 1, "main.py changed upstream"
open(p, "w").write(s)
