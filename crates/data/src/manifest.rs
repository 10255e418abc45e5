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
    /// compared with `sha256`. Absent (an older manifest): the size alone is compared.
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
    let recorded = resolve(&m.config);
    if &recorded != config {
        // Ingest's settings are the `data` section itself; the other stages' name theirs.
        let root = if stage_dir == crate::ingest::STAGE_DIR {
            "data"
        } else {
            ""
        };
        let mut keys = Vec::new();
        crate::differences::differing_keys_as(root, &recorded, config, "last run", &mut keys);
        // A key absent on one side and null on the other differs only in spelling.
        return Ok(Freshness::Stale(match keys.is_empty() {
            true => "the stage's settings changed".into(),
            false => format!("settings changed: {}", some_of(&keys)),
        }));
    }
    if &m.inputs != inputs {
        use crate::differences::{InputChange, differing_inputs};
        let changed: Vec<String> = differing_inputs(&m.inputs, inputs)
            .into_iter()
            .map(|(k, change)| match change {
                InputChange::Changed => format!("{k} changed"),
                InputChange::New => format!("{k} is new"),
                InputChange::Gone => format!("{k} is no longer read"),
            })
            .collect();
        return Ok(Freshness::Stale(format!(
            "inputs changed: {}",
            some_of(&changed)
        )));
    }
    // A stage folder copied or renamed from another (a run's, `runs/h` as `runs/g`) keeps the
    // other's manifest: its outputs are not this stage's, however intact they are.
    let own = format!("{}/", stage_dir.trim_end_matches('/'));
    if let Some(other) = m.outputs.keys().find(|k| !k.starts_with(&own)) {
        return Ok(Freshness::Stale(format!(
            "its manifest records {other}, another folder's output (copied or renamed from there)"
        )));
    }
    for (key, info) in &m.outputs {
        if let Some(why) = output_differs(ws, key, info).await? {
            return Ok(Freshness::Stale(why));
        }
    }
    Ok(Freshness::UpToDate)
}

/// The first three of `items`, joined, and how many more there are.
fn some_of(items: &[String]) -> String {
    match items.len() {
        0..=3 => items.join("; "),
        n => format!("{}; and {} more", items[..3].join("; "), n - 3),
    }
}

