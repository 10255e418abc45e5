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

use crate::error::{DataError, Result};
use crate::workspace::Workspace;

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
        match (ws.size(key).await?, info.bytes) {
            (None, _) => return Ok(Freshness::Stale(format!("output {key} is missing"))),
            (Some(now), Some(recorded)) if now != recorded => {
                return Ok(Freshness::Stale(format!(
                    "output {key} has {now} bytes, its manifest records {recorded} (damaged or \
                     replaced)"
                )));
            }
            _ => {}
        }
    }
    Ok(Freshness::UpToDate)
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
