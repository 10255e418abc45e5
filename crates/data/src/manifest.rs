//! Stage manifests: `<stage dir>/_manifest.json`, written last by every stage.
//!
//! A manifest records what a stage ran with (tool version, resolved config, SHA-256 of each
//! input) and what it produced (each output's hash and row count). Its presence is the proof
//! that the stage's outputs are complete: a stage deletes its manifest before it starts writing
//! and writes it only after every output has landed. `diffrec run` skips a stage whose manifest
//! matches the current config and inputs and whose outputs are all still there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::error::{DataError, Result};
use crate::workspace::{Workspace, sha256_hex};

/// One produced artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    pub sha256: String,
    /// Rows, for tabular artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Size in bytes (manifests written since 2026-12-01): an output of another size than
    /// recorded (cut short, replaced) makes the stage stale, checked from the store's metadata
    /// without reading the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The store's entity tag of the output as written (manifests written since 2026-12-02's
    /// thirtieth session): S3's ETag; a local file's inode, modification time and size. The
    /// same tag now means the same file, checked from the store's metadata; another one (a
    /// file replaced, or the workspace copied elsewhere) has the output's SHA-256 computed and
    /// compared with `sha256`. Absent: the SHA-256 is compared every time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

/// `<stage dir>/_manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageManifest {
    pub stage: String,
    pub tool_version: String,
    /// The stage's resolved configuration section(s).
    pub config: serde_json::Value,
    /// Input name (path, URL or artifact key) → SHA-256.
    pub inputs: BTreeMap<String, String>,
    /// Output key → hash and rows.
    pub outputs: BTreeMap<String, OutputInfo>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The build of diffrec that wrote it ([`build`]): `tool_version` is the release, shared
    /// by every build of it. Absent in manifests written before 2026-12-01's twenty-sixth
    /// session, and where the binary did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// What the stages this one read from recorded of their own runs when it started, by stage
    /// (`ingest`, `cluster`): their `config` and `inputs` (the source file and its hash). A
    /// later ingest replaces their manifests; this keeps which data and settings this stage's
    /// outputs came from ([`upstream_records`]). Not compared by [`freshness`]: `inputs` holds
    /// the hashes that decide it. Absent before the twenty-sixth session.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, serde_json::Value>,
    /// The revision of the stage's rules that wrote the outputs: raised when a diffrec makes
    /// different outputs of the same configuration and inputs (ingest: [`INGEST_RULES`]), so a
    /// manifest of older rules is stale. 0 (absent) before the first such change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rules: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The ingest stage's rules revision ([`StageManifest::rules`]). 1: de-duplication before the
/// rating threshold, `per_user_ratio` cuts rounded in f64 as the paper's split, natural noise
/// placed after the clean split (2026-12-02).
pub const INGEST_RULES: u32 = 1;

static BUILD: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the build id manifests record (`diffrec` sets the commit it was built from, once, at
/// start). Later calls change nothing.
pub fn set_build(id: &str) {
    let _ = BUILD.set(id.to_owned());
}

/// The build id set by [`set_build`], for a manifest's `build`.
pub fn build() -> Option<String> {
    BUILD.get().cloned()
}

/// [`StageManifest::upstream`]: the `config` and `inputs` of each named stage's manifest
/// (`(stage name, stage directory)`), those that have one.
pub async fn upstream_records(
    ws: &Workspace,
    stages: &[(&str, &str)],
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut records = BTreeMap::new();
    for &(stage, dir) in stages {
        if let Some(m) = ws.get_json::<StageManifest>(&manifest_key(dir)).await? {
            let record = serde_json::json!({"config": m.config, "inputs": m.inputs});
            records.insert(stage.to_owned(), record);
        }
    }
    Ok(records)
}

/// The key of a stage's manifest inside its directory.
pub fn manifest_key(stage_dir: &str) -> String {
    format!("{}/_manifest.json", stage_dir.trim_end_matches('/'))
}

/// Whether a stage must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The manifest matches and every output exists.
    UpToDate,
    /// Why the stage must run.
    Stale(String),
}

/// Compares the stored manifest with the config and inputs of this run.
pub async fn freshness(
    ws: &Workspace,
    stage_dir: &str,
    config: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
) -> Result<Freshness> {
    freshness_resolving(ws, stage_dir, config, inputs, 0, serde_json::Value::clone).await
}

