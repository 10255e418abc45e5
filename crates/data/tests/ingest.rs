//! End-to-end ingest tests against hand-computed expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use diffrec_data::artifacts::{INTERACTIONS, ITEMS, USERS};
use diffrec_data::{DataConfig, IngestReport, Workspace, load_splits, run_ingest};
use polars::prelude::*;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "diffrec-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn strs(df: &DataFrame, name: &str) -> Vec<String> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap().to_owned())
        .collect()
}

fn cfg(json: serde_json::Value) -> DataConfig {
    serde_json::from_value(json).unwrap()
}

/// Reads a Parquet artifact with Polars' own reader (an implementation independent of the
/// arrow-rs writer).
async fn read_back(ws: &Workspace, key: &str) -> DataFrame {
    let bytes = ws.get(key).await.unwrap();
    ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .unwrap()
}

const CSV: &str = "\
user,item,ts,stars
a,x,10,5
a,y,20,4
a,z,30,5
a,w,40,4
a,v,50,5
a,x,60,5
b,x,5,2
b,y,5,4
b,z,7,4
c,x,1,5
";

#[tokio::test(flavor = "multi_thread")]
async fn csv_ingest_matches_hand_computed_rows() {
    let dir = tmpdir("csv");
    std::fs::write(dir.join("log.csv"), CSV).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "log.csv",
                   "columns": {"user": "user", "item": "item", "timestamp": "ts", "rating": "stars"}},
        "min_rating": 3,
        "split": {"ratios": [0.5, 0.5, 0.0]},
        "temporal": {"w_min": 0.1, "w_max": 1.0}
    }));
    let report = run_ingest(&ws, &c, &dir, false).await.unwrap();
    assert!(!report.skipped);
    // a: (x,10) and (x,60) dedup → keeps x@60; a has y20 z30 w40 v50 x60 = 5 rows.
    // b: x@5 is rating 2 → dropped; y@5, z@7 = 2 rows. c: x@1 = 1 row.
    assert_eq!(report.stats.users, 3);
    assert_eq!(report.stats.items, 5);
    // Split with r = (0.5, 0.5, 0): train = floor(0.5 n)+1, the rest valid.
    // a: n=5 → 3 train, 2 valid. b: n=2 → 2 train. c: n=1 → 1 train.
    assert_eq!(report.stats.rows["train"], 6);
    assert_eq!(report.stats.rows["valid"], 2);
    assert_eq!(report.stats.rows["test"], 0);

    let df = read_back(&ws, INTERACTIONS).await;
    let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "user_idx",
            "item_idx",
            "user_id",
            "item_id",
            "timestamp",
            "split",
            "weight"
        ]
    );
    assert_eq!(df.column("user_idx").unwrap().dtype(), &DataType::UInt32);
    assert_eq!(df.column("weight").unwrap().dtype(), &DataType::Float32);
    let user_id: Vec<String> = strs(&df, "user_id");
    let item_id: Vec<String> = strs(&df, "item_id");
    let split: Vec<String> = strs(&df, "split");
    let ts: Vec<i64> = df
        .column("timestamp")
        .unwrap()
        .i64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let w: Vec<f32> = df
        .column("weight")
        .unwrap()
        .f32()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let rows: Vec<(&str, &str, i64, &str, f32)> = (0..df.height())
        .map(|i| {
            (
                user_id[i].as_str(),
                item_id[i].as_str(),
                ts[i],
                split[i].as_str(),
                w[i],
            )
        })
        .collect();
    // Weights: a's 3 train rows → linspace(0.1, 1, 3) = 0.1, 0.55, 1.0; b's 2 → 0.1, 1.0;
    // c's single row → w_min; valid rows → 1.0.
    assert_eq!(
        rows,
        vec![
            ("a", "y", 20, "train", 0.1),
            ("a", "z", 30, "train", 0.55),
            ("a", "w", 40, "train", 1.0),
            ("a", "v", 50, "valid", 1.0),
            ("a", "x", 60, "valid", 1.0),
            ("b", "y", 5, "train", 0.1),
            ("b", "z", 7, "train", 1.0),
            ("c", "x", 1, "train", 0.1),
        ]
    );
    // Dense ids in sorted original-id order.
    let users = read_back(&ws, USERS).await;
    let ids: Vec<String> = strs(&users, "user_id");
    assert_eq!(ids, ["a", "b", "c"]);
    let items = read_back(&ws, ITEMS).await;
    let ids: Vec<String> = strs(&items, "item_id");
    assert_eq!(ids, ["v", "w", "x", "y", "z"]);

    // The CSR view.
    let m = load_splits(&ws).await.unwrap();
    assert_eq!((m.n_users, m.n_items), (3, 5));
    assert_eq!(
        m.train.row(0),
        (&[1u32, 3, 4][..], &[1.0f32, 0.1, 0.55][..])
    );
    assert_eq!(m.valid.row(0).0, &[0u32, 2][..]);

    // A second run with the same config and input is skipped; a changed config reruns.
    assert!(run_ingest(&ws, &c, &dir, false).await.unwrap().skipped);
    // An output cut short (a copy or disk that failed) is no longer up to date: rerun, whole.
    let path = dir.join("ws").join(INTERACTIONS);
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
    assert!(!run_ingest(&ws, &c, &dir, false).await.unwrap().skipped);
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    let mut c2 = c.clone();
    c2.temporal = None;
    let r2 = run_ingest(&ws, &c2, &dir, false).await.unwrap();
    assert!(!r2.skipped);
    assert!(
        load_splits(&ws)
            .await
            .unwrap()
            .train
            .values
            .iter()
            .all(|&v| v == 1.0)
    );
    // --force reruns even when up to date.
    assert!(!run_ingest(&ws, &c2, &dir, true).await.unwrap().skipped);
    // A changed input reruns.
    std::fs::write(dir.join("log.csv"), format!("{CSV}d,x,2,5\n")).unwrap();
    let r3 = run_ingest(&ws, &c2, &dir, false).await.unwrap();
    assert!(!r3.skipped);
    assert_eq!(r3.stats.users, 4);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ties_in_time_keep_source_order_and_k_core_iterates() {
    let dir = tmpdir("ties");
    // u1 has 4 items at the same time: weights must follow file order.
    // k_core 2: item q has one interaction → dropped; then u3 has 1 → dropped; then item r has
    // 1 (only u3 had two) … the fixed point keeps u1, u2 and items a, b.
    let csv = "user_id,item_id,timestamp\n1,a,100\n1,b,100\n1,c,100\n1,d,100\n2,a,5\n2,b,6\n2,c,7\n2,d,8\n3,q,1\n3,a,2\n";
    std::fs::write(dir.join("t.csv"), csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "t.csv"},
        "k_core": 2,
        "split": {"ratios": [1.0, 0.0, 0.0]},
        "temporal": {"w_min": 0.4, "w_max": 1.0}
    }));
    let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
    // After dropping q: u3 has 1 → dropped. a has 2 (u1, u2) → kept.
    assert_eq!((r.stats.users, r.stats.items), (2, 4));
    let df = read_back(&ws, INTERACTIONS).await;
    let items: Vec<String> = strs(&df, "item_id");
    let w: Vec<f32> = df
        .column("weight")
        .unwrap()
        .f32()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(items[..4], ["a", "b", "c", "d"]);
    assert_eq!(w[..4], [0.4, 0.6, 0.8, 1.0]);
    // The rule for a history given to `diffrec recommend` gives the same f32 weights.
    let t = c.temporal.as_ref().unwrap();
    assert_eq!(t.weights(4), w[..4]);
    assert_eq!(t.weights(1), [0.4]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The `timestamp` column of the workspace's interactions, in stored order.
async fn timestamps(ws: &Workspace) -> Vec<i64> {
    let df = read_back(ws, INTERACTIONS).await;
    let ts = df.column("timestamp").unwrap().i64().unwrap();
    ts.into_no_null_iter().collect()
}

/// Ingests `csv` (written to `<dir>/<name>.csv`, default columns, every row train) into the
/// workspace `<dir>/<name>-ws`.
async fn ingest_all_train(dir: &Path, name: &str, csv: &str) -> (Workspace, IngestReport) {
    std::fs::write(dir.join(format!("{name}.csv")), csv).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": format!("{name}.csv")},
        "split": {"ratios": [1.0, 0.0, 0.0]}
    }));
    let ws = Workspace::open(dir.join(format!("{name}-ws")).to_str().unwrap()).unwrap();
    let r = run_ingest(&ws, &c, dir, false).await.unwrap();
    (ws, r)
}

