//! Progress display: an `indicatif` spinner on stderr while a stage works (hidden when stderr
//! is not a terminal, so scheduler logs stay clean), and the `tracing` subscriber.

use std::io::IsTerminal;
use std::time::Duration;

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
/// it go above the bar, or to stdout when it is hidden.
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
        if self.0.is_hidden() {
            println!("{line}")
        } else {
            self.0.println(line)
        }
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Logs to stderr; `RUST_LOG` wins, else `-v` (debug) / `-vv` (trace) / info.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
