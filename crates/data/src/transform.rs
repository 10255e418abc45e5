//! The ingest transforms, as Polars lazy queries: rating threshold, de-duplication, k-core,
//! natural/random noise, dense re-indexing, the split and the temporal weights.
//!
//! Input is a [`RawInteractions`] frame (see `source.rs` for its layout); output is the three
//! artifact frames. Per-user work is expressed with window expressions (`over(user)`), never a
//! Rust loop per user — with one exception, random noise injection, which must sample per user.

use polars::prelude::*;
use rand::seq::index::sample;
use rand::{RngExt, SeedableRng, rngs::StdRng};

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
}

fn perr(ctx: &'static str) -> impl FnOnce(PolarsError) -> DataError {
    DataError::polars(ctx)
}

fn time_order() -> [Expr; 2] {
    [col("ts"), col("order")]
}

fn sort_opts(n: usize) -> SortMultipleOptions {
    SortMultipleOptions::default()
        .with_maintain_order(true)
        .with_nulls_last_multi(vec![false; n])
        .with_order_descending_multi(vec![false; n])
}

/// Runs every configured transform.
pub fn prepare(raw: RawInteractions, cfg: &DataConfig) -> Result<Prepared> {
    let file = raw
        .inputs
        .first()
        .map(|(f, _)| f.clone())
        .unwrap_or_default();
    let predefined = raw.predefined;
    let mut lf = raw.df.lazy().with_column(lit(false).alias("noise"));

    // Natural noise candidates are the interactions the rating threshold would drop.
    let mut noise_candidates = None;
    if let Some(m) = cfg.min_rating {
        if cfg
            .noise
            .as_ref()
            .is_some_and(|n| n.kind == NoiseKind::Natural)
        {
            noise_candidates = Some(lf.clone().filter(col("rating").lt(lit(m))));
        }
        lf = lf.filter(col("rating").gt_eq(lit(m)));
    }
    if cfg.dedup {
        lf = dedup_keep_latest(lf);
    }
    let mut df = lf.collect().map_err(perr("filtering and de-duplicating"))?;
    if df.height() == 0 {
        return Err(DataError::bad_input(
            file,
            None,
            None,
            "no interaction is left after the rating threshold (data.min_rating)",
        ));
    }
    if let Some(k) = cfg.k_core {
        df = k_core(df, k, &file)?;
    }

    let mut noise_rows = 0u64;
    if let (Some(cands), Some(noise)) = (noise_candidates, &cfg.noise) {
        let extra = natural_noise(&df, cands, cfg.dedup, noise.effective_ratio(), noise.seed)?;
        noise_rows = extra.height() as u64;
        df = df.vstack(&extra).map_err(perr("adding natural noise"))?;
    }

    // Dense indices, in ascending original-id order (numeric ids sort numerically).
    let users = index_frame(&df, "user", "user_idx", "user_id")?;
    let items = index_frame(&df, "item", "item_idx", "item_id")?;
    let mut lf = df
        .lazy()
        .join(
            users.clone().lazy(),
            [col("user")],
            [col("_key")],
            JoinArgs::new(JoinType::Inner),
        )
        .join(
            items.clone().lazy(),
            [col("item")],
            [col("_key")],
            JoinArgs::new(JoinType::Inner),
        );
    lf = lf.sort_by_exprs([col("user_idx"), col("ts"), col("order")], sort_opts(3));

    if !predefined {
        lf = assign_split(lf, cfg.split_method(), cfg.split.ratios)?;
    }
    // Natural noise never reaches test.
    lf = lf.filter(col("noise").not().or(col("split").neq(lit("test"))));
    let mut df = lf.collect().map_err(perr("splitting"))?;

    if let Some(noise) = cfg.noise.as_ref().filter(|n| n.kind == NoiseKind::Random) {
        let extra = random_noise(&df, items.height(), noise.effective_ratio(), noise.seed)?;
        noise_rows += extra.height() as u64;
        df = df
            .vstack(&extra)
            .map_err(perr("adding random noise"))?
            .lazy()
            .sort_by_exprs([col("user_idx"), col("ts"), col("order")], sort_opts(3))
            .collect()
            .map_err(perr("sorting after noise"))?;
    }

    let interactions = add_weights(df.lazy(), cfg.temporal.as_ref().map(|t| (t.w_min, t.w_max)))?
        .select([
            col("user_idx"),
            col("item_idx"),
            col("user").cast(DataType::String).alias("user_id"),
            col("item").cast(DataType::String).alias("item_id"),
            col("ts").alias("timestamp"),
            col("split"),
            col("weight"),
        ])
        .collect()
        .map_err(perr("weighting"))?;

    let finish = |f: DataFrame, idx: &str, id: &str| -> Result<DataFrame> {
        f.lazy()
            .select([col(idx), col("_key").cast(DataType::String).alias(id)])
            .collect()
            .map_err(perr("building the id tables"))
    };
    Ok(Prepared {
        interactions,
        users: finish(users, "user_idx", "user_id")?,
        items: finish(items, "item_idx", "item_id")?,
        noise_rows,
    })
}

