//! [`Workspace`]: the artifact store every stage reads from and writes to.
//!
//! A workspace is a URL — a plain directory path, `file://`, `memory://` or `s3://bucket/prefix` —
//! opened once into an `object_store` client. All artifact I/O of every stage goes through this
//! type, so the same pipeline runs unchanged on a laptop folder and on a bucket.
//!
//! Writes are atomic. Locally and in memory, bytes go to a temporary key beside the target
//! (`<key>.tmp-<pid>-<nonce>`) and are renamed onto the target only once complete: a crash
//! leaves at most a temporary key, which no reader ever opens and
//! [`Workspace::clean_temporaries`] removes. On S3 they go to the target in place, whole or as
//! a multipart upload, which S3 shows only once complete ([`Workspace::writes_in_place`]).

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{DataError, Result};
use crate::manifest::OutputInfo;

/// The size of the parts of an S3 write (object_store's `BufWriter` uploads in parts of its
/// capacity, 10 MiB by default).
const PART: usize = 10 << 20;

/// Commits (a finished temporary renamed to its key; on S3, an in-place upload completed) hold
/// this for reading; [`stop_commits`] sets it for good. `true`: the process is ending on a
/// signal, and nothing more is committed.
static COMMITS: tokio::sync::RwLock<bool> = tokio::sync::RwLock::const_new(false);

/// Waits for leave to commit a write: after [`stop_commits`], for ever (the process is ending).
async fn commit_gate() -> tokio::sync::RwLockReadGuard<'static, bool> {
    let gate = COMMITS.read().await;
    if *gate {
        drop(gate);
        return std::future::pending().await;
    }
    gate
}

/// Lets the commits under way finish and no other start, for the rest of the process (a signal
/// is ending it): no write lands after this returns `true`, so what a caller reads back then
/// (a checkpoint's epoch) stays what the process leaves. Deletes are not held (a stage's
/// clean-up, a heartbeat's end). `false` when commits under way took longer than `patience`
/// (an upload completing on a slow store): then nothing is stopped.
pub async fn stop_commits(patience: std::time::Duration) -> bool {
    match tokio::time::timeout(patience, COMMITS.write()).await {
        Ok(mut stopped) => {
            *stopped = true;
            true
        }
        Err(_) => false,
    }
}

/// Marker in the names of temporary keys.
const TMP_MARKER: &str = ".tmp-";

/// An opened workspace (artifact store).
#[derive(Clone)]
pub struct Workspace {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The bucket of an S3 workspace.
    bucket: Option<String>,
    url: String,
    /// The directory of a local workspace: object_store stages its writes there as
    /// `<key>#<n>` files, which its listing hides ([`Workspace::delete_where`] removes them).
    local_root: Option<std::path::PathBuf>,
    /// Cleaning leaves temporaries younger than this (by the store's `last_modified`): on S3,
    /// where a temporary's writer may be a process on another machine. `None`: no age rule
    /// (a local workspace has the pid rule, `memory://` one process).
    temp_grace: Option<std::time::Duration>,
    /// The outermost directory opening this local workspace created (`None` when it existed).
    created: Option<std::path::PathBuf>,
}

/// How long cleaning leaves an S3 temporary alone: an upload in flight is at most this old.
/// An hour is far beyond the copy that followed a completed temporary (the only window in
/// which another writer's temporary was visible) and beyond the clock skew S3's request
/// signing tolerates (15 minutes). diffrec no longer writes temporaries on S3; those of
/// earlier versions, and of another machine running one, are still cleaned by this rule.
pub const REMOTE_TEMP_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("url", &self.url).finish()
    }
}

/// Whether `AmazonS3Builder::from_env` finds credentials in the environment without the
/// instance metadata service, as object_store 0.14's `build` picks them: keys, a web identity
/// token with a role to assume, container credentials (ECS: a relative URI; EKS Pod Identity:
/// a full URI with its token file), or unsigned requests. It reads no `AWS_PROFILE` and no
/// `~/.aws` files.
fn s3_credentials_in_env() -> bool {
    let set = |v: &str| std::env::var_os(v).is_some();
    set("AWS_ACCESS_KEY_ID")
        || set("AWS_SECRET_ACCESS_KEY")
        || set("AWS_SKIP_SIGNATURE")
        || (set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN"))
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || (set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            && set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
}

/// What [`s3_credentials_in_env`] looks for, for messages.
const S3_CREDENTIAL_VARS: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; \
     AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN; AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; \
     AWS_CONTAINER_CREDENTIALS_FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; \
     AWS_SKIP_SIGNATURE";

/// The bucket and key prefix of `rest`, an S3 URL after its `s3://`. The prefix is taken as
/// written, as the AWS CLI, boto3 and DuckDB take `s3://` URLs: `s3://b/a b/ünï` writes under
/// the keys `a b/ünï/…`, not under their percent-encodings. Unlike those tools, repeated
/// slashes count as one (object_store's paths have no empty segments).
fn s3_location(rest: &str) -> std::result::Result<(&str, Path), String> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("an S3 workspace needs a bucket: s3://bucket/prefix".into());
    }
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{c:?} cannot be part of a bucket name (`{bucket}`): bucket names hold letters, \
             digits, `.` and `-`"
        ));
    }
    if let Some(c) = key.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!(
            "{c:?} in the key: S3 tools read it differently (a query or fragment to some, \
             part of the key to others); choose a key without it"
        ));
    }
    let parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
    let prefix = Path::parse(parts.join("/")).map_err(|e| e.to_string())?;
    Ok((bucket, prefix))
}

/// `AWS_ENDPOINT` (or `AWS_ENDPOINT_URL`), when set, must be an http(s) URL: the S3 client
/// panics on one without a scheme (`127.0.0.1:9000`), a common slip with MinIO.
fn check_s3_endpoint() -> std::result::Result<(), String> {
    s3_retry()?;
    for var in ["AWS_ENDPOINT", "AWS_ENDPOINT_URL"] {
        let Some(value) = std::env::var_os(var) else {
            continue;
        };
        let value = value.to_string_lossy();
        let ok = url::Url::parse(&value).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            return Err(format!(
                "{var}={value:?} is not an http(s) URL: write it as http://host:port or \
                 https://host"
            ));
        }
    }
    Ok(())
}

