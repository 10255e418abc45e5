//! The cluster stage: LightGCN pre-training (or the user's item embeddings) and k-means,
//! with a batch bar per LightGCN epoch and a line per evaluation.

use anyhow::{Context, Result};
use diffrec_cluster::{Progress, run_cluster};
use diffrec_data::Workspace;

use crate::pipeline::Loaded;
use crate::progress::EpochBar;
use crate::stdout::status;
use crate::train_stage::refuse_other_data_settings;

pub async fn run(ws: &Workspace, loaded: &Loaded, force: bool) -> Result<()> {
    let p = &loaded.pipeline;
    // Run alone (`diffrec stage cluster`), it must not cluster data ingested with other
    // settings than this pipeline's for its own, nor call such clusters up to date.
    refuse_other_data_settings(ws, loaded, "ingest").await?;
    let bar = EpochBar::new("cluster");
    let mut report = |ev: Progress| match ev {
        Progress::EpochStart { epoch, batches } => {
            // With `-v`, a line per epoch between the evaluations (the bar is hidden when
            // stderr is no terminal).
            tracing::debug!(epoch, batches, "cluster: lightgcn epoch");
            bar.start_epoch(format!("lightgcn epoch {epoch}"), batches)
        }
        Progress::Batch => bar.inc(),
        Progress::Evaluated {
            epoch,
            loss,
            valid_recall20,
            valid_ndcg20,
            test_recall20,
            test_ndcg20,
            best_epoch,
        } => {
            bar.set_message(format!("loss {loss:.4}"));
            bar.say(format!(
                "cluster: lightgcn epoch {epoch}: loss {loss:.4}, valid recall@20 {valid_recall20:.4} ndcg@20 {valid_ndcg20:.4}, test recall@20 {test_recall20:.4} ndcg@20 {test_ndcg20:.4} (best epoch {best_epoch})"
            ))
        }
        Progress::Resumed { epoch } => bar.say(format!(
            "cluster: lightgcn resuming after epoch {epoch} ({})",
            diffrec_cluster::checkpoint::KEY
        )),
        Progress::Stopped { epoch, best_epoch } => bar.say(format!(
            "cluster: lightgcn early stop after epoch {epoch} (best epoch {best_epoch})"
        )),
        Progress::Clustering { k, n_runs, items } => bar.between_epochs(format!(
            "k-means: {k} clusters of {items} items, best of {n_runs} runs"
        )),
    };
    let out = run_cluster(
        ws,
        &p.cluster,
        &p.evaluate.ks,
        &loaded.base_dir,
        force,
        &mut report,
    )
    .await;
    bar.finish();
    let out = out.context("cluster stage failed")?;
    if out.skipped {
        status!(
            "cluster: up to date (manifest matches config and input hashes), skipped; use --force to rerun"
        );
        return Ok(());
    }
    let s = &out.summary;
    if let Some(l) = &s.lightgcn {
        let get = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
            m.get(k).copied().unwrap_or(f64::NAN)
        };
        let when = match out.pretraining_reused {
            true => " (pre-trained by the stage's previous run, reused)",
            false => "",
        };
        status!(
            "cluster: lightgcn best epoch {} of {}{when}: valid recall@20 {:.4}; test recall@20 {:.4} ndcg@20 {:.4}; {:.2} s/epoch, {:.1} s in all",
            l.best_epoch,
            l.epochs_run,
            get(&l.valid, "recall@20"),
            get(&l.test, "recall@20"),
            get(&l.test, "ndcg@20"),
            l.epoch_seconds_median,
            l.train_seconds
        );
    }
    // `s.notes` were logged as warnings when they arose (and are kept in cluster/summary.json).
    let (clusters, sizes) = if s.k == 1 {
        ("cluster", "size")
    } else {
        ("clusters", "sizes")
    };
    let over = if s.dim == 0 {
        "no embeddings (cluster.k = 1)".to_owned()
    } else {
        format!("{}-d {} embeddings", s.dim, s.embeddings)
    };
    status!(
        "cluster: {} {clusters} of {sizes} {:?} over {over} ({:.1}s)",
        s.k,
        s.sizes,
        s.seconds
    );
    Ok(())
}
