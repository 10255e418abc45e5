"""A plain PyTorch loop doing all the work of diffrec's DiffRec training epoch on ML-1M.

../shared/bench/torch_denoiser_bench.py (the issue's bar) trains the bare MLP on fixed random
inputs. diffrec's epoch also draws, per batch: the rows of a user permutation densified from a
sparse matrix, importance-sampled steps (10-loss history per step, uniform until warm, 0.001
uniform mix), Gaussian noise and x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, the input dropout,
the sinusoidal time embedding, the SNR-reweighted loss divided by p_t T, and, after AdamW, the
parameter average of the shipped pipeline (train.ema_decay 0.9995, bias-corrected). This loop
does the same in idiomatic PyTorch (vectorised, foreach kernels), so that the two epochs can be
compared for the same computation. Random sparse data with ML-1M's shape and density.
Usage: python scripts/torch_same_work_bench.py [EPOCHS]   (prints a RESULT line)
"""
import math
import statistics
import sys
import time

import numpy as np
import torch

torch.set_num_threads(2)
torch.manual_seed(42)
N_ITEMS, EMB, ROWS, BATCH, T, NNZ = 2810, 10, 5949, 400, 40, 403_277
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3

# The shipped schedule: linear-var, noise scale 0.005, min 0.005, max 0.01, in f64.
start, end = 0.005 * 0.005, 0.005 * 0.01
ab = 1 - np.linspace(start, end, T, dtype=np.float64)
ab = np.cumprod(1 - np.append(1 - ab[0], [1 - ab[i] / ab[i - 1] for i in range(1, T)]))
snr = ab / (1 - ab)
sqrt_ab = torch.tensor(np.sqrt(ab), dtype=torch.float32)
sqrt_1mab = torch.tensor(np.sqrt(1 - ab), dtype=torch.float32)
snr_t = torch.tensor(snr, dtype=torch.float32)
freqs = torch.exp(-math.log(10000) * torch.arange(EMB // 2, dtype=torch.float32) / (EMB // 2))


class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Linear(EMB, EMB)
        self.l1 = torch.nn.Linear(N_ITEMS + EMB, 600)
        self.l2 = torch.nn.Linear(600, 200)
        self.l3 = torch.nn.Linear(200, 600)
        self.l4 = torch.nn.Linear(600, N_ITEMS)

    def forward(self, x, t):
        args = t[:, None].float() * freqs[None]
        e = self.emb(torch.cat([torch.cos(args), torch.sin(args)], dim=1))
        # Input dropout 0.5 as a uniform mask: 7.6 ms a batch here against 17.7 ms for
        # F.dropout (its bernoulli_ kernel), so PyTorch gets its faster form.
        x = x * (torch.rand_like(x) >= 0.5) * 2.0
        h = torch.cat([x, e], dim=1)
        h = torch.tanh(self.l1(h)); h = torch.tanh(self.l2(h)); h = torch.tanh(self.l3(h))
        return self.l4(h)


rng = np.random.default_rng(42)
lengths = rng.multinomial(NNZ - 5 * ROWS, np.full(ROWS, 1 / ROWS)) + 5
indptr = np.concatenate([[0], np.cumsum(lengths)])
indices = np.concatenate([rng.choice(N_ITEMS, n, replace=False) for n in lengths])

model = Denoiser().train()
# fused=True: one kernel over all parameters, like diffrec's fused AdamW (on the CPU PyTorch
# otherwise updates tensor by tensor).
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.0, fused=True)
params = list(model.parameters())
avg = [p.detach().clone() for p in params]
history = np.zeros((T, 10))  # the last 10 losses per step, a ring per step
count = np.zeros(T, dtype=np.int64)
steps = 0
times = []
for ep in range(epochs + 1):
    t0 = time.perf_counter()
    perm = torch.randperm(ROWS).numpy()
    for s in range(0, ROWS, BATCH):
        users = perm[s:s + BATCH]
        n = len(users)
        lens = lengths[users]
        rows = np.repeat(np.arange(n), lens)
        cols = np.concatenate([indices[indptr[u]:indptr[u + 1]] for u in users])
        x0 = torch.zeros(n, N_ITEMS)
        x0[torch.from_numpy(rows), torch.from_numpy(cols)] = 1.0
        if (count >= 10).all():
            w = np.sqrt((history ** 2).mean(axis=1))
            pt = torch.tensor(0.999 * w / w.sum() + 0.001 / T, dtype=torch.float32)
        else:
            pt = torch.full((T,), 1.0 / T)
        ts = torch.multinomial(pt, n, replacement=True)
        noise = torch.randn_like(x0)
        xt = sqrt_ab[ts, None] * x0 + sqrt_1mab[ts, None] * noise
        out = model(xt, ts)
        mse = ((x0 - out) ** 2).mean(dim=1)
        weight = torch.where(ts == 0, torch.ones(()), snr_t[(ts - 1).clamp(min=0)] - snr_t[ts])
        loss_rows = weight * mse
        for t, v in zip(ts.tolist(), loss_rows.detach().tolist()):
            history[t, count[t] % 10] = v
            count[t] += 1
        loss = (loss_rows / (pt[ts] * T)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        with torch.no_grad():  # parameter average, bias-corrected start (ema_warmup: debias)
            d = 0.9995
            torch._foreach_lerp_(avg, [p.detach() for p in params], (1 - d) / (1 - d ** steps))
    dt = time.perf_counter() - t0
    print(f"torch-same-work epoch {ep} {dt:.3f}s loss={loss.item():.6f}", file=sys.stderr)
    if ep > 0:
        times.append(dt)
print(f"RESULT impl=torch-same-work epoch_times={[round(t, 4) for t in times]} "
      f"median_epoch_s={statistics.median(times):.4f} threads={torch.get_num_threads()}")
