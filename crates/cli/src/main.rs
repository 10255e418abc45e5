//! # diffrec (CLI)
//!
//! The `diffrec` binary: runs pipelines and single stages over a workspace, validates
//! pipelines, runs the embedded demo, generates synthetic data, recommends for one user or
//! history, and serves burn-collective's orchestrator for multi-node training. Owns
//! command-line parsing, pipeline loading (`pipeline.rs`), stage ordering (`stages.rs`),
//! progress display and exit codes: 0 success, 2 bad config or input, 1 any other failure,
//! 143 and 130 stopped by SIGTERM and SIGINT, 101 an internal error (`shutdown.rs`).
//!
//! It must not: hold algorithms (those live in the library crates).

mod busy;
mod cluster_stage;
mod infer_stage;
mod malloc;
mod pipeline;
mod progress;
mod runs;
mod shutdown;
mod stages;
mod stdout;
mod threads;
mod train_stage;
mod usage;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};
use diffrec_data::synthetic::{SyntheticSpec, write_csv};
use diffrec_data::{DataError, Workspace};

use crate::pipeline::PipelineError;
use crate::stages::Stage;
use crate::stdout::status;

/// The release and the commit it was built from (build.rs), as `-V` prints them and every
/// manifest records the latter.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DIFFREC_BUILD"), ")");

/// What the exit codes mean, for schedulers' retry rules (also in the README).
const EXIT_STATUS: &str = "Exit status:\n  \
    0    done\n  \
    2    fix the pipeline, the data or the arguments (the message names what, and how to fix it); also a workspace the process may not write (permissions, a read-only file system, S3's 401 or 403, an unknown access key) or a local path it cannot take (a file where a folder must be, a name too long) and an artifact replaced or damaged since it was written (a JSON file that does not parse, a data file or checkpoint whose SHA-256 is not the recorded one; the message says what to rerun): running again meets the same\n  \
    1    any other failure (a full disk or a file size limit, a lost connection, an S3 error, another process that took the run over, a workspace another process's running stage is writing, which the message names): running again is safe and resumes\n  \
    143  stopped by SIGTERM, 130 by SIGINT: what was written is kept, and running again resumes (the orchestrator ends with 0)\n  \
    137  killed (SIGKILL), with no message: a container's memory limit (the kernel's OOM killer) or a scheduler; running again resumes\n  \
    101  an internal error, or a thread limit (ulimit -u, a pids limit; ulimit -v too small for a thread's stack) that the message names\n  \
    134  an allocation failed (\"memory allocation of N bytes failed\"): an address-space limit (ulimit -v)";