/// How S3 requests that get no answer, or a server error, are retried: for
/// `DIFFREC_S3_RETRY_SECONDS` (180 by default, object_store's window) from the first attempt,
/// with object_store's backoff (0.1 s growing to 15 s, jittered). object_store's own default
/// also stops after 10 retries, which a refused connection (an S3 server restarting) uses up in
/// 2–4 s; here the window alone bounds them. 0 turns retries off.
fn s3_retry() -> std::result::Result<RetryConfig, String> {
    const VAR: &str = "DIFFREC_S3_RETRY_SECONDS";
    let seconds = match std::env::var(VAR) {
        Ok(v) => v.trim().parse::<u64>().map_err(|_| {
            format!(
                "{VAR}={v:?} is not a whole number of seconds (how long S3 requests are retried)"
            )
        })?,
        Err(_) => 180,
    };
    Ok(RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: if seconds == 0 { 0 } else { 10_000 },
        retry_timeout: std::time::Duration::from_secs(seconds),
    })
}

/// A plain path that begins like a URL with a slip in it (`s3:/bucket/x`, `memory:x`) would
/// become a local folder named `s3:`: refused.
fn refuse_url_typo(url: &str) -> std::result::Result<(), String> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Ok(());
    };
    const SCHEMES: [&str; 8] = ["s3", "s3a", "file", "memory", "gs", "az", "http", "https"];
    if SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "looks like a URL without its `://` (`{scheme}://…`); a folder named `{scheme}:` \
             would be written here instead"
        ));
    }
    Ok(())
}

/// The Parquet writer's sink: object_store's `BufWriter` (multipart on S3, above 10 MiB),
/// knowing whether its completion began, after which it cannot be aborted.
struct Upload {
    sink: BufWriter,
    completing: bool,
}

impl AsyncFileWriter for Upload {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.sink.write_all(&bytes).await?;
            Ok(())
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.completing = true;
        Box::pin(async move {
            self.sink.shutdown().await?;
            Ok(())
        })
    }
}

/// The local path a `file://` URL names, percent-decoded as RFC 8089 has it
/// (`file:///data/my%20ws` is `/data/my ws`, as Python's `Path.as_uri()` writes it); `None` for
/// anything else. `file://localhost/data/ws` is `/data/ws` too (RFC 8089's other spelling of the
/// local host). A URL that does not parse is taken as written.
pub fn file_url_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("file://")?;
    let rest = rest
        .strip_prefix("localhost")
        .filter(|r| r.starts_with('/'))
        .unwrap_or(rest);
    // A URL would end the path at `#` or `?` (fragment, query): such a path is taken as
    // written, as before URLs were decoded (`%23` and `%3F` spell them in a decoded one).
    let decoded = (!rest.contains(['#', '?']))
        .then(|| url::Url::parse(url).ok()?.to_file_path().ok())
        .flatten();
    Some(decoded.unwrap_or_else(|| rest.into()))
}

