//! Data written to standard output (`recommend`'s table, `validate`'s resolved pipeline): a
//! reader that stops early (`| head`) ends the command quietly, as it would `cat`, instead of
//! `println!`'s panic on the closed pipe.

use std::io::{ErrorKind, Write};

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
