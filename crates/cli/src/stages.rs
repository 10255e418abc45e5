//! Running stages in order, skipping up-to-date ones, with a spinner per stage.

use std::time::Instant;

use anyhow::{Context, Result};
use diffrec_data::running::Heartbeat;
use diffrec_data::{Workspace, run_ingest};
use diffrec_trainer::TrainConfig;

use crate::pipeline::Loaded;
use crate::progress::Spinner;
use crate::stdout::status;

/// The stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Stage {
    /// Raw log → data/interactions.parquet, users, items, stats.
    Ingest,
    /// LightGCN pre-training + k-means → cluster/ (L-DiffRec, LT-DiffRec only).
    Cluster,
    /// Training → runs/<name>/checkpoints, metrics.
    Train,
    /// Test metrics of the best checkpoint → runs/<name>/summary.json.
    Evaluate,
    /// Top-K per user → runs/<name>/recommendations.parquet.
    Recommend,
}

impl Stage {
    /// Its name as the command line and the log lines write it (`ingest`, …).
    pub fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

pub const ALL: [Stage; 5] = [
    Stage::Ingest,
    Stage::Cluster,
    Stage::Train,
    Stage::Evaluate,
    Stage::Recommend,
];

/// Runs `stages` in order.
pub async fn run_stages(loaded: &Loaded, stages: &[Stage], force: bool) -> Result<()> {
    // Before opening: a node other than node 0 may wait there for node 0's workspace.
    if stages.contains(&Stage::Train) {
        loaded.check_can_train()?;
    }
    // Only ingest starts a workspace; every later stage reads one, so a mistyped path is an
    // error rather than a new empty directory.
    let ws = if stages.first() == Some(&Stage::Ingest) {
        Workspace::open(&loaded.workspace)?
    } else {
        open_existing(loaded, stages.contains(&Stage::Train)).await?
    };
    ws.check_reachable().await?;
    if loaded.workspace.starts_with("memory://") {
        tracing::warn!(
            "{} is held in this process's memory only: nothing the stages write is kept after \
             it ends (a directory or s3:// keeps a workspace)",
            loaded.workspace
        );
    }
    tracing::info!(workspace = %ws.url(), pipeline = %loaded.pipeline.name, "opened workspace");
    let ran = run_stages_in(&ws, loaded, stages, force).await;
    if ran.is_err() {
        ws.remove_if_unused();
    }
    ran
}

/// Runs `stages` in order in the open workspace `ws` (a `memory://` one lives in the value).
/// The caller has checked that the binary can train (`Loaded::check_can_train`) where
/// `stages` train.
pub async fn run_stages_in(
    ws: &Workspace,
    loaded: &Loaded,
    stages: &[Stage],
    force: bool,
) -> Result<()> {
    for &stage in stages {
        if stage == Stage::Cluster && !loaded.pipeline.model.variant.is_latent() {
            status!(
                "cluster: not needed for {}, skipped",
                loaded.pipeline.model.variant.name()
            );
            continue;
        }
        // A training that evaluates nothing (for timing it alone) writes no best checkpoint:
        // the stages after it, run with it, have nothing to score. Run alone, they say so.
        let after_train = matches!(stage, Stage::Evaluate | Stage::Recommend);
        if after_train && stages.contains(&Stage::Train) && !loaded.pipeline.train.evaluates() {
            status!(
                "{}: skipped: train.eval_every ({}) is more than train.epochs ({}), so training \
                 evaluated nothing and wrote no best checkpoint",
                if stage == Stage::Evaluate {
                    "evaluate"
                } else {
                    "recommend"
                },
                loaded.pipeline.train.eval_every,
                loaded.pipeline.train.epochs
            );
            continue;
        }
        let started = Instant::now();
        let beat = start_heartbeat(ws, loaded, stage).await;
        let ran = run_stage(ws, loaded, stage, force).await;
        if let Some(beat) = beat {
            beat.stop(ws).await;
        }
        let p = &loaded.pipeline;
        let upstream = crate::busy::upstream_of(stage, &p.name, p.model.variant.is_latent());
        let ran = match ran {
            Err(e) => Err(crate::busy::explain(ws, &upstream, e).await),
            ok => ok,
        };
        // On stderr with a time stamp, where a scheduler keeps it: how long each stage took
        // (whether it ran or found its outputs up to date is on stdout).
        let name = stage.name();
        let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        match &ran {
            Ok(()) => tracing::info!(seconds, "{name}: stage ended after {seconds:.1} s"),
            Err(_) => tracing::info!(seconds, "{name}: stage failed after {seconds:.1} s"),
        }
        // Right after this process's train stage, a run trained on other data means another
        // process ingested meanwhile: running again trains it anew (exit 1, not 2).
        if let Err(e) = &ran
            && after_train
            && stages.contains(&Stage::Train)
            && let Some(other) = e.downcast_ref::<crate::usage::TrainedOnOtherData>()
        {
            anyhow::bail!(
                "{other}. The data was ingested again while this run trained (another process): \
                 running `diffrec run` again trains it anew on the new data"
            );
        }
        ran?;
    }
    Ok(())
}

/// The heartbeat that tells other processes `stage` is running here (`diffrec_data::running`),
/// in the folder it writes: ingest's, cluster's, and the run's for training (node 0's, which
/// writes the run). Evaluate and recommend write nothing another stage reads. `None` where
/// it cannot be written (a read-only workspace, whose up-to-date stages still run).
async fn start_heartbeat(ws: &Workspace, loaded: &Loaded, stage: Stage) -> Option<Heartbeat> {
    let folder = match stage {
        Stage::Ingest => diffrec_data::ingest::STAGE_DIR.to_owned(),
        Stage::Cluster => diffrec_cluster::artifacts::STAGE_DIR.to_owned(),
        Stage::Train if loaded.pipeline.train.node_rank == 0 => {
            diffrec_trainer::train::run_dir(&loaded.pipeline.name)
        }
        Stage::Train | Stage::Evaluate | Stage::Recommend => return None,
    };
    let name = stage.name();
    match Heartbeat::start(ws, &folder, &name).await {
        Ok(beat) => Some(beat),
        Err(e) => {
            tracing::warn!(
                "{name}: no heartbeat written ({e}): other processes cannot tell that this \
                 stage is running"
            );
            None
        }
    }
}

async fn run_stage(ws: &Workspace, loaded: &Loaded, stage: Stage, force: bool) -> Result<()> {
    let started = Instant::now();
    match stage {
        Stage::Ingest => {
            let spinner = Spinner::start("ingest: reading, cleaning, splitting, writing");
            let report = run_ingest(ws, &loaded.pipeline.data, &loaded.base_dir, force)
                .await
                .context("ingest stage failed")?;
            spinner.finish();
            let s = &report.stats;
            if report.skipped {
                status!(
                    "ingest: up to date (manifest matches config and input hashes), skipped; use --force to rerun"
                );
            } else {
                status!(
                    "ingest: {} users, {} items, train/valid/test {}/{}/{} rows, density {:.3}% ({:.1}s)",
                    s.users,
                    s.items,
                    s.rows["train"],
                    s.rows["valid"],
                    s.rows["test"],
                    s.density * 100.0,
                    started.elapsed().as_secs_f64()
                );
                if let Some(line) = report.source.as_ref().and_then(dropped_line) {
                    status!("{line}");
                }
            }
            Ok(())
        }
        Stage::Cluster => crate::cluster_stage::run(ws, loaded, force).await,
        Stage::Train => crate::train_stage::run(ws, loaded, force).await,
        // The error line alone then says which stage failed, as ingest's and train's do.
        Stage::Evaluate => (crate::infer_stage::evaluate_stage(ws, loaded, force).await)
            .context("evaluate stage failed"),
        Stage::Recommend => (crate::infer_stage::recommend_stage(ws, loaded, force).await)
            .context("recommend stage failed"),
    }
}

/// "ingest: of N source rows, dropped …" naming each filter that removed rows; None when none
/// did.
fn dropped_line(source: &diffrec_data::SourceCounts) -> Option<String> {
    let d = &source.dropped;
    let below = match d.kept_as_noise {
        0 => "rated below data.min_rating".to_owned(),
        kept => format!("rated below data.min_rating ({kept} of them kept as natural noise)"),
    };
    let parts: Vec<String> = [
        (
            d.duplicates,
            "repeating a (user, item) pair (data.dedup keeps its latest row)".to_owned(),
        ),
        (d.below_min_rating, below),
        (d.k_core, "outside the data.k_core core".to_owned()),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, why)| format!("{n} {why}"))
    .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "ingest: of {} source rows, dropped {}",
            source.rows,
            parts.join(", ")
        )
    })
}

