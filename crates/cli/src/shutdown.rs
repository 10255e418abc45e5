//! How the process ends when something outside the normal flow stops it: a signal, a panic.
//!
//! Ending at once is safe in every stage: each write goes to a temporary key (or, on S3, to
//! an upload that only its completion makes visible), and a training resumes from its latest
//! checkpoint. What matters is that it does end, promptly and saying why.

/// Ends the process on SIGTERM or SIGINT with the shell's code for the signal (143, 130),
/// after one log line saying what is kept. Without a handler, diffrec running as PID 1 in a
/// container (`docker run` without `--init`, a Kubernetes Job whose command is `diffrec`)
/// would ignore both, since the kernel drops the signals PID 1 does not handle, and wait out
/// the grace period until SIGKILL. Not for the orchestrator, which handles both itself.
///
/// The handlers are in place when this returns (a signal from then on waits for the task that
/// ends the process), so no command's work starts before them.
pub fn stop_on_signals(runtime: &tokio::runtime::Runtime) {
    use tokio::signal::unix::{SignalKind, signal};
    let _context = runtime.enter();
    let (Ok(term), Ok(int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM and SIGINT: they end diffrec unannounced");
        return;
    };
    runtime.spawn(stop_on(term, int));
}

async fn stop_on(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    let (name, code) = tokio::select! {
        _ = term.recv() => ("SIGTERM", 143),
        _ = int.recv() => ("SIGINT", 130),
    };
    // First, so that processes waiting for these stages (`busy`) stop waiting now rather
    // than after `STALE_AFTER`; a store that does not answer promptly leaves them to go stale.
    diffrec_data::running::stop_all(std::time::Duration::from_secs(2)).await;
    // Nothing committed from here on, so the epoch said is the one a rerun resumes after.
    let kept = match diffrec_data::workspace::stop_commits(std::time::Duration::from_secs(2)).await
    {
        true => kept_epoch().await,
        false => String::new(),
    };
    // Held until the process ends: a file is then either not created yet, unfinished (and
    // removed here) or renamed whole, never between two of these.
    let unfinished = UNFINISHED.lock().unwrap_or_else(|e| e.into_inner());
    for path in unfinished.iter() {
        let _ = std::fs::remove_file(path);
    }
    tracing::warn!(
        "stopped by {name}: finished writes are kept, unfinished ones are never read; the same \
         command run again resumes (training and LightGCN pre-training from their latest \
         checkpoints; other work is done again){kept}"
    );
    std::process::exit(code);
}

/// The run this process is training now ([`Training`]): the workspace, the run and its
/// checkpoints' fingerprint, for the signal's line to say where it resumes.
type Trained = (diffrec_data::Workspace, String, String);
static TRAINING: std::sync::Mutex<Option<Trained>> = std::sync::Mutex::new(None);

/// Marks the training of a run in this process, until dropped; only of a run that the same
/// command resumes (not one trained anew, which it starts over).
pub struct Training;

impl Training {
    pub fn start(ws: &diffrec_data::Workspace, run: &str, fingerprint: &str) -> Training {
        *TRAINING.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((ws.clone(), run.to_owned(), fingerprint.to_owned()));
        Training
    }
}

impl Drop for Training {
    fn drop(&mut self) {
        *TRAINING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// "; run `g` resumes after epoch 41 …" while a run trains: the epoch of its latest checkpoint
/// as committed (read back once commits have stopped, not remembered: a write that completed
/// just before the signal counts). Empty otherwise, or where the store does not answer within
/// two seconds.
async fn kept_epoch() -> String {
    let Some((ws, run, fingerprint)) = TRAINING.lock().unwrap_or_else(|e| e.into_inner()).clone()
    else {
        return String::new();
    };
    let read = diffrec_trainer::train::latest_state(&ws, &run);
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        // Of this training (not a checkpoint another process wrote meanwhile).
        Ok(Ok(Some(state))) if state.fingerprint == fingerprint => format!(
            "; run `{run}` resumes after epoch {}, its latest checkpoint's",
            state.epoch
        ),
        Ok(Ok(None)) => {
            format!("; run `{run}` has no checkpoint yet and starts from its first epoch")
        }
        _ => String::new(),
    }
}

/// Files a command writes outside a workspace, removed if a signal ends it before they are done
/// (`diffrec generate`'s `.partial-PID` file). A workspace's temporary keys need no list: the
/// next stage removes them.
static UNFINISHED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A file on the list of [`UNFINISHED`] ones from its creation until it is renamed whole (or,
/// failing, removed), each step taken under the list's lock.
pub struct Unfinished(std::path::PathBuf);

fn unfinished() -> std::sync::MutexGuard<'static, Vec<std::path::PathBuf>> {
    UNFINISHED.lock().unwrap_or_else(|e| e.into_inner())
}

impl Unfinished {
    /// Creates (or truncates) `path` for writing.
    pub fn create(path: &std::path::Path) -> std::io::Result<(Self, std::fs::File)> {
        let mut list = unfinished();
        let file = std::fs::File::create(path)?;
        list.push(path.to_owned());
        Ok((Unfinished(path.to_owned()), file))
    }

    /// Renames the finished file to `to`; on failure it is removed.
    pub fn commit(self, to: &std::path::Path) -> std::io::Result<()> {
        let _list = unfinished();
        std::fs::rename(&self.0, to).inspect_err(|_| {
            let _ = std::fs::remove_file(&self.0);
        })
    }

    /// Removes the unfinished file (a write failed).
    pub fn abandon(self) {
        let _list = unfinished();
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        unfinished().retain(|p| *p != self.0);
    }
}

/// Makes a write past the file size limit (`ulimit -f`, RLIMIT_FSIZE) an error naming the file
/// instead of a silent death: by default the kernel ends the process with SIGXFSZ (exit code
/// 153, nothing said). Ignored, the write fails with EFBIG ("File too large") and the stage
/// reports it as any other write error, exit code 1, its unfinished file never read.
pub fn report_file_size_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: setting a signal's disposition to SIG_IGN; called before other threads start.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Whether a panic is burn-collective's or burn-communication's way of saying that a
/// connection to a peer or the orchestrator was lost: raised in one of their source files
/// (vendored or from the registry), with a message about a connection. Their other panics
/// (a bug, builds that do not understand each other) keep Rust's full report.
fn lost_connection(file: &str, message: &str) -> bool {
    const LOST: [&str; 9] = [
        "Failed to connect",
        "Failed to send",
        "Failed to receive",
        "Failed to close",
        "closed connection",
        "Couldn't connect",
        "ConnectionReset",
        "ResetWithoutClosingHandshake",
        "AlreadyClosed",
    ];
    (file.contains("burn-collective") || file.contains("burn-communication"))
        && LOST.iter().any(|s| message.contains(s))
}

/// Makes a panic on the main thread end the process with exit code 101 at once, after Rust's
/// own message and a line on what it may mean. Unwinding from there dropped the async runtime,
/// which waits for its threads: under a pids limit (the runtime panics on the main thread when
/// the operating system refuses to start its workers) that wait could last forever. Panics on
/// other threads unwind as before: burn-communication reports a node's lost connection as a
/// panic in its task, which the trainer turns into an error (exit 1, "rerunning every node
/// resumes"). Not for the orchestrator, which serves many nodes.
pub fn end_on_panic() {
    let main = std::thread::current().id();
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != main {
            // burn-collective and burn-communication report a peer's or the orchestrator's
            // lost connection by panicking in their tasks; the trainer says what that means
            // for the run. One line each, not a "panicked" report with its backtrace that
            // reads as a crash (with -v, the full report too).
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            match info
                .location()
                .filter(|l| lost_connection(l.file(), message))
            {
                Some(at) => {
                    tracing::warn!(
                        "burn-collective: {message} ({}:{}): a node or the orchestrator lost \
                         its connection; the trainer's next lines say what it means for the run",
                        at.file(),
                        at.line()
                    );
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        report(info);
                    }
                }
                None => report(info),
            }
            return;
        }
        report(info);
        eprintln!(
            "error: diffrec stopped on an internal error (above), exit code 101. If it says \
             that a thread could not be spawned, a resource limit stopped it (`ulimit -u` or \
             the container's pids limit, or an address-space limit, `ulimit -v`, too small \
             for a thread's stack): raise the limit and run again. Otherwise it is a \
             bug: please report it with the message above."
        );
        std::process::exit(101);
    }));
}