/// CSV ids are the text written: `007` and `7`, `01` and `1` are different ids (type inference
/// read them as the same integers and merged them). Ids that are all plain integers still
/// sort numerically (2 before 10), as before.
#[tokio::test(flavor = "multi_thread")]
async fn csv_ids_keep_their_text_and_plain_integers_sort_numerically() {
    let dir = tmpdir("ids");
    let csv = "user_id,item_id,timestamp\n1,007,1\n1,7,2\n1,3,3\n01,007,1\n01,8,2\n01,9,3\n";
    let (ws, r) = ingest_all_train(&dir, "z", csv).await;
    assert_eq!((r.stats.users, r.stats.items), (2, 5));
    let items = strs(&read_back(&ws, ITEMS).await, "item_id");
    assert_eq!(items, ["007", "3", "7", "8", "9"], "text ids sort as text");

    let csv = "user_id,item_id,timestamp\n10,2,1\n10,10,2\n2,-1,1\n2,0,2\n";
    let (ws, _) = ingest_all_train(&dir, "n", csv).await;
    assert_eq!(strs(&read_back(&ws, USERS).await, "user_id"), ["2", "10"]);
    assert_eq!(
        strs(&read_back(&ws, ITEMS).await, "item_id"),
        ["-1", "0", "2", "10"]
    );

    // Spaces around an id (a spreadsheet's padding, `a, b`) are no part of it: ` CUST-1` is
    // `CUST-1`, and ` 10` an integer id that sorts with `2`. The pair (CUST-1, 10) is then a
    // duplicate, kept once.
    let csv = "user_id,item_id,timestamp\nCUST-1,2,1\n CUST-1 , 10,2\nCUST-2,10,3\nCUST-1,10 ,4\n";
    let (ws, r) = ingest_all_train(&dir, "s", csv).await;
    assert_eq!((r.stats.users, r.stats.items), (2, 2));
    assert_eq!(r.stats.rows["train"], 3);
    assert_eq!(
        strs(&read_back(&ws, USERS).await, "user_id"),
        ["CUST-1", "CUST-2"]
    );
    assert_eq!(strs(&read_back(&ws, ITEMS).await, "item_id"), ["2", "10"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Blank lines closing a CSV are no rows; Parquet datetimes (what pandas writes) are seconds.
#[tokio::test(flavor = "multi_thread")]
async fn trailing_blank_lines_and_parquet_datetimes() {
    use arrow_array::{RecordBatch, StringArray, TimestampMillisecondArray};
    let dir = tmpdir("blank");
    let (_, r) =
        ingest_all_train(&dir, "b", "user_id,item_id,timestamp\na,1,1\na,2,2\n\n \n").await;
    assert_eq!(r.stats.rows["train"], 2);

    let batch = RecordBatch::try_from_iter([
        (
            "user_id",
            std::sync::Arc::new(StringArray::from(vec!["a", "a"])) as _,
        ),
        (
            "item_id",
            std::sync::Arc::new(StringArray::from(vec!["x", "y"])) as _,
        ),
        (
            "when",
            std::sync::Arc::new(
                TimestampMillisecondArray::from(vec![1_704_153_600_999, 1_704_067_200_000])
                    .with_timezone("UTC"),
            ) as _,
        ),
    ])
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::write(dir.join("t.parquet"), buf).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "parquet", "path": "t.parquet", "columns": {"user": "user_id", "item": "item_id", "timestamp": "when"}},
        "split": {"ratios": [1.0, 0.0, 0.0]}
    }));
    let ws = Workspace::open(dir.join("ws2").to_str().unwrap()).unwrap();
    run_ingest(&ws, &c, &dir, false).await.unwrap();
    let ts = timestamps(&ws).await;
    assert_eq!(ts, [1_704_067_200, 1_704_153_600], "seconds, in time order");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Parquet as pandas writes it: `category` ids (dictionaries), 8- and 16-bit integers, and
