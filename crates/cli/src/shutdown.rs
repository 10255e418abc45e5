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
pub async fn stop_on_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM and SIGINT: they end diffrec unannounced");
        return;
    };
    let (name, code) = tokio::select! {
        _ = term.recv() => ("SIGTERM", 143),
        _ = int.recv() => ("SIGINT", 130),
    };
    tracing::warn!(
        "stopped by {name}: finished writes are kept, unfinished ones are never read; the same \
         command run again resumes (training and LightGCN pre-training from their latest \
         checkpoints; other work is done again)"
    );
    std::process::exit(code);
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
        report(info);
        if std::thread::current().id() != main {
            return;
        }
        eprintln!(
            "error: diffrec stopped on an internal error (above), exit code 101. If it says \
             that a thread could not be spawned, a resource limit stopped it (`ulimit -u` or \
             the container's pids limit): raise the limit and run again. Otherwise it is a \
             bug: please report it with the message above."
        );
        std::process::exit(101);
    }));
}
