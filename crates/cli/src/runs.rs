//! `diffrec runs`: the workspace's runs, one line each, with the state each is in (finished,
//! training in some process now, stopped), how far it trained, its metrics at the best epoch
//! and whether the workspace's data is still what it was trained on. Read from what the runs
//! wrote: manifests, `summary.json`, the latest checkpoint's training state (its head only) and
//! heartbeats. It reads; it changes nothing, not even a killed process's heartbeat.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use diffrec_data::manifest::{StageManifest, manifest_key};
use diffrec_data::running::{self, Live};
use diffrec_data::workspace::is_temporary_key;
use diffrec_data::{DataError, Workspace};
use diffrec_trainer::checkpoint::TrainState;
use diffrec_trainer::train::{latest_state, recommendations_key, run_dir, select_k, summary_key};
use diffrec_trainer::{Summary, TrainError};
use serde::Serialize;

use crate::infer_stage::changed_data;
use crate::stdout;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its train stage completed: `_manifest.json` is there (evaluate and recommend read it).
    Finished,
    /// A process is training it now (a live heartbeat under `runs/<name>/_running/`).
    Training,
    /// Neither: killed, failed or stopped by a signal; `diffrec stage train` resumes it.
    Stopped,
    /// Its manifest does not parse: the train stage writes it again.
    Damaged,
}

/// Whether the run was trained on the data the workspace holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataState {
    /// The ingested artifacts are those the run recorded.
    Current,
    /// Ingested again since (a refreshed source, other settings): evaluate and recommend refuse
    /// the run, and the train stage trains it anew.
    Changed,
    /// No completed ingest in the workspace.
    NoIngest,
    /// The run records no inputs (a checkpoint written before it did, or none yet).
    Unknown,
}

/// The process training a run, from its heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// Seconds since the heartbeat was last written.
    pub heartbeat_age_s: u64,
}

/// One run: a line of the table, an object of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run: String,
    pub state: State,
    /// `diffrec`, `t-diffrec`, `l-diffrec`, `lt-diffrec` (absent where nothing records it yet).
    pub variant: Option<String>,
    pub seed: Option<u64>,
    /// Epochs trained: a finished run's `epochs_run`, otherwise its latest checkpoint's epoch
    /// (0 before the first).
    pub epochs: usize,
    /// The epoch whose model the run keeps (0 before any evaluation).
    pub best_epoch: usize,
    /// The cutoff of the three metrics below: the one that selects the best epoch (20, or the
    /// first of `evaluate.ks`).
    pub k: Option<usize>,
    /// Validation Recall@k at the best epoch (what selects it).
    pub valid_recall: Option<f64>,
    /// Test Recall@k and NDCG@k at the best epoch (a finished run's: as its latest train or
    /// evaluate stage computed them).
    pub test_recall: Option<f64>,
    pub test_ndcg: Option<f64>,
    pub data: DataState,
    /// Whether `recommendations.parquet` is there.
    pub recommendations: bool,
    /// When the train stage finished (finished runs).
    pub finished_at: Option<DateTime<Utc>>,
    /// The newest last-modified time of the run's files.
    pub last_written: Option<DateTime<Utc>>,
    /// Training runs: the process, as its heartbeat names it.
    pub running: Option<Running>,
    /// What to do about it, where something is to be done (empty otherwise).
    pub note: String,
}

/// Lists the runs under `runs/` of the workspace at `ws_url`, as a table or (`json`) one JSON
/// object per line.
pub async fn list(ws_url: &str, json: bool) -> Result<()> {
    let ws = crate::infer_stage::open_workspace(ws_url, "no runs to list")?;
    ws.check_reachable().await?;
    let rows = rows(&ws).await?;
    if rows.is_empty() && !json {
        eprintln!("runs: no runs in {ws_url}");
        return Ok(());
    }
    stdout::write_data(|out| match json {
        true => rows.iter().try_for_each(|r| {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")
        }),
        false => out.write_all(table(&rows).as_bytes()),
    })
}

/// What one listing of `runs/` shows of a run.
#[derive(Default)]
struct Listed {
    /// Files other than heartbeats.
    written: bool,
    /// Heartbeat files (live or not: [`running::running`] judges).
    beats: bool,
    /// The newest last-modified time of the files other than heartbeats.
    last_written: Option<DateTime<Utc>>,
}

