//! Errors in how the binary was called: an argument that names nothing in the workspace, or a
//! stage started before the stage it reads from. They exit with code 2, like config errors.

/// What the user has to change (the message says what).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A stage started before what it reads is there: a stage before it not completed, a run not
/// finished training. Exit code 2 like a [`UsageError`], or 1 while a stage that writes it runs
/// in another process (`busy`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// A finished run whose ingested data changed since it was trained: exit code 2 when a stage
/// runs alone (training it again is the user's call), but `diffrec run` turns it into a
/// retryable failure right after its own train stage, where another ingest ran meanwhile and
/// running again trains the run anew (`stages::run_stages_in`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrainedOnOtherData(pub String);