/// The workspace, which a stage other than ingest does not create. For training, a node other
/// than node 0 of a multi-node run waits for it (node 0's ingest creates it).
async fn open_existing(loaded: &Loaded, trains: bool) -> Result<Workspace> {
    let t = &loaded.pipeline.train;
    wait_for_node_0(t, trains, || async {
        Ok(Workspace::open_existing(&loaded.workspace).map_err(|e| {
            format!(
                "{e}; only the ingest stage starts a workspace: check the path, or run ingest \
                 first"
            )
        }))
    })
    .await
}

/// `attempt`'s value, or its reason (exit 2). On a node other than node 0 of a multi-node run
/// that `trains`, what node 0 has yet to do: retried once a second up to `train.peer_timeout`,
/// saying once what it waits for, so every node may be started at once with one `diffrec run`.
pub async fn wait_for_node_0<T, Attempt, Tried>(
    train: &TrainConfig,
    trains: bool,
    mut attempt: Attempt,
) -> Result<T>
where
    Attempt: FnMut() -> Tried,
    Tried: std::future::Future<Output = Result<Result<T, String>>>,
{
    let waits = trains && other_node(train);
    let deadline = Instant::now() + std::time::Duration::from_secs(train.peer_timeout);
    let mut said = false;
    loop {
        let why = match attempt().await? {
            Ok(value) => return Ok(value),
            Err(why) if !waits => return Err(crate::usage::NotReady(why).into()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(crate::usage::NotReady(format!(
                "{why} (node {} waited train.peer_timeout, {} s, for node 0)",
                train.node_rank, train.peer_timeout
            ))
            .into());
        }
        if !said {
            tracing::info!("node {} waits for node 0: {why}", train.node_rank);
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The stages of `stages` that `diffrec run` runs on this node: all of them, except on a node
/// other than node 0 of a multi-node run, which takes part in training only. Node 0 runs the
/// stages before it (the train stage of the others waits for them) and writes the run's
/// evaluation and recommendations; run elsewhere too, those would race node 0's writes and
/// could evaluate before node 0 had written the last best checkpoint.
pub fn for_node(stages: Vec<Stage>, train: &TrainConfig) -> Vec<Stage> {
    if !other_node(train) {
        return stages;
    }
    stages.into_iter().filter(|s| *s == Stage::Train).collect()
}

/// Whether this process is a node other than node 0 of a multi-node run: it trains, and
/// leaves the other stages and the run's artifacts to node 0.
pub fn other_node(train: &TrainConfig) -> bool {
    train.nodes > 1 && train.node_rank > 0
}

/// The stages of `diffrec run … --until STAGE`.
pub fn until(last: Option<Stage>) -> Vec<Stage> {
    ALL.into_iter()
        .filter(|s| last.is_none_or(|l| *s <= l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropped_line_names_each_filter_that_dropped_rows() {
        let mut source = diffrec_data::SourceCounts {
            rows: 10,
            ..Default::default()
        };
        assert_eq!(dropped_line(&source), None);
        source.dropped.duplicates = 1;
        source.dropped.k_core = 3;
        assert_eq!(
            dropped_line(&source).unwrap(),
            "ingest: of 10 source rows, dropped 1 repeating a (user, item) pair (data.dedup \
             keeps its latest row), 3 outside the data.k_core core"
        );
        source.dropped.below_min_rating = 4;
        source.dropped.kept_as_noise = 2;
        assert!(dropped_line(&source).unwrap().contains(
            ", 4 rated below data.min_rating (2 of them kept as natural noise), 3 outside"
        ));
    }

    #[test]
    fn other_nodes_run_only_the_train_stage() {
        let node = |nodes, node_rank| TrainConfig {
            nodes,
            node_rank,
            ..TrainConfig::default()
        };
        assert_eq!(for_node(until(None), &node(1, 0)).len(), 5);
        assert_eq!(for_node(until(None), &node(2, 0)).len(), 5);
        assert_eq!(for_node(until(None), &node(2, 1)), vec![Stage::Train]);
        assert!(for_node(until(Some(Stage::Cluster)), &node(3, 2)).is_empty());
    }

    #[test]
    fn until_cuts_the_stage_list() {
        assert_eq!(until(Some(Stage::Ingest)), vec![Stage::Ingest]);
        assert_eq!(
            until(Some(Stage::Train)),
            vec![Stage::Ingest, Stage::Cluster, Stage::Train]
        );
        assert_eq!(until(None).len(), 5);
    }
}
