//! Failures that another process's running stage explains. A stage that finds what another
//! stage writes in a state it cannot use (no manifest yet, outputs replaced, a run trained on
//! data ingested since) exits with code 2: the user has to act. While a stage it reads from is running in
//! another process (its heartbeat, `diffrec_data::running`), that state is the other process's
//! work in progress, and a retry once it has finished meets another: exit code 1, and the
//! message names the running stage.

use diffrec_cluster::ClusterError;
use diffrec_data::{DataError, Workspace, running};
use diffrec_trainer::TrainError;

use crate::stages::Stage;
use crate::usage::{NotReady, TrainedOnOtherData};

/// The outer layer of an error that a stage running elsewhere explains (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// The workspace folders whose writers `stage` of run `run` reads from: where a heartbeat
/// means its input is being written. Only L-DiffRec's and LT-DiffRec's training (`latent`)
/// reads the clusters; evaluate and recommend take them from the run's checkpoint.
pub fn upstream_of(stage: Stage, run: &str, latent: bool) -> Vec<String> {
    let data = diffrec_data::ingest::STAGE_DIR.to_owned();
    let cluster = diffrec_cluster::artifacts::STAGE_DIR.to_owned();
    match stage {
        Stage::Ingest => Vec::new(),
        Stage::Cluster => vec![data],
        Stage::Train if latent => vec![data, cluster],
        Stage::Train => vec![data],
        Stage::Evaluate | Stage::Recommend => vec![data, diffrec_trainer::train::run_dir(run)],
    }
}

/// `e` with a [`Busy`] layer naming the stages running under `folders`, where it is about the
/// workspace's state and one is running; `e` as it is otherwise. A heartbeat that cannot be
/// read counts as none: the error stays what it was.
pub async fn explain(ws: &Workspace, folders: &[String], e: anyhow::Error) -> anyhow::Error {
    if !about_workspace_state(&e) {
        return e;
    }
    let mut live = Vec::new();
    for folder in folders {
        if let Ok(found) = running::running(ws, folder).await {
            live.extend(found);
        }
    }
    if live.is_empty() {
        return e;
    }
    let stages: Vec<String> = live.iter().map(ToString::to_string).collect();
    e.context(Busy(format!(
        "{}, and this process reads what it writes: what follows is probably its work in \
         progress; retry once it has finished",
        stages.join("; ")
    )))
}

/// Whether `e` is about what another stage writes, as a stage found it: not there yet
/// ([`NotReady`]), changed since the run was trained, an artifact missing, unreadable or
/// changed since its manifest. Not the pipeline's settings, the source data, the store's
/// permissions, or the stage's own run (its checkpoints): those stay what they are.
fn about_workspace_state(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<NotReady>()
            || cause.is::<TrainedOnOtherData>()
            || cause.downcast_ref::<DataError>().is_some_and(left_so)
            || matches!(cause.downcast_ref::<TrainError>(), Some(TrainError::Data(d)) if left_so(d))
            || matches!(cause.downcast_ref::<ClusterError>(), Some(ClusterError::Data(d)) if left_so(d))
    })
}

/// A workspace's artifact missing, unreadable or changed since its manifest was written.
fn left_so(d: &DataError) -> bool {
    matches!(
        d,
        DataError::MissingArtifact { .. }
            | DataError::BadArtifact { .. }
            | DataError::Changed { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workspace_state_waits_for_a_running_stage() {
        let usage = anyhow::Error::new(NotReady("run `r` has not finished training".into()))
            .context("evaluate stage failed");
        assert!(about_workspace_state(&usage));
        let settings = anyhow::Error::new(crate::usage::UsageError(
            "train.parallel: model needs clusters".into(),
        ));
        assert!(
            !about_workspace_state(&settings),
            "the pipeline is the user's to fix"
        );
        let own_run = anyhow::Error::new(TrainError::Damaged("latest.ckpt".into()));
        assert!(!about_workspace_state(&own_run), "the stage's own run");
        let missing = anyhow::Error::new(TrainError::Data(DataError::MissingArtifact {
            workspace: "ws".into(),
            key: "data/interactions.parquet".into(),
            hint: String::new(),
        }));
        assert!(about_workspace_state(&missing));
        let source = anyhow::Error::new(DataError::bad_input(
            "events.csv",
            Some(3),
            Some("user"),
            "empty",
        ));
        assert!(
            !about_workspace_state(&source),
            "the source is the user's to fix"
        );
        let diverged = anyhow::Error::new(TrainError::Diverged("loss NaN".into()));
        assert!(!about_workspace_state(&diverged));
    }

    #[test]
    fn each_stage_waits_for_the_writers_of_what_it_reads() {
        assert!(upstream_of(Stage::Ingest, "r", true).is_empty());
        assert_eq!(upstream_of(Stage::Cluster, "r", true), ["data"]);
        assert_eq!(upstream_of(Stage::Train, "r", true), ["data", "cluster"]);
        assert_eq!(upstream_of(Stage::Train, "r", false), ["data"]);
        assert_eq!(upstream_of(Stage::Recommend, "r", true), ["data", "runs/r"]);
    }
}
