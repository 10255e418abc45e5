//! Errors in how the binary was called: an argument that names nothing in the workspace, or a
//! stage started before the stage it reads from. They exit with code 2, like config errors.

/// What the user has to change (the message says what).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
