//! Progress display: an `indicatif` spinner on stderr while a stage works (hidden when stderr
//! is not a terminal, so scheduler logs stay clean), and the `tracing` subscriber.

use std::io::IsTerminal;
use std::time::Duration;

use crate::stdout::status;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// A spinner that ticks until finished or dropped.
pub struct Spinner(ProgressBar);

impl Spinner {
    pub fn start(message: &str) -> Self {
        let pb = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("static template is valid"),
        );
        pb.set_message(message.to_owned());
        pb.enable_steady_tick(Duration::from_millis(120));
        Spinner(pb)
    }

    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.0.finish_and_clear();
        }
    }
}

/// A per-epoch batch bar on stderr (hidden when stderr is not a terminal); lines said through
/// it go to stdout, the bar set aside meanwhile.
pub struct EpochBar(ProgressBar);

impl EpochBar {
    pub fn new() -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed}]")
                .expect("static template")
                .progress_chars("=> "),
        );
        EpochBar(bar)
    }

    pub fn start_epoch(&self, label: String, batches: usize) {
        self.0.set_prefix(label);
        self.0.set_length(batches as u64);
        self.0.set_position(0);
    }

    pub fn inc(&self) {
        self.0.inc(1);
    }

    pub fn set_message(&self, message: String) {
        self.0.set_message(message);
    }

    pub fn say(&self, line: String) {
        // On stdout either way, the bar set aside while the line is written.
        self.0.suspend(|| status!("{line}"))
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Logs to stderr; `RUST_LOG` wins, else [`log_filter`]. A `RUST_LOG` that does not parse is
/// not dropped in silence: the default applies and a warning quotes it and the parser's reason.
pub fn init_logging(verbose: u8, others_at_info: bool) {
    let default = log_filter(verbose, others_at_info);
    let from_env = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (filter, refused) = match from_env {
        Some(value) => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(default), Some((value, e))),
        },
        None => (EnvFilter::new(default), None),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    if let Some((value, e)) = refused {
        tracing::warn!(
            "RUST_LOG={value:?} is not a log filter ({e}); logging with the default \"{default}\" \
             instead (e.g. RUST_LOG=info,diffrec=debug)"
        );
    }
}

/// The default log filter: diffrec's own lines at info, other crates' only from warn up (at info
/// burn-collective and burn-communication log every tensor a multi-node all-reduce moves:
/// thousands of lines an epoch), except object_store's, whose info lines are its retries of a
/// store that does not answer (minutes of silence otherwise). `-v` shows diffrec's debug lines and other crates' info,
/// `-vv` diffrec's trace and other crates' debug. `others_at_info` starts other crates at info
/// (`diffrec orchestrator`, whose events are burn-collective's).
pub fn log_filter(verbose: u8, others_at_info: bool) -> &'static str {
    match (verbose, others_at_info) {
        (0, false) => "warn,diffrec=info,object_store=info",
        (0, true) => "info",
        (1, _) => "info,diffrec=debug",
        _ => "debug,diffrec=trace",
    }
}

/// The figures a stage's last line shows: Recall and NDCG at the cut-offs 10 and 20 where
/// `evaluate.ks` has them, else at its first cut-off, in the order "recall@10 … ndcg@20 …".
pub fn headline_metrics(metrics: &std::collections::BTreeMap<String, f64>, ks: &[usize]) -> String {
    let mut shown: Vec<usize> = ks
        .iter()
        .copied()
        .filter(|k| [10, 20].contains(k))
        .collect();
    shown.sort_unstable();
    shown.dedup();
    if shown.is_empty() {
        shown.extend(ks.first());
    }
    let mut parts = Vec::new();
    for name in ["recall", "ndcg"] {
        for k in &shown {
            let key = format!("{name}@{k}");
            let value = metrics.get(&key).copied().unwrap_or(f64::NAN);
            parts.push(format!("{key} {value:.4}"));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::{headline_metrics, log_filter};
    use tracing::Level;
    use tracing_subscriber::EnvFilter;

    /// Which of (diffrec_trainer info, diffrec debug, burn_communication info, burn_collective
    /// warn, object_store's retries at info) `log_filter(verbose, others_at_info)` lets through.
    fn shown(verbose: u8, others_at_info: bool) -> [bool; 5] {
        let filter = EnvFilter::new(log_filter(verbose, others_at_info));
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).finish();
        tracing::subscriber::with_default(subscriber, || {
            [
                tracing::enabled!(target: "diffrec_trainer::train", Level::INFO),
                tracing::enabled!(target: "diffrec", Level::DEBUG),
                tracing::enabled!(target: "burn_communication::data_service", Level::INFO),
                tracing::enabled!(target: "burn_collective::global", Level::WARN),
                tracing::enabled!(target: "object_store::client::retry", Level::INFO),
            ]
        })
    }

    #[test]
    fn by_default_other_crates_log_only_warnings() {
        assert_eq!(shown(0, false), [true, false, false, true, true]);
        assert_eq!(shown(0, true), [true, false, true, true, true]);
        assert_eq!(shown(1, false), [true, true, true, true, true]);
        assert_eq!(shown(2, true), [true, true, true, true, true]);
    }

    #[test]
    fn headline_shows_the_cut_offs_that_were_evaluated() {
        let m = [
            ("recall@5", 0.1),
            ("recall@10", 0.2),
            ("ndcg@5", 0.3),
            ("ndcg@10", 0.4),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        assert_eq!(
            headline_metrics(&m, &[10, 5]),
            "recall@10 0.2000 ndcg@10 0.4000"
        );
        assert_eq!(headline_metrics(&m, &[5]), "recall@5 0.1000 ndcg@5 0.3000");
        assert_eq!(
            headline_metrics(&m, &[20, 10]),
            "recall@10 0.2000 recall@20 NaN ndcg@10 0.4000 ndcg@20 NaN"
        );
    }
}