/// unmapped columns of any type. Polars' reader refused the small integers (its build leaves
/// them out) and read dictionaries as categoricals, which no id check accepted.
#[tokio::test(flavor = "multi_thread")]
async fn parquet_dictionaries_and_small_integers() {
    use arrow_array::types::Int8Type;
    use arrow_array::{
        ArrayRef, DictionaryArray, Int8Array, Int16Array, Int64Array, RecordBatch, UInt16Array,
    };
    use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
    use std::sync::Arc;
    let dir = tmpdir("pq-types");
    let write_with = |name: &str, columns: Vec<(&str, ArrayRef)>, codec: Compression| {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(codec)
            .build();
        let mut buf = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::write(dir.join(name), buf).unwrap();
    };
    let write = |name: &str, columns| write_with(name, columns, Compression::UNCOMPRESSED);
    let note: ArrayRef = Arc::new(Int8Array::from(vec![-1, 0, 1, 2]));
    let users: DictionaryArray<Int8Type> = vec!["b", "a", "b", "a"].into_iter().collect();
    let small = || -> Vec<(&str, ArrayRef)> {
        vec![
            ("user_id", Arc::new(users.clone()) as ArrayRef),
            ("item_id", Arc::new(UInt16Array::from(vec![10, 2, 2, 10]))),
            ("when", Arc::new(Int16Array::from(vec![3, 1, 2, 4]))),
            ("stars", Arc::new(Int8Array::from(vec![5, 4, 3, 5]))),
            ("note", note.clone()),
        ]
    };
    write("small.parquet", small());
    // The same through every codec a writer may pick (Polars writes zstd by default): arrow-rs
    // reads these columns, and a codec left out of its build refused the file.
    let codecs = [
        (
            "small-zstd.parquet",
            Compression::ZSTD(ZstdLevel::default()),
        ),
        (
            "small-gzip.parquet",
            Compression::GZIP(GzipLevel::default()),
        ),
        ("small-lz4.parquet", Compression::LZ4_RAW),
        ("small-lz4-hadoop.parquet", Compression::LZ4),
        (
            "small-brotli.parquet",
            Compression::BROTLI(BrotliLevel::default()),
        ),
        ("small-snappy.parquet", Compression::SNAPPY),
    ];
    for (name, codec) in codecs {
        write_with(name, small(), codec);
    }
    // Plain 64-bit columns beside an unmapped 8-bit one: Polars' reader, mapped columns only.
    write(
        "wide.parquet",
        vec![
            (
                "user_id",
                Arc::new(Int64Array::from(vec![7, 5, 7, 5])) as ArrayRef,
            ),
            ("item_id", Arc::new(Int64Array::from(vec![10, 2, 2, 10]))),
            ("when", Arc::new(Int64Array::from(vec![3, 1, 2, 4]))),
            ("stars", Arc::new(Int64Array::from(vec![5, 4, 3, 5]))),
            ("note", note),
        ],
    );
    // Many row groups through arrow-rs: a missing id is named at its row in the file.
    let n = 3000;
    let items: Vec<Option<i8>> = (0..n)
        .map(|r| (r != 2500).then_some((r % 100) as i8))
        .collect();
    let batch = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(Int16Array::from_iter_values(
                (0..n).map(|r| (r / 10) as i16),
            )) as ArrayRef,
        ),
        ("item_id", Arc::new(Int8Array::from(items))),
        ("when", Arc::new(Int64Array::from_iter_values(0..n as i64))),
    ])
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(500))
        .build();
    let mut buf = Vec::new();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::write(dir.join("groups.parquet"), buf).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "parquet", "path": "groups.parquet",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "when"}}
    }));
    let ws = Workspace::open(dir.join("ws-groups").to_str().unwrap()).unwrap();
    let e = run_ingest(&ws, &c, &dir, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 2501, column `item_id`: missing id"), "{e}");

    // Decimals (what SQL engines export): whole ones are integers, others numbers. Polars'
    // reader panicked on them.
    let decimals = |values: Vec<i128>, scale: i8| -> ArrayRef {
        Arc::new(
            arrow_array::Decimal128Array::from(values)
                .with_precision_and_scale(10, scale)
                .unwrap(),
        )
    };
    write(
        "decimal.parquet",
        vec![
            ("user_id", decimals(vec![7, 5, 7, 5], 0)),
            ("item_id", decimals(vec![10, 2, 2, 10], 0)),
            ("when", Arc::new(Int64Array::from(vec![3, 1, 2, 4]))),
            ("stars", decimals(vec![50, 45, 35, 50], 1)),
        ],
    );
    let compressed = codecs.map(|(name, _)| (name, ["a", "b"]));
    for (file, users) in [
        ("small.parquet", ["a", "b"]),
        ("wide.parquet", ["5", "7"]),
        ("decimal.parquet", ["5", "7"]),
    ]
    .into_iter()
    .chain(compressed)
    {
        let c = cfg(serde_json::json!({
            "source": {"format": "parquet", "path": file,
                       "columns": {"user": "user_id", "item": "item_id", "timestamp": "when", "rating": "stars"}},
            "min_rating": 4,
            "split": {"ratios": [1.0, 0.0, 0.0]}
        }));
        let ws = Workspace::open(dir.join(format!("ws-{file}")).to_str().unwrap()).unwrap();
        let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
        assert_eq!(
            r.stats.rows["train"], 3,
            "{file}: the 3-star row is filtered"
        );
        assert_eq!(
            strs(&read_back(&ws, USERS).await, "user_id"),
            users,
            "{file}"
        );
        assert_eq!(
            strs(&read_back(&ws, ITEMS).await, "item_id"),
            ["2", "10"],
            "{file}: integer ids sort numerically"
        );
        let mut ts = timestamps(&ws).await;
        ts.sort();
        assert_eq!(ts, [1, 3, 4], "{file}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn iso_timestamps_and_parquet_sources() {
    let dir = tmpdir("iso");
    let csv = "u,i,when\n1,10,2024-01-02T00:00:00Z\n1,11,2024-01-01\n";
    std::fs::write(dir.join("iso.csv"), csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "iso.csv", "columns": {"user": "u", "item": "i", "timestamp": "when"}},
        "split": {"ratios": [1.0, 0.0, 0.0]}
    }));
    run_ingest(&ws, &c, &dir, false).await.unwrap();
    let ts = timestamps(&ws).await;
    assert_eq!(
        ts,
        [1704067200, 1704153600],
        "sorted by time, 2024-01-01 first"
    );

    // The written interactions file is itself a valid Parquet source.
    let bytes = ws.get(INTERACTIONS).await.unwrap();
    std::fs::write(dir.join("in.parquet"), &bytes).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "parquet", "path": "in.parquet", "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}},
        "split": {"ratios": [1.0, 0.0, 0.0]}
    }));
    let ws2 = Workspace::open(dir.join("ws2").to_str().unwrap()).unwrap();
    let r = run_ingest(&ws2, &c, &dir, false).await.unwrap();
    assert_eq!(r.stats.rows["train"], 2);
    std::fs::remove_dir_all(dir).unwrap();
}

async fn ingest_err(csv: &str, extra: serde_json::Value) -> String {
    ingest_err_bytes(csv.as_bytes(), extra).await
}