/// Diffusion recommender models (DiffRec, T-DiffRec, L-DiffRec, LT-DiffRec) as a staged
/// pipeline over a workspace: ingest → cluster → train → evaluate → recommend.
#[derive(Parser, Debug)]
#[command(name = "diffrec", version = VERSION, about, long_about = None, after_help = EXIT_STATUS)]
struct Cli {
    /// More log output: -v diffrec's debug lines and other crates' info, -vv trace and debug.
    /// By default diffrec logs at info and other crates from warn up (the orchestrator: info).
    /// RUST_LOG overrides it (e.g. RUST_LOG=info,diffrec=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// What every pipeline-reading command takes.
#[derive(Args, Debug)]
struct PipelineArgs {
    /// The pipeline YAML file (see pipelines/ and docs/pipeline.md).
    pipeline: PathBuf,
    /// Workspace URL, overriding the pipeline's `workspace`: a directory, file://…, memory://
    /// or s3://bucket/prefix (S3 settings from the AWS_* environment variables).
    #[arg(long)]
    workspace: Option<String>,
    /// Override one pipeline key, e.g. `--set train.seed=3` or `--set evaluate.ks=[10,20]`.
    /// The value is parsed as YAML. A mapping set on a section changes only the keys it names
    /// (`--set 'train={epochs: 2, seed: 4}'`); `null` first clears the section. Repeatable.
    /// A relative path set here resolves against the pipeline file's directory, as one
    /// written in the file does, not the current directory.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline's stages in order, skipping those that are up to date: ingest, cluster
    /// and train whose manifest matches, evaluate and recommend whose output records the run's
    /// best checkpoint and the same settings.
    Run {
        #[command(flatten)]
        args: PipelineArgs,
        /// Stop after this stage.
        #[arg(long, value_enum)]
        until: Option<Stage>,
        /// Rerun stages even when they are up to date, from the start: train and the cluster
        /// stage's LightGCN then ignore their checkpoints instead of resuming.
        #[arg(long)]
        force: bool,
    },
    /// Run one stage (what a scheduler calls); its inputs must already be in the workspace.
    Stage {
        /// The stage to run.
        #[arg(value_enum)]
        name: Stage,
        #[command(flatten)]
        args: PipelineArgs,
        /// Rerun even when the stage is up to date, from the start: train and the cluster
        /// stage's LightGCN then ignore their checkpoints instead of resuming.
        #[arg(long)]
        force: bool,
    },
    /// Check a pipeline (keys, types, values) without running anything; prints it resolved.
    Validate {
        #[command(flatten)]
        args: PipelineArgs,
    },
    /// Run the embedded quickstart on a generated synthetic log; needs no files.
    Demo {
        /// Where to write the workspace.
        #[arg(long, default_value = "diffrec-demo")]
        workspace: String,
        /// Regenerate the synthetic log and rerun every stage even when up to date, from the
        /// start: training then ignores its checkpoints instead of resuming.
        #[arg(long)]
        force: bool,
    },
    /// Write a synthetic interaction log as CSV (user_id,item_id,timestamp,rating).
    Generate {
        /// Output CSV file (its folder must exist; a `.parquet`, `.npy`, `.json` or `.dat`
        /// name is refused, since the file is CSV whatever its name).
        #[arg(long)]
        out: PathBuf,
        /// Number of users.
        #[arg(long, default_value_t = 2_000)]
        users: usize,
        /// Number of items.
        #[arg(long, default_value_t = 1_000)]
        items: usize,
        /// Number of item groups (latent tastes; at most --items): each item belongs to one, and
        /// each user favours two of them (the one, with --clusters 1).
        #[arg(long, default_value_t = 16)]
        clusters: usize,
        /// Mean rows per user (at least 5 each). Items are drawn with replacement, so a user
        /// may click an item again (ingest keeps the last click), and the low-rated noise clicks
        /// fall below a `min_rating` of 3: after ingest a user can have fewer than 5 items.
        #[arg(long, default_value_t = 40.0)]
        mean_interactions: f64,
        /// Share of low-rated random clicks (natural noise).
        #[arg(long, default_value_t = 0.05)]
        false_positive_rate: f64,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Print top-K items from a trained run's best checkpoint, for one user of the training
    /// data (`--user`) or for any list of items (`--history`, no retraining needed).
    ///
    /// Output: tab-separated lines `rank`, `item_id` (the original id; a tab, line feed,
    /// carriage return or backslash in it written as \t, \n, \r, \\, other control
    /// characters as \xNN), `score` (5 decimals;
    /// comparable within one run only), best (highest score) first, after a header line. Ids
    /// (--user, --history, --history-file) are looked up as written and, if the model does not
    /// know them, without the spaces around them.
    #[command(group(ArgGroup::new("who").required(true).args(["user", "history", "history_file"])))]
    Recommend {
        /// Workspace URL holding the run.
        #[arg(long)]
        workspace: String,
        /// Run (pipeline) name.
        #[arg(long, value_parser = run_name)]
        run: String,
        /// Original user id (a user of the training data); one that starts with `-` is taken
        /// as an id (`--user -1`).
        #[arg(long, allow_hyphen_values = true)]
        user: Option<String>,
        /// Comma-separated original item ids, oldest first: score a user not seen in
        /// training (fold-in). For T-DiffRec and LT-DiffRec runs they are time-weighted as
        /// ingest weighs a user's train items (`data.temporal`: w_min for the first, w_max for
        /// the last); an item named twice counts once, at its first place.
        #[arg(long, allow_hyphen_values = true)]
        history: Option<String>,
        /// As --history, one item id per line (`-`: standard input), for ids that hold commas
        /// and for long histories. Blank lines are skipped. Here, in --history and in --user an
        /// id is looked up as written and, if the model does not know it, without the spaces
        /// around it.
        #[arg(long, value_name = "FILE")]
        history_file: Option<PathBuf>,
        /// How many items (at least 1).
        #[arg(long, default_value_t = NonZeroUsize::new(20).expect("20 > 0"), value_parser = parse_k)]
        k: NonZeroUsize,
        /// With --user, which of the user's items are never recommended back: `seen` = all of
        /// them (training, validation and test; the default), `train` = the training items only (as
        /// `recommend.exclude` in a pipeline). Only with --user: a history's items are left out.
        #[arg(long, value_name = "seen|train", value_parser = parse_exclude)]
        exclude: Option<diffrec_trainer::Exclude>,
    },
    /// List the workspace's runs: state (`finished`; `training`, with the process a live
    /// heartbeat names; `stopped`: killed, failed or stopped, which `diffrec stage train`
    /// resumes; `damaged`), variant, seed, epochs trained, best epoch, validation Recall@K and
    /// test Recall@K and NDCG@K at the best epoch (K: the one that selects the best epoch, 20
    /// or the first of `evaluate.ks`), whether the workspace's data is still what the run was
    /// trained on (`current`, `changed`, `no_ingest`, `unknown`), whether recommendations were
    /// written, when, and what to do. Reads only. A stopped run's `metrics.parquet` holds the
    /// evaluations it got to: this says which runs finished.
    Runs {
        /// Workspace URL (a directory, file://…, s3://bucket/prefix).
        #[arg(long)]
        workspace: String,
        /// One JSON object per run and line (the columns' names in lower case, plus
        /// `finished_at`, `last_written` and `running` {pid, host, started_at,
        /// heartbeat_age_s}), no header: for scripts, and to save as `runs.jsonl` for DuckDB
        /// (`select * from 'runs.jsonl'`) or pandas (`read_json(f, lines=True)`).
        #[arg(long)]
        json: bool,
    },
    /// Run burn-collective's global orchestrator for multi-node data-parallel training: each
    /// node's trainer (`train.nodes`, `train.node_rank`, `train.orchestrator: HOST:PORT`,
    /// `train.node_address`) registers here, then gradients are all-reduced between the nodes.
    /// Runs until interrupted (Ctrl-C / SIGTERM).
    Orchestrator {
        /// HOST:PORT to serve on. burn-collective listens on the port on every interface (it
        /// takes no host); HOST only documents which address the nodes use.
        #[arg(long)]
        bind: String,
    },
}

/// The embedded quickstart pipeline (also shipped as pipelines/quickstart.yaml).
const QUICKSTART: &str = include_str!("../../../pipelines/quickstart.yaml");

fn main() -> ExitCode {
    let kept = malloc::keep_freed_memory();
    shutdown::report_file_size_limit();
    let pool = threads::build_global_pool();
    let cli = Cli::parse();
    diffrec_data::manifest::set_build(env!("DIFFREC_BUILD"));
    // The orchestrator's own work is burn-collective's (its connection events, a few per node).
    let orchestrator = matches!(cli.command, Command::Orchestrator { .. });
    if !orchestrator {
        shutdown::end_on_panic();
    }
    progress::init_logging(cli.verbose, orchestrator);
    tracing::debug!(kept, "allocator keeps freed memory (mallopt)");
    tracing::debug!(threads = ?pool, "rayon pool with 8 MiB stacks");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if !orchestrator {
        shutdown::stop_on_signals(&runtime);
    }
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes, each cause shown once (library errors already quote their source).
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// 2 for errors the user fixes in their config or input, 1 otherwise (and for a workspace state
/// that a stage running in another process explains: `busy`).
fn exit_code(e: &anyhow::Error) -> u8 {
    // Outermost: a state another process's running stage explains is retried, whatever it is.
    // (A context layer: anyhow downcasts to it through the layers above, not in `chain`.)
    if e.downcast_ref::<busy::Busy>().is_some() {
        return 1;
    }
    for cause in e.chain() {
        if cause.downcast_ref::<PipelineError>().is_some()
            || cause.downcast_ref::<usage::UsageError>().is_some()
            || cause.downcast_ref::<usage::TrainedOnOtherData>().is_some()
            || cause.downcast_ref::<usage::NotReady>().is_some()
        {
            return 2;
        }
        if let Some(d) = cause.downcast_ref::<DataError>() {
            return if d.is_input() { 2 } else { 1 };
        }
        if let Some(t) = cause.downcast_ref::<diffrec_trainer::TrainError>() {
            return if t.is_input() { 2 } else { 1 };
        }
        if let Some(c) = cause.downcast_ref::<diffrec_cluster::ClusterError>() {
            use diffrec_cluster::ClusterError as C;
            return match c {
                C::Config(_)
                | C::BadEmbeddings { .. }
                | C::TooManyClusters { .. }
                | C::Corrupt { .. } => 2,
                C::Data(d) if d.is_input() => 2,
                _ => 1,
            };
        }
    }
    1
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { args, until, force } => {
            let loaded = pipeline::load(&args.pipeline, &args.sets, args.workspace.as_deref())?;
            let all = stages::until(until);
            let here = stages::for_node(all.clone(), &loaded.pipeline.train);
            if here != all {
                let t = &loaded.pipeline.train;
                if here.is_empty() {
                    status!(
                        "run: nothing to run on node {} of {} (node 0 runs the stages before \
                         training)",
                        t.node_rank,
                        t.nodes
                    );
                    return Ok(());
                }
                status!(
                    "run: node {} of {} runs only the train stage (node 0 runs the others and \
                     writes the run's artifacts)",
                    t.node_rank,
                    t.nodes
                );
            }
            stages::run_stages(&loaded, &here, force).await
        }
        Command::Stage { name, args, force } => {
            let loaded = pipeline::load(&args.pipeline, &args.sets, args.workspace.as_deref())?;
            stages::run_stages(&loaded, &[name], force).await
        }
        Command::Validate { args } => {
            let loaded = pipeline::load(&args.pipeline, &args.sets, args.workspace.as_deref())?;
            let yaml = serde_norway::to_string(&loaded.pipeline)?;
            stdout::write_data(|out| out.write_all(yaml.as_bytes()))?;
            eprintln!("{}: valid", args.pipeline.display());
            if let Err(e) = loaded.check_can_train() {
                eprintln!("note: this binary cannot run the train stage: {e}");
            }
            Ok(())
        }
        Command::Demo { workspace, force } => demo(&workspace, force).await,
        Command::Generate {
            out,
            users,
            items,
            clusters,
            mean_interactions,
            false_positive_rate,
            seed,
        } => {
            let spec = SyntheticSpec {
                users,
                items,
                clusters,
                mean_interactions,
                false_positive_rate,
                seed,
            };
            if let Some((field, why)) = spec.check() {
                let flag = field.replace('_', "-");
                return Err(usage::UsageError(format!("--{flag} {why}")).into());
            }
            check_generate_out(&out)?;
            // Written beside it and renamed once whole: a generator stopped half-way leaves no
            // file under the name that an ingest reads (a cut on a line end would pass). A link
            // (/dev/stdout, whatever it points to) or anything else but a file (a pipe) is
            // written through, as it is: a rename would replace the link itself.
            let direct = std::fs::symlink_metadata(&out).is_ok_and(|m| !m.is_file());
            let (file, unfinished) = if direct {
                let file = std::fs::File::create(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                (file, None)
            } else {
                let mut partial = out.clone().into_os_string();
                partial.push(format!(".partial-{}", std::process::id()));
                let partial = PathBuf::from(partial);
                // Removed by a SIGTERM or SIGINT until it is renamed whole.
                let (unfinished, file) = shutdown::Unfinished::create(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
                (file, Some(unfinished))
            };
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            let written = write_csv(&spec, &mut w).and_then(|rows| {
                std::io::Write::flush(&mut w)?;
                if unfinished.is_some() {
                    w.get_ref().sync_all()?;
                }
                Ok(rows)
            });
            let rows = match (unfinished, written) {
                (None, written) => written,
                (Some(unfinished), Ok(rows)) => unfinished.commit(&out).map(|()| rows),
                (Some(unfinished), Err(e)) => {
                    unfinished.abandon();
                    Err(e)
                }
            }
            .with_context(|| format!("writing {}", out.display()))?;
            match direct {
                // Perhaps this process's standard output, which the line would end up in.
                true => tracing::info!("wrote {rows} interactions to {}", out.display()),
                false => status!("wrote {rows} interactions to {}", out.display()),
            }
            Ok(())
        }
        Command::Recommend {
            workspace,
            run,
            user,
            history,
            history_file,
            k,
            exclude,
        } => {
            if exclude.is_some() && user.is_none() {
                return Err(usage::UsageError(
                    "--exclude goes with --user; a history's own items are never recommended back"
                        .into(),
                )
                .into());
            }
            let history = match (history, history_file) {
                (Some(list), _) => Some(list.split(',').map(str::to_owned).collect()),
                (None, Some(file)) => Some(read_history_file(&file)?),
                (None, None) => None,
            };
            infer_stage::recommend_one(
                &workspace,
                &run,
                (user.as_deref(), history),
                (k.get(), exclude.unwrap_or_default()),
            )
            .await
        }
        Command::Runs { workspace, json } => runs::list(&workspace, json).await,
        Command::Orchestrator { bind } => {
            let port = diffrec_trainer::config::host_port(&bind).ok_or_else(|| {
                usage::UsageError(format!(
                    "--bind: expected HOST:PORT with a port from 1 to 65535, got {bind:?}"
                ))
            })?;
            // burn-collective only logs a failed bind and returns, so try the port first: a
            // port in use is an error here, not a "listening" line and exit 0.
            diffrec_trainer::config::try_listen(port)
                .with_context(|| format!("--bind {bind}: cannot listen on port {port}"))?;
            tracing::info!(
                port,
                "orchestrator: serving (burn-collective, all interfaces)"
            );
            // Say where it really listens: a HOST of 127.0.0.1 does not keep it on loopback.
            status!(
                "orchestrator: listening on 0.0.0.0:{port}, every interface (burn-collective \
                 0.21 takes a port, not an address, so the host of --bind {bind} is not used; \
                 keep the port to the nodes' network with a firewall)"
            );
            burn_collective::start_global_orchestrator(port).await;
            Ok(())
        }
    }
}

/// `--run`, checked as a pipeline's `name` is.
fn run_name(name: &str) -> Result<String, String> {
    pipeline::check_run_name(name).map(|()| name.to_owned())
}

/// `generate --out`: refuses (exit 2) a path whose folder is missing or whose name says
/// another format than the CSV written.
fn check_generate_out(out: &Path) -> Result<()> {
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if let Some(ext) = ext.filter(|e| ["parquet", "npy", "json", "dat"].contains(&e.as_str())) {
        return Err(usage::UsageError(format!(
            "--out {}: generate writes CSV, not .{ext}; give a .csv name",
            out.display()
        ))
        .into());
    }
    if out.is_dir() {
        let why = format!("--out {}: a folder; give a file name", out.display());
        return Err(usage::UsageError(why).into());
    }
    match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(usage::UsageError(
            format!("--out {}: no folder {}", out.display(), dir.display()),
        )
        .into()),
        _ => Ok(()),
    }
}

/// `--k`: a count of items, at least 1 (clap's own message for 0 is about types).
fn parse_k(s: &str) -> Result<NonZeroUsize, String> {
    s.parse::<usize>()
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| format!("expected a whole number of items, at least 1, got {s:?}"))
}

/// `--exclude`, spelled as `recommend.exclude` in a pipeline.
fn parse_exclude(s: &str) -> Result<diffrec_trainer::Exclude, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("expected `seen` or `train`, got {s:?}"))
}

