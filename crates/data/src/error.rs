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

/// A text file whose lines end in CR alone, for the CSV and MovieLens readers to say so.
pub(crate) const CR_ONLY_LINES: &str = "its lines end in a carriage return alone (an old Mac or \
    Excel export): convert them to line feeds (`tr '\\r' '\\n' < in > out`) or CRLF";

/// `text` for a message: whole, or its first `chars` characters and `…` (a reader's error may
/// quote the rest of the file, an offending line be megabytes long).
pub(crate) fn cut_short(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
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

    /// An artifact that is not what its stage wrote: its hash is not the one the stage's
    /// manifest records (replaced by hand, damaged).
    #[error(
        "artifact `{key}` changed since the {stage} stage wrote it (replaced or damaged): its \
         SHA-256 is {sha256}, but {manifest} records {recorded}. Run that stage again with \
         --force (`diffrec run` does so by itself)"
    )]
    Changed {
        key: String,
        stage: String,
        manifest: String,
        sha256: String,
        recorded: String,
    },

    /// An artifact changed while this process read it: its stage is writing it anew.
    #[error(
        "{key} changed while this process read it: the {stage} stage is writing it anew (another \
         process); run this again once that stage has finished"
    )]
    ChangedWhileRead { key: String, stage: String },

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

    /// True when running again cannot help and the user fixes this (CLI exit code 2): their
    /// input or config; an artifact damaged since it was written (every write is atomic, so
    /// only a hand or a disk fault damages one: rerunning its stage with `--force` rebuilds it);
    /// permissions the system or the store refused (see [`Self::is_refused`]); or a local path
    /// the file system cannot take (see [`Self::is_bad_path`]).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            DataError::BadInput { .. }
                | DataError::Config { .. }
                | DataError::WorkspaceUrl { .. }
                | DataError::MissingArtifact { .. }
                | DataError::BadArtifact { .. }
                | DataError::Changed { .. }
        ) || self.is_refused()
            || self.is_bad_path()
    }

    /// A read or write refused for its permissions: the local file system's (no write
    /// permission, a read-only file system) or the store's (S3's 401 and 403 on any request,
    /// and the 400s of an unknown access key or a malformed authorization). The workspace's
    /// permissions or the credentials need fixing; a retry meets the same. An `EACCES` deeper
    /// in a network client's causes (a firewall refusing `connect`) does not count: only one of
    /// a local file operation.
    pub fn is_refused(&self) -> bool {
        use std::io::ErrorKind;
        self.causes().any(|e| {
            matches!(
                e.downcast_ref::<object_store::Error>(),
                Some(
                    object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                )
            ) || http_refused(&e.to_string())
        }) || matches!(
            self.local_io_kind(),
            Some(ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem)
        )
    }

    /// A local path the file system cannot take as named: a part of it is a file where a
    /// folder must be (`ENOTDIR`), a folder where a file must be (`EISDIR`), or a name longer
    /// than the file system allows (`ENAMETOOLONG`). Moving the file or shortening the name
    /// fixes it; a retry meets the same.
    pub fn is_bad_path(&self) -> bool {
        use std::io::ErrorKind;
        matches!(
            self.local_io_kind(),
            Some(ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::InvalidFilename)
        )
    }

    /// The kind of the first `std::io::Error` among the causes that a local file operation
    /// raised (ours, or object_store's local file system); `None` for a network client's.
    fn local_io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut local = matches!(self, DataError::Io { .. });
        for e in self.causes() {
            if let Some(object_store::Error::Generic { store, .. }) =
                e.downcast_ref::<object_store::Error>()
            {
                local = *store == "LocalFileSystem";
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && local
                && !carries_store_error(io)
            {
                return Some(io.kind());
            }
        }
        None
    }

    /// The causes, `self` first. An `io::Error` that carries an object_store error (object_store's
    /// `BufWriter` and the Parquet writer over it wrap theirs so) is followed into that error,
    /// which its own `source` skips.
    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        std::iter::successors(Some(self as &(dyn std::error::Error + 'static)), |&e| {
            match e.downcast_ref::<std::io::Error>() {
                Some(io) if carries_store_error(io) => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
                _ => e.source(),
            }
        })
    }
}

/// An `io::Error` made from an object_store error (its kind says little: `Other`).
fn carries_store_error(io: &std::io::Error) -> bool {
    io.get_ref()
        .is_some_and(|inner| inner.is::<object_store::Error>())
}

