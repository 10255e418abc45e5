//! The ingest transforms, as Polars lazy queries: rating threshold, de-duplication, k-core,
//! natural/random noise, dense re-indexing, the split and the temporal weights.
//!
//! Input is a [`RawInteractions`] frame (see `source.rs` for its layout); output is the three
//! artifact frames. Per-user work is expressed with window expressions (`over(user)`), never a
//! Rust loop per user — with one exception, random noise injection, which must sample per user.
//!
//! Ids are factorised once, up front, into `u32` codes in ascending original-id order, and the
//! frame is sorted once by (user, time, source order). Every later step (dedup, k-core, split,
//! weights) works on those integer codes and keeps that order, so nothing re-sorts or hashes
//! strings again. After filtering, the codes are compacted to dense indices (a monotone map, so
//! the order survives) and the original ids are gathered back for the output.

use std::time::Instant;

use polars::prelude::*;
use rand::seq::index::sample;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::artifacts::SourceCounts;
use crate::config::{DataConfig, NoiseKind, SplitMethod};
use crate::error::{DataError, Result};
use crate::source::RawInteractions;

/// The frames the ingest stage writes, plus counts for `stats.json`.
#[derive(Debug)]
pub struct Prepared {
    /// `data/interactions.parquet` columns, sorted by (user_idx, time).
    pub interactions: DataFrame,
    /// `user_idx`, `user_id`.
    pub users: DataFrame,
    /// `item_idx`, `item_id`.
    pub items: DataFrame,
    /// Noise rows added to train/valid (0 without `data.noise`).
    pub noise_rows: u64,
    /// The source's size and what the filters removed.
    pub source: SourceCounts,
}

fn perr(ctx: &'static str) -> impl FnOnce(PolarsError) -> DataError {
    DataError::polars(ctx)
}

fn sort_opts(n: usize) -> SortMultipleOptions {
    SortMultipleOptions::default()
        .with_maintain_order(true)
        .with_nulls_last_multi(vec![false; n])
        .with_order_descending_multi(vec![false; n])
}

/// Sort keys: (user code, time, source order).
fn user_time_order(user: &str) -> [Expr; 3] {
    [col(user), col("ts"), col("order")]
}