/// The lines of `--history-file` (`-`: standard input).
fn read_history_file(file: &std::path::Path) -> Result<Vec<String>> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| usage::UsageError(format!("--history-file {}: {e}", file.display())))?;
    // A byte-order mark (a Windows editor's) is not part of the first id.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text.lines().map(str::to_owned).collect())
}

/// Generates the synthetic log into the workspace and runs the quickstart pipeline on it.
async fn demo(workspace: &str, force: bool) -> Result<()> {
    let ws = Workspace::open(workspace)?;
    ws.check_reachable().await?;
    let key = "source/demo.csv";
    if force || !ws.exists(key).await? {
        let mut csv = Vec::new();
        let rows = write_csv(&SyntheticSpec::default(), &mut csv)?;
        ws.put_atomic(key, csv).await?;
        status!("demo: generated {rows} synthetic interactions at {workspace}/{key}");
    }
    let loaded = pipeline::from_yaml(
        QUICKSTART,
        "pipelines/quickstart.yaml",
        ".".into(),
        &[],
        Some(workspace),
    )?;
    // The workspace opened here, not by URL again: a `memory://` one exists only in this value.
    // (The quickstart trains on the CPU, which every binary has.)
    stages::run_stages_in(&ws, &loaded, &stages::until(None), force).await?;
    if workspace.starts_with("memory://") {
        status!("demo: done; the artifacts were in memory and end with this command");
    } else {
        status!("demo: done; artifacts are in {workspace}");
    }
    Ok(())
}