/// Why the output at `key` is not what its stage wrote (`info`), `None` when it is: missing,
/// of another size, or (where the store's entity tag recorded since 2026-12-02 differs: a file
/// replaced, or the workspace copied elsewhere) of another SHA-256. An output recorded without
/// a size (one a later stage rewrites) only needs to exist; one recorded without an entity tag
/// (an older manifest) is compared by size alone, as when it was written.
pub async fn output_differs(
    ws: &Workspace,
    key: &str,
    info: &OutputInfo,
) -> Result<Option<String>> {
    let missing = || Some(format!("output {key} is missing"));
    let Some(meta) = ws.head(key).await? else {
        return Ok(missing());
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
    if info.e_tag.is_none() || info.e_tag == meta.e_tag {
        return Ok(None);
    }
    // Deleted since the metadata was read (a stage running again): missing, not an error.
    Ok(match ws.sha256(key).await? {
        None => missing(),
        Some(sha) if sha != info.sha256 => Some(format!(
            "output {key} is not the file the stage wrote: its SHA-256 differs from its \
             manifest's record (damaged or replaced)"
        )),
        Some(_) => None,
    })
}

/// A stage's manifest as read once, to read several of its outputs checked against it
/// ([`Recorded::read`]): all of them then belong to the same run of the stage.
pub struct Recorded {
    key: String,
    manifest: Option<StageManifest>,
}

impl Recorded {
    /// Reads the manifest of the stage in `stage_dir` (none is `None`: reads go unchecked).
    pub async fn load(ws: &Workspace, stage_dir: &str) -> Result<Self> {
        let key = manifest_key(stage_dir);
        let manifest = ws.get_json(&key).await?;
        Ok(Recorded { key, manifest })
    }

    /// Reads `key`, an output of the stage, checked against the SHA-256 the manifest records
    /// of it: a file replaced or damaged since the stage wrote it is refused
    /// ([`DataError::Changed`], naming both hashes and the rerun) instead of being read as the
    /// stage's output; one that changed because the stage runs again meanwhile (its manifest
    /// is gone or another now) is [`DataError::ChangedWhileRead`]. Without a manifest, or one
    /// that records nothing of `key`, it is read unchecked (the stages refuse a missing
    /// manifest before they read).
    pub async fn read(&self, ws: &Workspace, key: &str) -> Result<Bytes> {
        let bytes = ws.get(key).await?;
        let Some((m, info)) = self
            .manifest
            .as_ref()
            .and_then(|m| Some((m, m.outputs.get(key)?)))
        else {
            return Ok(bytes);
        };
        let sha = sha256_hex(&bytes);
        if sha == info.sha256 {
            return Ok(bytes);
        }
        if ws.get_json::<StageManifest>(&self.key).await?.as_ref() != Some(m) {
            return Err(DataError::ChangedWhileRead {
                key: key.to_owned(),
                stage: m.stage.clone(),
            });
        }
        Err(DataError::Changed {
            key: key.to_owned(),
            stage: m.stage.clone(),
            manifest: self.key.clone(),
            sha256: sha,
            recorded: info.sha256.clone(),
        })
    }
}

/// [`Recorded::read`] of one output of the stage in `stage_dir`.
pub async fn read_recorded(ws: &Workspace, stage_dir: &str, key: &str) -> Result<Bytes> {
    Recorded::load(ws, stage_dir).await?.read(ws, key).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A local stage folder with one output and its manifest; returns the workspace's folder.
    async fn stage(dir: &std::path::Path) -> Workspace {
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        ws.put_atomic("s/out.bin", &b"the stage's output"[..])
            .await
            .unwrap();
        let info = ws.output_info("s/out.bin", None).await.unwrap();
        assert!(info.e_tag.is_some(), "a local file has an entity tag");
        let now = Utc::now();
        let m = StageManifest {
            stage: "s".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            config: serde_json::json!({}),
            inputs: BTreeMap::new(),
            outputs: [("s/out.bin".to_owned(), info)].into(),
            started_at: now,
            finished_at: now,
            build: None,
            upstream: BTreeMap::new(),
            rules: 0,
        };
        ws.put_json(&manifest_key("s"), &m).await.unwrap();
        ws
    }

    async fn fresh(ws: &Workspace) -> Freshness {
        freshness(ws, "s", &serde_json::json!({}), &BTreeMap::new())
            .await
            .unwrap()
    }

    /// The entity tag decides alone while it matches; where it differs (a copy of the
    /// workspace: other inodes) the content does; a byte changed in place (same size) makes
    /// the stage stale, and reading the output through its manifest is refused.
    #[tokio::test]
    async fn outputs_are_checked_by_tag_then_content() {
        let dir = std::env::temp_dir().join(format!("diffrec-fresh-{}", rand::random::<u32>()));
        let ws = stage(&dir).await;
        assert_eq!(fresh(&ws).await, Freshness::UpToDate);
        let copy = dir.with_extension("copy");
        std::fs::create_dir_all(copy.join("s")).unwrap();
        for f in ["s/out.bin", "s/_manifest.json"] {
            std::fs::copy(dir.join(f), copy.join(f)).unwrap();
        }
        let copied = Workspace::open(copy.to_str().unwrap()).unwrap();
        let tags = [&ws, &copied].map(|w| w.head("s/out.bin"));
        let [a, b] = tags;
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_ne!(a.e_tag, b.e_tag, "another file, another tag");
        assert_eq!(fresh(&copied).await, Freshness::UpToDate);
        assert_eq!(
            &read_recorded(&copied, "s", "s/out.bin").await.unwrap()[..],
            b"the stage's output"
        );

        std::fs::write(copy.join("s/out.bin"), b"the stage's outpuT").unwrap();
        let Freshness::Stale(why) = fresh(&copied).await else {
            panic!("a changed byte went unseen");
        };
        assert!(why.contains("is not the file the stage wrote"), "{why}");
        let e = read_recorded(&copied, "s", "s/out.bin").await.unwrap_err();
        assert!(
            matches!(e, DataError::Changed { .. }) && e.is_input(),
            "{e}"
        );
        // A manifest from before entity tags were recorded: the size alone, as then.
        let mut m: StageManifest = copied.get_json(&manifest_key("s")).await.unwrap().unwrap();
        m.outputs.get_mut("s/out.bin").unwrap().e_tag = None;
        copied.put_json(&manifest_key("s"), &m).await.unwrap();
        assert_eq!(fresh(&copied).await, Freshness::UpToDate);
        // A folder whose manifest records another folder's outputs is stale, intact or not.
        m.outputs = [("t/out.bin".to_owned(), m.outputs["s/out.bin"].clone())].into();
        copied.put_json(&manifest_key("s"), &m).await.unwrap();
        assert!(matches!(fresh(&copied).await, Freshness::Stale(w) if w.contains("t/out.bin")));
        for d in [dir, copy] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    /// A stage that runs again says which of its settings, or which inputs, changed.
    #[tokio::test]
    async fn stale_reasons_name_the_keys_and_inputs() {
        let dir = std::env::temp_dir().join(format!("diffrec-fresh-{}", rand::random::<u32>()));
        let ws = stage(&dir).await;
        let mut m: StageManifest = ws.get_json(&manifest_key("s")).await.unwrap().unwrap();
        m.config = serde_json::json!({"train": {"lr": 0.001, "seed": 1}, "k": 2});
        m.inputs = [("data/a.parquet", "aa"), ("data/b.parquet", "bb")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        ws.put_json(&manifest_key("s"), &m).await.unwrap();
        let why = |config: serde_json::Value, inputs: &[(&str, &str)]| {
            let inputs = inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let ws = &ws;
            async move {
                match freshness(ws, "s", &config, &inputs).await.unwrap() {
                    Freshness::Stale(why) => why,
                    Freshness::UpToDate => "up to date".into(),
                }
            }
        };
        let now = serde_json::json!({"train": {"lr": 0.0005, "seed": 1}, "k": 3});
        assert_eq!(
            why(now, &[]).await,
            "settings changed: `k` 2 (last run) vs 3 (now); `train.lr` 0.001 (last run) vs \
             0.0005 (now)"
        );
        let same = m.config.clone();
        assert_eq!(
            why(
                same.clone(),
                &[("data/a.parquet", "aa"), ("data/c.parquet", "cc")]
            )
            .await,
            "inputs changed: data/b.parquet is no longer read; data/c.parquet is new"
        );
        assert_eq!(
            why(same, &[("data/a.parquet", "a2"), ("data/b.parquet", "bb")]).await,
            "inputs changed: data/a.parquet changed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