async fn ingest_err_bytes(csv: &[u8], extra: serde_json::Value) -> String {
    let dir = tmpdir("err");
    std::fs::write(dir.join("bad.csv"), csv).unwrap();
    let mut j = serde_json::json!({
        "source": {"format": "csv", "path": "bad.csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}}
    });
    if let (Some(o), Some(e)) = (j.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    let ws_dir = dir.join("ws");
    let ws = Workspace::open(ws_dir.to_str().unwrap()).unwrap();
    let e = run_ingest(&ws, &cfg(j), &dir, false).await.unwrap_err();
    assert!(e.is_input(), "{e} should be an input error");
    // No partial output: nothing but the (empty) workspace directory.
    assert!(
        ws.list("").await.unwrap().is_empty(),
        "artifacts written despite an error"
    );
    std::fs::remove_dir_all(dir).unwrap();
    e.to_string()
}

/// Files a spreadsheet or an old tool writes wrong, each refused in a line a person can act
/// on: a column named twice (the reader took the first, silently), lines ended by CR alone
/// (the whole file was "the header"), a byte that is not UTF-8 (no row was named), an
/// unbalanced quote (the reader's message quoted the rest of the file).
#[tokio::test(flavor = "multi_thread")]
async fn malformed_csv_files_are_named_briefly() {
    let none = serde_json::json!({});
    let e = ingest_err(
        "user_id,user_id,item_id,timestamp,rating\nA,u0,i,1,5\n",
        none.clone(),
    )
    .await;
    assert!(
        e.contains("column `user_id`: the header names this column 2 times (columns 1, 2)"),
        "{e}"
    );
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\r1,2,3,5\r1,3,4,5\r",
        none.clone(),
    )
    .await;
    assert!(e.contains("carriage return alone") && e.len() < 400, "{e}");
    let mut bytes = b"user_id,item_id,timestamp,rating\n1,2,3,5\n1,".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b",4,5\n");
    let e = ingest_err_bytes(&bytes, none.clone()).await;
    assert!(
        e.contains("row 2, column `item_id`: not valid UTF-8"),
        "{e}"
    );
    let long = format!(
        "user_id,item_id,timestamp,rating\n\"1,2,3,5\n{}",
        "1,2,3,5\n".repeat(20_000)
    );
    let e = ingest_err(&long, none).await;
    assert!(
        e.len() < 1_000,
        "{} bytes: {}",
        e.len(),
        &e[..e.len().min(600)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_names_file_row_and_column() {
    let e = ingest_err("user_id,item_id,rating\n1,2,5\n", serde_json::json!({})).await;
    assert!(
        e.contains("bad.csv")
            && e.contains("column `timestamp`: column not found")
            && e.contains("a source without times: `data.source.columns.timestamp: null`"),
        "{e}"
    );
    // Another missing column gets no such hint.
    let e = ingest_err("user,item_id,timestamp\n1,2,5\n", serde_json::json!({})).await;
    assert!(
        e.contains("column `user_id`: column not found") && !e.contains("without times"),
        "{e}"
    );

    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,5,5\n1,3,-7,5\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("row 2, column `timestamp`: negative timestamp -7"),
        "{e}"
    );
    // Epoch milliseconds read as seconds would be the year 56,000: refused, with the unit
    // named. 9999-12-31T23:59:59Z is the last second taken.
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,253402300799,5\n1,3,1704067200000,5\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("row 2, column `timestamp`: timestamp 1704067200000 is past the year 9999")
            && e.contains("milliseconds"),
        "{e}"
    );

    let mut rows = String::from("user_id,item_id,timestamp,rating\n");
    for k in 0..12_000 {
        rows.push_str(&format!("{k},1,{k},5\n"));
    }
    rows.push_str("9,9,noon,5\n");
    let e = ingest_err(&rows, serde_json::json!({})).await;
    assert!(
        e.contains("row 12001, column `timestamp`: cannot parse \"noon\""),
        "{e}"
    );

    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,5,good\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("row 1, column `rating`: rating must be numeric"),
        "{e}"
    );

    // A decimal timestamp among the first rows (the column is read as floats) is named by row.
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,5,4\n1,3,2.5,4\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains(
            "row 2, column `timestamp`: timestamps must be integer seconds or ISO-8601 \
             text, got 2.5"
        ),
        "{e}"
    );

    // NaN is no rating: it would pass any min_rating.
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,5,4\n1,3,6,NaN\n",
        serde_json::json!({"min_rating": 9}),
    )
    .await;
    assert!(
        e.contains("row 2, column `rating`: rating must be a finite number, got NaN"),
        "{e}"
    );

    let e = ingest_err("", serde_json::json!({})).await;
    assert!(e.contains("bad.csv") && e.contains("empty"), "{e}");

    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,5,5\n",
        serde_json::json!({"k_core": 3}),
    )
    .await;
    assert!(e.contains("removes every interaction"), "{e}");

    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,,5,5\n",
        serde_json::json!({}),
    )
    .await;
    assert!(e.contains("row 1, column `item_id`: missing id"), "{e}");
    // Blank text is no id either.
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,2,5,5\n1, ,5,5\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("row 2, column `item_id`: missing id (empty text)"),
        "{e}"
    );

    // A row with more fields than the header: named by its row, with no reader internals. A
    // quoted field holding the delimiter does not shift the count; a blank line is a row, as it
    // is for the other checks (below: a blank line's row is named as missing its id).
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\n1,\"a,b\",5,5\n\n2,3,6,5\n2,4,7,5,9,9\n3,4,8,5\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("bad.csv, row 4: 6 fields where the header has 4"),
        "{e}"
    );
    assert!(!e.contains("truncate_ragged_lines"), "{e}");
    // The same when the long row's extra fields would fall in an unmapped last column, which
    // the reader would cut silently: a stray comma in the user id shifts the item and time.
    let e = ingest_err(
        "user_id,item_id,timestamp,rating,note\n1,2,5,5,x\n1,2,3,6,5,y\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("bad.csv, row 2: 6 fields where the header has 5"),
        "{e}"
    );
    let e = ingest_err(
        "user_id,item_id,timestamp,rating\r\n1,2,5,5\r\n\r\n2,3,6,5\r\n",
        serde_json::json!({}),
    )
    .await;
    assert!(e.contains("row 2, column `user_id`: missing id"), "{e}");

    // A semicolon file read with the default delimiter: the hint names the key to set.
    let e = ingest_err(
        "user_id;item_id;timestamp;rating\n1;2;5;5\n",
        serde_json::json!({}),
    )
    .await;
    assert!(
        e.contains("column not found") && e.contains("';': set `data.source.delimiter`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn npy_with_wrong_dtype_is_refused() {
    let dir = tmpdir("npy");
    let good = diffrec_data::npy::write_npy_i64(2, 2, &[0, 0, 1, 1]);
    std::fs::write(dir.join("train_list.npy"), &good).unwrap();
    std::fs::write(dir.join("valid_list.npy"), &good).unwrap();
    std::fs::write(
        dir.join("test_list.npy"),
        diffrec_data::npy::write_npy_f32(2, 2, &[0.0; 4]),
    )
    .unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(
        serde_json::json!({"source": {"format": "diffrec-npy", "path": dir.to_str().unwrap()}}),
    );
    let e = run_ingest(&ws, &c, Path::new("."), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_list.npy") && e.contains("integer array of shape (N, 2)"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn random_noise_adds_unseen_train_items() {
    let dir = tmpdir("noise");
    let mut csv = String::from("user_id,item_id,timestamp\n");
    for u in 0..20 {
        for i in 0..10 {
            csv.push_str(&format!("{u},{},{}\n", (u + i) % 40, i));
        }
    }
    std::fs::write(dir.join("n.csv"), &csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "n.csv"},
        "noise": {"kind": "random", "ratio": 0.5, "seed": 3}
    }));
    let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
    // Each user: 10 rows → floor(0.7·10)+1 = 8 train; noise round(0.5·8) = 4 per user.
    assert_eq!(r.stats.noise_rows, 20 * 4);
    assert_eq!(r.stats.rows["train"], 20 * (8 + 4));
    let m = load_splits(&ws).await.unwrap();
    for u in 0..20 {
        let train: BTreeSet<u32> = m.train.row(u).0.iter().copied().collect();
        let rest: BTreeSet<u32> = m
            .valid
            .row(u)
            .0
            .iter()
            .chain(m.test.row(u).0)
            .copied()
            .collect();
        assert_eq!(
            train.len(),
            12,
            "user {u}: noise items must be new and distinct"
        );
        assert!(train.is_disjoint(&rest));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn shared_ml1m() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ml-1m_clean");
    if p.join("train_list.npy").exists() {
        Some(p)
    } else {
        assert!(
            std::env::var_os("DIFFREC_REQUIRE_SHARED").is_none(),
            "DIFFREC_REQUIRE_SHARED is set but {} is absent",
            p.display()
        );
        // On stderr itself: libtest captures `eprintln!` of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED ml1m_clean_split_is_reproduced_exactly: ../shared/data/ml-1m_clean is \
             absent (research data is not in the repo; DIFFREC_REQUIRE_SHARED=1 makes this fail)"
        );
        None
    }
}