/// Runs every configured transform.
pub fn prepare(raw: RawInteractions, cfg: &DataConfig) -> Result<Prepared> {
    let file = raw.source_name.clone();
    let predefined = raw.predefined;
    let t0 = Instant::now();
    let raw_max_ts = raw
        .df
        .column("ts")
        .and_then(|c| c.i64().map(|ca| ca.max()))
        .map_err(perr("reading times"))?;
    let user_ids = distinct_sorted(&raw.df, "user", "u")?;
    let item_ids = distinct_sorted(&raw.df, "item", "i")?;
    let mut source = SourceCounts {
        rows: raw.df.height() as u64,
        users: user_ids.height() as u64,
        items: item_ids.height() as u64,
        ..Default::default()
    };
    // Joins keep the left (source) order, so a stable sort on (user, time) also orders ties by
    // source row.
    let inner = || {
        let mut args = JoinArgs::new(JoinType::Inner);
        args.maintain_order = MaintainOrderJoin::Left;
        args
    };
    let mut keep = vec![
        col("u"),
        col("i"),
        col("ts"),
        col("rating"),
        col("order"),
        lit(false).alias("noise"),
    ];
    if predefined {
        keep.push(col("split"));
    }
    let mut lf = raw
        .df
        .lazy()
        .join(
            user_ids.clone().lazy(),
            [col("user")],
            [col("_key")],
            inner(),
        )
        .join(
            item_ids.clone().lazy(),
            [col("item")],
            [col("_key")],
            inner(),
        )
        .select(keep);

    // De-duplication first, then the rating threshold: a pair's latest row is the user's
    // current opinion, so a 4★ later re-rated 2★ is dropped, not kept with its old timestamp.
    lf = sort_by_user_time(lf, &raw_max_ts);
    if cfg.dedup {
        lf = dedup_latest(lf);
    }
    // Natural noise candidates are the interactions the rating threshold drops.
    let mut noise_candidates = None;
    let mut df = lf.collect().map_err(perr("filtering and de-duplicating"))?;
    source.dropped.duplicates = source.rows - df.height() as u64;
    if let Some(m) = cfg.min_rating {
        let rating = df.column("rating").map_err(perr("the rating threshold"))?;
        let high = rating
            .as_materialized_series()
            .gt_eq(m)
            .map_err(perr("the rating threshold"))?;
        if cfg
            .noise
            .as_ref()
            .is_some_and(|n| n.kind == NoiseKind::Natural)
        {
            let low = df.filter(&!&high).map_err(perr("the rating threshold"))?;
            noise_candidates = Some(low.lazy());
        }
        let before = df.height();
        df = df.filter(&high).map_err(perr("the rating threshold"))?;
        source.dropped.below_min_rating = (before - df.height()) as u64;
    }
    tracing::debug!(
        secs = t0.elapsed().as_secs_f64(),
        rows = df.height(),
        "ingest: ids, filter, sort, dedup"
    );
    if df.height() == 0 {
        return Err(DataError::bad_input(
            file,
            None,
            None,
            "no interaction is left after the rating threshold (data.min_rating)",
        ));
    }
    if let Some(k) = cfg.k_core {
        let t0 = Instant::now();
        let before = df.height();
        df = k_core(df, k, &file)?;
        source.dropped.k_core = (before - df.height()) as u64;
        tracing::debug!(
            secs = t0.elapsed().as_secs_f64(),
            rows = df.height(),
            "ingest: k-core"
        );
    }

    if let (Some(cands), Some(noise)) = (noise_candidates, &cfg.noise) {
        let extra = natural_noise(&df, cands, cfg.dedup, noise.effective_ratio(), noise.seed)?;
        source.dropped.kept_as_noise = extra.height() as u64;
        df = df
            .vstack(&extra)
            .map_err(perr("adding natural noise"))?
            .lazy()
            .sort_by_exprs(user_time_order("u"), sort_opts(3))
            .collect()
            .map_err(perr("sorting after natural noise"))?;
    }

    // Compact the surviving codes into dense indices (monotone: the order is kept).
    let t0 = Instant::now();
    let (user_idx, users) = compact(&df, "u", &user_ids, "user")?;
    let (item_idx, items) = compact(&df, "i", &item_ids, "item")?;
    // The frame is sorted by user: flag it, so Polars groups by slicing instead of hashing.
    let mut user_col = Column::new("user_idx".into(), user_idx);
    user_col.set_sorted_flag(polars::series::IsSorted::Ascending);
    df.with_column(user_col)
        .and_then(|d| d.with_column(Column::new("item_idx".into(), item_idx)))
        .map_err(perr("compacting ids"))?;
    // Natural noise is placed after the clean rows are split, so they (and the test set) are
    // split as they would be without it.
    let lf = df.lazy().drop(cols(["u", "i"]));
    let (clean, natural) = match &cfg.noise {
        Some(n) if n.kind == NoiseKind::Natural && !predefined => (
            lf.clone().filter(col("noise").not()),
            Some(lf.filter(col("noise"))),
        ),
        _ => (lf, None),
    };
    // Each row's position in its user's (time-ordered) history, and the history's length.
    let mut lf = clean
        .with_row_index("_row", None)
        .with_columns([
            (col("_row")
                - col("_row")
                    .min()
                    .over([col("user_idx")])
                    .map_err(perr("positions"))?)
            .cast(DataType::Int64)
            .alias("_pos"),
            len()
                .over([col("user_idx")])
                .map_err(perr("positions"))?
                .cast(DataType::Int64)
                .alias("_n"),
        ])
        .drop(cols(["_row"]));
    if !predefined {
        lf = assign_split(lf, cfg.split_method(), cfg.split.ratios)?;
    }
    if let Some(noise) = natural {
        lf = place_natural_noise(lf, noise, cfg.split_method())?;
    }
    let mut df = lf.collect().map_err(perr("splitting"))?;
    tracing::debug!(
        secs = t0.elapsed().as_secs_f64(),
        "ingest: dense ids, split"
    );

    if let Some(noise) = cfg.noise.as_ref().filter(|n| n.kind == NoiseKind::Random) {
        let extra = random_noise(&df, items.height(), noise.effective_ratio(), noise.seed)?;
        df = df
            .vstack(&extra)
            .map_err(perr("adding random noise"))?
            .lazy()
            .sort_by_exprs(
                [
                    col("user_idx"),
                    col("split").neq(lit("train")),
                    col("ts"),
                    col("order"),
                ],
                sort_opts(4),
            )
            .collect()
            .map_err(perr("sorting after random noise"))?;
    }

    let t0 = Instant::now();
    let df = add_weights(df.lazy(), cfg.temporal.as_ref().map(|t| (t.w_min, t.w_max)))?
        .collect()
        .map_err(perr("weighting"))?;
    let gather = |table: &DataFrame, idx: &str, id: &str| -> Result<Column> {
        let codes = df
            .column(idx)
            .and_then(|c| c.u32())
            .map_err(perr("gathering ids"))?;
        table
            .column(id)
            .and_then(|c| c.take(codes))
            .map_err(perr("gathering ids"))
    };
    let user_id = gather(&users, "user_idx", "user_id")?;
    let item_id = gather(&items, "item_idx", "item_id")?;
    let pick = |name: &str| {
        df.column(name)
            .cloned()
            .map_err(perr("assembling interactions"))
    };
    let noise_rows = pick("noise")?
        .bool()
        .map_err(perr("counting noise"))?
        .sum()
        .unwrap_or(0) as u64;
    let interactions = DataFrame::new(
        df.height(),
        vec![
            pick("user_idx")?,
            pick("item_idx")?,
            user_id,
            item_id,
            pick("ts")?.with_name("timestamp".into()),
            pick("split")?,
            pick("weight")?,
        ],
    )
    .map_err(perr("assembling interactions"))?;
    tracing::debug!(secs = t0.elapsed().as_secs_f64(), "ingest: weights, ids");
    Ok(Prepared {
        interactions,
        users,
        items,
        noise_rows,
        source,
    })
}