impl Workspace {
    /// Opens a workspace URL. A plain path or `file://` URL names a local directory (created if
    /// missing); `memory://` is an in-process store (tests); `s3://bucket/prefix` uses the standard
    /// AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and
    /// `AWS_ENDPOINT` / `AWS_ALLOW_HTTP` for S3-compatible servers).
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, true)
    }

    /// Like [`Self::open`], for commands that only read or add to an existing workspace: a
    /// local directory that does not exist is an error naming it, and nothing is created (a
    /// mistyped path would otherwise leave an empty directory behind).
    pub fn open_existing(url: &str) -> Result<Self> {
        Self::open_with(url, false)
    }

    /// Whether `url` names a workspace this build can open, without opening it (no folder
    /// created, no request sent): the message says why not. What `diffrec validate` checks.
    pub fn check_url(url: &str) -> std::result::Result<(), String> {
        if url.trim().is_empty() {
            return Err("empty workspace URL: give a folder or an s3:// URL".into());
        }
        match url.split_once("://").map(|(s, _)| s) {
            None if std::path::Path::new(url).parent().is_none() && url.starts_with('/') => {
                Err("the file system's root cannot be a workspace: give its own folder".into())
            }
            None => refuse_url_typo(url),
            Some("file") if file_url_path(url).is_some_and(|p| p.parent().is_none()) => Err(
                "the URL names the file system's root (`file://` without a path?): give \
                     the workspace's own folder, as file:///data/ws"
                    .into(),
            ),
            Some("file") if !file_url_path(url).is_some_and(|p| p.is_absolute()) => {
                Err("a file:// URL takes an absolute path (file:///data/ws or \
                 file://localhost/data/ws); give a relative folder as a plain path"
                    .into())
            }
            Some("file" | "memory") => Ok(()),
            Some(s @ ("s3" | "s3a")) => {
                s3_location(&url[s.len() + 3..])?;
                check_s3_endpoint()
            }
            Some(other) => Err(format!(
                "unsupported scheme `{other}://` (use a path, file://, memory:// or s3://)"
            )),
        }
    }

    fn open_with(url: &str, create: bool) -> Result<Self> {
        let bad = |message: String| DataError::WorkspaceUrl {
            url: url.to_owned(),
            message,
        };
        if url.trim().is_empty() {
            return Err(bad("empty workspace URL".into()));
        }
        let scheme = url.split_once("://").map(|(s, _)| s);
        let mut local_root = None;
        let mut temp_grace = None;
        let mut created = None;
        let mut bucket_name = None;
        Self::check_url(url).map_err(bad)?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match scheme {
            None | Some("file") => {
                let dir = file_url_path(url).unwrap_or_else(|| url.into());
                let dir = dir.as_path();
                if create && dir.is_file() {
                    return Err(bad(
                        "a file, not a directory: a workspace is the folder the stages write"
                            .into(),
                    ));
                } else if create {
                    created = dir
                        .ancestors()
                        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                        .last()
                        .map(std::path::Path::to_path_buf);
                    std::fs::create_dir_all(dir).map_err(|e| DataError::Io {
                        path: dir.display().to_string(),
                        source: e,
                    })?;
                } else if !dir.is_dir() {
                    let what = if dir.exists() {
                        "a file, not a directory: a workspace is the folder the stages write"
                    } else {
                        "no such directory"
                    };
                    return Err(bad(what.into()));
                }
                // Every write reaches the disk (file and directory entry) before it returns,
                // as on S3: a checkpoint or manifest a finished write left must survive a host
                // crash or power loss, not only a killed process.
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?
                    .with_fsync(true);
                local_root = Some(dir.to_path_buf());
                (Arc::new(fs), Path::default())
            }
            Some("memory") => {
                let rest = url.trim_start_matches("memory://");
                (Arc::new(InMemory::new()), Path::from(rest))
            }
            Some(s @ ("s3" | "s3a")) => {
                let (bucket, prefix) = s3_location(&url[s.len() + 3..]).map_err(bad)?;
                if !s3_credentials_in_env() {
                    tracing::debug!(
                        "no AWS credentials in the environment ({S3_CREDENTIAL_VARS}): the S3 \
                         client will ask the instance metadata service"
                    );
                }
                let s3 = AmazonS3Builder::from_env()
                    .with_retry(s3_retry().map_err(bad)?)
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                temp_grace = Some(REMOTE_TEMP_GRACE);
                bucket_name = Some(bucket.to_owned());
                (Arc::new(s3), prefix)
            }
            Some(_) => unreachable!("check_url refuses other schemes"),
        };
        Ok(Workspace {
            store,
            prefix,
            url: url.to_owned(),
            local_root,
            temp_grace,
            created,
            bucket: bucket_name,
        })
    }

    /// Asks an S3 workspace's store for its prefix once: a bucket that does not exist is an
    /// input error naming it (not "missing artifact" at the first read, or the server's XML at
    /// the first write), and an endpoint that cannot be reached fails here, before any work.
    /// Local and in-memory workspaces need no question.
    pub async fn check_reachable(&self) -> Result<()> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        self.check_metadata_service().await?;
        // The first page of keys only, however many there are.
        let first = self.store.list(Some(&self.prefix)).try_next().await;
        match first {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("NoSuchBucket") => Err(DataError::WorkspaceUrl {
                url: self.url.clone(),
                message: format!(
                    "bucket `{bucket}` does not exist{}",
                    std::env::var("AWS_ENDPOINT")
                        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default()
                ),
            }),
            // Credentials that may read objects but not list them (a read-only role, a public
            // bucket): the reads themselves decide.
            Err(
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. },
            ) => Ok(()),
            Err(source) => Err(DataError::Store {
                key: self.prefix.to_string(),
                source,
            }),
        }
    }

    /// Without credentials in the environment, the S3 client asks the instance metadata service
    /// for them, and retries for three minutes where there is none (a machine outside a cloud)
    /// before an error about a token request. Knocked on first (a TCP connection, two seconds at
    /// most): where nothing answers, the missing credentials are named at once, an error to fix
    /// (exit code 2) rather than to retry.
    async fn check_metadata_service(&self) -> Result<()> {
        if s3_credentials_in_env() {
            return Ok(());
        }
        let endpoint = std::env::var("AWS_METADATA_ENDPOINT")
            .unwrap_or_else(|_| "http://169.254.169.254".to_owned());
        let address = url::Url::parse(&endpoint)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)));
        // An endpoint that does not parse is object_store's to refuse.
        let Some(address) = address else {
            return Ok(());
        };
        let knock = tokio::net::TcpStream::connect(address.as_str());
        let why = match tokio::time::timeout(std::time::Duration::from_secs(2), knock).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in 2 s".to_owned(),
        };
        Err(DataError::WorkspaceUrl {
            url: self.url.clone(),
            message: format!(
                "no AWS credentials: none in the environment ({S3_CREDENTIAL_VARS}), and no \
                 instance metadata service at {endpoint} ({why}) to ask, as there is on a \
                 cloud machine with a role. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (with AWS_SESSION_TOKEN for temporary ones; AWS_ENDPOINT for a server other \
                 than AWS), or AWS_SKIP_SIGNATURE=true for a public bucket. AWS_PROFILE and \
                 ~/.aws are not read: `eval \"$(aws configure export-credentials --format \
                 env)\"` puts a profile's credentials in the environment"
            ),
        })
    }

    /// Removes the directories opening this workspace created, where no file was written under
    /// them: a first stage that failed (a bad source) leaves no empty folder behind. A file
    /// keeps the folders above it. Best effort: a failure leaves them, which loses nothing.
    pub fn remove_if_unused(&self) {
        // Folders only, deepest first: `remove_dir` refuses one that holds anything, so a
        // file that another process writes meanwhile is never removed.
        fn remove_empty(dir: &std::path::Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_empty(&entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        if let Some(top) = &self.created {
            remove_empty(top);
        }
    }

    /// Removes the local folder `prefix` (relative to the workspace) where it holds nothing: a
    /// folder of files that come and go (heartbeats) is not left behind empty. Object stores
    /// have no folders; there, and where it holds anything, nothing happens.
    pub fn remove_empty_folder(&self, prefix: &str) {
        if let Some(root) = &self.local_root {
            let _ = std::fs::remove_dir(root.join(prefix));
        }
    }

    /// Sets how long cleaning leaves a temporary alone after its store's `last_modified`
    /// (`None`: no age rule). S3 workspaces open with [`REMOTE_TEMP_GRACE`].
    pub fn with_temp_grace(mut self, grace: Option<std::time::Duration>) -> Self {
        self.temp_grace = grace;
        self
    }

    /// The URL this workspace was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn store_err(key: &str) -> impl FnOnce(object_store::Error) -> DataError + '_ {
        move |source| DataError::Store {
            key: key.to_owned(),
            source,
        }
    }

    /// Reads a whole artifact. A missing key is a [`DataError::MissingArtifact`].
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => r.bytes().await.map_err(Self::store_err(key)),
            Err(object_store::Error::NotFound { .. }) => Err(self.missing(key)),
            Err(e) => Err(Self::store_err(key)(e)),
        }
    }

    /// The error for an artifact that is not there.
    fn missing(&self, key: &str) -> DataError {
        DataError::MissingArtifact {
            workspace: self.url.clone(),
            key: key.to_owned(),
            hint: "run the stage that writes it first".into(),
        }
    }

    /// The first `n` bytes of an artifact (all of it when shorter), or `None` when it does
    /// not exist: a header without reading a large object whole. An empty artifact is an
    /// error (the range starts past its end).
    pub async fn get_prefix(&self, key: &str, n: u64) -> Result<Option<Bytes>> {
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(0..n.max(1))),
            ..Default::default()
        };
        match self.store.get_opts(&self.path(key), options).await {
            Ok(r) => r.bytes().await.map(Some).map_err(Self::store_err(key)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_err(key)(e)),
        }
    }

    /// Whether an artifact exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::store_err(key)(e)),
        }
    }

    /// Deletes an artifact if present.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::store_err(key)(e)),
        }
    }

    /// Keys under `prefix` (relative to the workspace), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_modified(prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// Keys under `prefix` with their stores' last-modified times, sorted by key.
    pub async fn list_modified(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        let base = self.path(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(Self::store_err(prefix))?;
        let root = self.prefix.as_ref();
        let mut keys: Vec<_> = metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let key = full
                    .strip_prefix(root)
                    .unwrap_or(full)
                    .trim_start_matches('/')
                    .to_owned();
                (key, m.last_modified)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn temp_key(key: &str) -> String {
        let nonce: u64 = rand::random();
        format!("{key}{TMP_MARKER}{}-{nonce:016x}", std::process::id())
    }

    async fn commit(&self, tmp: &str, key: &str) -> Result<()> {
        let _gate = commit_gate().await;
        self.store
            .rename(&self.path(tmp), &self.path(key))
            .await
            .map_err(Self::store_err(key))
    }

    /// Whether writes go straight to their key instead of through a temporary one: on S3,
    /// where a PUT or a completed multipart upload replaces an object whole (readers see the
    /// old object or the new one, never part of it; an upload cut short leaves an incomplete
    /// multipart upload, which no listing or read shows), and where one PUT and one copy (the
    /// rename) stop at 5 GiB, which the checkpoint of a model over a large catalogue passes.
    fn writes_in_place(&self) -> bool {
        self.bucket.is_some()
    }

    /// Writes `bytes` to `key` atomically: through a temporary key, then a rename; on S3 in
    /// place, in parts above 10 MiB ([`Self::writes_in_place`]).
    pub async fn put_atomic(&self, key: &str, bytes: impl Into<PutPayload>) -> Result<()> {
        let payload: PutPayload = bytes.into();
        if self.writes_in_place() {
            let mut sink = BufWriter::new(self.store.clone(), self.path(key));
            // A part at a time: `BufWriter` then waits for room (8 parts in flight), where one
            // `put` of the whole would start every part's upload at once.
            let mut written = Ok(());
            'pieces: for piece in &payload {
                for start in (0..piece.len()).step_by(PART) {
                    let part = piece.slice(start..(start + PART).min(piece.len()));
                    written = sink.put(part).await.map_err(Self::store_err(key));
                    if written.is_err() {
                        break 'pieces;
                    }
                }
            }
            if written.is_err() {
                // No incomplete upload left to the bucket's lifecycle rule. Only before the
                // shutdown: object_store's `abort` panics after it, and a multipart upload that
                // fails to finish aborts itself.
                let _ = sink.abort().await;
                return written;
            }
            let _gate = commit_gate().await;
            return sink.shutdown().await.map_err(|source| DataError::Io {
                path: format!("{}/{key}", self.url),
                source,
            });
        }
        let tmp = Self::temp_key(key);
        self.store
            .put(&self.path(&tmp), payload)
            .await
            .map_err(Self::store_err(&tmp))?;
        self.commit(&tmp, key).await
    }

    /// [`Self::put_atomic`] of the concatenation of `parts`, without building it in memory.
    pub async fn put_atomic_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.put_atomic(key, PutPayload::from_iter(parts)).await
    }

    /// Writes record batches as one Parquet file at `key`, atomically, streaming through
    /// `AsyncArrowWriter` over `object_store::buffered::BufWriter` (multipart on S3). Returns
    /// the number of rows written.
    pub async fn write_parquet(
        &self,
        key: &str,
        schema: SchemaRef,
        batches: impl IntoIterator<Item = RecordBatch>,
    ) -> Result<u64> {
        let in_place = self.writes_in_place();
        let tmp = if in_place {
            key.to_owned()
        } else {
            Self::temp_key(key)
        };
        let pq = |source| DataError::Parquet {
            key: key.to_owned(),
            source,
        };
        // The schema's metadata also goes to the file's key-value metadata, where DuckDB's
        // `parquet_kv_metadata` and pyarrow's `read_metadata` show it.
        let described: Vec<KeyValue> = schema
            .metadata()
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("diffrec {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata((!described.is_empty()).then_some(described))
            .build();
        let sink = Upload {
            sink: BufWriter::new(self.store.clone(), self.path(&tmp)),
            completing: false,
        };
        let mut writer = AsyncArrowWriter::try_new(sink, schema, Some(props)).map_err(pq)?;
        let mut rows = 0u64;
        let written = async {
            for batch in batches {
                rows += batch.num_rows() as u64;
                writer.write(&batch).await?;
            }
            // In place (S3), finishing completes the upload: the commit.
            let _gate = match in_place {
                true => Some(commit_gate().await),
                false => None,
            };
            writer.finish().await
        }
        .await;
        if let Err(source) = written {
            // Parts already uploaded go with the upload: no incomplete multipart upload left
            // to the bucket's lifecycle rule, no staging file left in a local workspace. Only
            // before its completion began: object_store's `abort` panics after (the upload is
            // then the completion's, and a failed PUT left nothing).
            let upload = writer.into_inner();
            if !upload.completing {
                let mut sink = upload.sink;
                let _ = sink.abort().await;
            }
            return Err(pq(source));
        }
        if !in_place {
            self.commit(&tmp, key).await?;
        }
        Ok(rows)
    }

    /// The key-value metadata of the Parquet file at `key` (what [`Self::write_parquet`] took
    /// from the schema's metadata), read from its footer alone: two ranged reads, however large
    /// the file. `Ok(None)` when there is no such file; a file that is not Parquet is an error.
    pub async fn parquet_key_values(
        &self,
        key: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>> {
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        let bad = |message: String| DataError::BadArtifact {
            key: key.to_owned(),
            message,
        };
        let size = meta.size;
        if size < 12 {
            return Err(bad(format!("{size} bytes: too short for a Parquet file")));
        }
        let range = |r: std::ops::Range<u64>| async move {
            self.store
                .get_range(&self.path(key), r)
                .await
                .map_err(Self::store_err(key))
        };
        let tail = range(size - 8..size).await?;
        if &tail[4..] != b"PAR1" {
            return Err(bad("no Parquet footer (PAR1) at its end".into()));
        }
        let len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
        if len + 12 > size {
            return Err(bad(format!(
                "its footer says {len} bytes of metadata, more than the file holds"
            )));
        }
        let footer = range(size - 8 - len..size - 8).await?;
        let metadata = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
            .map_err(|source| DataError::Parquet {
                key: key.to_owned(),
                source,
            })?;
        Ok(Some(
            metadata
                .file_metadata()
                .key_value_metadata()
                .into_iter()
                .flatten()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                .collect(),
        ))
    }

    /// Writes a value as pretty JSON, atomically.
    pub async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(value).map_err(|source| DataError::Json {
            key: key.to_owned(),
            source,
        })?;
        text.push(b'\n');
        self.put_atomic(key, text).await
    }

    /// Reads a whole artifact; `Ok(None)` when it does not exist.
    pub async fn get_if_present(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DataError::MissingArtifact { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a JSON artifact; `Ok(None)` when it does not exist.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(bytes) = self.get_if_present(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| DataError::BadArtifact {
                key: key.to_owned(),
                message: format!(
                    "{source}: changed or damaged since diffrec wrote it; rerun the stage that \
                     writes it with `--force`"
                ),
            })
    }

    /// What a stage manifest records of an output it wrote: its hash, size and entity tag
    /// (and `rows`), from one read.
    pub async fn output_info(&self, key: &str, rows: Option<u64>) -> Result<OutputInfo> {
        let read = match self.store.get(&self.path(key)).await {
            Ok(read) => read,
            Err(object_store::Error::NotFound { .. }) => return Err(self.missing(key)),
            Err(e) => return Err(Self::store_err(key)(e)),
        };
        let e_tag = read.meta.e_tag.clone();
        let bytes = read.bytes().await.map_err(Self::store_err(key))?;
        Ok(OutputInfo {
            sha256: sha256_hex(&bytes),
            rows,
            bytes: Some(bytes.len() as u64),
            e_tag,
        })
    }

    /// The SHA-256 (hex) of an artifact, read as a stream (a checkpoint of gigabytes is never
    /// whole in memory); `None` when it is absent.
    pub async fn sha256(&self, key: &str) -> Result<Option<String>> {
        use sha2::Digest;
        let read = match self.store.get(&self.path(key)).await {
            Ok(read) => read,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Self::store_err(key)(e)),
        };
        let mut hasher = Sha256::new();
        let mut chunks = read.into_stream();
        while let Some(chunk) = chunks.try_next().await.map_err(Self::store_err(key))? {
            hasher.update(&chunk);
        }
        Ok(Some(hex(&hasher.finalize())))
    }

    /// An artifact's metadata (size, entity tag) from the store, without reading it; `None`
    /// when it is absent.
    pub async fn head(&self, key: &str) -> Result<Option<object_store::ObjectMeta>> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_err(key)(e)),
        }
    }

    /// Removes temporary keys left under `prefix` by an interrupted write; returns how many.
    pub async fn clean_temporaries(&self, prefix: &str) -> Result<usize> {
        self.delete_where(prefix, |key| key.contains(TMP_MARKER))
            .await
    }

    /// Deletes the keys under `prefix` that `pick` selects; returns how many. In a local
    /// workspace this includes object_store's staging files of such keys (`<key>#<n>`, left by
    /// a process killed in mid-write; hidden from listings and unreachable through the store).
    async fn delete_where(&self, prefix: &str, pick: impl Fn(&str) -> bool) -> Result<usize> {
        // In a local workspace the writer of a temporary is a process on this machine: one
        // that is still running may be writing it now (two stages started at once), and
        // removing its temporary or staging file would fail its write. Left for a later clean.
        // On S3 the writer may be on another machine: there, young temporaries are left.
        let local = self.local_root.is_some();
        let pick = |key: &str| pick(key) && !(local && writer_is_running(key));
        let now = chrono::Utc::now();
        let young = |modified: chrono::DateTime<chrono::Utc>| {
            self.temp_grace.is_some_and(|grace| {
                // A time ahead of this machine's clock (skew) counts as young too.
                (now - modified).to_std().map_or(true, |age| age < grace)
            })
        };
        let mut n = 0;
        for (key, modified) in self.list_modified(prefix).await? {
            if pick(&key) && !young(modified) {
                self.delete(&key).await?;
                n += 1;
            }
        }
        if let Some(root) = &self.local_root {
            for (key, file) in staging_files(root, prefix)? {
                if pick(&key) {
                    match std::fs::remove_file(&file) {
                        Ok(()) => n += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(DataError::Io {
                                path: file.display().to_string(),
                                source,
                            });
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    /// Removes the temporaries that interrupted writes of `key` left beside it (and no other
    /// key's, so a stage can clean up after itself while another writes the same folder);
    /// returns how many.
    pub async fn clean_temporaries_of(&self, key: &str) -> Result<usize> {
        let parent = key.rsplit_once('/').map_or("", |(parent, _)| parent);
        let stem = format!("{key}{TMP_MARKER}");
        self.delete_where(parent, |k| k.starts_with(&stem)).await
    }
}

/// object_store's staging files under `root/prefix` (any depth): a file named `<name>#<digits>`
/// is the staged write of key `<prefix…>/<name>`. Returns (that key, the file).
fn staging_files(
    root: &std::path::Path,
    prefix: &str,
) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut found = Vec::new();
    let prefix = prefix.trim_matches('/');
    let mut dirs = vec![(root.join(prefix), prefix.to_owned())];
    while let Some((dir, key_dir)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(DataError::Io {
                    path: dir.display().to_string(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if key_dir.is_empty() {
                name.clone()
            } else {
                format!("{key_dir}/{name}")
            };
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push((entry.path(), key)),
                Ok(t) if t.is_file() => {
                    if let Some((stem, n)) = key.rsplit_once('#')
                        && !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                    {
                        found.push((stem.to_owned(), entry.path()));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// Whether the process that named temporary `key` (`….tmp-<pid>-<nonce>`, [`Workspace::temp_key`])
/// is another process running on this machine now. Linux only (`/proc`); elsewhere, or for a
/// name without a pid, false.
fn writer_is_running(key: &str) -> bool {
    let Some((_, rest)) = key.rsplit_once(TMP_MARKER) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a key is a temporary (incomplete) write.
pub fn is_temporary_key(key: &str) -> bool {
    key.contains(TMP_MARKER)
}

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes` (a digest), as manifests and checkpoints record hashes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_round_trip_and_listing() {
        let ws = Workspace::open("memory://ws").unwrap();
        ws.put_atomic("data/a.json", &b"{}"[..]).await.unwrap();
        ws.put_atomic("data/b.bin", &b"xyz"[..]).await.unwrap();
        assert_eq!(
            ws.list("data").await.unwrap(),
            vec!["data/a.json", "data/b.bin"]
        );
        assert_eq!(&ws.get("data/b.bin").await.unwrap()[..], b"xyz");
        assert!(!ws.exists("nope").await.unwrap());
        let e = ws.get("nope").await.unwrap_err();
        assert!(matches!(e, DataError::MissingArtifact { .. }));
    }

    #[tokio::test]
    async fn temporaries_are_cleaned() {
        let dir = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        ws.put_atomic("data/x.tmp-99999901-2", &b"half"[..])
            .await
            .unwrap();
        ws.put_atomic("data/x", &b"whole"[..]).await.unwrap();
        assert_eq!(ws.clean_temporaries("data").await.unwrap(), 1);
        assert_eq!(ws.list("data").await.unwrap(), vec!["data/x"]);
        // Only `data/x`'s own temporaries: not another key's, not a key that merely starts
        // with the same letters.
        for k in [
            "data/x.tmp-99999903-4",
            "data/xy.tmp-99999905-6",
            "data/y.tmp-99999907-8",
        ] {
            ws.put_atomic(k, &b"half"[..]).await.unwrap();
        }
        assert_eq!(ws.clean_temporaries_of("data/x").await.unwrap(), 1);
        let mut left = ws.list("data").await.unwrap();
        left.sort();
        assert_eq!(
            left,
            vec!["data/x", "data/xy.tmp-99999905-6", "data/y.tmp-99999907-8"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A temporary whose writer is still running (here: this test's parent, a process that
    /// surely runs) is another process's write in progress: cleaning leaves it; our own and
    /// those of ended processes go.
    #[tokio::test]
    async fn temporaries_of_running_writers_are_left() {
        let dir = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        let parent = std::os::unix::process::parent_id();
        let me = std::process::id();
        for k in [
            format!("data/x.tmp-{parent}-1"),
            format!("data/x.tmp-{me}-2"),
            "data/x.tmp-99999999-3".to_owned(),
        ] {
            ws.put_atomic(&k, &b"half"[..]).await.unwrap();
        }
        assert_eq!(ws.clean_temporaries("data").await.unwrap(), 2);
        assert_eq!(
            ws.list("data").await.unwrap(),
            vec![format!("data/x.tmp-{parent}-1")]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The age rule of S3 workspaces, on an in-process store: with a grace period, a young
    /// temporary (another machine's write in flight) is left, by both kinds of cleaning; once
    /// it is older than the grace it goes. Finished keys are never touched.
    #[tokio::test]
    async fn young_temporaries_are_left_under_the_age_rule() {
        let ws = Workspace::open("memory://grace")
            .unwrap()
            .with_temp_grace(Some(REMOTE_TEMP_GRACE));
        for k in ["data/x", "data/x.tmp-99999901-1", "data/y.tmp-99999902-2"] {
            ws.put_atomic(k, &b"bytes"[..]).await.unwrap();
        }
        assert_eq!(ws.clean_temporaries("data").await.unwrap(), 0);
        assert_eq!(ws.clean_temporaries_of("data/x").await.unwrap(), 0);
        assert_eq!(ws.list("data").await.unwrap().len(), 3);
        let ws = ws.with_temp_grace(Some(std::time::Duration::ZERO));
        assert_eq!(ws.clean_temporaries_of("data/x").await.unwrap(), 1);
        assert_eq!(ws.clean_temporaries("data").await.unwrap(), 1);
        assert_eq!(ws.list("data").await.unwrap(), vec!["data/x"]);
    }

    /// A fresh workspace `<tag>-<random>` under DIFFREC_TEST_S3_URL (a local S3-compatible
    /// server, which `.ci/run` starts), or `None` without one (a failure when
    /// DIFFREC_REQUIRE_S3 is set).
    fn s3_test_workspace(tag: &str) -> Option<Workspace> {
        let Ok(url) = std::env::var("DIFFREC_TEST_S3_URL") else {
            assert!(
                std::env::var("DIFFREC_REQUIRE_S3").is_err(),
                "DIFFREC_REQUIRE_S3 is set but DIFFREC_TEST_S3_URL is not"
            );
            return None;
        };
        let url = format!(
            "{}/{tag}-{:08x}",
            url.trim_end_matches('/'),
            rand::random::<u32>()
        );
        Some(Workspace::open(&url).unwrap())
    }

    /// The same on a real S3-compatible server (`.ci/run` starts one and sets
    /// DIFFREC_TEST_S3_URL): an S3 workspace opens with the grace, so a fresh temporary stays.
    #[tokio::test]
    async fn s3_workspaces_leave_young_temporaries() {
        let Some(ws) = s3_test_workspace("grace") else {
            return;
        };
        ws.put_atomic("d/x.tmp-99999901-1", &b"half"[..])
            .await
            .unwrap();
        assert_eq!(ws.clean_temporaries("d").await.unwrap(), 0);
        assert_eq!(ws.list("d").await.unwrap(), vec!["d/x.tmp-99999901-1"]);
        let ws = ws.with_temp_grace(Some(std::time::Duration::ZERO));
        assert_eq!(ws.clean_temporaries("d").await.unwrap(), 1);
        assert!(ws.list("d").await.unwrap().is_empty());
    }

    /// On S3 writes go to their key in place, in parts above 10 MiB (one PUT, and the copy a
    /// rename is, stop at 5 GiB on AWS): what is read back is what was written, and no
    /// temporary key is left.
    #[tokio::test]
    async fn s3_writes_in_place_in_parts() {
        let Some(ws) = s3_test_workspace("parts") else {
            return;
        };
        let big: Vec<u8> = (0..25 << 20).map(|i: u32| (i % 251) as u8).collect();
        ws.put_atomic("runs/r/checkpoints/latest.ckpt", big.clone())
            .await
            .unwrap();
        ws.put_atomic("runs/r/small.json", &b"{}"[..])
            .await
            .unwrap();
        let back = ws.get("runs/r/checkpoints/latest.ckpt").await.unwrap();
        assert!(back.len() == big.len() && back[..] == big[..]);
        assert_eq!(
            ws.list("runs").await.unwrap(),
            vec!["runs/r/checkpoints/latest.ckpt", "runs/r/small.json"]
        );
    }

    /// What object_store's local store leaves when a process is killed in mid-write: a staging
    /// file `<key>#<n>` that its listing hides. Cleaning removes those of temporary keys (ours
    /// always write to a temporary key first), at any depth, and leaves every other file.
    #[tokio::test]
    async fn staging_files_of_temporaries_are_cleaned() {
        let dir = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        ws.put_atomic("runs/r/checkpoints/latest.ckpt", &b"whole"[..])
            .await
            .unwrap();
        let ckpt = dir.join("runs/r/checkpoints");
        let files = [
            "latest.ckpt.tmp-99999911-ab#1", // a killed write of latest.ckpt
            "latest.ckpt.tmp-99999912-cd#2", // another one
            "best.ckpt.tmp-99999913-ef#1",   // another key's
            "notes#1",                       // not a temporary's: kept
        ];
        for f in files {
            std::fs::write(ckpt.join(f), b"half").unwrap();
        }
        std::fs::create_dir_all(dir.join("runs/other")).unwrap();
        std::fs::write(dir.join("runs/other/m.json.tmp-99999901-2#1"), b"half").unwrap();
        let on_disk = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // One key's: only its own staging files.
        assert_eq!(
            ws.clean_temporaries_of("runs/r/checkpoints/latest.ckpt")
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            on_disk(&ckpt),
            vec!["best.ckpt.tmp-99999913-ef#1", "latest.ckpt", "notes#1"]
        );
        // A folder's: every temporary's below it, not outside it.
        assert_eq!(ws.clean_temporaries("runs/r").await.unwrap(), 1);
        assert_eq!(on_disk(&ckpt), vec!["latest.ckpt", "notes#1"]);
        assert_eq!(
            on_disk(&dir.join("runs/other")),
            vec!["m.json.tmp-99999901-2#1"]
        );
        assert_eq!(
            &ws.get("runs/r/checkpoints/latest.ckpt").await.unwrap()[..],
            b"whole"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A Parquet write that fails after its upload began (a first batch over the 10 MiB part
    /// size, then one the writer refuses) leaves nothing behind: not the key, not a temporary,
    /// not object_store's staging file of the upload, which was there while it ran.
    #[tokio::test]
    async fn failed_parquet_writes_leave_no_parts() {
        use arrow_array::{Int64Array, StringArray};
        use arrow_schema::{DataType, Field, Schema};
        let dir = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        let field = |t| Field::new("a", t, false);
        let schema = Arc::new(Schema::new(vec![field(DataType::Int64)]));
        // Two row groups' worth of incompressible values (16 MiB in all): the first row group
        // goes out as the second batch is asked for.
        let n = 2 << 20;
        let values = (0..n).map(|i: i64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64));
        let big = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(values))],
        )
        .unwrap();
        let text = Arc::new(Schema::new(vec![field(DataType::Utf8)]));
        let bad = RecordBatch::try_new(text, vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
        let staging = |d: &std::path::Path| {
            std::fs::read_dir(d).map_or(0, |entries| {
                entries
                    .filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .contains('#')
                    })
                    .count()
            })
        };
        let data = dir.join("data");
        let mut batches = vec![big, bad].into_iter();
        let mut staged_while_writing = 0;
        let feed = std::iter::from_fn(|| {
            staged_while_writing = staging(&data);
            batches.next()
        });
        assert!(
            ws.write_parquet("data/x.parquet", schema, feed)
                .await
                .is_err()
        );
        assert_eq!(staged_while_writing, 1, "the upload had begun");
        assert_eq!(staging(&data), 0);
        assert!(ws.list("data").await.unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A Parquet write that fails in its completion (here the one PUT of a small file, under a
    /// "folder" that is a file) is an error like any other, not a panic: the upload cannot be
    /// aborted then, and is not.
    #[tokio::test]
    async fn parquet_writes_failing_to_complete_are_errors() {
        use arrow_array::Int64Array;
        use arrow_schema::{DataType, Field, Schema};
        let dir = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        std::fs::write(dir.join("data"), b"a file").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let e = ws.write_parquet("data/x.parquet", schema, [batch]).await;
        assert!(matches!(e, Err(DataError::Parquet { .. })), "{e:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn opening_for_reading_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let url = dir.join("typo").to_str().unwrap().to_owned();
        let e = Workspace::open_existing(&url).unwrap_err();
        assert!(e.is_input(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&url) && text.contains("no such directory"),
            "{text}"
        );
        assert!(!dir.exists());
        Workspace::open(&url).unwrap();
        assert!(Workspace::open_existing(&url).is_ok());
        // A file where the workspace should be is named as such.
        let file = dir.join("f.csv");
        std::fs::write(&file, "x").unwrap();
        for e in [
            Workspace::open_existing(file.to_str().unwrap()).unwrap_err(),
            Workspace::open(file.to_str().unwrap()).unwrap_err(),
        ] {
            assert!(
                e.is_input() && e.to_string().contains("a file, not a directory"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What opening created goes when nothing was written; an existing folder, or one with a
    /// file anywhere below, stays.
    #[tokio::test]
    async fn unused_new_folders_are_removed() {
        let dir = std::env::temp_dir().join(format!("diffrec-ws-unused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nested = dir.join("a").join("b");
        let ws = Workspace::open(nested.to_str().unwrap()).unwrap();
        assert!(nested.is_dir());
        ws.remove_if_unused();
        assert!(!dir.join("a").exists(), "both new levels are removed");
        assert!(dir.is_dir(), "the existing parent stays");

        let ws = Workspace::open(nested.to_str().unwrap()).unwrap();
        std::fs::create_dir_all(nested.join("data/empty")).unwrap();
        ws.remove_if_unused();
        assert!(!dir.join("a").exists(), "empty folders are no use either");

        let ws = Workspace::open(nested.to_str().unwrap()).unwrap();
        ws.put_atomic("data/x.json", b"{}".to_vec()).await.unwrap();
        std::fs::create_dir_all(nested.join("runs/empty")).unwrap();
        ws.remove_if_unused();
        assert!(!nested.join("runs").exists(), "empty folders beside it go");
        assert!(
            nested.join("data/x.json").is_file(),
            "a written file keeps them"
        );

        let again = Workspace::open(nested.to_str().unwrap()).unwrap();
        std::fs::remove_file(nested.join("data/x.json")).unwrap();
        again.remove_if_unused();
        assert!(nested.is_dir(), "a folder that existed is never removed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_urls_are_named() {
        let e = Workspace::open("ftp://x/y").unwrap_err().to_string();
        assert!(
            e.contains("ftp://x/y") && e.contains("unsupported scheme"),
            "{e}"
        );
        // Slips refused before a local folder named after them is made, and what S3 tools
        // read differently.
        for (url, says) in [
            ("s3:/bucket/x", "without its `://`"),
            ("memory:x", "without its `://`"),
            ("file://relative/ws", "absolute path"),
            ("file://", "the file system's root"),
            (" ", "empty workspace URL"),
            ("/", "the file system's root"),
            ("file:///", "the file system's root"),
            ("s3://b/x?y=1", "'?' in the key"),
            ("s3://b/x#frag", "'#' in the key"),
            ("s3:///x", "needs a bucket"),
            ("s3://my bucket/x", "cannot be part of a bucket name"),
            ("s3://b/x/../y", "x/../y"),
        ] {
            let e = Workspace::check_url(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(Workspace::open(url).is_err(), "{url}");
        }
        assert!(!std::path::Path::new("s3:").exists());
        assert!(Workspace::check_url("relative/ws").is_ok());
        assert!(Workspace::check_url("file:///abs/ws").is_ok());
        assert!(Workspace::check_url("file://localhost/abs/ws").is_ok());
        for url in [
            "file://host/abs/ws",
            "file://localhostx/ws",
            "file://rel/ws",
        ] {
            let e = Workspace::check_url(url).unwrap_err();
            assert!(e.contains("absolute path"), "{url}: {e}");
        }
    }

    /// `file://` URLs are percent-decoded (RFC 8089; Python's `Path.as_uri()` encodes a space
    /// and every non-ASCII byte), and one written with the characters themselves works too.
    #[test]
    fn file_urls_are_percent_decoded() {
        let base = std::env::temp_dir().join(format!("diffrec-ws-{}", rand::random::<u32>()));
        let encoded = format!("file://{}/my%20ws%C3%BC", base.display());
        let ws = Workspace::open(&encoded).unwrap();
        assert!(base.join("my wsü").is_dir());
        assert!(!base.join("my%20ws%C3%BC").exists());
        drop(ws);
        let written = format!("file://{}/my wsü", base.display());
        assert!(Workspace::open_existing(&written).is_ok());
        let local = format!("file://localhost{}/my%20ws%C3%BC", base.display());
        assert_eq!(file_url_path(&local).unwrap(), base.join("my wsü"));
        assert_eq!(
            file_url_path("file://localhost/data/run#2").unwrap(),
            std::path::PathBuf::from("/data/run#2")
        );
        assert_eq!(file_url_path("/no/scheme"), None);
        assert_eq!(
            file_url_path("file:///data/run#2?x").unwrap(),
            std::path::PathBuf::from("/data/run#2?x")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    /// S3 prefixes are keys as written (as the AWS CLI, boto3 and DuckDB read `s3://` URLs),
    /// not percent-encoded twice over; repeated slashes count as one.
    #[test]
    fn s3_prefixes_are_taken_as_written() {
        for (rest, bucket, prefix) in [
            ("b/a b/ünï", "b", "a b/ünï"),
            ("b/x%20y/", "b", "x%20y"),
            ("b//dt=2024-01-01//run", "b", "dt=2024-01-01/run"),
            ("b", "b", ""),
            ("b/", "b", ""),
        ] {
            let (b, p) = s3_location(rest).unwrap();
            assert_eq!((b, p.as_ref()), (bucket, prefix), "{rest}");
        }
    }
}
