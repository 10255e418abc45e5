"""Replaces a workspace's cluster/item_clusters.parquet by the authors' k-means partition.

A cross-check for L-DiffRec (issue 5): diffrec's cluster stage runs linfa's k-means++ (best of
`cluster.n_runs`), which partitions the authors' item_emb.npy differently from their code. This
script re-computes the authors' partition as ../shared/docs/diffrec-spec.md §4.1 describes
kmeans_pytorch 0.3 (written from the spec, not from their code): squared-Euclidean k-means in
float32, initial centres `np.random.choice(n, k, replace=False)` under NumPy's global seed 1, stop
when (sum of centre shifts)^2 < 1e-4, labels from the assignment before the last update. The
spec expects sizes [1850, 960] after 9 iterations on ml-1m_clean.

Usage: python scripts/authors_partition.py ITEM_EMB.npy WORKSPACE [K]
  WORKSPACE must already hold cluster/item_clusters.parquet from `diffrec stage cluster` with
  `cluster.embeddings` set to the same file (its item_idx/item_id columns are kept). Needs numpy
  and pyarrow (no torch: NumPy's float32 stands in for torch's). Then run `diffrec stage train`
  on the workspace as usual.
"""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def authors_kmeans(x, k):
    """kmeans_pytorch 0.3 as spec §4.1 describes it, in x's float type; (labels, iterations)."""
    np.random.seed(1)
    centres = x[np.random.choice(x.shape[0], k, replace=False)].copy()
    iterations = 0
    while True:
        dist = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        labels = np.argmin(dist, axis=1)
        old = centres.copy()
        for c in range(k):
            centres[c] = x[labels == c].mean(axis=0)
        shift = np.sum(np.sqrt(np.sum((centres - old) ** 2, axis=1)))
        iterations += 1
        if shift ** 2 < 1e-4:
            return labels, iterations


emb_path, ws = sys.argv[1], sys.argv[2]
k = int(sys.argv[3]) if len(sys.argv) > 3 else 2
x = np.load(emb_path).astype(np.float32)
labels, iterations = authors_kmeans(x, k)
# The authors ran this in torch's float32; a different summation order could move an item that
# sits on the boundary. The same k-means in float64 tells whether any item is that close.
wide, _ = authors_kmeans(x.astype(np.float64), k)
if (wide != labels).any():
    print(f"warning: {int((wide != labels).sum())} items change cluster between float32 and "
          "float64; the partition may differ from the authors' in those items", file=sys.stderr)
sizes = [int((labels == c).sum()) for c in range(k)]
print(f"authors' partition: sizes {sizes} after {iterations} iterations", file=sys.stderr)

path = f"{ws}/cluster/item_clusters.parquet"
t = pq.read_table(path)
idx = t.column("item_idx").to_numpy()
# diffrec numbers clusters by their lowest item index.
order = {}
for i in np.sort(idx):
    order.setdefault(int(labels[i]), len(order))
cluster = np.array([order[int(labels[i])] for i in idx], dtype=np.uint32)
means = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
distance = np.linalg.norm(x[idx] - means[labels[idx]], axis=1).astype(np.float32)
out = t.set_column(t.schema.get_field_index("cluster"), t.schema.field("cluster"),
                   pa.array(cluster, pa.uint32()))
out = out.set_column(out.schema.get_field_index("distance"), out.schema.field("distance"),
                     pa.array(distance, pa.float32()))
pq.write_table(out, path)
print(f"wrote {path}", file=sys.stderr)