fn npy_pairs(path: &Path) -> BTreeSet<(u32, u32)> {
    let a = diffrec_data::npy::parse_npy("x", &std::fs::read(path).unwrap()).unwrap();
    (0..a.rows)
        .map(|r| {
            (
                a.get_i64(r, 0).unwrap() as u32,
                a.get_i64(r, 1).unwrap() as u32,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ml1m_clean_split_is_reproduced_exactly() {
    let Some(src) = shared_ml1m() else { return };
    let ws = Workspace::open("memory://ml1m").unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "diffrec-npy", "path": src.to_str().unwrap()},
        "temporal": {"w_min": 0.1, "w_max": 1.0}
    }));
    let r = run_ingest(&ws, &c, Path::new("."), false).await.unwrap();
    assert_eq!((r.stats.users, r.stats.items), (5949, 2810));
    assert_eq!(
        r.stats.rows,
        BTreeMap::from([
            ("test".into(), 57_532),
            ("train".into(), 403_277),
            ("valid".into(), 110_722)
        ])
    );
    let m = load_splits(&ws).await.unwrap();
    for (name, csr) in [("train", &m.train), ("valid", &m.valid), ("test", &m.test)] {
        let ours: BTreeSet<(u32, u32)> = (0..m.n_users)
            .flat_map(|u| csr.row(u).0.iter().map(move |&i| (u as u32, i)))
            .collect();
        assert_eq!(
            ours,
            npy_pairs(&src.join(format!("{name}_list.npy"))),
            "{name} pairs differ"
        );
    }
    // Spec §1.5: weights follow the stored row order, linspace(w_min, w_max, M) per user.
    let a = diffrec_data::npy::parse_npy("t", &std::fs::read(src.join("train_list.npy")).unwrap())
        .unwrap();
    let user0: Vec<u32> = (0..a.rows)
        .take_while(|&r| a.get_i64(r, 0) == Some(0))
        .map(|r| a.get_i64(r, 1).unwrap() as u32)
        .collect();
    let n = user0.len() as f64;
    let (idx, vals) = m.train.row(0);
    for (k, item) in user0.iter().enumerate() {
        let pos = idx.iter().position(|x| x == item).unwrap();
        let expect = 0.1 + 0.9 * k as f64 / (n - 1.0);
        assert!(
            (vals[pos] as f64 - expect).abs() < 1e-6,
            "user 0, item {item}"
        );
    }
}

