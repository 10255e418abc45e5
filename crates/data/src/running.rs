//! Which stages are running now, seen from another process: a heartbeat each writing stage
//! keeps while it works.
//!
//! A stage that writes a folder of the workspace (`data`, `cluster`, `runs/<name>`) puts a
//! small JSON file of its own under `<folder>/_running/` and writes it again every
//! [`BEAT_EVERY`] until the stage ends, when it deletes it. A process that finds the
//! workspace in a state it cannot use (no manifest yet, outputs that changed) asks
//! [`running`] whether a stage is writing what it reads: then the state is the other
//! process's work in progress, and a retry once it has finished meets another; otherwise it is
//! how the workspace was left. A killed process's file stops being written, and counts as
//! running for [`STALE_AFTER`] at most (by the store's last-modified time, so a killed
//! process needs no cleaning up; the next stage to start there deletes such files).
//!
//! Unlike a [`crate::claim::Claim`], this decides nothing about who may write: it only tells a
//! reader whether to wait.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::workspace::{Workspace, is_temporary_key};

/// How often a running stage writes its heartbeat again.
pub const BEAT_EVERY: Duration = Duration::from_secs(10);

/// How old a heartbeat (by its store's last-modified time) may be and still count as a
/// stage running: six beats, which a process starved of CPU still meets, and far beyond the
/// clock difference between two machines kept by NTP, or between one and S3.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// The folder under a stage's own folder that holds the heartbeats.
const FOLDER: &str = "_running";

/// What a heartbeat file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// The stage running (`ingest`, `cluster`, `train`).
    pub stage: String,
    /// Its process id, on `host`.
    pub pid: u32,
    /// The machine's host name (`?` where it cannot be read).
    pub host: String,
    /// Its pid namespace (`pid:[4026531836]`; absent where there is no `/proc`): two
    /// containers may share a host name but not their pids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// When the stage started.
    pub started_at: DateTime<Utc>,
}

/// A stage some process is running now, as a heartbeat shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// The heartbeat's contents (`None` when it does not read as one: written by hand).
    pub beat: Option<Beat>,
    /// How long ago it was last written (zero when the store's clock is ahead of this one's).
    pub age: Duration,
}

impl std::fmt::Display for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = self.age.as_secs();
        match &self.beat {
            Some(b) => write!(
                f,
                "the {} stage is running (process {} on {}, started {}, heartbeat {age} s ago)",
                b.stage,
                b.pid,
                b.host,
                b.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => write!(f, "a stage is running (heartbeat {age} s ago)"),
        }
    }
}

/// This process's heartbeat for a stage it runs. [`Heartbeat::stop`] ends it and deletes its
/// file; dropped without it (the process is ending on an error), the beats stop and the file
/// goes stale after [`STALE_AFTER`]. A signal's handler ends every one ([`stop_all`]).
#[derive(Debug)]
pub struct Heartbeat {
    key: String,
    /// Held while a beat is written; `true` once the heartbeat has ended (no beat after).
    gate: Gate,
    task: Option<JoinHandle<()>>,
}

type Gate = Arc<tokio::sync::Mutex<bool>>;

/// The heartbeats this process keeps: what [`stop_all`] ends and [`running`] leaves out.
static OWN: std::sync::Mutex<Vec<(Workspace, String, Gate)>> = std::sync::Mutex::new(Vec::new());

fn own() -> std::sync::MutexGuard<'static, Vec<(Workspace, String, Gate)>> {
    OWN.lock().unwrap_or_else(|e| e.into_inner())
}

