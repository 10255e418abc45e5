//! Standard output. Data (`recommend`'s table, `validate`'s resolved pipeline): a reader that
//! stops early (`| head`) ends the command quietly, as it would `cat`, instead of `println!`'s
//! panic on the closed pipe. Status lines (`train: epoch …`, `ingest: up to date`): a courtesy
//! to whoever watches, so a stdout that cannot be written (a closed pipe, a full disk) never
//! stops the work; it is said once on stderr and the lines are dropped.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// Runs `write` on locked, buffered standard output and flushes it. A closed pipe is success:
/// the reader has all it wanted.
pub fn write_data(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        written => written.context("cannot write to standard output"),
    }
}

/// Prints one status line on standard output, as `println!` does, except that a failed write
/// drops the line (and the later ones) instead of panicking: the stage goes on.
macro_rules! status {
    ($($arg:tt)*) => {
        $crate::stdout::status_line(format_args!($($arg)*))
    };
}
pub(crate) use status;

static STATUS_LOST: AtomicBool = AtomicBool::new(false);

/// What [`status!`] calls.
pub fn status_line(line: std::fmt::Arguments<'_>) {
    if STATUS_LOST.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        if !STATUS_LOST.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cannot write status lines to standard output ({e}); the command goes on without them"
            );
        }
    }
}
