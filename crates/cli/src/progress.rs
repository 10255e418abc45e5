//! Progress display: an `indicatif` spinner on stderr while a stage works (hidden when stderr
//! is not a terminal, so scheduler logs stay clean), and the `tracing` subscriber.

use std::io::IsTerminal;
use std::time::Duration;

use crate::stdout::status;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// How often a line says where long work is when stderr is no terminal (a scheduler's log,
/// where the bars are hidden): often enough to tell a stage working from one hung, rarely
/// enough not to flood the log.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// A spinner that ticks until finished or dropped; without a terminal, a line every
/// [`LOG_EVERY`] instead.
pub struct Spinner {
    bar: ProgressBar,
    /// Held for its lines: they stop when it goes.
    _ticker: Option<Ticker>,
}

impl Spinner {
    pub fn start(message: &str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let pb = if terminal {
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
        let ticker = (!terminal).then(|| {
            let bar = pb.clone();
            Ticker::start(LOG_EVERY, log_line, move || {
                (!bar.is_finished()).then(|| {
                    format!(
                        "{}: still working, {} in",
                        bar.message(),
                        minutes(bar.elapsed())
                    )
                })
            })
        });
        Spinner {
            bar: pb,
            _ticker: ticker,
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// A per-epoch batch bar on stderr (hidden when stderr is not a terminal, where a line every
/// [`LOG_EVERY`] says the epoch and batch instead); lines said through it go to stdout, the
/// bar set aside meanwhile. Between epochs it shows an evaluation ([`EpochBar::evaluating`]).
pub struct EpochBar {
    bar: ProgressBar,
    /// Held for its lines: they stop when it goes.
    _ticker: Option<Ticker>,
}

impl EpochBar {
    /// A bar for `stage`'s epochs (the name its scheduler-log lines start with).
    pub fn new(stage: &'static str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(batch_style());
        let ticker = (!terminal).then(|| {
            let bar = bar.clone();
            Ticker::start(LOG_EVERY, log_line, move || {
                // Nothing to say before the first epoch starts.
                (!bar.is_finished() && !bar.prefix().is_empty()).then(|| where_now(stage, &bar))
            })
        });
        EpochBar {
            bar,
            _ticker: ticker,
        }
    }

    pub fn start_epoch(&self, label: String, batches: usize) {
        self.bar.disable_steady_tick();
        self.bar.set_style(batch_style());
        self.bar.set_prefix(label);
        self.bar.set_length(batches as u64);
        self.bar.set_position(0);
        self.bar.reset_elapsed();
    }

    /// An evaluation under way (`label`: what is evaluated): the time it has taken so far, as
    /// a spinner.
    pub fn evaluating(&self, label: String) {
        self.bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{elapsed}]")
                .expect("static template"),
        );
        self.bar.set_prefix(label);
        self.bar.set_length(0);
        self.bar.set_position(0);
        self.bar.reset_elapsed();
        self.bar.enable_steady_tick(Duration::from_millis(120));
    }

    /// Work between epochs other than an evaluation (`label`: what it is), with its time so
    /// far.
    pub fn between_epochs(&self, label: String) {
        self.evaluating(label)
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }

    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn say(&self, line: String) {
        // On stdout either way, the bar set aside while the line is written.
        self.bar.suspend(|| status!("{line}"))
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The batch bar's look.
fn batch_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed}, ~{eta} left]")
        .expect("static template")
        .progress_chars("=> ")
}

/// Where `stage`'s epoch bar is, as a scheduler-log line: "train: epoch 3 of 1000: batch 120
/// of 781, 1m 05s in, about 5m 58s left in the epoch" (or "train: epoch 5: evaluating 6040
/// users, 0m 40s in").
fn where_now(stage: &str, bar: &ProgressBar) -> String {
    let (batches, left) = match bar.length() {
        Some(len) if len > 0 => (
            format!(": batch {} of {len}", bar.position()),
            match bar.position() {
                0 => String::new(),
                _ => format!(", about {} left in the epoch", minutes(bar.eta())),
            },
        ),
        _ => (String::new(), String::new()),
    };
    format!(
        "{stage}: {}{batches}, {} in{left}",
        bar.prefix(),
        minutes(bar.elapsed())
    )
}

/// "1m 05s".
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m {:02}s", s / 60, s % 60)
}

/// A scheduler-log line (info, on stderr with the log's time stamp).
fn log_line(line: String) {
    tracing::info!("{line}");
}

/// A thread that emits `line()` every `every`, until `line` says `None` (its bar finished) or
/// the ticker is dropped.
struct Ticker {
    /// Dropped with the ticker, which ends the thread.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Ticker {
    fn start(
        every: Duration,
        emit: impl Fn(String) + Send + 'static,
        line: impl Fn() -> Option<String> + Send + 'static,
    ) -> Ticker {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // Without a thread (a thread limit), no lines: the work goes on.
        let _ = std::thread::Builder::new()
            .name("progress-log".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    match line() {
                        Some(line) => emit(line),
                        None => break,
                    }
                }
            });
        Ticker { _stop: stop }
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
    use super::{Duration, ProgressBar, Ticker, headline_metrics, log_filter, where_now};
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

    /// Without a terminal the bar is hidden, and a line every period says where the epoch
    /// is, until the bar finishes.
    #[test]
    fn a_hidden_bar_is_told_in_log_lines_until_it_finishes() {
        let bar = ProgressBar::hidden();
        bar.set_prefix("epoch 3");
        bar.set_length(781);
        bar.set_position(120);
        let now = where_now("train", &bar);
        assert!(now.ends_with(" left in the epoch"), "{now}");
        assert!(
            now.starts_with("train: epoch 3: batch 120 of 781, 0m 00s in, about "),
            "{now}"
        );
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, shown) = (lines.clone(), bar.clone());
        let _ticker = Ticker::start(
            Duration::from_millis(20),
            move |line| seen.lock().unwrap().push(line),
            move || (!shown.is_finished()).then(|| where_now("train", &shown)),
        );
        std::thread::sleep(Duration::from_millis(300));
        bar.set_prefix("epoch 5: evaluating 6040 users");
        bar.set_length(0);
        std::thread::sleep(Duration::from_millis(300));
        bar.finish_and_clear();
        std::thread::sleep(Duration::from_millis(100));
        let said = lines.lock().unwrap().clone();
        let batch = "train: epoch 3: batch 120 of 781, 0m 00s in, about ";
        let evaluating = "train: epoch 5: evaluating 6040 users, 0m 00s in";
        let (batches, evaluations) = (
            said.iter().filter(|l| l.starts_with(batch)).count(),
            said.iter().filter(|l| *l == evaluating).count(),
        );
        assert!(batches > 0 && evaluations > 0, "{said:?}");
        assert_eq!(batches + evaluations, said.len(), "{said:?}");
        assert!(said.len() <= 40, "one line a period: {}", said.len());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            lines.lock().unwrap().len(),
            said.len(),
            "no line once the bar finished"
        );
    }
}
