//! The cluster stage: the ingest artifacts → item embeddings (LightGCN pre-training, or the
//! user's file) → k-means → `cluster/` artifacts → manifest. Up-to-date stages are skipped.
//! Everything is computed before the first output changes: a run that fails or is stopped
//! before then leaves the previous outputs and their manifest as they were (and its LightGCN
//! checkpoint to resume from); one stopped while it writes leaves no manifest, so the next run
//! redoes the stage.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use diffrec_data::artifacts::load_ids;
use diffrec_data::claim::Claim;
use diffrec_data::manifest::{
    Freshness, StageManifest, freshness, manifest_key, upstream_hashes, upstream_records,
};
use diffrec_data::metrics::{MetricsTable, median};
use diffrec_data::source::read_path;
use diffrec_data::workspace::sha256_hex;
use diffrec_data::{DataError, Workspace, load_splits};
use serde::{Deserialize, Serialize};

use crate::artifacts::{
    ITEM_CLUSTERS, ITEM_EMBEDDINGS, LIGHTGCN_METRICS, OWNER, STAGE_DIR, SUMMARY, USER_EMBEDDINGS,
    clusters_batch, clusters_schema, embeddings_batch, embeddings_schema,
};
use crate::checkpoint;
use crate::config::ClusterConfig;
use crate::error::{ClusterError, Result};
use crate::lightgcn::{Pretrained, Pretraining, Progress};
use crate::{embeddings, kmeans};

/// LightGCN's figures in `cluster/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LightGcnSummary {
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub params: usize,
    /// Valid metrics of the kept embeddings (train items masked).
    pub valid: BTreeMap<String, f64>,
    /// Test metrics of the kept embeddings (train and valid items masked).
    pub test: BTreeMap<String, f64>,
    pub train_seconds: f64,
    pub epoch_seconds_median: f64,
    pub eval_seconds_median: f64,
    /// What the embeddings were pre-trained from (LightGCN's settings, `cluster.seed`, the
    /// cut-offs, the ingest outputs, the diffrec version; the checkpoint's fingerprint): a later
    /// run of the stage with the same one reuses them and reruns k-means only. Absent in
    /// summaries written before 2026-12-02, which are not reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// `cluster/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Clusters produced (below `cluster.k` only if small clusters were merged; see `notes`).
    pub k: usize,
    pub sizes: Vec<usize>,
    /// Mean squared distance of an item to its centroid.
    pub inertia: f64,
    /// `"lightgcn"`, or the file `cluster.embeddings` named.
    pub embeddings: String,
    pub dim: usize,
    pub lightgcn: Option<LightGcnSummary>,
    /// What the k-means guards did (re-seeding, merging).
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// What one call did.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    pub skipped: bool,
    /// LightGCN's embeddings were those of the stage's previous run (same fingerprint): only
    /// k-means ran.
    pub pretraining_reused: bool,
    pub summary: ClusterSummary,
}