/// Every run of the workspace, by name.
pub async fn rows(ws: &Workspace) -> Result<Vec<RunRow>> {
    let mut runs: BTreeMap<String, Listed> = BTreeMap::new();
    for (key, modified) in ws.list_modified("runs").await? {
        let Some((run, rest)) = key.strip_prefix("runs/").and_then(|k| k.split_once('/')) else {
            continue;
        };
        if is_temporary_key(&key) {
            continue;
        }
        let entry = runs.entry(run.to_owned()).or_default();
        if rest.starts_with("_running/") {
            entry.beats = true;
        } else {
            entry.written = true;
            entry.last_written = entry.last_written.max(Some(modified));
        }
    }
    let mut rows = Vec::new();
    for (run, listed) in runs {
        // Heartbeats are read only where the listing showed some.
        let live = match listed.beats {
            true => running::running(ws, &run_dir(&run)).await?,
            false => Vec::new(),
        };
        // A folder holding only heartbeats is a run only while one of them is live.
        if !listed.written && live.is_empty() {
            continue;
        }
        rows.push(row(ws, &run, live, listed.last_written).await?);
    }
    Ok(rows)
}

/// The row of one run.
async fn row(
    ws: &Workspace,
    run: &str,
    live: Vec<Live>,
    last_written: Option<DateTime<Utc>>,
) -> Result<RunRow> {
    let mut r = RunRow {
        run: run.to_owned(),
        state: State::Stopped,
        variant: None,
        seed: None,
        epochs: 0,
        best_epoch: 0,
        k: None,
        valid_recall: None,
        test_recall: None,
        test_ndcg: None,
        data: DataState::Unknown,
        recommendations: ws.exists(&recommendations_key(run)).await?,
        finished_at: None,
        last_written,
        running: None,
        note: String::new(),
    };
    if let Some(beat) = live.first() {
        r.state = State::Training;
        r.running = Some(Running {
            pid: beat.beat.as_ref().map(|b| b.pid),
            host: beat.beat.as_ref().map(|b| b.host.clone()),
            started_at: beat.beat.as_ref().map(|b| b.started_at),
            heartbeat_age_s: beat.age.as_secs(),
        });
        r.note = beat.to_string();
        // Its checkpoint as of the last epoch it wrote; one being replaced reads as none.
        if let Ok(Some(state)) = latest_state(ws, run).await {
            from_checkpoint(ws, &mut r, &state).await?;
        }
        return Ok(r);
    }
    let manifest_at = manifest_key(&run_dir(run));
    let manifest = match ws.get_json::<StageManifest>(&manifest_at).await {
        Ok(m) => Ok(m),
        Err(DataError::BadArtifact { .. }) => Err(()),
        Err(e) => return Err(e.into()),
    };
    match manifest {
        Ok(Some(manifest)) => finished(ws, &mut r, &manifest).await?,
        Ok(None) => match latest_state(ws, run).await {
            Ok(Some(state)) => {
                from_checkpoint(ws, &mut r, &state).await?;
                r.note = match r.data {
                    DataState::Changed => "stopped; the data changed since, so `diffrec stage \
                                           train` trains it anew"
                        .to_owned(),
                    _ => format!(
                        "stopped after epoch {}; `diffrec stage train` (or `diffrec run`) \
                         resumes it",
                        r.epochs
                    ),
                };
            }
            Ok(None) => {
                r.note = "stopped before its first epoch ended; `diffrec stage train` starts it"
                    .to_owned();
            }
            // The store's errors (a lost connection) are this command's failure, exit 1.
            Err(TrainError::Data(e)) => return Err(e.into()),
            Err(e) => {
                r.note = format!(
                    "stopped; its latest checkpoint does not read ({e}): `diffrec stage train \
                     --force` trains it anew"
                );
            }
        },
        Err(()) => {
            r.state = State::Damaged;
            r.note = format!(
                "{manifest_at} does not parse: `diffrec stage train` writes it again from the \
                 run's checkpoint"
            );
        }
    }
    Ok(r)
}

