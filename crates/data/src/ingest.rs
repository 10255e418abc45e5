//! The ingest stage: source → checked frame → transforms → `data/` artifacts → manifest.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::Utc;
use polars::prelude::DataFrame;

use crate::arrow_bridge::dataframe_to_batch;
use crate::artifacts::{
    DatasetStats, INTERACTIONS, ITEMS, SOURCE, STATS, SourceCounts, USERS, ids_schema,
    interactions_schema,
};
use crate::claim::Claim;
use crate::config::{DataConfig, SplitMethod};
use crate::error::{DataError, Result};
use crate::manifest::{
    Freshness, INGEST_RULES, OutputInfo, StageManifest, freshness_resolving, manifest_key,
};
use crate::source::load_source;
use crate::transform::{Prepared, prepare};
use crate::workspace::Workspace;

/// The directory (and manifest location) of the ingest stage.
pub const STAGE_DIR: &str = "data";

/// What one ingest call did.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// True when the manifest matched and nothing was rewritten.
    pub skipped: bool,
    pub stats: DatasetStats,
    /// `data/source.json`: what the source held and what the filters dropped (None when a
    /// workspace ingested before it was written is up to date).
    pub source: Option<SourceCounts>,
    pub manifest: StageManifest,
}

/// Runs the ingest stage (or skips it when up to date and `force` is false). `base_dir`
/// resolves a relative `data.source.path`.
pub async fn run_ingest(
    ws: &Workspace,
    cfg: &DataConfig,
    base_dir: &Path,
    force: bool,
) -> Result<IngestReport> {
    cfg.validate()?;
    // Recorded with its defaults written out, as a pipeline shows them.
    let cfg = &cfg.clone().resolved();
    let started_at = Utc::now();
    tracing::info!(source = %cfg.source.path, format = ?cfg.source.format, "ingest: reading the source");
    let raw = load_source(cfg, base_dir, ws).await?;
    let inputs: BTreeMap<String, String> = raw.inputs.iter().cloned().collect();
    let config = serde_json::to_value(cfg).map_err(|source| DataError::Json {
        key: "data".into(),
        source,
    })?;
    if !force {
        match freshness_resolving(
            ws,
            STAGE_DIR,
            &config,
            &inputs,
            INGEST_RULES,
            DataConfig::resolved_value,
        )
        .await?
        {
            Freshness::UpToDate => {
                let manifest = ws
                    .get_json::<StageManifest>(&manifest_key(STAGE_DIR))
                    .await?
                    .expect("freshness saw the manifest");
                let stats = ws
                    .get_json::<DatasetStats>(STATS)
                    .await?
                    .expect("outputs exist");
                return Ok(IngestReport {
                    skipped: true,
                    stats,
                    source: ws.get_json(SOURCE).await?,
                    manifest,
                });
            }
            Freshness::Stale(why) => tracing::info!("ingest: running ({why})"),
        }
    }
    // The last process to start writing the stage owns it; an earlier one stops (below).
    let claim = Claim::take(ws, OWNER).await?;
    tracing::info!(rows = raw.df.height(), "ingest: transforming");
    let weighted = cfg.temporal.is_some();
    // Transformed before anything in the workspace changes: data that cannot be ingested
    // (e.g. a k-core that removes every row) leaves the earlier outputs vouched for.
    let prepared = prepare(raw, cfg).and_then(|prepared| {
        let stats = compute_stats(
            &prepared.interactions,
            prepared.users.height(),
            prepared.items.height(),
            prepared.noise_rows,
            weighted,
        )?;
        Ok((prepared, stats))
    });
    let (prepared, stats) = match prepared {
        Ok(done) => done,
        Err(e) => {
            // Nothing was written: an ingest still writing goes on.
            claim.give_back(ws).await;
            return Err(e);
        }
    };
    if cfg.split_method() == SplitMethod::GlobalTime {
        for (split, share) in [
            ("valid", cfg.split.ratios[1]),
            ("test", cfg.split.ratios[2]),
        ] {
            if share > 0.0 && stats.rows[split] == 0 {
                tracing::warn!(
                    "ingest: the {split} split is empty: with `global_time` the rows of a \
                     cut's timestamp all stay on its earlier side, and here that takes the \
                     {split} share whole (timestamps too coarse, or the share too small)"
                );
            }
        }
    }
    let outputs = write_outputs(ws, &claim, &prepared, &stats).await?;
    let manifest = StageManifest {
        stage: "ingest".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config,
        inputs,
        outputs,
        started_at,
        finished_at: Utc::now(),
        build: crate::manifest::build(),
        upstream: BTreeMap::new(),
        rules: INGEST_RULES,
    };
    claim.ensure(ws, "ingest").await?;
    ws.put_json(&manifest_key(STAGE_DIR), &manifest).await?;
    Ok(IngestReport {
        skipped: false,
        stats,
        source: Some(prepared.source),
        manifest,
    })
}

/// Who writes the stage's outputs ([`Claim`]).
pub const OWNER: &str = "data/_owner";