impl Heartbeat {
    /// Writes the heartbeat of `stage` under `folder` (the stage's folder in the workspace)
    /// and keeps writing it every [`BEAT_EVERY`] on the async runtime, until stopped. Stale
    /// heartbeats there (of killed processes, and their writes' temporaries) are deleted
    /// first, as far as the store lets.
    pub async fn start(ws: &Workspace, folder: &str, stage: &str) -> Result<Heartbeat> {
        let dir = format!("{folder}/{FOLDER}");
        for (key, modified) in ws.list_modified(&dir).await.unwrap_or_default() {
            let gone = match is_temporary_key(&key) {
                true => age(modified) > STALE_AFTER,
                false => !read_live(ws, &key, modified).await.counts(),
            };
            if gone && let Err(e) = ws.delete(&key).await {
                tracing::debug!("stale heartbeat {key} not deleted: {e}");
            }
        }
        let key = format!(
            "{dir}/{}-{:016x}.json",
            std::process::id(),
            rand::random::<u64>()
        );
        let beat = Beat {
            stage: stage.to_owned(),
            pid: std::process::id(),
            host: host_name(),
            pid_ns: pid_namespace(),
            started_at: Utc::now(),
        };
        ws.put_json(&key, &beat).await?;
        let gate: Gate = Arc::new(tokio::sync::Mutex::new(false));
        own().push((ws.clone(), key.clone(), gate.clone()));
        let (ws, at, held) = (ws.clone(), key.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(BEAT_EVERY).await;
                let ended = held.lock().await;
                if *ended {
                    break;
                }
                // A missed beat is no reason to stop the stage: the next may land.
                if let Err(e) = ws.put_json(&at, &beat).await {
                    tracing::debug!("heartbeat {at} not written: {e}");
                }
            }
        });
        Ok(Heartbeat {
            key,
            gate,
            task: Some(task),
        })
    }

    /// The key of this process's heartbeat file.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Ends the beats and deletes the heartbeat file (best effort: one left behind goes stale
    /// after [`STALE_AFTER`]). A beat in flight lands before the file goes; one the store
    /// holds up longer than a few seconds is abandoned.
    pub async fn stop(mut self, ws: &Workspace) {
        let waited =
            tokio::time::timeout(Duration::from_secs(5), end(ws, &self.key, &self.gate)).await;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if waited.is_err() {
            end(ws, &self.key, &self.gate).await;
        }
        own().retain(|(_, key, _)| *key != self.key);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        own().retain(|(_, key, _)| *key != self.key);
    }
}

/// Marks a heartbeat ended (after the beat in flight, if any) and deletes its file.
async fn end(ws: &Workspace, key: &str, gate: &tokio::sync::Mutex<bool>) {
    *gate.lock().await = true;
    if let Err(e) = ws.delete(key).await {
        tracing::debug!("heartbeat {key} not deleted: {e}");
    }
    if let Some((dir, _)) = key.rsplit_once('/') {
        ws.remove_empty_folder(dir);
    }
}

/// Ends every heartbeat of this process and deletes their files, each within `patience`
/// (a store that does not answer leaves them to go stale): what a signal's handler does
/// before the process ends, so that readers stop waiting for its stages at once.
pub async fn stop_all(patience: Duration) {
    let beats = own().clone();
    for (ws, key, gate) in beats {
        let _ = tokio::time::timeout(patience, end(&ws, &key, &gate)).await;
    }
}

/// The stages other processes are running under `folder` now: their heartbeats younger than
/// [`STALE_AFTER`], less those of processes of this machine that have ended (a `SIGKILL`
/// leaves its heartbeat); this process's own are left out.
pub async fn running(ws: &Workspace, folder: &str) -> Result<Vec<Live>> {
    let mut live = Vec::new();
    for (key, modified) in ws.list_modified(&format!("{folder}/{FOLDER}")).await? {
        if is_temporary_key(&key) || own().iter().any(|(_, k, _)| *k == key) {
            continue;
        }
        let found = read_live(ws, &key, modified).await;
        if found.counts() {
            live.push(found);
        }
    }
    Ok(live)
}

/// The heartbeat at `key`, last modified at `modified`, with what it holds (`None`: gone
/// meanwhile, the stage having ended, or unreadable; then judged by its age alone).
async fn read_live(ws: &Workspace, key: &str, modified: DateTime<Utc>) -> Live {
    Live {
        beat: ws.get_json::<Beat>(key).await.ok().flatten(),
        age: age(modified),
    }
}

impl Live {
    /// Whether the heartbeat is a running process's: younger than [`STALE_AFTER`], and not of
    /// a process that has ended on this machine (same host name and pid namespace, its pid
    /// gone from `/proc`). Linux only; elsewhere its age alone decides.
    fn counts(&self) -> bool {
        let ended_here = self.beat.as_ref().is_some_and(|b| {
            b.host == host_name()
                && b.pid_ns.is_some()
                && b.pid_ns == pid_namespace()
                && !std::path::Path::new(&format!("/proc/{}", b.pid)).exists()
        });
        self.age <= STALE_AFTER && !ended_here
    }
}

/// How long ago `modified` was, zero when it is ahead of this machine's clock.
fn age(modified: DateTime<Utc>) -> Duration {
    (Utc::now() - modified).to_std().unwrap_or(Duration::ZERO)
}

/// This process's pid namespace, as `/proc/self/ns/pid` names it (`None` without `/proc`).
fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.display().to_string())
}

