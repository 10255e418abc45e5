"""Reads a workspace's data/*.parquet (and cluster/*.parquet when the cluster stage ran) with
pyarrow and DuckDB and checks the declared schema.

Usage: python scripts/check_parquet.py WORKSPACE_DIR
"""
import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

ws = Path(sys.argv[1])
expected = {
    "data/interactions.parquet": [
        ("user_idx", pa.uint32()), ("item_idx", pa.uint32()), ("user_id", pa.string()),
        ("item_id", pa.string()), ("timestamp", pa.int64()), ("split", pa.string()),
        ("weight", pa.float32()),
    ],
    "data/users.parquet": [("user_idx", pa.uint32()), ("user_id", pa.string())],
    "data/items.parquet": [("item_idx", pa.uint32()), ("item_id", pa.string())],
}
stats = json.loads((ws / "data/stats.json").read_text())
for key, cols in expected.items():
    table = pq.read_table(ws / key)
    got = [(f.name, f.type) for f in table.schema]
    assert got == cols, f"{key}: schema {got} != {cols}"
    n = duckdb.sql(f"select count(*) from read_parquet('{ws / key}')").fetchall()[0][0]
    assert n == table.num_rows, f"{key}: duckdb {n} rows, pyarrow {table.num_rows}"
rows = dict(duckdb.sql(
    f"select split, count(*) from read_parquet('{ws / 'data/interactions.parquet'}') group by split"
).fetchall())
assert rows == {k: v for k, v in stats["rows"].items() if v}, (rows, stats["rows"])
users = duckdb.sql(f"select count(*) from read_parquet('{ws / 'data/users.parquet'}')").fetchall()[0][0]
assert users == stats["users"]
cluster = ws / "cluster"
if (cluster / "_manifest.json").exists():
    summary = json.loads((cluster / "summary.json").read_text())
    dim = summary["dim"]
    emb = pa.list_(pa.field("item", pa.float32(), nullable=False), dim)
    cluster_expected = {
        "cluster/item_embeddings.parquet": [
            ("item_idx", pa.uint32()), ("item_id", pa.string()), ("embedding", emb)],
        "cluster/item_clusters.parquet": [
            ("item_idx", pa.uint32()), ("item_id", pa.string()), ("cluster", pa.uint32()),
            ("distance", pa.float32())],
    }
    if summary["lightgcn"] is not None:
        cluster_expected["cluster/user_embeddings.parquet"] = [
            ("user_idx", pa.uint32()), ("user_id", pa.string()), ("embedding", emb)]
        cluster_expected["cluster/lightgcn_metrics.parquet"] = [
            ("epoch", pa.uint32()), ("split", pa.string()), ("metric", pa.string()),
            ("k", pa.uint32()), ("value", pa.float64()), ("loss", pa.float64()),
            ("seconds", pa.float64())]
    for key, cols in cluster_expected.items():
        table = pq.read_table(ws / key)
        got = [(f.name, f.type) for f in table.schema]
        assert got == cols, f"{key}: schema {got} != {cols}"
    sizes = dict(duckdb.sql(
        f"select cluster, count(*) from read_parquet('{cluster / 'item_clusters.parquet'}') group by cluster"
    ).fetchall())
    assert [sizes[c] for c in sorted(sizes)] == summary["sizes"], (sizes, summary["sizes"])
    n_emb = duckdb.sql(
        f"select count(*) from read_parquet('{cluster / 'item_embeddings.parquet'}') where len(embedding) = {dim}"
    ).fetchall()[0][0]
    assert n_emb == stats["items"], (n_emb, stats["items"])
    print(f"check_parquet: cluster artifacts read back, sizes {summary['sizes']}")
print(f"check_parquet: pyarrow and DuckDB read {ws} with the declared schema ({rows})")