/// `per_user_ratio` 0.7/0.2/0.1 over the paper's ML-1M interactions, as a time-ordered CSV,
/// gives every user the paper's train count: floor(0.7·n)+1 with the product in f64 (51 users,
/// n = 90, 170, …, have 0.7·n just under an integer and one row fewer than exact arithmetic).
#[tokio::test(flavor = "multi_thread")]
async fn ml1m_per_user_ratio_gives_the_paper_train_counts() {
    let Some(src) = shared_ml1m() else { return };
    let dir = tmpdir("ml1m-ratio");
    let read = |name: &str| {
        diffrec_data::npy::parse_npy(name, &std::fs::read(src.join(name)).unwrap()).unwrap()
    };
    // Per user: train rows, then valid, then test, in stored order; time = that order.
    let mut per_user: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut train_count: BTreeMap<i64, u64> = BTreeMap::new();
    for name in ["train_list.npy", "valid_list.npy", "test_list.npy"] {
        let a = read(name);
        for r in 0..a.rows {
            let u = a.get_i64(r, 0).unwrap();
            per_user
                .entry(u)
                .or_default()
                .push(a.get_i64(r, 1).unwrap());
            if name.starts_with("train") {
                *train_count.entry(u).or_default() += 1;
            }
        }
    }
    let mut csv = String::from("user_id,item_id,timestamp\n");
    for (u, items) in &per_user {
        for (t, i) in items.iter().enumerate() {
            csv.push_str(&format!("{u},{i},{t}\n"));
        }
    }
    std::fs::write(dir.join("ml1m.csv"), csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "ml1m.csv"},
        "split": {"method": "per_user_ratio", "ratios": [0.7, 0.2, 0.1]}
    }));
    let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
    assert_eq!(r.stats.rows["train"], 403_277);
    let df = read_back(&ws, INTERACTIONS).await;
    let mut ours: BTreeMap<i64, u64> = BTreeMap::new();
    for (u, s) in strs(&df, "user_id").iter().zip(strs(&df, "split")) {
        if s == "train" {
            *ours.entry(u.parse().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(ours, train_count);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn global_time_split_cuts_all_users_at_one_time() {
    let dir = tmpdir("global");
    let csv = "user_id,item_id,timestamp\na,1,1\nb,1,2\na,2,3\nb,2,4\na,3,5\nb,3,6\na,4,7\nb,4,8\n";
    std::fs::write(dir.join("g.csv"), csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "g.csv"},
        "split": {"method": "global_time", "ratios": [0.5, 0.25, 0.25]}
    }));
    run_ingest(&ws, &c, &dir, false).await.unwrap();
    let df = read_back(&ws, INTERACTIONS).await;
    let got: Vec<(String, String, String)> = strs(&df, "user_id")
        .into_iter()
        .zip(strs(&df, "item_id"))
        .zip(strs(&df, "split"))
        .map(|((u, i), s)| (u, i, s))
        .collect();
    // 8 rows: the first floor(0.5·8)+1 = 5 in time (ts 1..5) train, up to floor(0.75·8)+1 = 7
    // valid (ts 6, 7), the last (ts 8) test.
    let expect = [
        ("a", "1", "train"),
        ("a", "2", "train"),
        ("a", "3", "train"),
        ("a", "4", "valid"),
        ("b", "1", "train"),
        ("b", "2", "train"),
        ("b", "3", "valid"),
        ("b", "4", "test"),
    ];
    let expect: Vec<(String, String, String)> = expect
        .iter()
        .map(|(u, i, s)| (u.to_string(), i.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, expect);

    // b's third click at a's third click's time: the 5th and 6th rows tie at the train cut and
    // both go to train (before, source order sent b's to valid, as old as a train row).
    std::fs::write(dir.join("g.csv"), csv.replace("b,3,6", "b,3,5")).unwrap();
    run_ingest(&ws, &c, &dir, true).await.unwrap();
    let df = read_back(&ws, INTERACTIONS).await;
    let splits = strs(&df, "split");
    let b3 = expect
        .iter()
        .position(|e| e.0 == "b" && e.1 == "3")
        .unwrap();
    let mut expect_splits: Vec<String> = expect.iter().map(|e| e.2.clone()).collect();
    expect_splits[b3] = "train".into();
    assert_eq!(splits, expect_splits);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The ingested rows as `<user><item>:<split>`, in the file's order.
async fn rows_with_split(ws: &Workspace) -> Vec<String> {
    let df = read_back(ws, INTERACTIONS).await;
    strs(&df, "user_id")
        .into_iter()
        .zip(strs(&df, "item_id"))
        .zip(strs(&df, "split"))
        .map(|((u, i), s)| format!("{u}{i}:{s}"))
        .collect()
}

/// Natural noise joins train or valid and leaves the clean split as it is (the paper's noisy
/// ML-1M has the clean test set): ratios 0.4/0.3/0.3 over each user's 4 clean rows give train
/// 2, valid 1, test 1. A low-rated row takes train when the user's nearest earlier clean row is
/// in train or there is none (1y, 4w), valid otherwise (2z after a valid row, 3w after test).
#[tokio::test(flavor = "multi_thread")]
async fn natural_noise_leaves_the_clean_split_as_it_is() {
    let dir = tmpdir("natural");
    let csv = "user_id,item_id,timestamp,rating\n\
               1,x,1,5\n1,y,2,2\n1,z,3,5\n1,w,4,4\n1,v,5,5\n\
               2,x,1,5\n2,y,2,5\n2,w,3,5\n2,z,4,1\n2,v,5,4\n\
               3,x,1,5\n3,y,2,5\n3,z,3,5\n3,v,4,5\n3,w,5,1\n\
               4,w,10,2\n4,x,11,5\n4,y,12,5\n4,z,13,5\n4,v,14,5\n";
    std::fs::write(dir.join("n.csv"), csv).unwrap();
    let ingest = |name: &'static str, noise: Option<serde_json::Value>| {
        let dir = dir.clone();
        async move {
            let mut c = serde_json::json!({
                "source": {"format": "csv", "path": "n.csv", "columns": {"rating": "rating"}},
                "min_rating": 4,
                "split": {"ratios": [0.4, 0.3, 0.3]}
            });
            if let Some(n) = noise {
                c["noise"] = n;
            }
            let ws = Workspace::open(dir.join(name).to_str().unwrap()).unwrap();
            let r = run_ingest(&ws, &cfg(c), &dir, false).await.unwrap();
            (r, rows_with_split(&ws).await)
        }
    };
    let (r, noisy) = ingest(
        "ws",
        Some(serde_json::json!({"kind": "natural", "ratio": 1.0})),
    )
    .await;
    assert_eq!(r.stats.noise_rows, 4);
    #[rustfmt::skip]
    let expected = [
        "1x:train", "1y:train", "1z:train", "1w:valid", "1v:test",
        "2x:train", "2y:train", "2w:valid", "2z:valid", "2v:test",
        "3x:train", "3y:train", "3z:valid", "3v:test", "3w:valid",
        "4w:train", "4x:train", "4y:train", "4z:valid", "4v:test",
    ];
    assert_eq!(noisy, expected);
    // The same pipeline without noise: the noisy rows less the four noise rows.
    let (_, clean) = ingest("ws-clean", None).await;
    let noise = ["1y:train", "2z:valid", "3w:valid", "4w:train"];
    let less: Vec<&String> = noisy
        .iter()
        .filter(|r| !noise.contains(&r.as_str()))
        .collect();
    assert_eq!(clean.iter().collect::<Vec<_>>(), less);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Natural noise without times: the source order is the time, so 1y (after 1x, train) is
/// train, not placed after every clean row. And with no validation share, a noise row that
/// would be valid (2v, after the test row) is left out: it would be the whole validation set.
#[tokio::test(flavor = "multi_thread")]
async fn natural_noise_without_times_or_a_validation_share() {
    let dir = tmpdir("natural-untimed");
    let csv = "user_id,item_id,rating\n1,x,5\n1,y,2\n1,z,5\n1,w,5\n1,v,5\n\
               2,x,5\n2,y,5\n2,z,5\n2,w,5\n2,v,1\n";
    std::fs::write(dir.join("u.csv"), csv).unwrap();
    let ingest = |name: &'static str, ratios: [f64; 3]| {
        let dir = dir.clone();
        async move {
            let c = cfg(serde_json::json!({
                "source": {"format": "csv", "path": "u.csv",
                           "columns": {"timestamp": null, "rating": "rating"}},
                "min_rating": 4,
                "split": {"ratios": ratios},
                "noise": {"kind": "natural"}
            }));
            let ws = Workspace::open(dir.join(name).to_str().unwrap()).unwrap();
            let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
            (r.stats.noise_rows, rows_with_split(&ws).await)
        }
    };
    let (noise, rows) = ingest("ws", [0.4, 0.3, 0.3]).await;
    assert_eq!(noise, 2);
    #[rustfmt::skip]
    let expected = [
        "1x:train", "1y:train", "1z:train", "1w:valid", "1v:test",
        "2x:train", "2y:train", "2z:valid", "2w:test", "2v:valid",
    ];
    assert_eq!(rows, expected);
    let (noise, rows) = ingest("ws-no-valid", [0.5, 0.0, 0.5]).await;
    assert_eq!(noise, 1);
    #[rustfmt::skip]
    let expected = [
        "1x:train", "1y:train", "1z:train", "1w:train", "1v:test",
        "2x:train", "2y:train", "2z:train", "2w:test",
    ];
    assert_eq!(rows, expected);
    std::fs::remove_dir_all(dir).unwrap();
}

/// With `global_time`, a low-rated row takes the split of the nearest earlier clean row of any
/// user (train when none): a5 at 65 comes after b7's valid row at 60, so valid — a later time
/// than the train cut never reaches train; nor does a7 at 60, although the source has it
/// before b7 (clean rows of a time come first); b2 at 5 precedes every row, so train. Clean
/// rows split as without noise: train up to 50, valid 60–70, test 80.
#[tokio::test(flavor = "multi_thread")]
async fn natural_noise_with_global_time_follows_the_global_cut() {
    let dir = tmpdir("natural-global");
    let csv = "user_id,item_id,timestamp,rating\n\
               a,1,10,5\nb,5,20,5\na,2,30,5\nb,6,40,5\na,3,50,5\na,7,60,1\nb,7,60,5\na,4,70,5\nb,8,80,5\n\
               a,5,65,1\nb,1,65,2\na,6,90,1\nb,2,5,3\n";
    std::fs::write(dir.join("g.csv"), csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "g.csv", "columns": {"rating": "rating"}},
        "min_rating": 4,
        "split": {"method": "global_time", "ratios": [0.5, 0.25, 0.25]},
        "noise": {"kind": "natural"}
    }));
    let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
    assert_eq!(r.stats.noise_rows, 5);
    let rows = rows_with_split(&ws).await;
    #[rustfmt::skip]
    let expected = [
        "a1:train", "a2:train", "a3:train", "a7:valid", "a5:valid", "a4:valid", "a6:valid",
        "b2:train", "b5:train", "b6:train", "b7:valid", "b1:valid", "b8:test",
    ];
    assert_eq!(rows, expected);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A pair's latest row decides whether it is kept: de-duplication comes before the rating