/// This machine's host name, as the kernel has it (`?` where it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local workspace in a folder of its own (removed by the caller).
    fn workspace() -> (std::path::PathBuf, Workspace) {
        let dir = std::env::temp_dir().join(format!("diffrec-running-{}", rand::random::<u32>()));
        let ws = Workspace::open(dir.to_str().unwrap()).unwrap();
        (dir, ws)
    }

    /// A heartbeat file as another process writes it, last modified `ago` before now.
    fn plant(dir: &std::path::Path, folder: &str, pid: u32, ago: Duration) -> std::path::PathBuf {
        let path = dir
            .join(folder)
            .join(FOLDER)
            .join(format!("{pid}-00000000000000ab.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let beat = Beat {
            stage: "ingest".into(),
            pid,
            host: "elsewhere".into(),
            pid_ns: pid_namespace(),
            started_at: "2026-12-02T10:00:00Z".parse().unwrap(),
        };
        std::fs::write(&path, serde_json::to_vec(&beat).unwrap()).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - ago)
            .unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_heartbeat_counts_until_it_goes_stale() {
        let (dir, ws) = workspace();
        assert!(
            running(&ws, "data").await.unwrap().is_empty(),
            "nothing yet"
        );
        plant(&dir, "data", 4_000_001, Duration::from_secs(5));
        let live = running(&ws, "data").await.unwrap();
        assert_eq!(live.len(), 1);
        let beat = live[0].beat.as_ref().unwrap();
        assert_eq!((beat.pid, beat.host.as_str()), (4_000_001, "elsewhere"));
        assert!(
            (4..=10).contains(&live[0].age.as_secs()),
            "{:?}",
            live[0].age
        );
        assert_eq!(
            live[0].to_string(),
            format!(
                "the ingest stage is running (process 4000001 on elsewhere, started \
                 2026-12-02 10:00:00 UTC, heartbeat {} s ago)",
                live[0].age.as_secs()
            )
        );
        // Other folders are other stages.
        assert!(running(&ws, "cluster").await.unwrap().is_empty());
        // A process of this machine that has ended (killed): no wait, however young; the
        // same pid in another pid namespace (another container of the same host name) is
        // not this machine's to judge.
        let ended = plant(&dir, "runs/r", 4_000_004, Duration::from_secs(1));
        let mut beat: Beat = serde_json::from_slice(&std::fs::read(&ended).unwrap()).unwrap();
        beat.host = host_name();
        std::fs::write(&ended, serde_json::to_vec(&beat).unwrap()).unwrap();
        assert!(
            !std::path::Path::new("/proc/4000004").exists(),
            "pid_max is 4194304 at most"
        );
        assert!(running(&ws, "runs/r").await.unwrap().is_empty());
        beat.pid_ns = Some("pid:[1]".into());
        std::fs::write(&ended, serde_json::to_vec(&beat).unwrap()).unwrap();
        assert_eq!(running(&ws, "runs/r").await.unwrap().len(), 1);
        std::fs::remove_file(&ended).unwrap();
        // A process elsewhere with this process's pid (PID 1 in two containers) counts.
        plant(&dir, "cluster", std::process::id(), Duration::from_secs(1));
        assert_eq!(running(&ws, "cluster").await.unwrap().len(), 1);
        // A killed process's: older than STALE_AFTER.
        let (dir2, ws2) = workspace();
        plant(
            &dir2,
            "data",
            4_000_002,
            STALE_AFTER + Duration::from_secs(1),
        );
        assert!(running(&ws2, "data").await.unwrap().is_empty());
        for d in [dir, dir2] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn own_heartbeat_is_written_left_out_and_deleted_with_stale_ones() {
        let (dir, ws) = workspace();
        let stale = plant(&dir, "runs/r", 4_000_003, STALE_AFTER * 2);
        let beat = Heartbeat::start(&ws, "runs/r", "train").await.unwrap();
        assert!(
            !stale.exists(),
            "a killed process's heartbeat is deleted at the next start"
        );
        let written: Beat = ws.get_json(beat.key()).await.unwrap().unwrap();
        assert_eq!(written.stage, "train");
        assert_eq!(written.pid, std::process::id());
        assert!(beat.key().starts_with("runs/r/_running/"), "{}", beat.key());
        // This process does not wait for itself.
        assert!(running(&ws, "runs/r").await.unwrap().is_empty());
        let key = beat.key().to_owned();
        beat.stop(&ws).await;
        assert!(
            own().iter().all(|(_, k, _)| *k != key),
            "no longer this process's"
        );
        assert!(
            !ws.exists(&key).await.unwrap(),
            "deleted when the stage ends"
        );
        assert!(ws.list("runs/r").await.unwrap().is_empty());
        assert!(
            !dir.join("runs/r").join(FOLDER).exists(),
            "no empty folder left"
        );
        // Ended by a signal's handler: the file goes, and no beat brings it back.
        let beat = Heartbeat::start(&ws, "runs/r", "train").await.unwrap();
        let key = beat.key().to_owned();
        stop_all(Duration::from_secs(2)).await;
        assert!(!ws.exists(&key).await.unwrap(), "deleted by stop_all");
        assert!(*beat.gate.lock().await, "no beat after");
        drop(beat);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