/// An HTTP answer of the store that refuses the credentials or their rights, as object_store
/// words a request's failure (its error type for it is private): 401, 403, and the 400s S3
/// gives an unknown access key (`InvalidAccessKeyId`) or an authorization for another region
/// (`AuthorizationHeaderMalformed`). Other 400s (S3's `RequestTimeout`) may pass on a retry.
fn http_refused(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("Server returned non-2xx status code: ") else {
        return false;
    };
    rest.starts_with("401 ")
        || rest.starts_with("403 ")
        || (rest.starts_with("400 ")
            && ["InvalidAccessKeyId", "AuthorizationHeaderMalformed"]
                .iter()
                .any(|code| rest.contains(&format!("<Code>{code}</Code>"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    fn store(source: object_store::Error) -> DataError {
        DataError::Store {
            key: "data/stats.json".into(),
            source,
        }
    }

    /// Permissions refused and paths the file system cannot take, found through the causes as
    /// object_store nests them; other I/O failures (a refused connection, a full disk) stay
    /// retryable.
    #[test]
    fn refused_permissions_are_for_the_user_to_fix() {
        let generic = |kind: ErrorKind| {
            store(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(IoError::from(kind)),
            })
        };
        let io = |kind: ErrorKind| DataError::Io {
            path: "ws".into(),
            source: IoError::from(kind),
        };
        for e in [
            generic(ErrorKind::PermissionDenied),
            generic(ErrorKind::ReadOnlyFilesystem),
            io(ErrorKind::PermissionDenied),
            store(object_store::Error::PermissionDenied {
                path: "b/k".into(),
                source: "403".into(),
            }),
            store(object_store::Error::Unauthenticated {
                path: "b/k".into(),
                source: "no credentials".into(),
            }),
        ] {
            assert!(e.is_refused() && e.is_input(), "{e}");
        }
        for e in [
            generic(ErrorKind::NotADirectory),
            io(ErrorKind::IsADirectory),
            io(ErrorKind::InvalidFilename),
        ] {
            assert!(e.is_bad_path() && !e.is_refused() && e.is_input(), "{e}");
        }
        let remote = store(object_store::Error::Generic {
            store: "S3",
            source: Box::new(IoError::from(ErrorKind::PermissionDenied)),
        });
        for e in [
            remote,
            generic(ErrorKind::ConnectionRefused),
            generic(ErrorKind::StorageFull),
            io(ErrorKind::Interrupted),
            store(object_store::Error::NotImplemented {
                operation: "x".into(),
                implementer: "y".into(),
            }),
        ] {
            assert!(!e.is_refused() && !e.is_bad_path() && !e.is_input(), "{e}");
        }
    }

    /// The same found where writers wrap them: object_store's error inside an `io::Error`
    /// (its `BufWriter`), and that inside a Parquet error (the Parquet writer over it).
    #[test]
    fn refusals_are_found_inside_the_writers_wrapping() {
        let local = |kind: ErrorKind| {
            IoError::from(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(IoError::from(kind)),
            })
        };
        let parquet = |io: IoError| DataError::Parquet {
            key: "runs/r/recommendations.parquet".into(),
            source: parquet::errors::ParquetError::External(Box::new(io)),
        };
        let via_io = |source: IoError| DataError::Io {
            path: "s3://b/p/data/_owner".into(),
            source,
        };
        let denied = || object_store::Error::PermissionDenied {
            path: "b/k".into(),
            source: "403".into(),
        };
        for e in [
            parquet(local(ErrorKind::PermissionDenied)),
            parquet(local(ErrorKind::ReadOnlyFilesystem)),
            via_io(IoError::from(denied())),
            parquet(IoError::from(denied())),
        ] {
            assert!(e.is_refused() && e.is_input(), "{e}");
        }
        assert!(parquet(local(ErrorKind::NotADirectory)).is_bad_path());
        // A full disk under the same wrapping, and a store error of a network client, stay
        // retryable: the wrapper's kind (`Other`) is not taken for the cause's.
        let s3 = IoError::from(object_store::Error::Generic {
            store: "S3",
            source: Box::new(IoError::from(ErrorKind::PermissionDenied)),
        });
        for e in [parquet(local(ErrorKind::StorageFull)), via_io(s3)] {
            assert!(!e.is_input(), "{e}");
        }
    }

    /// S3's answers as object_store words a failed request (a list's, whose error type is
    /// private): 401/403 and the credential 400s are refusals, a 400 timeout and 5xx are not.
    #[test]
    fn refusing_http_answers_are_told_from_passing_ones() {
        let answer = |text: &str| {
            store(object_store::Error::Generic {
                store: "S3",
                source: text.to_owned().into(),
            })
        };
        let status = "Server returned non-2xx status code: ";
        let code = |c: &str| format!("<Error><Code>{c}</Code><Message>m</Message></Error>");
        for refused in [
            format!("{status}403 Forbidden: {}", code("AccessDenied")),
            format!("{status}401 Unauthorized: "),
            format!("{status}400 Bad Request: {}", code("InvalidAccessKeyId")),
            format!(
                "{status}400 Bad Request: {}",
                code("AuthorizationHeaderMalformed")
            ),
        ] {
            assert!(answer(&refused).is_refused(), "{refused}");
        }
        for passing in [
            format!("{status}400 Bad Request: {}", code("RequestTimeout")),
            format!("{status}503 Service Unavailable: {}", code("SlowDown")),
            "error sending request: 403 Forbidden".to_owned(),
        ] {
            assert!(!answer(&passing).is_input(), "{passing}");
        }
    }
}

/// Result alias of the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