/// A finished run's figures: its summary's, its manifest's time, inputs and settings.
async fn finished(ws: &Workspace, r: &mut RunRow, manifest: &StageManifest) -> Result<()> {
    r.state = State::Finished;
    r.finished_at = Some(manifest.finished_at);
    r.variant = manifest.config["model"]["variant"]
        .as_str()
        .map(str::to_owned);
    r.seed = manifest.config["train"]["seed"].as_u64();
    r.data = data_state(ws, &manifest.inputs).await?;
    let key = summary_key(&r.run);
    match ws.get_json::<Summary>(&key).await {
        Ok(Some(s)) => {
            r.epochs = s.epochs_run;
            r.best_epoch = s.best_epoch;
            // The evaluate stage's cut-offs where it evaluated last, else training's.
            let ks = s.evaluated_by.as_ref().and_then(|e| e.ks.clone());
            let ks = ks.or_else(|| ks_of(&manifest.config));
            set_metrics(r, &s.valid, &s.test, ks);
        }
        Ok(None) => {
            r.note = format!("no {key}: `diffrec stage train` writes it again from the checkpoint")
        }
        Err(DataError::BadArtifact { .. }) => {
            r.note = format!(
                "{key} does not parse: `diffrec stage train` writes it again from the checkpoint"
            )
        }
        Err(e) => return Err(e.into()),
    }
    if r.data == DataState::Changed {
        r.note = "trained on data ingested before the data there is now: evaluate and \
                  recommend refuse it; `diffrec run` trains it anew"
            .to_owned();
    }
    Ok(())
}

/// A run's figures from its latest checkpoint's training state (training or stopped).
async fn from_checkpoint(ws: &Workspace, r: &mut RunRow, state: &TrainState) -> Result<()> {
    r.epochs = state.epoch;
    r.best_epoch = state.best_epoch;
    let config = &state.fingerprinted["config"];
    r.variant = config["model"]["variant"].as_str().map(str::to_owned);
    r.seed = config["train"]["seed"].as_u64();
    if let Some(best) = state
        .evaluations
        .iter()
        .find(|e| e.epoch == state.best_epoch)
    {
        set_metrics(r, &best.valid, &best.test, ks_of(config));
    }
    let inputs: Option<BTreeMap<String, String>> =
        serde_json::from_value(state.fingerprinted["inputs"].clone()).ok();
    if let Some(inputs) = inputs {
        r.data = data_state(ws, &inputs).await?;
    }
    Ok(())
}

/// `evaluate.ks` of a recorded configuration (a run manifest's, a checkpoint fingerprint's).
fn ks_of(config: &serde_json::Value) -> Option<Vec<usize>> {
    serde_json::from_value(config["evaluate"]["ks"].clone()).ok()
}

/// Recall@k on validation, Recall@k and NDCG@k on test, k as the training selects it from
/// `ks` (the cut-offs evaluated, in the configured order: 20, or the first); without them, or
/// where the metrics lack that k, 20 or the smallest there is.
fn set_metrics(
    r: &mut RunRow,
    valid: &BTreeMap<String, f64>,
    test: &BTreeMap<String, f64>,
    ks: Option<Vec<usize>>,
) {
    let recall = |k: &usize| valid.contains_key(&format!("recall@{k}"));
    let mut there: Vec<usize> = valid
        .keys()
        .filter_map(|m| m.strip_prefix("recall@")?.parse().ok())
        .collect();
    there.sort_unstable();
    let configured = ks.filter(|ks| !ks.is_empty()).map(|ks| select_k(&ks));
    let Some(k) = configured
        .filter(recall)
        .or_else(|| (!there.is_empty()).then(|| select_k(&there)))
    else {
        return;
    };
    r.k = Some(k);
    r.valid_recall = valid.get(&format!("recall@{k}")).copied();
    r.test_recall = test.get(&format!("recall@{k}")).copied();
    r.test_ndcg = test.get(&format!("ndcg@{k}")).copied();
}

async fn data_state(ws: &Workspace, inputs: &BTreeMap<String, String>) -> Result<DataState> {
    let stage = diffrec_data::ingest::STAGE_DIR;
    if !inputs.keys().any(|k| k.starts_with(&format!("{stage}/"))) {
        return Ok(DataState::Unknown);
    }
    Ok(match changed_data(ws, inputs).await? {
        None => DataState::NoIngest,
        Some(changed) if changed.is_empty() => DataState::Current,
        Some(_) => DataState::Changed,
    })
}