/// Runs the cluster stage (or skips it when up to date and `force` is false). `ks` are the
/// pipeline's `evaluate.ks` (LightGCN's metrics use them, plus 20); `base_dir` resolves a
/// relative `cluster.embeddings`.
pub async fn run_cluster(
    ws: &Workspace,
    cfg: &ClusterConfig,
    ks: &[usize],
    base_dir: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ClusterReport> {
    cfg.validate()?;
    let started = Instant::now();
    let started_at = Utc::now();
    let mut inputs = upstream_hashes(ws, diffrec_data::ingest::STAGE_DIR)
        .await?
        .ok_or_else(|| DataError::MissingArtifact {
            workspace: ws.url().to_owned(),
            key: manifest_key(diffrec_data::ingest::STAGE_DIR),
            hint: "run the ingest stage first".into(),
        })?;
    let upstream = upstream_records(ws, &[("ingest", diffrec_data::ingest::STAGE_DIR)]).await?;
    let user_file = match &cfg.embeddings {
        Some(path) => {
            let (name, bytes) = read_path(path, base_dir, ws).await?;
            inputs.insert(format!("embeddings/{name}"), sha256_hex(&bytes));
            Some((name, bytes))
        }
        None => None,
    };
    // `cluster.k` 1 without given embeddings: every item in the one cluster, no embeddings to
    // compute (LightGCN's pre-training would take minutes for nothing). Its config is kept as
    // it was when this stage still pre-trained, so such workspaces stay up to date.
    let one_cluster = cfg.k == 1 && cfg.embeddings.is_none();
    // Only what shapes this stage's outputs: with given embeddings, LightGCN's settings and the
    // evaluation cut-offs do not matter.
    let config = if cfg.embeddings.is_some() {
        let mut c = serde_json::to_value(cfg).unwrap_or_default();
        if let Some(m) = c.as_object_mut() {
            m.remove("lightgcn");
        }
        serde_json::json!({"cluster": c})
    } else {
        serde_json::json!({"cluster": cfg, "ks": ks})
    };
    if !force {
        match freshness(ws, STAGE_DIR, &config, &inputs).await? {
            Freshness::UpToDate => {
                if let Some(summary) = ws.get_json::<ClusterSummary>(SUMMARY).await? {
                    return Ok(ClusterReport {
                        skipped: true,
                        pretraining_reused: false,
                        summary,
                    });
                }
            }
            Freshness::Stale(why) => tracing::info!("cluster: running ({why})"),
        }
    }
    let item_ids = load_ids(ws, "item").await?;
    let n_items = item_ids.len();
    // Fail before minutes of pre-training, not after, and before the earlier outputs stop
    // being vouched for.
    crate::kmeans::check_k(cfg.k, n_items)?;
    let given = match user_file {
        Some((name, bytes)) => Some((embeddings::parse(&name, bytes, &item_ids)?, name)),
        None => None,
    };
    // The last process to start writing the stage owns it; an earlier one stops at its next
    // write (a LightGCN checkpoint, an output), before the later one's first output.
    let claim = Claim::take(ws, OWNER).await?;
    let fingerprint = checkpoint::fingerprint(&cfg.lightgcn, cfg.seed, ks, &inputs);
    // Read before the manifest that vouches for them goes.
    let earlier = if given.is_none() && !one_cluster && !force {
        earlier_pretraining(ws, &fingerprint, &item_ids).await
    } else {
        None
    };
    let pretraining_reused = earlier.is_some();
    let cleaned = ws.clean_temporaries(STAGE_DIR).await?;
    if cleaned > 0 {
        tracing::warn!("cluster: removed {cleaned} temporary file(s) left by an interrupted run");
    }

    // Everything is computed before the first output changes (the writes below): a stage that
    // fails or is stopped while it pre-trains or clusters leaves the previous outputs complete
    // and vouched for by their manifest (and their pre-training reusable), not a workspace
    // without clusters.
    let mut writes = Writes::default();
    let mut outputs = BTreeMap::new();
    if one_cluster {
        tracing::info!("cluster: cluster.k = 1, every item in one cluster; no pre-training");
        for key in [USER_EMBEDDINGS, ITEM_EMBEDDINGS, LIGHTGCN_METRICS] {
            writes.delete(key);
        }
    }
    let (item_emb, dim, source, lightgcn) = match (given, earlier) {
        _ if one_cluster => (Vec::new(), 0, "none (cluster.k = 1)".to_owned(), None),
        (Some((e, name)), _) => {
            tracing::info!(file = %name, rows = e.rows, dim = e.dim, "cluster: using the given item embeddings");
            // Outputs of an earlier pre-training run no longer belong to this stage.
            for key in [USER_EMBEDDINGS, LIGHTGCN_METRICS] {
                writes.delete(key);
            }
            (e.values, e.dim, name, None)
        }
        (None, Some(e)) => {
            tracing::info!(
                best_epoch = e.summary.best_epoch,
                "cluster: LightGCN was pre-trained for these settings and data by the stage's \
                 previous run; its embeddings are reused and only k-means runs (--force \
                 pre-trains again)"
            );
            outputs.insert(USER_EMBEDDINGS.to_owned(), e.user_rows);
            outputs.insert(LIGHTGCN_METRICS.to_owned(), e.metrics_rows);
            (e.items, e.dim, "lightgcn".to_owned(), Some(e.summary))
        }
        (None, None) => {
            // The interactions are read only when LightGCN needs them.
            let data = load_splits(ws).await?;
            let user_ids = load_ids(ws, "user").await?;
            let p = pretrain_resumably(ws, &claim, &data, cfg, ks, &fingerprint, force, progress)
                .await?;
            let batch = embeddings_batch("user", &user_ids, &p.users, p.dim)?;
            writes.parquet(USER_EMBEDDINGS, embeddings_schema("user", p.dim), batch);
            outputs.insert(USER_EMBEDDINGS.to_owned(), data.n_users as u64);
            let table = MetricsTable::from_evaluations(&p.evaluations);
            let rows = table.len() as u64;
            let batch = table.into_batch().map_err(|e| ClusterError::Write {
                key: LIGHTGCN_METRICS.into(),
                message: e.to_string(),
            })?;
            writes.parquet(LIGHTGCN_METRICS, MetricsTable::schema(), batch);
            outputs.insert(LIGHTGCN_METRICS.to_owned(), rows);
            let best = p.best().cloned();
            let summary = LightGcnSummary {
                best_epoch: p.best_epoch,
                epochs_run: p.epochs_run,
                params: (data.n_users + data.n_items) * p.dim,
                valid: best.as_ref().map(|e| e.valid.clone()).unwrap_or_default(),
                test: best.as_ref().map(|e| e.test.clone()).unwrap_or_default(),
                train_seconds: p.train_seconds,
                epoch_seconds_median: median(
                    &p.evaluations
                        .iter()
                        .map(|e| e.epoch_seconds)
                        .collect::<Vec<_>>(),
                ),
                eval_seconds_median: median(
                    &p.evaluations
                        .iter()
                        .map(|e| e.eval_seconds)
                        .collect::<Vec<_>>(),
                ),
                fingerprint: Some(fingerprint),
            };
            (p.items, p.dim, "lightgcn".to_owned(), Some(summary))
        }
    };
    let c = if one_cluster {
        kmeans::Clustering {
            k: 1,
            labels: vec![0; n_items],
            distances: vec![0.0; n_items],
            sizes: vec![n_items],
            inertia: 0.0,
            notes: Vec::new(),
        }
    } else {
        // Reused embeddings are the file already there, checked against its recorded hash.
        if !pretraining_reused {
            let batch = embeddings_batch("item", &item_ids, &item_emb, dim)?;
            writes.parquet(ITEM_EMBEDDINGS, embeddings_schema("item", dim), batch);
        }
        outputs.insert(ITEM_EMBEDDINGS.to_owned(), n_items as u64);
        tracing::info!(k = cfg.k, n_runs = cfg.n_runs, "cluster: k-means");
        progress(Progress::Clustering {
            k: cfg.k,
            n_runs: cfg.n_runs,
            items: n_items,
        });
        kmeans::cluster(&item_emb, dim, cfg.k, cfg.n_runs, cfg.seed)?
    };
    let batch = clusters_batch(&item_ids, &c.labels, &c.distances)?;
    writes.parquet(ITEM_CLUSTERS, clusters_schema(), batch);
    outputs.insert(ITEM_CLUSTERS.to_owned(), n_items as u64);

    // The manifest goes first: a stop between two writes leaves no manifest vouching for a mix
    // of old and new outputs.
    claim.ensure(ws, "cluster").await?;
    ws.delete(&manifest_key(STAGE_DIR)).await?;
    for (key, write) in writes.0 {
        claim.ensure(ws, "cluster").await?;
        match write {
            Some((schema, batch)) => {
                ws.write_parquet(key, schema, [batch]).await?;
            }
            None => ws.delete(key).await?,
        }
    }

    let summary = ClusterSummary {
        k: c.k,
        sizes: c.sizes,
        inertia: c.inertia,
        embeddings: source,
        dim,
        lightgcn,
        notes: c.notes,
        seconds: started.elapsed().as_secs_f64(),
    };
    claim.ensure(ws, "cluster").await?;
    ws.put_json(SUMMARY, &summary).await?;
    let mut infos = BTreeMap::new();
    for (key, rows) in outputs {
        infos.insert(key.clone(), ws.output_info(&key, Some(rows)).await?);
    }
    infos.insert(SUMMARY.to_owned(), ws.output_info(SUMMARY, None).await?);
    let manifest = StageManifest {
        stage: "cluster".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config,
        inputs,
        outputs: infos,
        started_at,
        finished_at: Utc::now(),
        build: diffrec_data::manifest::build(),
        upstream,
        rules: 0,
    };
    claim.ensure(ws, "cluster").await?;
    ws.put_json(&manifest_key(STAGE_DIR), &manifest).await?;
    // Only now: a crash before the manifest still resumes instead of pre-training again.
    ws.delete(checkpoint::KEY).await?;
    Ok(ClusterReport {
        skipped: false,
        pretraining_reused,
        summary,
    })
}

/// The stage's output changes in the order they are made: a Parquet file written
/// (`Some`), or an earlier run's output that no longer belongs removed (`None`).
#[derive(Default)]
struct Writes(
    Vec<(
        &'static str,
        Option<(arrow_schema::SchemaRef, arrow_array::RecordBatch)>,
    )>,
);

impl Writes {
    fn parquet(
        &mut self,
        key: &'static str,
        schema: arrow_schema::SchemaRef,
        batch: arrow_array::RecordBatch,
    ) {
        self.0.push((key, Some((schema, batch))));
    }

    fn delete(&mut self, key: &'static str) {
        self.0.push((key, None));
    }
}

/// Pre-trains LightGCN, resuming from `cluster/lightgcn.ckpt` when it holds a run of the same
/// fingerprint (settings, seed, cut-offs, ingest outputs) and writing it after every evaluation,
/// and when pre-training ends, so a killed stage loses at most `cluster.lightgcn.eval_every`
/// epochs. A checkpoint of another fingerprint, or one that cannot be read, is started over
/// (with a log line saying why); under `force` it is deleted first.
#[allow(clippy::too_many_arguments)]
async fn pretrain_resumably(
    ws: &Workspace,
    claim: &Claim,
    data: &diffrec_data::SplitMatrices,
    cfg: &ClusterConfig,
    ks: &[usize],
    fingerprint: &str,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Pretrained> {
    let mut run = Pretraining::new(data, &cfg.lightgcn, cfg.seed, ks);
    if force {
        // Not merely ignored: a forced run killed before its first checkpoint must not leave
        // the old one to a later resume.
        ws.delete(checkpoint::KEY).await?;
    } else if let Some(bytes) = ws.get_if_present(checkpoint::KEY).await? {
        let restored = match checkpoint::decode(&bytes) {
            Ok((fp, _)) if fp != fingerprint => Err(format!(
                "{}: written for other settings, data or diffrec version",
                checkpoint::KEY
            )),
            Ok((_, snap)) => run.restore(snap).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match restored {
            Ok(()) => progress(Progress::Resumed {
                epoch: run.epochs_run(),
            }),
            Err(why) => {
                tracing::warn!("cluster: not resuming ({why}); pre-training from the start")
            }
        }
    }
    loop {
        let more = run.advance(progress);
        // Also after the last stretch: a kill during k-means or the writes then repeats none
        // of the epochs.
        let bytes = checkpoint::encode(fingerprint, &run.snapshot());
        claim.ensure(ws, "cluster").await?;
        ws.put_atomic(checkpoint::KEY, bytes).await?;
        if !more {
            break;
        }
    }
    run.finish()
}

/// LightGCN's outputs from the stage's previous run, for reuse.
struct EarlierPretraining {
    items: Vec<f32>,
    dim: usize,
    summary: LightGcnSummary,
    user_rows: u64,
    metrics_rows: u64,
}

/// The previous run's pre-training when it had `fingerprint` and its outputs are still the
/// ones its manifest recorded (summary, item and user embeddings, LightGCN's metrics, each
/// checked by SHA-256). Anything else, or anything unreadable, is `None`: pre-train again.
async fn earlier_pretraining(
    ws: &Workspace,
    fingerprint: &str,
    item_ids: &[String],
) -> Option<EarlierPretraining> {
    let manifest = ws
        .get_json::<StageManifest>(&manifest_key(STAGE_DIR))
        .await
        .ok()??;
    let summary = ws.get_json::<ClusterSummary>(SUMMARY).await.ok()??;
    let summary = summary
        .lightgcn
        .filter(|l| l.fingerprint.as_deref() == Some(fingerprint))?;
    let mut item_bytes = None;
    for key in [SUMMARY, ITEM_EMBEDDINGS, USER_EMBEDDINGS, LIGHTGCN_METRICS] {
        let recorded = manifest.outputs.get(key)?;
        let bytes = ws.get_if_present(key).await.ok()??;
        if sha256_hex(&bytes) != recorded.sha256 {
            tracing::info!(
                "cluster: {key} changed since the stage's previous run; pre-training again"
            );
            return None;
        }
        if key == ITEM_EMBEDDINGS {
            item_bytes = Some(bytes);
        }
    }
    let e = embeddings::parse(ITEM_EMBEDDINGS, item_bytes?, item_ids).ok()?;
    Some(EarlierPretraining {
        items: e.values,
        dim: e.dim,
        summary,
        user_rows: manifest.outputs.get(USER_EMBEDDINGS)?.rows?,
        metrics_rows: manifest.outputs.get(LIGHTGCN_METRICS)?.rows?,
    })
}