/// Stable sort by (user code `u`, time). When every time fits in 32 bits (seconds until 2106)
/// the two keys are packed into one `u64` (`u << 32 | ts`), which Polars sorts far faster than a
/// multi-column key; otherwise a two-column sort. Missing times sort first (as 0).
fn sort_by_user_time(lf: LazyFrame, max_ts: &Option<i64>) -> LazyFrame {
    if max_ts.is_none_or(|t| t < (1i64 << 32)) {
        let key = (col("u").cast(DataType::UInt64) * lit(1u64 << 32))
            + col("ts").fill_null(lit(0i64)).cast(DataType::UInt64);
        lf.with_column(key.alias("_key"))
            .sort(
                ["_key"],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .drop(cols(["_key"]))
    } else {
        lf.sort_by_exprs([col("u"), col("ts")], sort_opts(2))
    }
}

/// Keeps the last row of each (user, item) pair in the frame's (user, time) order — the latest
/// interaction. The pair is packed into one `u64` key and filtered with `is_last_distinct`
/// (one hash-set pass), which keeps the frame's order; `unique_stable` on the two columns was
/// 5× slower on 10 M rows (docs/benchmarks.md).
fn dedup_latest(lf: LazyFrame) -> LazyFrame {
    let pair = col("u").cast(DataType::UInt64) * lit(1u64 << 32) + col("i").cast(DataType::UInt64);
    lf.filter(pair.is_last_distinct())
}

/// Distinct values of `id`, ascending (numeric ids numerically), numbered `code` = 0, 1, …:
/// columns `_key`, `<code>`.
fn distinct_sorted(df: &DataFrame, id: &str, code: &str) -> Result<DataFrame> {
    df.clone()
        .lazy()
        .select([col(id).alias("_key")])
        .unique(None, UniqueKeepStrategy::Any)
        .sort(["_key"], SortMultipleOptions::default())
        .with_row_index(code, None)
        .collect()
        .map_err(perr("indexing ids"))
}

/// Maps the codes in column `code` of `df` to dense indices 0..n (in code order) and returns
/// them with the id table `<entity>_idx`, `<entity>_id` (string) of the surviving codes.
fn compact(
    df: &DataFrame,
    code: &str,
    ids: &DataFrame,
    entity: &str,
) -> Result<(Vec<u32>, DataFrame)> {
    let codes = df
        .column(code)
        .and_then(|c| c.u32())
        .map_err(perr("compacting ids"))?;
    let mut remap = vec![u32::MAX; ids.height()];
    for c in codes.iter().flatten() {
        remap[c as usize] = 0;
    }
    let mut keep = Vec::new();
    for (c, slot) in remap.iter_mut().enumerate() {
        if *slot == 0 {
            *slot = keep.len() as u32;
            keep.push(c as IdxSize);
        }
    }
    let dense: Vec<u32> = codes
        .iter()
        .map(|c| remap[c.unwrap_or(0) as usize])
        .collect();
    let n = keep.len();
    let keep = IdxCa::from_vec("keep".into(), keep);
    let key = ids
        .column("_key")
        .and_then(|c| c.take(&keep))
        .and_then(|c| c.cast(&DataType::String))
        .map_err(perr("compacting ids"))?;
    let table = DataFrame::new(
        n,
        vec![
            Column::new(
                format!("{entity}_idx").into(),
                (0..n as u32).collect::<Vec<u32>>(),
            ),
            key.with_name(format!("{entity}_id").into()),
        ],
    )
    .map_err(perr("compacting ids"))?;
    Ok((dense, table))
}

/// Iteratively drops users and items with fewer than `k` interactions (filters keep order).
fn k_core(mut df: DataFrame, k: u32, file: &str) -> Result<DataFrame> {
    loop {
        let before = df.height();
        let keep = len()
            .over([col("u")])
            .map_err(perr("k-core"))?
            .gt_eq(lit(k))
            .and(
                len()
                    .over([col("i")])
                    .map_err(perr("k-core"))?
                    .gt_eq(lit(k)),
            );
        df = df.lazy().filter(keep).collect().map_err(perr("k-core"))?;
        if df.height() == 0 {
            return Err(DataError::bad_input(
                file,
                None,
                None,
                format!("the {k}-core filter (data.k_core) removes every interaction"),
            ));
        }
        if df.height() == before {
            return Ok(df);
        }
    }
}

/// Adds `split` by position in time order: per user (`per_user_ratio`, on the frame's existing
/// (user, time) order) or overall (`global_time`). With shares r0, r1, r2 and n rows, the first
/// `floor(r0·n)+1` go to train and up to `floor((r0+r1)·n)+1` to valid (capped at n), the
/// products computed in f64 — the rule that reproduces the DiffRec paper's ML-1M train
/// counts. With `global_time` a time is never cut: its rows go where its first row goes.
fn assign_split(lf: LazyFrame, method: SplitMethod, r: [f64; 3]) -> Result<LazyFrame> {
    let (lf, pos, n) = match method {
        SplitMethod::Predefined => return Ok(lf),
        SplitMethod::PerUserRatio => (lf, col("_pos"), col("_n")),
        SplitMethod::GlobalTime => {
            // Rank every row in global time order, then return to (user, time) order. Rows of
            // one time share the rank of its first row, so a tie at a cut stays on its earlier
            // side: nothing in valid or test is as old as anything in train. (In time order a
            // time's rows are adjacent: its first row's rank, carried forward.)
            let first_of_time = when(col("ts").neq_missing(col("ts").shift(lit(1))))
                .then(col("_row"))
                .otherwise(lit(NULL).cast(IDX_DTYPE))
                .fill_null_with_strategy(FillNullStrategy::Forward(None));
            let lf = lf
                .with_row_index("_back", None)
                .sort_by_exprs([col("ts"), col("order")], sort_opts(2))
                .with_row_index("_row", None)
                .with_column(first_of_time.alias("_row"))
                .sort(["_back"], SortMultipleOptions::default())
                .drop(cols(["_back"]));
            (
                lf,
                col("_row").cast(DataType::Int64),
                len().cast(DataType::Int64),
            )
        }
    };
    let cut = |share: f64, all: bool| -> Expr {
        if all {
            return n.clone();
        }
        if share <= 0.0 {
            return lit(0i64);
        }
        // In f64 as Python computes it: 0.7 · 90 = 62.99999999999999 → 63 rows (the paper's
        // ML-1M split has 63, not 64).
        let c = (lit(share) * n.clone().cast(DataType::Float64)).cast(DataType::Int64) + lit(1i64);
        when(c.clone().gt(n.clone())).then(n.clone()).otherwise(c)
    };
    let c1 = cut(r[0], r[1] + r[2] <= 0.0);
    let c2 = cut(r[0] + r[1], r[2] <= 0.0);
    let split = when(pos.clone().lt(c1))
        .then(lit("train"))
        .when(pos.lt(c2))
        .then(lit("valid"))
        .otherwise(lit("test"))
        .alias("split");
    let lf = lf.with_column(split);
    Ok(match method {
        SplitMethod::GlobalTime => lf.drop(cols(["_row"])),
        _ => lf,
    })
}

/// Adds `weight`: train rows get `w_min + (w_max − w_min)·m/(M−1)` for the m-th of a user's M
/// train rows in time order (w_min when M = 1); other rows 1.0. Computed in f64, stored as f32.
/// Without `data.temporal` every weight is 1.0. ([`crate::config::TemporalConfig::weights`] is the same rule
/// for one history; a test checks they agree.)
fn add_weights(lf: LazyFrame, temporal: Option<(f64, f64)>) -> Result<LazyFrame> {
    let Some((w_min, w_max)) = temporal else {
        return Ok(lf.with_column(lit(1.0f64).cast(DataType::Float32).alias("weight")));
    };
    // Rows are in (user, time) order and each user's train rows come first (every split method
    // cuts a user's history in time order), so the m-th train row is at position m of its user
    // and M is the user's number of train rows.
    let m = (col("_wrow").cast(DataType::Int64)
        - col("_wrow")
            .min()
            .over([col("user_idx")])
            .map_err(perr("weights"))?
            .cast(DataType::Int64))
    .cast(DataType::Float64);
    let big_m = col("split")
        .eq(lit("train"))
        .cast(DataType::UInt32)
        .sum()
        .over([col("user_idx")])
        .map_err(perr("weights"))?
        .cast(DataType::Float64);
    let w = when(big_m.clone().gt(lit(1.0)))
        .then(lit(w_min) + lit(w_max - w_min) * m / (big_m - lit(1.0)))
        .otherwise(lit(w_min));
    let weight = when(col("split").eq(lit("train")))
        .then(w)
        .otherwise(lit(1.0f64));
    Ok(lf
        .with_row_index("_wrow", None)
        .with_column(weight.cast(DataType::Float32).alias("weight"))
        .drop(cols(["_wrow"])))
}

/// Adds the natural noise rows to the split clean rows, in train or valid, never test: a noise
/// row takes train when the nearest earlier clean row (in time; a clean row of the same time
/// counts as earlier; without times, in source order) — the user's with `per_user_ratio`,
/// anyone's with `global_time` — is in train or there is none, and valid otherwise (left out
/// when no clean row is in valid). Each user's train rows stay a prefix of their history, and
/// with `global_time` no train row is as old as a valid one. Rows come out in
/// (user, time, clean first, source) order.
fn place_natural_noise(
    clean: LazyFrame,
    noise: LazyFrame,
    method: SplitMethod,
) -> Result<LazyFrame> {
    let keep = || {
        [
            "user_idx", "item_idx", "ts", "rating", "order", "noise", "split",
        ]
        .map(col)
        .to_vec()
    };
    let noise = noise.with_column(lit(NULL).cast(DataType::String).alias("split"));
    let all = concat(
        [clean.select(keep()), noise.select(keep())],
        UnionArgs::default(),
    )
    .map_err(perr("adding natural noise"))?;
    let per_user = method == SplitMethod::PerUserRatio;
    // Clean rows before noise rows of the same time; without times (all null) the source
    // order is the time, so it alone decides.
    let later_if_noise = || col("noise").and(col("ts").is_not_null());
    let by_user = || [col("user_idx"), col("ts"), later_if_noise(), col("order")].to_vec();
    let order = if per_user {
        by_user()
    } else {
        vec![col("ts"), later_if_noise(), col("order")]
    };
    let n = order.len();
    let all = all.sort_by_exprs(order, sort_opts(n));
    let forward = |e: Expr| e.fill_null_with_strategy(FillNullStrategy::Forward(None));
    // The split of the nearest earlier clean row: null where there is none.
    let mut earlier = forward(col("split"));
    if per_user {
        let owner = when(col("split").is_not_null())
            .then(col("user_idx"))
            .otherwise(lit(NULL).cast(DataType::UInt32));
        earlier = when(forward(owner).eq(col("user_idx")))
            .then(earlier)
            .otherwise(lit(NULL).cast(DataType::String));
    }
    let placed = when(col("noise").not())
        .then(col("split"))
        .when(earlier.clone().is_null().or(earlier.eq(lit("train"))))
        .then(lit("train"))
        .otherwise(lit("valid"));
    // Without a clean valid row (a valid share of 0, or coarse times that left it empty),
    // noise would be the whole validation set, selecting the best epoch on false positives:
    // such rows are left out, as test's are.
    let clean_valid = col("split")
        .eq(lit("valid"))
        .and(col("noise").not())
        .cast(DataType::UInt32)
        .sum();
    let all = all.with_column(placed.alias("split")).filter(
        col("noise")
            .and(col("split").eq(lit("valid")))
            .not()
            .or(clean_valid.gt(lit(0u32))),
    );
    Ok(if per_user {
        all
    } else {
        all.sort_by_exprs(by_user(), sort_opts(4))
    })
}

/// A seeded share of the low-rated interactions of users and items that survived, not already
/// present as clean pairs, marked `noise = true`.
fn natural_noise(
    clean: &DataFrame,
    candidates: LazyFrame,
    dedup: bool,
    ratio: f64,
    seed: u64,
) -> Result<DataFrame> {
    let clean_lf = clean.clone().lazy();
    let users = clean_lf
        .clone()
        .select([col("u")])
        .unique(None, UniqueKeepStrategy::Any);
    let items = clean_lf
        .clone()
        .select([col("i")])
        .unique(None, UniqueKeepStrategy::Any);
    let pairs = clean_lf
        .select([col("u"), col("i"), lit(true).alias("_clean")])
        .unique(None, UniqueKeepStrategy::Any);
    let mut lf = candidates
        .join(
            users,
            [col("u")],
            [col("u")],
            JoinArgs::new(JoinType::Inner),
        )
        .join(
            items,
            [col("i")],
            [col("i")],
            JoinArgs::new(JoinType::Inner),
        )
        .join(
            pairs,
            [col("u"), col("i")],
            [col("u"), col("i")],
            JoinArgs::new(JoinType::Left),
        )
        .filter(col("_clean").is_null())
        .drop(cols(["_clean"]))
        .sort_by_exprs(user_time_order("u"), sort_opts(3));
    if dedup {
        lf = dedup_latest(lf);
    }
    let df = lf.collect().map_err(perr("selecting natural noise"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let keep: BooleanChunked = (0..df.height())
        .map(|_| Some(rng.random::<f64>() < ratio))
        .collect();
    let df = df.filter(&keep).map_err(perr("sampling natural noise"))?;
    let schema_order: Vec<Expr> = clean
        .get_column_names()
        .into_iter()
        .map(|c| col(c.clone()))
        .collect();
    df.lazy()
        .with_column(lit(true).alias("noise"))
        .select(schema_order)
        .collect()
        .map_err(perr("marking natural noise"))
}

/// Source-order values of injected rows start here (after every real row).
const NOISE_ORDER: i64 = 1 << 48;

/// For each user, `round(ratio·|train_u|)` random items the user never interacted with, added
/// to train at the time of a random one of the user's train rows.
fn random_noise(df: &DataFrame, n_items: usize, ratio: f64, seed: u64) -> Result<DataFrame> {
    let u = df
        .column("user_idx")
        .and_then(|c| c.u32())
        .map_err(perr("noise"))?;
    let i = df
        .column("item_idx")
        .and_then(|c| c.u32())
        .map_err(perr("noise"))?;
    let s = df
        .column("split")
        .and_then(|c| c.str())
        .map_err(perr("noise"))?;
    let ts = df
        .column("ts")
        .and_then(|c| c.i64())
        .map_err(perr("noise"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rows_ts, mut rows_uidx, mut rows_iidx) = (Vec::new(), Vec::new(), Vec::new());
    let n = df.height();
    let mut start = 0;
    let mut seen = vec![false; n_items];
    let mut marked: Vec<usize> = Vec::new();
    while start < n {
        let user = u.get(start).unwrap_or(0);
        let mut end = start;
        while end < n && u.get(end) == Some(user) {
            end += 1;
        }
        let train_rows: Vec<usize> = (start..end)
            .filter(|&r| s.get(r) == Some("train"))
            .collect();
        marked.clear();
        for r in start..end {
            let it = i.get(r).unwrap_or(0) as usize;
            if !seen[it] {
                seen[it] = true;
                marked.push(it);
            }
        }
        let unseen = n_items - marked.len();
        let want = ((ratio * train_rows.len() as f64).round() as usize).min(unseen);
        if want > 0 && !train_rows.is_empty() {
            // Rejection sampling is fast while the user has seen under half the catalogue;
            // otherwise sample among the unseen directly.
            let picks: Vec<usize> = if unseen * 2 >= n_items {
                let mut picks = Vec::with_capacity(want);
                while picks.len() < want {
                    let cand = rng.random_range(0..n_items);
                    if !seen[cand] {
                        seen[cand] = true;
                        marked.push(cand);
                        picks.push(cand);
                    }
                }
                picks
            } else {
                let pool: Vec<usize> = (0..n_items).filter(|&c| !seen[c]).collect();
                sample(&mut rng, pool.len(), want)
                    .into_iter()
                    .map(|k| pool[k])
                    .collect()
            };
            for cand in picks {
                rows_uidx.push(user);
                rows_iidx.push(cand as u32);
                rows_ts.push(ts.get(train_rows[rng.random_range(0..train_rows.len())]));
            }
        }
        for &it in &marked {
            seen[it] = false;
        }
        start = end;
    }
    let m = rows_uidx.len();
    let mut cols = Vec::new();
    for name in df.get_column_names() {
        let c = match name.as_str() {
            "ts" => Column::new("ts".into(), rows_ts.clone()),
            "rating" => Column::full_null("rating".into(), m, &DataType::Float64),
            "order" => Column::new(
                "order".into(),
                (0..m as i64).map(|k| NOISE_ORDER + k).collect::<Vec<_>>(),
            ),
            "noise" => Column::new("noise".into(), vec![true; m]),
            "split" => Column::new("split".into(), vec!["train"; m]),
            "user_idx" => Column::new("user_idx".into(), rows_uidx.clone()),
            "item_idx" => Column::new("item_idx".into(), rows_iidx.clone()),
            other => {
                let c = df.column(other).map_err(perr("noise"))?;
                Column::full_null(c.name().clone(), m, c.dtype())
            }
        };
        cols.push(c.with_name(name.clone()));
    }
    DataFrame::new(m, cols).map_err(perr("building random noise rows"))
}