/// The rows as aligned columns under a header.
fn table(rows: &[RunRow]) -> String {
    let metric = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    let header = [
        "RUN",
        "STATE",
        "VARIANT",
        "SEED",
        "EPOCHS",
        "BEST",
        "K",
        "VALID_RECALL",
        "TEST_RECALL",
        "TEST_NDCG",
        "DATA",
        "RECS",
        "WRITTEN",
        "NOTE",
    ]
    .map(str::to_owned);
    let mut lines = vec![header.to_vec()];
    for r in rows {
        lines.push(vec![
            r.run.clone(),
            serde_plain(&r.state),
            r.variant.clone().unwrap_or_else(|| "-".into()),
            r.seed.map_or("-".into(), |s| s.to_string()),
            r.epochs.to_string(),
            r.best_epoch.to_string(),
            r.k.map_or("-".into(), |k| k.to_string()),
            metric(r.valid_recall),
            metric(r.test_recall),
            metric(r.test_ndcg),
            serde_plain(&r.data),
            if r.recommendations { "yes" } else { "no" }.into(),
            r.finished_at
                .or(r.last_written)
                .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            r.note.clone(),
        ]);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            if c + 1 == columns {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A unit enum variant as serde spells it (`no_ingest`).
fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, state: State) -> RunRow {
        RunRow {
            run: run.into(),
            state,
            variant: Some("diffrec".into()),
            seed: Some(1),
            epochs: 12,
            best_epoch: 10,
            k: None,
            valid_recall: None,
            test_recall: None,
            test_ndcg: None,
            data: DataState::NoIngest,
            recommendations: false,
            finished_at: None,
            last_written: None,
            running: None,
            note: String::new(),
        }
    }

    #[test]
    fn the_cutoff_is_the_one_training_selects_by() {
        let m = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let mut r = row("a", State::Finished);
        // String order puts recall@100 before recall@20 and recall@5: the cutoff is numeric.
        let valid = m(&[
            ("recall@100", 0.5),
            ("recall@20", 0.25),
            ("recall@5", 0.125),
        ]);
        let test = m(&[("recall@20", 0.2), ("ndcg@20", 0.1), ("ndcg@5", 0.05)]);
        set_metrics(&mut r, &valid, &test, Some(vec![5, 100, 20]));
        assert_eq!(
            (r.k, r.valid_recall, r.test_recall, r.test_ndcg),
            (Some(20), Some(0.25), Some(0.2), Some(0.1))
        );
        // Without 20, the first configured (as training selects), not the smallest.
        let valid = m(&[("recall@50", 0.4), ("recall@10", 0.3)]);
        let mut r = row("b", State::Stopped);
        set_metrics(&mut r, &valid, &m(&[]), Some(vec![50, 10]));
        assert_eq!(
            (r.k, r.valid_recall, r.test_recall),
            (Some(50), Some(0.4), None)
        );
        // Nothing configured (or a k the metrics lack): 20, else the smallest there.
        for ks in [None, Some(vec![]), Some(vec![30])] {
            let mut r = row("b", State::Stopped);
            set_metrics(&mut r, &valid, &m(&[]), ks);
            assert_eq!((r.k, r.valid_recall), (Some(10), Some(0.3)));
        }
        let mut r = row("c", State::Stopped);
        set_metrics(&mut r, &m(&[]), &m(&[]), Some(vec![20]));
        assert_eq!(r.k, None);
    }

    #[test]
    fn the_table_aligns_columns_and_shows_missing_values_as_dashes() {
        let mut a = row("a-long-run-name", State::Finished);
        a.k = Some(20);
        a.valid_recall = Some(0.123456);
        a.data = DataState::Current;
        let mut b = row("b", State::Stopped);
        b.note = "stopped after epoch 12".into();
        let t = table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("RUN              STATE"), "{t}");
        assert!(lines[1].starts_with("a-long-run-name  finished"), "{t}");
        assert!(lines[2].starts_with("b                stopped "), "{t}");
        // Every column starts at the header's place.
        let at = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(at(lines[0], "VALID_RECALL"), at(lines[1], "0.1235"), "{t}");
        assert_eq!(at(lines[0], "DATA"), at(lines[1], "current"), "{t}");
        assert_eq!(at(lines[0], "DATA"), at(lines[2], "no_ingest"), "{t}");
        assert!(lines[2].ends_with("stopped after epoch 12"), "{t}");
        assert_eq!(
            lines[2].matches(" - ").count(),
            5,
            "k, 3 metrics, time: {t}"
        );
    }
}