/// Writes the stage's outputs, each only while this process holds `claim`: the manifest goes
/// first (the old outputs are no longer vouched for), then users, items, interactions, stats.
/// Returns what the manifest records of them.
async fn write_outputs(
    ws: &Workspace,
    claim: &Claim,
    prepared: &Prepared,
    stats: &DatasetStats,
) -> Result<BTreeMap<String, OutputInfo>> {
    claim.ensure(ws, "ingest").await?;
    ws.delete(&manifest_key(STAGE_DIR)).await?;
    let cleaned = ws.clean_temporaries(STAGE_DIR).await?;
    if cleaned > 0 {
        tracing::warn!("ingest: removed {cleaned} temporary file(s) left by an interrupted run");
    }

    tracing::info!(
        rows = prepared.interactions.height(),
        "ingest: writing artifacts"
    );
    let mut outputs = BTreeMap::new();
    for (key, df, schema) in [
        (USERS, &prepared.users, ids_schema("user")),
        (ITEMS, &prepared.items, ids_schema("item")),
        (INTERACTIONS, &prepared.interactions, interactions_schema()),
    ] {
        claim.ensure(ws, "ingest").await?;
        let rows = write_frame(ws, key, df, schema).await?;
        outputs.insert(key.to_owned(), ws.output_info(key, Some(rows)).await?);
    }
    // Each written from its own type, its keys in field order: `stats.json` byte for byte as
    // before (later stages hash it), not sorted as a `serde_json::Value` would write it.
    claim.ensure(ws, "ingest").await?;
    ws.put_json(STATS, stats).await?;
    outputs.insert(STATS.to_owned(), ws.output_info(STATS, None).await?);
    claim.ensure(ws, "ingest").await?;
    ws.put_json(SOURCE, &prepared.source).await?;
    outputs.insert(SOURCE.to_owned(), ws.output_info(SOURCE, None).await?);
    Ok(outputs)
}

/// Rows per batch when writing (bounds the writer's memory).
const BATCH_ROWS: usize = 1 << 20;

async fn write_frame(
    ws: &Workspace,
    key: &str,
    df: &DataFrame,
    schema: arrow_schema::SchemaRef,
) -> Result<u64> {
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < df.height() || (offset == 0 && df.height() == 0) {
        let len = BATCH_ROWS.min(df.height() - offset);
        batches.push(dataframe_to_batch(&df.slice(offset as i64, len), &schema)?);
        offset += len.max(1);
    }
    ws.write_parquet(key, schema, batches).await
}

fn compute_stats(
    df: &DataFrame,
    users: usize,
    items: usize,
    noise_rows: u64,
    weighted: bool,
) -> Result<DatasetStats> {
    let split = df
        .column("split")
        .and_then(|c| c.str())
        .map_err(DataError::polars("counting splits"))?;
    let mut rows: BTreeMap<String, u64> = ["train", "valid", "test"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for s in split.iter().flatten() {
        *rows.entry(s.to_owned()).or_default() += 1;
    }
    let cells = (users as f64 * items as f64).max(1.0);
    Ok(DatasetStats {
        users: users as u64,
        items: items as u64,
        density: df.height() as f64 / cells,
        train_density: rows["train"] as f64 / cells,
        rows,
        noise_rows,
        weighted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_source;

    /// A process whose claim a later one took writes nothing more: not the manifest's removal,
    /// not one output. The later one then writes all of them.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_that_lost_the_claim_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("diffrec-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("log.csv"),
            "user_id,item_id,timestamp\na,x,1\na,y,2\nb,x,3\n",
        )
        .unwrap();
        let cfg: DataConfig = serde_json::from_value(serde_json::json!({
            "source": {"format": "csv", "path": "log.csv"},
            "split": {"ratios": [1.0, 0.0, 0.0]}
        }))
        .unwrap();
        let ws = Workspace::open("memory://claim-ingest").unwrap();
        ws.put_json(
            &manifest_key(STAGE_DIR),
            &serde_json::json!({"earlier": true}),
        )
        .await
        .unwrap();
        let prepared = prepare(load_source(&cfg, &dir, &ws).await.unwrap(), &cfg).unwrap();
        let stats = compute_stats(&prepared.interactions, 2, 2, 0, false).unwrap();

        let first = Claim::take(&ws, OWNER).await.unwrap();
        let later = Claim::take(&ws, OWNER).await.unwrap();
        let e = write_outputs(&ws, &first, &prepared, &stats)
            .await
            .unwrap_err();
        assert!(matches!(e, DataError::Concurrent { .. }), "{e}");
        assert!(e.to_string().contains("data/_owner"), "{e}");
        let mut left = ws.list(STAGE_DIR).await.unwrap();
        left.sort();
        assert_eq!(left, ["data/_manifest.json", "data/_owner"]);

        let outputs = write_outputs(&ws, &later, &prepared, &stats).await.unwrap();
        assert_eq!(
            outputs.keys().collect::<Vec<_>>(),
            [INTERACTIONS, ITEMS, SOURCE, STATS, USERS]
        );
        assert!(!ws.exists(&manifest_key(STAGE_DIR)).await.unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
