//! The one error type of the data crate.
//!
//! Every variant that comes from bad input names where the problem is (file, row or row group,
//! column), so a data engineer can fix the source without reading code. [`DataError::is_input`]
//! tells the CLI which errors are the user's (exit code 2) and which are ours or the system's.

use std::fmt;

/// Where in an input file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (path or URL) as the user named it.
    pub file: String,
    /// 1-based data row (header not counted), or `None` when the problem is about the whole file.
    pub row: Option<u64>,
    /// Column name, or `None` when the problem is not about one column.
    pub column: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        if let Some(col) = &self.column {
            write!(f, ", column `{col}`")?;
        }
        Ok(())
    }
}

/// Errors of ingest, workspace I/O and the artifact readers.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The input data is wrong at a known place.
    #[error("{location}: {message}")]
    BadInput { location: Location, message: String },

    /// A configuration value is invalid; `key` is the dotted pipeline key.
    #[error("invalid config `{key}`: {message}")]
    Config { key: String, message: String },

    /// A workspace URL could not be understood.
    #[error("workspace `{url}`: {message}")]
    WorkspaceUrl { url: String, message: String },

    /// An artifact a stage needs is not in the workspace.
    #[error("missing artifact `{key}` in workspace {workspace}: {hint}")]
    MissingArtifact {
        workspace: String,
        key: String,
        hint: String,
    },

    /// An artifact exists but does not have the expected layout.
    #[error("artifact `{key}` is malformed: {message}")]
    BadArtifact { key: String, message: String },

    #[error("object store error on `{key}`: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },

    #[error("parquet error on `{key}`: {source}")]
    Parquet {
        key: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("polars error while {context}: {source}")]
    Polars {
        context: String,
        #[source]
        source: polars::error::PolarsError,
    },

    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },

    #[error("I/O error on `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Another process started the same stage in the workspace after this one.
    #[error(
        "another process started the {stage} stage in this workspace after this one ({key} \
         changed): a second run of the pipeline, or a scheduler's retry while the first attempt \
         still ran. This process stopped before writing anything more and leaves the stage to \
         the other one; if that one fails too, run the stage again"
    )]
    Concurrent { stage: String, key: String },

    /// The claim a stage took on its outputs is gone from the workspace.
    #[error(
        "{key}, which this process wrote when it started the {stage} stage, was removed or \
         overwritten (by hand, or the store lost it: a bucket emptied or made anew): this process \
         stopped before writing anything more; run the stage again"
    )]
    ClaimLost { stage: String, key: String },

    #[error("JSON error on `{key}`: {source}")]
    Json {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DataError {
    /// Builds a [`DataError::BadInput`].
    pub fn bad_input(
        file: impl Into<String>,
        row: Option<u64>,
        column: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        DataError::BadInput {
            location: Location {
                file: file.into(),
                row,
                column: column.map(str::to_owned),
            },
            message: message.into(),
        }
    }

    /// Builds a [`DataError::Config`].
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Wraps a polars error with what we were doing.
    pub fn polars(context: impl Into<String>) -> impl FnOnce(polars::error::PolarsError) -> Self {
        let context = context.into();
        move |source| DataError::Polars { context, source }
    }

    /// True when the user can fix this by changing their input or config (CLI exit code 2).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            DataError::BadInput { .. }
                | DataError::Config { .. }
                | DataError::WorkspaceUrl { .. }
                | DataError::MissingArtifact { .. }
        )
    }
}

/// Result alias of the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