/// Keeps the latest row of each (user, item) pair; ties in time keep the later source row.
fn dedup_keep_latest(lf: LazyFrame) -> LazyFrame {
    lf.sort_by_exprs(time_order(), sort_opts(2))
        .unique_stable(Some(cols(["user", "item"])), UniqueKeepStrategy::Last)
}

/// Iteratively drops users and items with fewer than `k` interactions.
fn k_core(mut df: DataFrame, k: u32, file: &str) -> Result<DataFrame> {
    loop {
        let before = df.height();
        let keep = len()
            .over([col("user")])
            .map_err(perr("k-core"))?
            .gt_eq(lit(k))
            .and(
                len()
                    .over([col("item")])
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

/// Sorted distinct ids with their dense index: columns `_key`, `<idx>`.
fn index_frame(df: &DataFrame, id: &str, idx: &str, _out: &str) -> Result<DataFrame> {
    df.clone()
        .lazy()
        .select([col(id).alias("_key")])
        .unique(None, UniqueKeepStrategy::Any)
        .sort(["_key"], SortMultipleOptions::default())
        .with_row_index(idx, None)
        .collect()
        .map_err(perr("indexing ids"))
}

/// Adds `split` by position in time order: per user (`per_user_ratio`) or overall
/// (`global_time`). With shares r0, r1, r2 and n rows, the first `floor(r0·n)+1` go to train and
/// up to `floor((r0+r1)·n)+1` to valid (capped at n) — the rule that reproduces the train counts
/// of the DiffRec paper's ML-1M split.
fn assign_split(lf: LazyFrame, method: SplitMethod, r: [f64; 3]) -> Result<LazyFrame> {
    let lf = match method {
        SplitMethod::PerUserRatio => lf,
        SplitMethod::GlobalTime => lf.sort_by_exprs(time_order(), sort_opts(2)),
        SplitMethod::Predefined => return Ok(lf),
    };
    let lf = lf.with_row_index("_row", None);
    let (pos, n) = match method {
        SplitMethod::PerUserRatio => (
            col("_row").cast(DataType::Int64)
                - col("_row")
                    .min()
                    .over([col("user_idx")])
                    .map_err(perr("split"))?
                    .cast(DataType::Int64),
            len()
                .over([col("user_idx")])
                .map_err(perr("split"))?
                .cast(DataType::Int64),
        ),
        _ => (
            col("_row").cast(DataType::Int64),
            len().cast(DataType::Int64),
        ),
    };
    let cut = |share: f64, all: bool| -> Expr {
        if all {
            return n.clone();
        }
        if share <= 0.0 {
            return lit(0i64);
        }
        let c = (lit(share) * n.clone().cast(DataType::Float64) + lit(1e-9)).cast(DataType::Int64)
            + lit(1i64);
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
    Ok(lf
        .with_column(split)
        .drop(cols(["_row"]))
        .sort_by_exprs([col("user_idx"), col("ts"), col("order")], sort_opts(3)))
}

/// Adds `weight`: train rows get `w_min + (w_max − w_min)·m/(M−1)` for the m-th of a user's M
/// train rows in time order (w_min when M = 1); other rows 1.0. Computed in f64, stored as f32.
/// Without `data.temporal` every weight is 1.0.
fn add_weights(lf: LazyFrame, temporal: Option<(f64, f64)>) -> Result<LazyFrame> {
    let Some((w_min, w_max)) = temporal else {
        return Ok(lf.with_column(lit(1.0f64).cast(DataType::Float32).alias("weight")));
    };
    // The frame is sorted by (user_idx, ts, order), so a running row index minus its
    // per-(user, split) minimum is the position in time order within that user's split.
    let part = [col("user_idx"), col("split")];
    let m = (col("_wrow").cast(DataType::Int64)
        - col("_wrow")
            .min()
            .over(part.clone())
            .map_err(perr("weights"))?
            .cast(DataType::Int64))
    .cast(DataType::Float64);
    let big_m = len()
        .over(part)
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
        .select([col("user")])
        .unique(None, UniqueKeepStrategy::Any);
    let items = clean_lf
        .clone()
        .select([col("item")])
        .unique(None, UniqueKeepStrategy::Any);
    let pairs = clean_lf
        .select([col("user"), col("item"), lit(true).alias("_clean")])
        .unique(None, UniqueKeepStrategy::Any);
    let mut lf = candidates
        .join(
            users,
            [col("user")],
            [col("user")],
            JoinArgs::new(JoinType::Inner),
        )
        .join(
            items,
            [col("item")],
            [col("item")],
            JoinArgs::new(JoinType::Inner),
        )
        .join(
            pairs,
            [col("user"), col("item")],
            [col("user"), col("item")],
            JoinArgs::new(JoinType::Left),
        )
        .filter(col("_clean").is_null())
        .drop(cols(["_clean"]));
    if dedup {
        lf = dedup_keep_latest(lf);
    }
    let df = lf
        .sort(["order"], SortMultipleOptions::default())
        .collect()
        .map_err(perr("selecting natural noise"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let keep: BooleanChunked = (0..df.height())
        .map(|_| Some(rng.random::<f64>() < ratio))
        .collect();
    let df = df.filter(&keep).map_err(perr("sampling natural noise"))?;
    let schema_order: Vec<PlSmallStr> = clean.get_column_names().into_iter().cloned().collect();
    df.lazy()
        .with_column(lit(true).alias("noise"))
        .select(schema_order.into_iter().map(|c| col(c)).collect::<Vec<_>>())
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
    let user_col = df.column("user").map_err(perr("noise"))?;
    let item_lookup = df.column("item").map_err(perr("noise"))?;
    // Original item id of each item_idx.
    let mut item_of_idx: Vec<usize> = vec![usize::MAX; n_items];
    for (row, idx) in i.iter().enumerate() {
        if let Some(idx) = idx {
            item_of_idx[idx as usize] = row;
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rows_user, mut rows_item, mut rows_ts, mut rows_uidx, mut rows_iidx) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
                rows_user.push(start);
                rows_item.push(item_of_idx[cand]);
                rows_ts.push(ts.get(train_rows[rng.random_range(0..train_rows.len())]));
            }
        }
        for &it in &marked {
            seen[it] = false;
        }
        start = end;
    }
    let m = rows_uidx.len();
    let take = |c: &Column, idx: &[usize]| -> Result<Column> {
        let ids: IdxCa = IdxCa::from_vec("idx".into(), idx.iter().map(|&r| r as IdxSize).collect());
        c.take(&ids).map_err(perr("noise"))
    };
    let mut cols = Vec::new();
    for name in df.get_column_names() {
        let c = match name.as_str() {
            "user" => take(user_col, &rows_user)?,
            "item" => take(item_lookup, &rows_item)?,
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