/// threshold. 1x: 5★ then re-rated 2★ → dropped (it was kept, with the old time). 1y: 2★ then
/// 4★ → kept at its later time. Natural noise sees the pair's latest low rating only once.
#[tokio::test(flavor = "multi_thread")]
async fn the_latest_rating_of_a_pair_decides() {
    let dir = tmpdir("latest");
    let csv = "user_id,item_id,timestamp,rating\n\
               1,x,1,5\n1,y,2,2\n1,z,3,5\n1,x,4,2\n1,y,5,4\n1,w,6,4\n\
               2,x,1,5\n2,z,2,5\n";
    std::fs::write(dir.join("l.csv"), csv).unwrap();
    let rows = |df: &DataFrame| -> Vec<String> {
        let ts = df.column("timestamp").unwrap().i64().unwrap();
        strs(df, "user_id")
            .into_iter()
            .zip(strs(df, "item_id"))
            .zip(ts.into_no_null_iter())
            .map(|((u, i), t)| format!("{u}{i}@{t}"))
            .collect()
    };
    let ingest = |name: &'static str, extra: serde_json::Value| {
        let dir = dir.clone();
        async move {
            let mut c = serde_json::json!({
                "source": {"format": "csv", "path": "l.csv", "columns": {"rating": "rating"}},
                "min_rating": 4,
                "split": {"ratios": [1.0, 0.0, 0.0]}
            });
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let ws = Workspace::open(dir.join(name).to_str().unwrap()).unwrap();
            let r = run_ingest(&ws, &cfg(c), &dir, false).await.unwrap();
            (read_back(&ws, INTERACTIONS).await, r)
        }
    };
    let (df, _) = ingest("ws", serde_json::json!({})).await;
    assert_eq!(rows(&df), ["1z@3", "1y@5", "1w@6", "2x@1", "2z@2"]);
    // Without de-duplication every row stands on its own rating.
    let (df, _) = ingest("ws-all", serde_json::json!({"dedup": false})).await;
    assert_eq!(rows(&df), ["1x@1", "1z@3", "1y@5", "1w@6", "2x@1", "2z@2"]);
    // Natural noise: 1x's latest row (2★ at 4) is the one candidate; 1y's 2★ is superseded.
    let (df, r) = ingest(
        "ws-noise",
        serde_json::json!({"noise": {"kind": "natural", "ratio": 1.0}}),
    )
    .await;
    assert_eq!(r.stats.noise_rows, 1);
    assert_eq!(rows(&df), ["1z@3", "1x@4", "1y@5", "1w@6", "2x@1", "2z@2"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `data/source.json` says what each filter removed, in order: 8 source rows over users a–d and items
/// w–z; dedup drops a's earlier `x` (1); the 4★ threshold drops b's 2★ `z` and d's 1★ `w` (2);
/// the 2-core then drops c, left with one row (1). 8 − 4 = the 4 rows written.
#[tokio::test(flavor = "multi_thread")]
async fn stats_count_what_each_filter_dropped() {
    let dir = tmpdir("dropped");
    let csv = "user_id,item_id,timestamp,rating\n\
               a,x,1,5\na,x,2,5\na,y,3,5\nb,x,4,5\nb,y,5,5\nb,z,6,2\nc,x,7,5\nd,w,8,1\n";
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "d.csv", "columns": {"rating": "rating"}},
        "min_rating": 4,
        "k_core": 2,
        "split": {"ratios": [1.0, 0.0, 0.0]}
    }));
    let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
    let expected = serde_json::json!({
        "rows": 8, "users": 4, "items": 4,
        "dropped": {"duplicates": 1, "below_min_rating": 2, "k_core": 1, "kept_as_noise": 0}
    });
    // As written, and as an analyst reads the file.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ws/data/source.json")).unwrap()).unwrap();
    assert_eq!(written, expected);
    assert_eq!(serde_json::to_value(&r.source).unwrap(), expected);
    assert_eq!(
        (r.stats.users, r.stats.items, r.stats.rows["train"]),
        (2, 2, 4)
    );
    // Up to date, the report reads it back.
    let again = run_ingest(&ws, &c, &dir, false).await.unwrap();
    assert!(again.skipped);
    assert_eq!(again.source, r.source);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Upgrading: a workspace ingested under older rules (a manifest without `rules` or
/// `data/source.json`) is ingested again. Its data come out the same here, so every output a
/// later stage reads keeps its hash, and that stage's manifest stays up to date.
#[tokio::test(flavor = "multi_thread")]
async fn older_rules_reingest_and_later_stages_stay_up_to_date() {
    use diffrec_data::manifest::{Freshness, freshness, upstream_hashes};
    let dir = tmpdir("rules");
    std::fs::write(dir.join("log.csv"), CSV).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "log.csv",
                   "columns": {"user": "user", "item": "item", "timestamp": "ts"}}
    }));
    let first = run_ingest(&ws, &c, &dir, false).await.unwrap();
    // stats.json as diffrec wrote it before this change, spelled out: the fields in
    // declaration order, pretty, a final line feed. Later stages hash it, so the same bytes.
    let stats = std::fs::read_to_string(dir.join("ws/data/stats.json")).unwrap();
    let st = &first.stats;
    let num = |x: f64| serde_json::to_string(&x).unwrap();
    let want = format!(
        "{{\n  \"users\": {},\n  \"items\": {},\n  \"rows\": {{\n    \"test\": {},\n    \
         \"train\": {},\n    \"valid\": {}\n  }},\n  \"density\": {},\n  \
         \"train_density\": {},\n  \"noise_rows\": 0,\n  \"weighted\": false\n}}\n",
        st.users,
        st.items,
        st.rows["test"],
        st.rows["train"],
        st.rows["valid"],
        num(st.density),
        num(st.train_density)
    );
    assert_eq!(stats, want);
    let path = dir.join("ws/data/_manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(manifest["rules"], 1);
    // A later stage's inputs: what it reads, without the report.
    let inputs = upstream_hashes(&ws, "data").await.unwrap().unwrap();
    let read: Vec<&str> = inputs.keys().map(String::as_str).collect();
    assert_eq!(
        read,
        [
            "data/interactions.parquet",
            "data/items.parquet",
            "data/stats.json",
            "data/users.parquet"
        ]
    );
    std::fs::create_dir_all(dir.join("ws/later")).unwrap();
    let later = serde_json::json!({
        "stage": "later", "tool_version": env!("CARGO_PKG_VERSION"), "config": {},
        "inputs": inputs, "outputs": {},
        "started_at": "2026-12-01T00:00:00Z", "finished_at": "2026-12-01T00:00:00Z"
    });
    std::fs::write(dir.join("ws/later/_manifest.json"), later.to_string()).unwrap();
    // As an older diffrec left the workspace.
    let m = manifest.as_object_mut().unwrap();
    m.remove("rules");
    m["outputs"]
        .as_object_mut()
        .unwrap()
        .remove("data/source.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    std::fs::remove_file(dir.join("ws/data/source.json")).unwrap();

    let again = run_ingest(&ws, &c, &dir, false).await.unwrap();
    assert!(!again.skipped, "older rules must make ingest run again");
    assert!(again.source.is_some());
    for (key, info) in &first.manifest.outputs {
        assert_eq!(again.manifest.outputs[key].sha256, info.sha256, "{key}");
    }
    let now = upstream_hashes(&ws, "data").await.unwrap().unwrap();
    let fresh = freshness(&ws, "later", &serde_json::json!({}), &now)
        .await
        .unwrap();
    assert_eq!(fresh, Freshness::UpToDate);
    assert!(run_ingest(&ws, &c, &dir, false).await.unwrap().skipped);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A row ending in a delimiter (one blank field past the header's) is no extra field, on any
/// line: one such row, or every data row, reads as the plain file, integer ids still in
/// numeric order (2 before 10). A real extra field is still refused, naming its row.
#[tokio::test(flavor = "multi_thread")]
async fn rows_ending_in_a_delimiter_read_as_without_it() {
    let dir = tmpdir("trailing");
    let header = "user_id,item_id,timestamp,rating\n";
    let rows = ["10,3,1,5", "10,20,2,4", "2,3,3,5", "2,100,4,3"];
    let body = |ends: [&str; 4]| -> String {
        let lines: Vec<String> = rows
            .iter()
            .zip(ends)
            .map(|(r, e)| format!("{r}{e}\n"))
            .collect();
        format!("{header}{}", lines.concat())
    };
    let files = [
        ("plain.csv", body(["", "", "", ""])),
        ("one.csv", body(["", ",", "", ""])),
        ("all.csv", body([",", ",", ",", ","])),
    ];
    let mut read = Vec::new();
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).unwrap();
        let ws = Workspace::open(dir.join(format!("ws-{name}")).to_str().unwrap()).unwrap();
        let c = cfg(serde_json::json!({
            "source": {"format": "csv", "path": name, "columns": {"rating": "rating"}},
            "split": {"ratios": [1.0, 0.0, 0.0]}
        }));
        let r = run_ingest(&ws, &c, &dir, false)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let df = read_back(&ws, INTERACTIONS).await;
        read.push((
            r.stats.rows["train"],
            strs(&df, "user_id"),
            strs(&df, "item_id"),
            strs(&read_back(&ws, USERS).await, "user_id"),
            strs(&read_back(&ws, ITEMS).await, "item_id"),
        ));
    }
    assert_eq!(read[0].0, 4);
    assert_eq!(read[0].3, ["2", "10"]);
    assert_eq!(read[0].4, ["3", "20", "100"]);
    assert_eq!(read[1], read[0]);
    assert_eq!(read[2], read[0]);
    std::fs::write(dir.join("long.csv"), body(["", ",", ",x", ""])).unwrap();
    let ws = Workspace::open(dir.join("ws-long").to_str().unwrap()).unwrap();
    let c = cfg(serde_json::json!({
        "source": {"format": "csv", "path": "long.csv", "columns": {"rating": "rating"}}
    }));
    let e = run_ingest(&ws, &c, &dir, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 3") && e.contains("5 fields where the header has 4"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A spreadsheet's "CSV UTF-8" export starts with a byte-order mark: the first column is still
/// found by its name, and the artifacts are those of the same file without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_byte_order_mark_is_not_part_of_the_header() {
    let dir = tmpdir("bom");
    let body = "user_id,item_id,timestamp\n1,a,1\n1,b,2\n2,a,3\n2,c,4\n";
    std::fs::write(dir.join("plain.csv"), body).unwrap();
    std::fs::write(dir.join("bom.csv"), format!("\u{feff}{body}")).unwrap();
    let mut stats = Vec::new();
    for name in ["plain.csv", "bom.csv"] {
        let ws = Workspace::open(dir.join(format!("ws-{name}")).to_str().unwrap()).unwrap();
        let c = cfg(serde_json::json!({
            "source": {"format": "csv", "path": name},
            "split": {"ratios": [1.0, 0.0, 0.0]}
        }));
        let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
        stats.push((r.stats.users, r.stats.items, r.stats.rows["train"]));
        assert_eq!(strs(&read_back(&ws, USERS).await, "user_id"), ["1", "2"]);
    }
    assert_eq!(stats, [(2, 3, 4), (2, 3, 4)]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A header written with spaces after its delimiters (`who, what`) or around a name maps the
/// name without them, and the name as written: both mappings read the rows of the plain file.
/// (The header check trimmed names while the reader did not, so neither spelling worked.)
#[tokio::test(flavor = "multi_thread")]
async fn names_in_a_spaced_header_map_with_or_without_their_spaces() {
    let dir = tmpdir("spaced");
    let rows = "1,a,1\n1,b,2\n2,a,3\n2,c,4\n";
    std::fs::write(
        dir.join("spaced.csv"),
        format!("who, what ,\"when\"\n{rows}"),
    )
    .unwrap();
    for (user, item, ts) in [("who", "what", "when"), (" who", " what ", "when")] {
        let ws = Workspace::open(dir.join(format!("ws-{}", item.len())).to_str().unwrap()).unwrap();
        let c = cfg(serde_json::json!({
            "source": {"format": "csv", "path": "spaced.csv",
                       "columns": {"user": user, "item": item, "timestamp": ts}},
            "split": {"ratios": [1.0, 0.0, 0.0]}
        }));
        let r = run_ingest(&ws, &c, &dir, false).await.unwrap();
        assert_eq!(
            (r.stats.users, r.stats.items, r.stats.rows["train"]),
            (2, 3, 4)
        );
        assert_eq!(
            strs(&read_back(&ws, ITEMS).await, "item_id"),
            ["a", "b", "c"]
        );
        assert_eq!(timestamps(&ws).await, [1, 2, 3, 4]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// An ingest that fails on its data (here a k-core that removes every row) leaves the
/// earlier, complete outputs vouched for by their manifest.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reingest_keeps_the_earlier_outputs() {
    let dir = tmpdir("reingest");
    std::fs::write(dir.join("log.csv"), CSV).unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    let base = serde_json::json!({
        "source": {"format": "csv", "path": "log.csv",
                   "columns": {"user": "user", "item": "item", "timestamp": "ts", "rating": "stars"}}
    });
    run_ingest(&ws, &cfg(base.clone()), &dir, false)
        .await
        .unwrap();
    let manifest = ws.get("data/_manifest.json").await.unwrap();
    let mut strict = base;
    strict["k_core"] = serde_json::json!(50);
    let e = run_ingest(&ws, &cfg(strict), &dir, false)
        .await
        .unwrap_err();
    assert!(e.is_input(), "{e}");
    assert_eq!(
        ws.get("data/_manifest.json").await.unwrap(),
        manifest,
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