/// [`freshness`], with the recorded config put through `resolve` before it is compared: a
/// manifest written before a default was recorded resolved compares as written out.
pub async fn freshness_resolving(
    ws: &Workspace,
    stage_dir: &str,
    config: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
    rules: u32,
    resolve: impl Fn(&serde_json::Value) -> serde_json::Value,
) -> Result<Freshness> {
    let m = match ws.get_json::<StageManifest>(&manifest_key(stage_dir)).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Ok(Freshness::Stale(
                "no manifest (never ran, or an earlier run did not finish)".into(),
            ));
        }
        Err(DataError::BadArtifact { .. }) => {
            return Ok(Freshness::Stale("its manifest is damaged".into()));
        }
        Err(e) => return Err(e),
    };
    if m.tool_version != env!("CARGO_PKG_VERSION") {
        return Ok(Freshness::Stale(format!(
            "written by diffrec {} (this is {})",
            m.tool_version,
            env!("CARGO_PKG_VERSION")
        )));
    }
    if m.rules != rules {
        return Ok(Freshness::Stale(format!(
            "written under other rules (revision {}, this diffrec's is {rules}: docs/decisions.md)",
            m.rules
        )));
    }
    if &resolve(&m.config) != config {
        return Ok(Freshness::Stale("the stage's configuration changed".into()));
    }
    if &m.inputs != inputs {
        return Ok(Freshness::Stale("an input changed".into()));
    }
    for (key, info) in &m.outputs {
        if let Some(why) = output_differs(ws, key, info).await? {
            return Ok(Freshness::Stale(why));
        }
    }
    Ok(Freshness::UpToDate)
}

/// Why the output at `key` is not what its stage wrote (`info`), `None` when it is: missing,
/// of another size, or (where the store's entity tag changed or was not recorded) of another
/// SHA-256. An output recorded without a size (one a later stage rewrites) only needs to exist.
async fn output_differs(ws: &Workspace, key: &str, info: &OutputInfo) -> Result<Option<String>> {
    let Some(meta) = ws.head(key).await? else {
        return Ok(Some(format!("output {key} is missing")));
    };
    let Some(recorded) = info.bytes else {
        return Ok(None);
    };
    if meta.size != recorded {
        return Ok(Some(format!(
            "output {key} has {} bytes, its manifest records {recorded} (damaged or replaced)",
            meta.size
        )));
    }
    if info.e_tag.is_some() && info.e_tag == meta.e_tag {
        return Ok(None);
    }
    let sha = sha256_hex(&ws.get(key).await?);
    Ok((sha != info.sha256).then(|| {
        format!(
            "output {key} is not the file the stage wrote: its SHA-256 differs from its \
             manifest's record (damaged or replaced)"
        )
    }))
}

/// Reads `key`, an output of the stage in `stage_dir`, checked against the SHA-256 the stage's
/// manifest records of it: a file replaced or damaged since the stage wrote it is refused,
/// naming both hashes and the rerun, instead of being read as the stage's output. Without a
/// manifest, or one that records nothing of `key`, it is read unchecked (the stages refuse a
/// missing manifest before they read).
pub async fn read_recorded(ws: &Workspace, stage_dir: &str, key: &str) -> Result<Bytes> {
    let manifest = manifest_key(stage_dir);
    let recorded = |m: Option<StageManifest>| {
        m.and_then(|m| {
            m.outputs
                .get(key)
                .map(|o| (m.stage.clone(), o.sha256.clone()))
        })
    };
    let before = recorded(ws.get_json(&manifest).await?);
    let bytes = ws.get(key).await?;
    let Some((stage, want)) = before else {
        return Ok(bytes);
    };
    let sha = sha256_hex(&bytes);
    if sha == want {
        return Ok(bytes);
    }
    // The stage ran again meanwhile (it removes its manifest, then writes its outputs anew).
    if recorded(ws.get_json(&manifest).await?) != Some((stage.clone(), want.clone())) {
        return Err(DataError::ChangedWhileRead {
            key: key.to_owned(),
            stage,
        });
    }
    Err(DataError::Changed {
        key: key.to_owned(),
        stage,
        manifest,
        sha256: sha,
        recorded: want,
    })
}

/// Outputs that describe how a stage ran, not the data a later stage reads (`data/source.json`:
/// what ingest dropped from the source): no input of a later stage, whose outputs they cannot
/// change.
pub fn is_report(key: &str) -> bool {
    key == crate::artifacts::SOURCE
}

/// The output hashes of an upstream stage's manifest, as input hashes of a downstream stage
/// (reports left out: [`is_report`]).
pub async fn upstream_hashes(
    ws: &Workspace,
    stage_dir: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    Ok(ws
        .get_json::<StageManifest>(&manifest_key(stage_dir))
        .await?
        .map(|m| {
            m.outputs
                .into_iter()
                .filter(|(k, _)| !is_report(k))
                .map(|(k, v)| (k, v.sha256))
                .collect()
        }))
}
