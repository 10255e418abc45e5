//! Tests of the `diffrec` binary as a scheduler or a person would use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn diffrec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffrec"));
    c.env("RUST_LOG", "warn");
    c
}

/// A test's own folder under the system's temporary directory. It is removed when the test
/// ends, and kept, for a look, when the test fails.
struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's folder {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tmpdir(tag: &str) -> TestDir {
    let d = std::env::temp_dir().join(format!(
        "diffrec-cli-{tag}-{}-{}",
        std::process::id(),
        nonce()
    ));
    std::fs::create_dir_all(&d).unwrap();
    TestDir(d)
}

fn nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `c` with a file size limit (RLIMIT_FSIZE, `ulimit -f`) of `bytes`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn with_file_size_limit(c: &mut Command, bytes: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    }
}

/// `diffrec generate --out csv` with `args` (sizes, clusters); asserts it succeeded.
fn generate(csv: &Path, args: &[&str]) {
    let out = diffrec()
        .args(["generate", "--out", csv.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// A fresh test folder with a generated `log.csv` (the `generate` flags `args`) and a pipeline
/// `p.yaml` with `body`; returns the folder and the pipeline's path.
fn synthetic_project(tag: &str, args: &[&str], body: &str) -> (TestDir, PathBuf) {
    let dir = tmpdir(tag);
    generate(&dir.join("log.csv"), args);
    let p = write_pipeline(&dir, body);
    (dir, p)
}

/// `diffrec run P --workspace WS`, which must succeed; its stdout and stderr.
fn run_ok(p: &Path, ws: &Path) -> String {
    let out = diffrec()
        .args(["run", p.to_str().unwrap(), "--workspace"])
        .arg(ws)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

/// `diffrec recommend --workspace WS --run RUN ARGS…`, with `stdin` written to its input.
fn recommend(ws: &Path, run: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = diffrec()
        .args([
            "recommend",
            "--workspace",
            ws.to_str().unwrap(),
            "--run",
            run,
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(lines) = stdin {
        use std::io::Write as _;
        input.write_all(lines.as_bytes()).unwrap();
    }
    drop(input); // end of input
    child.wait_with_output().unwrap()
}

fn write_pipeline(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("p.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

/// Runs `diffrec stage STAGE PIPELINE --workspace WS --set …` and checks that it refuses: exit
/// code 2, `says` in the output, no panic.
fn assert_stage_refuses(stage: &str, pipeline: &str, ws: &Path, sets: &[&str], says: &str) {
    let mut c = diffrec();
    c.args(["stage", stage, pipeline, "--workspace"]).arg(ws);
    for set in sets {
        c.args(["--set", set]);
    }
    let out = c.output().unwrap();
    let t = text(&out);
    assert!(
        out.status.code() == Some(2) && t.contains(says) && !t.contains("panicked"),
        "{stage} {sets:?}: {t}"
    );
}

const PIPE: &str = "name: t\ndata:\n  source: {format: csv, path: log.csv}\n  min_rating: 3\n";

#[test]
fn demo_runs_every_stage_and_beats_popularity() {
    let dir = tmpdir("demo");
    let ws = dir.join("ws");
    let out = diffrec()
        .args(["demo", "--workspace", ws.to_str().unwrap()])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for f in [
        "data/interactions.parquet",
        "data/users.parquet",
        "data/items.parquet",
        "data/stats.json",
        "data/_manifest.json",
        "runs/quickstart/summary.json",
        "runs/quickstart/metrics.parquet",
        "runs/quickstart/recommendations.parquet",
        "runs/quickstart/checkpoints/best.ckpt",
        "runs/quickstart/_manifest.json",
    ] {
        assert!(ws.join(f).exists(), "{f} missing; output:\n{t}");
    }
    // The trained model must rank held-out items far better than popularity on this data
    // (users follow item groups and drift between them; popularity ignores both).
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("runs/quickstart/summary.json")).unwrap())
            .unwrap();
    let model = summary["test"]["recall@20"].as_f64().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let popularity = rt.block_on(async {
        let w = diffrec_data::Workspace::open(ws.to_str().unwrap()).unwrap();
        let d = diffrec_data::load_splits(&w).await.unwrap();
        let mut counts = vec![0f32; d.n_items];
        for &i in &d.train.indices {
            counts[i as usize] += 1.0;
        }
        let mut ev =
            diffrec_trainer::metrics::SplitEvaluator::new(&d.train, &d.valid, &d.test, &[20]);
        let users: Vec<usize> = (0..d.n_users).collect();
        let scores: Vec<f32> = users.iter().flat_map(|_| counts.iter().copied()).collect();
        ev.add_block(&users, &scores);
        ev.test_sums.finish(d.n_users)["recall@20"]
    });
    assert!(
        model > 1.5 * popularity,
        "model recall@20 {model:.4} vs popularity {popularity:.4}"
    );
    check_recommendations(&rt, &ws, "quickstart", 20);
    // In a `memory://` workspace the demo runs too (its stages share the store the generated
    // log went to) and trains the same model.
    let memory = diffrec()
        .args(["demo", "--workspace", "memory://demo"])
        .output()
        .unwrap();
    let evaluated = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("evaluate: "))
            .map(|l| l.rsplit_once(" (").unwrap().0.to_owned()) // without its timing
    };
    assert!(memory.status.success(), "{}", text(&memory));
    assert_eq!(
        evaluated(&text(&memory)),
        evaluated(&t),
        "{}",
        text(&memory)
    );
    assert!(evaluated(&t).is_some(), "{t}");
    // Second run: every stage up to date or cheap; ingest and train are skipped.
    let again = diffrec()
        .args(["demo", "--workspace", ws.to_str().unwrap()])
        .output()
        .unwrap();
    let t2 = text(&again);
    assert!(
        t2.contains("ingest: up to date") && t2.contains("train: up to date"),
        "{t2}"
    );
    // One user, and a history unseen in training (fold-in).
    let out = recommend(&ws, "quickstart", &["--user", "u5", "--k", "3"], None);
    assert!(
        out.status.success() && text(&out).lines().count() == 4,
        "{}",
        text(&out)
    );
    let out = recommend(&ws, "quickstart", &["--history", "1,2,3"], None);
    assert!(out.status.success(), "{}", text(&out));
    // An item named twice counts once, as in training.
    let history = |items: &str| {
        let out = recommend(&ws, "quickstart", &["--history", items], None);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(history("1,2,2,3,1"), history("1,2,3"));
    // `--exclude train` ranks the user's validation and test items too; the default (`seen`)
    // list is that ranking without them.
    let ranked = |args: &[&str]| -> Vec<String> {
        let out = recommend(&ws, "quickstart", args, None);
        assert!(out.status.success(), "{}", text(&out));
        let lines = String::from_utf8(out.stdout).unwrap();
        lines
            .lines()
            .skip(1)
            .map(|l| l.split('\t').nth(1).unwrap().to_owned())
            .collect()
    };
    let held_out: Vec<String> = rt.block_on(async {
        let w = diffrec_data::Workspace::open(ws.to_str().unwrap()).unwrap();
        let d = diffrec_data::load_splits(&w).await.unwrap();
        let items = diffrec_data::artifacts::load_ids(&w, "item").await.unwrap();
        let users = diffrec_data::artifacts::load_ids(&w, "user").await.unwrap();
        let u = users.iter().position(|x| x == "u5").unwrap();
        let mut held: Vec<u32> = [&d.valid, &d.test]
            .iter()
            .flat_map(|m| m.row(u).0.to_vec())
            .collect();
        held.sort_unstable();
        held.dedup();
        held.iter().map(|&i| items[i as usize].clone()).collect()
    });
    assert!(!held_out.is_empty(), "u5 holds no validation or test item");
    let k = 10;
    let wide = (k + held_out.len()).to_string();
    let train_only = ranked(&["--user", "u5", "--k", &wide, "--exclude", "train"]);
    let seen = ranked(&["--user", "u5", "--k", &k.to_string()]);
    let without: Vec<String> = train_only
        .into_iter()
        .filter(|i| !held_out.contains(i))
        .take(k)
        .collect();
    assert_eq!(seen, without, "held out: {held_out:?}");
    // The same history one id per line on stdin (spaces and blank lines aside); a line is one
    // id, commas and all, so `1,2` is an unknown id, not two.
    let history_file =
        |lines: &str| recommend(&ws, "quickstart", &["--history-file", "-"], Some(lines));
    let out = history_file("\u{feff}1\n 2 \n\n3\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), history("1,2,3"));
    let out = history_file("1,2\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unknown to the model") && text(&out).contains("\"1,2\""),
        "{}",
        text(&out)
    );

    // Mistakes in the arguments exit with 2 and say what is wrong.
    let recommend = ["recommend", "--workspace", ws.to_str().unwrap()];
    for (args, says) in [
        (
            &["--run", "quickstart", "--user", "nosuch"][..],
            "user \"nosuch\" is not in the training data",
        ),
        (
            &["--run", "nosuch", "--user", "u5"],
            "no run `nosuch` in the workspace: check the name, or train it first (finished \
             runs: `quickstart`)",
        ),
        (&["--run", "quickstart", "--user", "u5", "--k", "0"], "--k"),
        (
            &["--run", "quickstart", "--user", "u5", "--history", "1"],
            "cannot be used with",
        ),
        (
            &["--run", "quickstart", "--history", "nosuch"],
            "the history names no item",
        ),
        (
            &[
                "--run",
                "quickstart",
                "--history",
                "1",
                "--exclude",
                "train",
            ],
            "--exclude goes with --user",
        ),
    ] {
        let out = diffrec().args(recommend).args(args).output().unwrap();
        let t = text(&out);
        assert!(
            out.status.code() == Some(2) && t.contains(says),
            "{args:?}: {t}"
        );
    }
    // Evaluating the DiffRec run as another model: exit 2, naming the settings that differ
    // from the trained ones. Without the run's manifest (a run stopped before it finished),
    // its best checkpoint may be an unfinished training's: refused too.
    let pipeline = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../pipelines/quickstart.yaml"
    );
    let manifest = ws.join("runs/quickstart/_manifest.json");
    let kept = std::fs::read(&manifest).unwrap();
    for (with_manifest, set, says) in [
        (
            true,
            "model.denoiser.dims=[50]",
            "run `quickstart` was trained with other model settings: `model.denoiser.dims` \
             [200] (trained) vs [50] (now)",
        ),
        (
            true,
            "model.variant=l-diffrec",
            "`model.variant` \"diffrec\" (trained) vs \"l-diffrec\" (now)",
        ),
        (
            false,
            "train.seed=1",
            "run `quickstart` has not finished training (no runs/quickstart/_manifest.json)",
        ),
    ] {
        if !with_manifest {
            std::fs::remove_file(&manifest).ok();
        }
        assert_stage_refuses("evaluate", pipeline, &ws, &[set], says);
    }
    std::fs::write(&manifest, kept).unwrap();
    // `diffrec stage STAGE` of the quickstart with `sets`, which must succeed.
    let stage_ok = |stage: &str, sets: &[&str]| {
        let mut c = diffrec();
        c.args(["stage", stage, pipeline, "--workspace"]).arg(&ws);
        for set in sets {
            c.args(["--set", set]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{stage} {sets:?}: {}", text(&out));
    };
    // The reverse pass's own settings may change at evaluation.
    stage_ok("evaluate", &["model.diffusion.sampling_steps=5"]);
    // A rewritten summary.json (here with other cut-offs, so surely of another size) leaves
    // the trained run up to date.
    stage_ok("evaluate", &["evaluate.ks=[5]"]);
    let out = diffrec()
        .args(["run", pipeline, "--until", "train", "--workspace"])
        .arg(&ws)
        .output()
        .unwrap();
    assert!(text(&out).contains("train: up to date"), "{}", text(&out));
    // Data re-ingested with other settings (the same items, other weights) since the run was
    // trained: evaluate refuses it, naming what changed; ingested again as trained, it runs.
    stage_ok("ingest", &["data.temporal={w_min: 0.5, w_max: 1.0}"]);
    assert_stage_refuses(
        "evaluate",
        pipeline,
        &ws,
        &[],
        "run `quickstart` was trained on other data: data/interactions.parquet",
    );
    stage_ok("ingest", &[]);
    stage_ok("evaluate", &[]);
    // Training run alone with other data settings than the ingest ran with: refused, not
    // trained on the old data.
    // The cluster stage likewise (it clustered such data and called it up to date), and the
    // inference stages. Each names the keys that differ.
    for (stage, variant) in [
        ("train", "diffrec"),
        ("cluster", "l-diffrec"),
        ("evaluate", "diffrec"),
        ("recommend", "diffrec"),
    ] {
        assert_stage_refuses(
            stage,
            pipeline,
            &ws,
            &["data.min_rating=5", &format!("model.variant={variant}")],
            "the ingest stage completed with other data settings than this pipeline's \
             (`data.min_rating` 3.0 (ingested) vs 5.0 (now))",
        );
    }
    // A stage started before the stage it reads from: exit 2, saying which to run.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap(); // a workspace where nothing ran yet
    for (ws, set, says) in [
        (
            &ws,
            "model.variant=l-diffrec",
            "model.variant l-diffrec needs cluster/item_clusters.parquet, and the cluster stage \
             has not completed",
        ),
        (&empty, "name=q", "the ingest stage has not completed"),
    ] {
        assert_stage_refuses("train", pipeline, ws, &["name=other", set], says);
    }
}

#[test]
fn config_errors_exit_2_and_name_the_key() {
    let dir = tmpdir("cfg");
    let p = write_pipeline(&dir, &format!("{PIPE}train:\n  epohcs: 3\n"));
    let out = diffrec()
        .args(["validate", p.to_str().unwrap(), "--workspace", "memory://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("epohcs"), "{}", text(&out));

    let p = write_pipeline(&dir, PIPE);
    let out = diffrec()
        .args([
            "run",
            p.to_str().unwrap(),
            "--workspace",
            "memory://x",
            "--set",
            "data.split.ratios=[0.9,0.2,0.1]",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("`data.split.ratios`"), "{}", text(&out));

    // Bad input data: exit 2, naming file, row and column, and nothing written.
    std::fs::write(
        dir.join("log.csv"),
        "user_id,item_id,timestamp,rating\n1,2,3,5\n1,2,x,5\n",
    )
    .unwrap();
    let ws = dir.join("ws");
    let out = diffrec()
        .args([
            "stage",
            "ingest",
            p.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
            "--set",
            "data.source.columns.rating=rating",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("log.csv, row 2, column `timestamp`"),
        "{}",
        text(&out)
    );
    assert!(
        !ws.exists(),
        "the failed first ingest leaves no empty workspace folder"
    );

    // A workspace or source URL that every stage would refuse is refused by validate too,
    // naming the key; an S3 endpoint without its scheme is named (the S3 client panicked on
    // it, exit code 101).
    for (sets, env, says) in [
        (
            &["--workspace", "gs://b/ws"][..],
            None,
            "`workspace`: unsupported scheme",
        ),
        (
            &["--workspace", "s3:/b/ws"],
            None,
            "`workspace`: looks like a URL",
        ),
        (
            &["--workspace", "w", "--set", "data.source.path=gs://b/x.csv"],
            None,
            "`data.source.path`: unsupported scheme",
        ),
        (
            &["--workspace", "w", "--set", "data.source.path=s3:/b/x.csv"],
            None,
            "`data.source.path`: looks like a URL",
        ),
        (
            &["--workspace", "s3://b/ws"],
            Some("127.0.0.1:9000"),
            "AWS_ENDPOINT=\"127.0.0.1:9000\" is not an http(s) URL",
        ),
    ] {
        for command in ["validate", "run"] {
            let mut c = diffrec();
            c.args([command, p.to_str().unwrap()]).args(sets);
            if let Some(endpoint) = env {
                c.env("AWS_ENDPOINT", endpoint);
            }
            let out = c.current_dir(&*dir).output().unwrap();
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{command} {sets:?}: {t}");
            assert!(
                t.contains(says) && !t.contains("panicked"),
                "{command} {sets:?}: {t}"
            );
        }
    }
    assert!(!dir.join("s3:").exists() && !dir.join("w").exists());

    // generate: an output it cannot or should not write is the caller's mistake (exit 2).
    for (out_name, says) in [
        ("no-such-folder/log.csv", "no folder"),
        ("log.parquet", "generate writes CSV, not .parquet"),
    ] {
        let path = dir.join(out_name);
        let out = diffrec()
            .args(["generate", "--out", path.to_str().unwrap()])
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{out_name}: {t}");
        assert!(t.contains(says), "{out_name}: {t}");
        assert!(!path.exists(), "{out_name}: {t}");
    }
    // Arguments that make no sense, said in words (not clap's "zero for non-zero type").
    let path = dir.join("g.csv");
    for (args, says) in [
        (
            vec![
                "generate",
                "--out",
                path.to_str().unwrap(),
                "--items",
                "3",
                "--clusters",
                "4",
            ],
            "--clusters must be at most --items (each group holds at least one item), got 4 > 3",
        ),
        (
            vec![
                "recommend",
                "--workspace",
                "w",
                "--run",
                "r",
                "--user",
                "u",
                "--k",
                "0",
            ],
            "expected a whole number of items, at least 1, got \"0\"",
        ),
    ] {
        let out = diffrec().args(&args).output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(says), "{args:?}: {t}");
    }
    assert!(!path.exists());
}

#[test]
fn help_explains_every_flag() {
    let out = diffrec().args(["run", "--help"]).output().unwrap();
    let t = text(&out);
    for flag in ["--workspace", "--set", "--until", "--force", "--verbose"] {
        assert!(t.contains(flag), "{flag} missing from help:\n{t}");
    }
}

/// The first debug log line of `diffrec validate` (the quickstart pipeline) that contains
/// `needle`, with the environment variables `env` set (`None`: removed).
fn startup_debug_line(env: &[(&str, Option<&str>)], needle: &str) -> String {
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/quickstart.yaml");
    let mut c = diffrec();
    c.env("RUST_LOG", "debug");
    for &(k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c
        .args([
            "validate",
            pipeline.to_str().unwrap(),
            "--workspace",
            "memory://x",
        ])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{t}"))
        .to_owned()
}

/// A `RUST_LOG` that does not parse is named in a warning, and the default filter logs instead
/// (it was dropped in silence: an operator who mistyped a level saw fewer lines, not why).
#[test]
fn a_malformed_rust_log_is_named_not_dropped() {
    let line = startup_debug_line(&[("RUST_LOG", Some("diffrec=loud"))], "RUST_LOG");
    assert!(
        line.contains("WARN")
            && line.contains(r#"RUST_LOG="diffrec=loud" is not a log filter"#)
            && line.contains("warn,diffrec=info"),
        "{line}"
    );
}

/// glibc is told to keep freed memory between training steps (src/malloc.rs), unless the
/// operator set `GLIBC_TUNABLES`, whose settings then stand.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn allocator_keeps_freed_memory_unless_the_operator_tuned_it() {
    let kept = |tunables: Option<&str>| {
        startup_debug_line(
            &[("GLIBC_TUNABLES", tunables)],
            "allocator keeps freed memory",
        )
        .contains("kept=true")
    };
    assert!(kept(None));
    assert!(!kept(Some("glibc.malloc.trim_threshold=131072")));
}

/// The binary builds rayon's global pool itself (src/threads.rs, 8 MiB stacks for the training
/// steps that run there; the stack itself is tested in threads.rs) and keeps rayon's thread
/// count: `RAYON_NUM_THREADS` when set.
#[test]
fn rayon_pool_is_built_at_start_with_rayons_thread_count() {
    for n in ["1", "3"] {
        let line = startup_debug_line(
            &[("RAYON_NUM_THREADS", Some(n))],
            "rayon pool with 8 MiB stacks",
        );
        assert!(line.contains(&format!("threads=Some({n})")), "{line}");
    }
}

/// Kills the ingest stage at several points with SIGKILL; after each kill, every file that is
/// not a temporary is complete and readable, and a manifest only vouches for complete outputs.
/// The run afterwards completes.
#[test]
fn killed_ingest_leaves_no_partial_artifact() {
    let (dir, p) = synthetic_project(
        "kill",
        &[
            "--users",
            "30000",
            "--items",
            "5000",
            "--mean-interactions",
            "60",
        ],
        "name: k\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    let ws = dir.join("ws");
    let run = |force: bool| {
        let mut c = diffrec();
        c.args([
            "stage",
            "ingest",
            p.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
        ]);
        if force {
            c.arg("--force");
        }
        c
    };
    // Kills at fractions of how long one whole ingest takes here (under a second on the dev
    // box, so fixed delays would land after its end), each checked to have landed mid-run.
    let started = std::time::Instant::now();
    let out = run(true).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let whole = started.elapsed();
    let mut interrupted = 0;
    for share in [0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95] {
        let mut child = run(true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(share));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        check_no_partial(&ws.join("data"));
    }
    assert!(
        interrupted >= 4,
        "only {interrupted} of 7 kills landed before the ingest ended ({whole:?} uninterrupted)"
    );
    let out = run(false).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    check_no_partial(&ws.join("data"));
    assert!(ws.join("data/_manifest.json").exists());
}

fn check_no_partial(data: &Path) {
    let Ok(entries) = std::fs::read_dir(data) else {
        return;
    };
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            assert_eq!(
                name, "_running",
                "the only folder: heartbeats of killed processes"
            );
            continue;
        }
        if name.contains(".tmp-") || name.contains('#') {
            continue; // temporary: never read, cleaned by the next run
        }
        let bytes = std::fs::read(&path).unwrap();
        if name.ends_with(".parquet") {
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes::Bytes::from(bytes),
            );
            assert!(r.is_ok(), "{name} is not a complete Parquet file");
        } else if name.ends_with(".json") {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "{name} is not complete JSON"
            );
        }
    }
    let manifest = data.join("_manifest.json");
    if let Ok(m) = std::fs::read(&manifest) {
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        for (key, info) in m["outputs"].as_object().unwrap() {
            let bytes = std::fs::read(data.parent().unwrap().join(key)).unwrap();
            assert_eq!(
                diffrec_data::workspace::sha256_hex(&bytes),
                info["sha256"].as_str().unwrap(),
                "manifest vouches for {key} but its content differs"
            );
        }
    }
}

/// The S3 URL the S3 tests write under (DIFFREC_TEST_S3_URL), or `None` after printing why
/// `test` is skipped; with DIFFREC_REQUIRE_S3 set, a missing URL fails instead.
fn s3_url(test: &str) -> Option<String> {
    let url = std::env::var("DIFFREC_TEST_S3_URL").ok();
    if url.is_none() {
        assert!(
            std::env::var_os("DIFFREC_REQUIRE_S3").is_none(),
            "DIFFREC_REQUIRE_S3 is set but DIFFREC_TEST_S3_URL is not"
        );
        skipped(&format!(
            "{test}: DIFFREC_TEST_S3_URL is not set (no local S3-compatible server). .ci/run \
             starts one and sets it; by hand: DIFFREC_TEST_S3_URL=s3://BUCKET/PREFIX with \
             AWS_ENDPOINT, AWS_ALLOW_HTTP=true and AWS credentials for the server"
        ));
    }
    url
}

/// An S3 workspace with no credentials in the environment, on a machine without an instance
/// metadata service (here: a port nothing listens on), fails at once naming the variables to
/// set, exit code 2: the S3 client would retry the metadata service for three minutes, then
/// fail on "a token request" with exit code 1. Needs no S3 server: nothing reaches one.
#[test]
fn s3_without_credentials_says_so_at_once() {
    let mut c = diffrec();
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SKIP_SIGNATURE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ROLE_ARN",
    ] {
        c.env_remove(v);
    }
    let out = c
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
        .env("AWS_REGION", "us-east-1")
        .args(["runs", "--workspace", "s3://diffrec-no-such-bucket/x"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("no AWS credentials: none in the environment")
            && t.contains("no instance metadata service at http://127.0.0.1:1")
            && t.contains("Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{t}"
    );
}

/// The same ingest against an S3-compatible server gives byte-identical artifacts.
/// Needs DIFFREC_TEST_S3_URL (e.g. s3://diffrec-test/run1) and the AWS_* variables; `.ci/run`
/// starts a local server and sets them.
#[test]
fn s3_workspace_gives_identical_artifacts() {
    let Some(s3) = s3_url("s3_workspace_gives_identical_artifacts") else {
        return;
    };
    let s3 = format!("{}/{}", s3.trim_end_matches('/'), nonce());
    let (dir, p) = synthetic_project(
        "s3",
        &["--users", "300"],
        "name: s\ndata:\n  source: {format: csv, path: log.csv}\n  temporal: {w_min: 0.2}\n",
    );
    let local = dir.join("ws");
    for ws in [local.to_str().unwrap(), s3.as_str()] {
        let out = diffrec()
            .args([
                "run",
                p.to_str().unwrap(),
                "--workspace",
                ws,
                "--until",
                "ingest",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{ws}: {}", text(&out));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let remote = diffrec_data::Workspace::open(&s3).unwrap();
        for key in [
            "data/interactions.parquet",
            "data/users.parquet",
            "data/items.parquet",
            "data/stats.json",
        ] {
            let a = std::fs::read(local.join(key)).unwrap();
            let b = remote.get(key).await.unwrap();
            assert_eq!(a, b.to_vec(), "{key} differs between local and S3");
        }
        let keys = remote.list("data").await.unwrap();
        assert!(
            keys.iter().all(|k| !k.contains(".tmp-")),
            "temporaries left on S3: {keys:?}"
        );
        // A rerun on S3 is skipped by the manifest.
        let out = diffrec()
            .args([
                "run",
                p.to_str().unwrap(),
                "--workspace",
                &s3,
                "--until",
                "ingest",
            ])
            .output()
            .unwrap();
        assert!(text(&out).contains("up to date"), "{}", text(&out));
    });
}

/// S3 URLs name keys as written, as the AWS CLI, boto3 and DuckDB read them: a workspace and a
/// source under a prefix with a space and non-ASCII letters are found at those keys (they were
/// written under their percent-encodings, percent-encoded again). A bucket that does not
/// exist is named (exit code 2), for the workspace and for a source.
#[test]
fn s3_keys_are_the_urls_as_written() {
    let Some(s3) = s3_url("s3_keys_are_the_urls_as_written") else {
        return;
    };
    let root = format!("{}/keys-{}", s3.trim_end_matches('/'), nonce());
    let (dir, p) = synthetic_project(
        "s3keys",
        &["--users", "100"],
        "name: s\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = format!("{root}/in ü");
    rt.block_on(async {
        let folder = diffrec_data::Workspace::open(&src).unwrap();
        let csv = std::fs::read(dir.join("log.csv")).unwrap();
        folder.put_atomic("log.csv", csv).await.unwrap();
    });
    let ingest = |ws: &str, source: &str| {
        diffrec()
            .args(["stage", "ingest", p.to_str().unwrap(), "--workspace", ws])
            .args(["--set", &format!("data.source.path={source}")])
            .output()
            .unwrap()
    };
    let ws = format!("{root}/ws é");
    let out = ingest(&ws, &format!("{src}/log.csv"));
    assert!(out.status.success(), "{}", text(&out));
    let keys = rt
        .block_on(diffrec_data::Workspace::open(&root).unwrap().list(""))
        .unwrap();
    for key in ["in ü/log.csv", "ws é/data/interactions.parquet"] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
    let bucket = "diffrec-no-such-bucket";
    for (ws, source) in [
        (format!("s3://{bucket}/ws"), format!("{src}/log.csv")),
        (ws.clone(), format!("s3://{bucket}/log.csv")),
    ] {
        let out = ingest(&ws, &source);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains(&format!("bucket `{bucket}` does not exist")),
            "{t}"
        );
    }
}

/// Two trainings of one run on S3 (a scheduler's retry on another machine). S3 has no pids, so
/// the train stage's cleaning must leave a young temporary, which may be another machine's
/// write between its upload and its copy: one planted beside the checkpoints survives a
/// training. Then two trainings started at once: one stops naming the conflict, the other
/// finishes.
#[test]
fn trainings_on_s3_leave_young_temporaries_and_stop_a_second_writer() {
    let Some(s3) = s3_url("trainings_on_s3_leave_young_temporaries_and_stop_a_second_writer")
    else {
        return;
    };
    let (_dir, p) = synthetic_project(
        "s3-two",
        &["--users", "600", "--items", "300"],
        "name: r\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  diffusion: {steps: 5}\n  denoiser: {dims: [32]}\n\
         train: {epochs: 8, eval_every: 2, batch_size: 64}\nevaluate: {ks: [10]}\n",
    );
    let ws = format!("{}/two-{}", s3.trim_end_matches('/'), nonce());
    let ingest = diffrec()
        .args(["stage", "ingest", p.to_str().unwrap(), "--workspace", &ws])
        .output()
        .unwrap();
    assert!(ingest.status.success(), "{}", text(&ingest));
    let train = |name: &str| {
        diffrec()
            .args(["stage", "train", p.to_str().unwrap(), "--workspace", &ws])
            .args(["--set", &format!("name={name}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let planted = "runs/r/checkpoints/latest.ckpt.tmp-99999999-00000000000000ff";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let remote = diffrec_data::Workspace::open(&ws).unwrap();
    rt.block_on(remote.put_atomic(planted, &b"in flight"[..]))
        .unwrap();
    let out = train("r").wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let keys = rt.block_on(remote.list("runs/r/checkpoints")).unwrap();
    assert!(
        keys.iter().any(|k| k == planted),
        "the training removed a young temporary: {keys:?}"
    );

    // Another run, so that neither finds a finished one.
    one_of_two_stops_by_name([train("r2"), train("r2")], "r2");
}

/// Waits for two trainings of run `name` started at once and checks that exactly one stopped
/// (exit code 1), naming the conflict.
fn one_of_two_stops_by_name(both: [std::process::Child; 2], name: &str) {
    let outs: Vec<Output> = both
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let failed: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly one of two concurrent trainings must stop:\n{}\n---\n{}",
        text(&outs[0]),
        text(&outs[1])
    );
    assert_eq!(failed[0].status.code(), Some(1));
    let says = format!("another process started training run `{name}`");
    assert!(text(failed[0]).contains(&says), "{}", text(failed[0]));
}

/// A training run killed with SIGKILL and restarted ends with exactly the results of an
/// uninterrupted run (per-epoch reseeding + complete checkpoints), and a finished run can be
/// extended with more epochs.
#[test]
fn killed_training_resumes_to_the_same_result() {
    resumes_to_the_same_result("resume", &[]);
}

/// The same with a parameter average (`train.ema_decay`, both `train.ema_warmup` schedules),
/// which the latest checkpoint must carry; the three runs' results differ pairwise (the average
/// and its warm-up setting are really used: ~190 steps, where 0.99 with the count warm-up spans
/// ~20 steps and the bias-corrected one ~100).
#[test]
fn killed_training_with_a_parameter_average_resumes_to_the_same_result() {
    let plain = resumes_to_the_same_result("resume-ema-plain", &["--set", "train.epochs=6"]);
    let avg = resumes_to_the_same_result(
        "resume-ema",
        &["--set", "train.epochs=6", "--set", "train.ema_decay=0.99"],
    );
    let debiased = resumes_to_the_same_result(
        "resume-ema-debias",
        &[
            "--set",
            "train.epochs=6",
            "--set",
            "train.ema_decay=0.99",
            "--set",
            "train.ema_warmup=debias",
        ],
    );
    assert_ne!(avg["test"], plain["test"]);
    assert_ne!(debiased["test"], avg["test"]);
    assert_ne!(debiased["test"], plain["test"]);
}

/// A latest checkpoint whose model does not fit the run's configuration (the fingerprint
/// matches, so it can only be damaged or foreign) stops the resume with exit code 2, naming the
/// checkpoint and the first layer that differs, and says to start over with `--force`; `--force`
/// then trains from scratch.
#[test]
fn resume_from_a_checkpoint_of_another_shape_is_refused() {
    let dir = tmpdir("resume-shape");
    let csv = dir.join("log.csv");
    generate(&csv, &["--users", "300", "--items", "120"]);
    let pipeline = |name: &str, dims: usize| {
        let p = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "name: {name}\ndata:\n  source: {{format: csv, path: log.csv}}\nmodel:\n  \
                 diffusion: {{steps: 5}}\n  denoiser: {{dims: [{dims}]}}\ntrain: {{epochs: 1, \
                 eval_every: 1, batch_size: 64}}\nevaluate: {{ks: [10]}}\n"
            ),
        )
        .unwrap();
        p
    };
    let (ours, other) = (pipeline("r", 32), pipeline("other", 16));
    let ws = dir.join("ws");
    let train = |p: &Path, extra: &[&str]| {
        diffrec()
            .args([
                "run",
                p.to_str().unwrap(),
                "--workspace",
                ws.to_str().unwrap(),
            ])
            .args(["--until", "train"])
            .args(extra)
            .output()
            .unwrap()
    };
    for p in [&ours, &other] {
        let out = train(p, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // A finished run asked to go on with another trajectory setting is refused, naming the
    // way out, and stays finished: its manifest is still there for evaluate and recommend.
    let out = train(&ours, &["--set", "train.lr=0.01"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("another configuration") && t.contains("--force"),
        "{t}"
    );
    // It names what changed since the run was trained, and only that.
    let since = t.split("Since it was trained: ").nth(1).unwrap_or_default();
    assert!(
        since.starts_with("`train.lr` ") && since.contains(" (trained) vs 0.01 (now)"),
        "{t}"
    );
    assert!(!since.contains(';'), "{t}");
    assert!(ws.join("runs/r/_manifest.json").exists(), "{t}");
    // Put the other run's model record into our latest checkpoint, keeping our state (and so
    // our fingerprint) and optimizer.
    use diffrec_trainer::checkpoint::{decode, encode, this_diffrec};
    let latest = |run: &str| ws.join(format!("runs/{run}/checkpoints/latest.ckpt"));
    let mut ckpt = decode(&std::fs::read(latest("r")).unwrap()).unwrap();
    let foreign = decode(&std::fs::read(latest("other")).unwrap()).unwrap();
    // As if an earlier diffrec had written it: the error says which.
    assert_eq!(ckpt.state.written_by, this_diffrec());
    ckpt.state.written_by = "diffrec 0.0.1".into();
    let bytes = encode(
        &ckpt.state,
        &foreign.model,
        &ckpt.optim,
        ckpt.ema.as_deref(),
    )
    .unwrap();
    std::fs::write(latest("r"), bytes).unwrap();

    let out = train(&ours, &["--set", "train.epochs=2"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    for says in [
        "the model record in runs/r/checkpoints/latest.ckpt does not fit the configured model",
        "`in_layers.0.weight` is [130, 16] in the checkpoint but [130, 32]",
        format!(
            "`--force`. It was written by diffrec 0.0.1; this is {}.",
            this_diffrec()
        )
        .as_str(),
    ] {
        assert!(t.contains(says), "no `{says}` in:\n{t}");
    }
    // The same in the best checkpoint: evaluate names both versions too.
    let best = ws.join("runs/r/checkpoints/best.ckpt");
    let mut ckpt = decode(&std::fs::read(&best).unwrap()).unwrap();
    ckpt.state.written_by = "diffrec 0.0.1".into();
    let bytes = encode(&ckpt.state, &foreign.model, &ckpt.optim, None).unwrap();
    std::fs::write(&best, &bytes).unwrap();
    // Evaluate first refuses a best checkpoint of other bytes than the manifest records; with
    // the manifest agreeing (as if that diffrec had finished the run with it), it reads it.
    let stage = |stage: &str| {
        diffrec()
            .args(["stage", stage, ours.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .output()
            .unwrap()
    };
    let other_bytes = "runs/r/checkpoints/best.ckpt is not the file training finished with";
    let out = stage("evaluate");
    assert!(
        out.status.code() == Some(2) && text(&out).contains(other_bytes),
        "{}",
        text(&out)
    );
    let manifest_path = ws.join("runs/r/_manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["outputs"]["runs/r/checkpoints/best.ckpt"]["sha256"] =
        diffrec_data::workspace::sha256_hex(&bytes).into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    assert_stage_refuses(
        "evaluate",
        ours.to_str().unwrap(),
        &ws,
        &[],
        &format!(
            "runs/r/checkpoints/best.ckpt does not fit the configured model: `in_layers.0.weight` \
             is [130, 16] in the checkpoint but [130, 32] in the configured model (weights are \
             [in, out]). Evaluate and recommend with the model settings the run was trained with (`config.model` in runs/r/_manifest.json); if the \
             data changed since, retrain it with `--force`. It was written by diffrec 0.0.1; \
             this is {}.",
            this_diffrec()
        ),
    );
    let out = train(&ours, &["--set", "train.epochs=2", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    // One byte changed inside the best checkpoint keeps its size; evaluate and recommend
    // refuse it (exit 2: damage; a retraining replacing it would have changed the manifest).
    let good = std::fs::read(&best).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    std::fs::write(&best, &flipped).unwrap();
    for name in ["evaluate", "recommend"] {
        let out = stage(name);
        let t = text(&out);
        assert!(
            out.status.code() == Some(2) && t.contains(other_bytes),
            "{name}: {t}"
        );
    }
    std::fs::write(&best, &good).unwrap();
    let out = stage("evaluate");
    assert!(out.status.success(), "{}", text(&out));
}

/// `model.diffusion.beta_fixed` written out as the variant's default is the run left unset,
/// and the other way round: a finished run stays up to date and evaluates, a stopped one
/// resumes. A value other than the default is still another run.
#[test]
fn a_default_written_out_is_the_same_run() {
    let (dir, p) = synthetic_project(
        "spelled",
        &["--users", "300", "--items", "120"],
        "name: r\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  \
         diffusion: {steps: 5}\n  denoiser: {dims: [16]}\ntrain: {epochs: 2, eval_every: 1, \
         batch_size: 64}\nevaluate: {ks: [10]}\n",
    );
    let ws = dir.join("ws");
    let stage = |name: &str, sets: &[&str]| {
        let mut c = diffrec();
        c.args(["stage", name, p.to_str().unwrap(), "--workspace"])
            .arg(&ws);
        for set in sets {
            c.args(["--set", set]);
        }
        c.output().unwrap()
    };
    let out = diffrec()
        .args(["run", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .args(["--until", "train"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let written = "model.diffusion.beta_fixed=true";
    let out = stage("train", &[written]);
    assert!(text(&out).contains("train: up to date"), "{}", text(&out));
    // So are the data section's defaults that depend on another key: the CSV's split method.
    let out = stage("train", &["data.split.method=per_user_ratio"]);
    assert!(text(&out).contains("train: up to date"), "{}", text(&out));
    // An ingest manifest written before they were recorded resolved (unset: null) is up to
    // date for the pipeline that wrote it.
    let key = ws.join("data/_manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    assert_eq!(m["config"]["split"]["method"], "per_user_ratio", "{m}");
    m["config"]["split"]["method"] = serde_json::Value::Null;
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = stage("ingest", &[]);
    assert!(text(&out).contains("ingest: up to date"), "{}", text(&out));
    let out = stage("evaluate", &[written]);
    assert!(out.status.success(), "{}", text(&out));
    let out = stage("train", &["model.diffusion.beta_fixed=false"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Stopped (no manifest, as a killed run leaves it), then extended with the default written
    // out: it resumes from its checkpoint at epoch 2, and the manifest keeps the run's spelling.
    std::fs::remove_file(ws.join("runs/r/_manifest.json")).unwrap();
    let out = stage("train", &[written, "train.epochs=3"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("resum"), "{t}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("runs/r/_manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["config"]["model"]["diffusion"]["beta_fixed"].is_null(),
        "{manifest}"
    );
    let out = stage("train", &["train.epochs=3"]);
    assert!(text(&out).contains("train: up to date"), "{}", text(&out));
}

/// A scheduled refresh: the source gets new events and `diffrec run` runs again. The finished
/// run no longer describes the workspace's data, so it trains anew (not refused, which left it
/// unusable: evaluate and recommend refuse a run trained on other data), and evaluates and
/// recommends on the new data. So does a run stopped on the old data (a training killed the day
/// before): its checkpoint cannot resume on the new data, and refusing it failed every later
/// refresh until someone ran --force. A change of settings is still refused.
#[test]
fn a_finished_run_trains_anew_on_refreshed_data() {
    let (dir, p) = synthetic_project(
        "refresh",
        &["--users", "300", "--items", "120"],
        "name: r\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  \
         diffusion: {steps: 5}\n  denoiser: {dims: [16]}\ntrain: {epochs: 2, eval_every: 1, \
         batch_size: 64}\nevaluate: {ks: [10]}\n",
    );
    let ws = dir.join("ws");
    let run = || {
        diffrec()
            .args(["run", p.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let summary = || std::fs::read(ws.join("runs/r/summary.json")).unwrap();
    let before = summary();

    generate(
        &dir.join("log.csv"),
        &["--users", "320", "--items", "120", "--seed", "8"],
    );
    let out = run();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("finished on other data") && t.contains("training it anew"),
        "{t}"
    );
    assert!(!t.contains("resuming"), "{t}");
    assert_ne!(summary(), before, "{t}");
    let out = recommend(&ws, "r", &["--user", "u5", "--k", "3"], None);
    assert!(out.status.success(), "{}", text(&out));

    // Stopped on the old data (no manifest), then refreshed: trained anew as well, naming the
    // ingested interactions (not the source: ingest's own input).
    std::fs::remove_file(ws.join("runs/r/_manifest.json")).unwrap();
    generate(&dir.join("log.csv"), &["--users", "300", "--items", "120"]);
    let out = run();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("was stopped on other data (input `data/interactions.parquet` changed")
            && t.contains("training it anew")
            && !t.contains("resuming"),
        "{t}"
    );
    // Stopped again, and now a setting changed too: refused, naming it.
    std::fs::remove_file(ws.join("runs/r/_manifest.json")).unwrap();
    let out = diffrec()
        .args(["run", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .args(["--set", "train.seed=9"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("another configuration or data") && t.contains("train.seed"),
        "{t}"
    );
}

/// Trains the same small run uninterrupted, killed three times and resumed, and in two halves;
/// asserts the three agree and returns the results.
fn resumes_to_the_same_result(tag: &str, settings: &[&str]) -> serde_json::Value {
    let (dir, p) = synthetic_project(
        tag,
        &["--users", "2000", "--items", "800"],
        "name: r\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  diffusion: {steps: 5}\n  denoiser: {dims: [64]}\n\
         train: {epochs: 12, eval_every: 2, batch_size: 64, patience: 100}\nevaluate: {ks: [10, 20]}\n",
    );
    let run = |ws: &Path, extra: &[&str]| {
        let mut c = diffrec();
        c.args([
            "run",
            p.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
            "--until",
            "train",
        ]);
        c.args(settings);
        c.args(extra);
        c
    };
    let summary = |ws: &Path| -> serde_json::Value {
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ws.join("runs/r/summary.json")).unwrap())
                .unwrap();
        serde_json::json!({"test": s["test"], "valid": s["valid"], "best": s["best_epoch"], "epochs": s["epochs_run"]})
    };
    let a = dir.join("a");
    assert!(run(&a, &[]).output().unwrap().status.success());
    let reference = summary(&a);

    // Killed three times, each as soon as it has written a checkpoint of its own, then completed.
    let b = dir.join("b");
    kill_after_each_checkpoint(
        || run(&b, &[]),
        &b.join("runs/r/checkpoints/latest.ckpt"),
        &b.join("runs/r/_manifest.json"),
    );
    // What a kill in the middle of a write leaves (a temporary, never read) is removed when
    // the stage next runs.
    let checkpoints = b.join("runs/r/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::fs::write(
        checkpoints.join("latest.ckpt.tmp-99999999-00000000000000ff"),
        b"half",
    )
    .unwrap();
    // And object_store's own staging file of such a temporary (`…#N`), hidden from listings.
    std::fs::write(
        checkpoints.join("latest.ckpt.tmp-99999999-00000000000000fe#1"),
        b"half",
    )
    .unwrap();
    let out = run(&b, &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("resuming after epoch"),
        "{}",
        text(&out)
    );
    assert_eq!(
        summary(&b),
        reference,
        "resumed run differs; output:\n{}",
        text(&out)
    );
    let left: Vec<_> = walk(&b.join("runs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");

    // A finished run trained again with --force and killed: the outputs that described the
    // finished run's best checkpoint are gone with its manifest (they would sit beside the
    // new training's best), so evaluate refuses the run instead of mixing the two. The
    // training then resumes to the same result. (For the plain run only: the other settings
    // add nothing to it.)
    if settings.is_empty() {
        kill_after_each_checkpoint(
            || {
                let mut c = run(&a, &[]);
                c.arg("--force");
                c
            },
            &a.join("runs/r/checkpoints/latest.ckpt"),
            &a.join("runs/r/_manifest.json"),
        );
        assert!(!a.join("runs/r/summary.json").exists(), "summary.json left");
        assert_stage_refuses(
            "evaluate",
            p.to_str().unwrap(),
            &a,
            &[],
            "run `r` has not finished training",
        );
        assert!(run(&a, &[]).output().unwrap().status.success());
        assert_eq!(summary(&a), reference);
    }

    // Half the epochs, then extended to all: the same as all in one go.
    let epochs = reference["epochs"].as_u64().unwrap();
    let c = dir.join("c");
    let half = format!("train.epochs={}", epochs / 2);
    assert!(
        run(&c, &["--set", &half])
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = run(&c, &["--set", &format!("train.epochs={epochs}")])
        .output()
        .unwrap();
    assert!(
        text(&out).contains(&format!("resuming after epoch {}", epochs / 2)),
        "{}",
        text(&out)
    );
    assert_eq!(summary(&c), reference);
    // Cut back to half: refused (trained anew with half it would be another run, which its
    // checkpoints cannot give back), and the finished run is kept as it was.
    let out = run(&c, &["--set", &half]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "Set train.epochs at least {epochs} to keep the run"
        )),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("resuming after epoch"),
        "{}",
        text(&out)
    );
    assert_eq!(summary(&c), reference);
    assert!(c.join("runs/r/_manifest.json").exists());

    // Killed between the two checkpoint writes of the epoch that set a new best (`latest` is
    // written first): the resume rebuilds `best` from `latest`, so the model that evaluate and
    // recommend load is the selected epoch's. Made by hand: `e` trained to its first
    // evaluation, whose `best.ckpt` is kept, then to its second, which selects a new best, and
    // the first `best.ckpt` put back (with no manifest, as a killed run has none).
    let e = dir.join("e");
    let ckpts = e.join("runs/r/checkpoints");
    let train_e = |epochs: &str| {
        let out = run(&e, &["--set", epochs]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    train_e("train.epochs=2");
    let first_best = std::fs::read(ckpts.join("best.ckpt")).unwrap();
    train_e("train.epochs=4");
    assert_eq!(
        checkpoint_state(&ckpts.join("latest.ckpt"))["best_epoch"],
        4,
        "the setup needs the second evaluation to select a new best"
    );
    let selected = std::fs::read(ckpts.join("best.ckpt")).unwrap();
    std::fs::write(ckpts.join("best.ckpt"), &first_best).unwrap();
    std::fs::remove_file(e.join("runs/r/_manifest.json")).unwrap();
    let out = run(&e, &["--set", "train.epochs=4"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        checkpoint_state(&ckpts.join("best.ckpt"))["epoch"],
        4,
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read(ckpts.join("best.ckpt")).unwrap() == selected,
        "the rebuilt best.ckpt differs from the one the uninterrupted run wrote"
    );

    // Two processes training the same run at once (a scheduler's retry while the first attempt
    // still runs): one stops, naming the conflict, before it overwrites the other's
    // checkpoints; the other finishes the run as if it had been alone.
    let d = dir.join("d");
    let ingest = diffrec()
        .args(["stage", "ingest", p.to_str().unwrap(), "--workspace"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(ingest.status.success(), "{}", text(&ingest));
    let start = || {
        run(&d, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    one_of_two_stops_by_name([start(), start()], "r");
    assert_eq!(summary(&d), reference);
    reference
}

/// Starts `start()` three times and kills each as soon as it has written `checkpoint` anew (so
/// in the work after that write: these runs take well under a second, and kills at fixed times
/// landed after their end). Asserts that none got as far as writing `manifest`.
/// A two-node test's per-node extra argument: `arg` on node `rank` only.
fn on_rank(rank: usize, arg: &'static str) -> impl Fn(usize) -> Vec<String> {
    move |r| match r == rank {
        true => vec![arg.to_string()],
        false => vec![],
    }
}

/// Starts the stage three times, killing it after each new `checkpoint`; the stage must not
/// have finished (no `manifest` written: absent, or a previous run's as it was).
fn kill_after_each_checkpoint(start: impl Fn() -> Command, checkpoint: &Path, manifest: &Path) {
    let written = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let previous = std::fs::read(manifest).ok();
    for _ in 0..3 {
        let before = written(checkpoint);
        let mut child = start()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while written(checkpoint) == before && child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint in two minutes"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let now = std::fs::read(manifest).ok();
    assert!(
        now.is_none() || now == previous,
        "a killed run finished anyway: the resume after it would test nothing"
    );
}

/// A cluster stage killed during LightGCN's pre-training resumes from its checkpoint and ends
/// with the clusters, embeddings and metrics of an uninterrupted run; the checkpoint is removed
/// once the stage completes. Killed in a workspace that has clusters, it leaves them in place.
#[test]
fn killed_cluster_stage_resumes_to_the_same_clusters() {
    let (dir, p) = synthetic_project(
        "cluster-resume",
        &["--users", "2000", "--items", "800"],
        "name: t\ndata:\n  source: {format: csv, path: log.csv}\nmodel: {variant: l-diffrec}\n\
         cluster:\n  k: 3\n  lightgcn: {dim: 16, epochs: 30, eval_every: 2, patience: 100, batch_size: 2048}\n",
    );
    let until = |last: &str, ws: &Path| {
        let mut c = diffrec();
        c.args(["run", p.to_str().unwrap(), "--until", last, "--workspace"])
            .arg(ws);
        c
    };
    let stage = |ws: &Path| until("cluster", ws);
    let outputs = |ws: &Path| {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ws.join("cluster/summary.json")).unwrap())
                .unwrap();
        let l = &summary["lightgcn"];
        let bytes = |key: &str| std::fs::read(ws.join(key)).unwrap();
        (
            bytes("cluster/item_clusters.parquet"),
            bytes("cluster/item_embeddings.parquet"),
            bytes("cluster/user_embeddings.parquet"),
            [&l["best_epoch"], &l["epochs_run"], &l["valid"], &l["test"]].map(|v| v.to_string()),
        )
    };
    let a = dir.join("a");
    let out = stage(&a).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let ckpt = "cluster/lightgcn.ckpt";
    assert!(!a.join(ckpt).exists(), "the checkpoint outlived the stage");

    let b = dir.join("b");
    let ingest = until("ingest", &b).output().unwrap();
    assert!(ingest.status.success(), "{}", text(&ingest));
    kill_after_each_checkpoint(
        || stage(&b),
        &b.join(ckpt),
        &b.join("cluster/_manifest.json"),
    );
    let out = stage(&b).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("lightgcn resuming after epoch"), "{t}");
    assert!(outputs(&b) == outputs(&a), "resumed clusters differ:\n{t}");
    assert!(!b.join(ckpt).exists(), "the checkpoint outlived the stage");

    // `--force` starts over, whatever checkpoint a killed run left; killed while it
    // pre-trains, it leaves the previous clusters as they were, vouched for (`up to date`).
    let forced = || {
        let mut c = stage(&b);
        c.arg("--force");
        c
    };
    kill_after_each_checkpoint(forced, &b.join(ckpt), &b.join("cluster/_manifest.json"));
    assert!(
        outputs(&b) == outputs(&a),
        "a killed run changed the clusters"
    );
    let out = stage(&b).output().unwrap();
    let t = text(&out);
    assert!(t.contains("cluster: up to date"), "{t}");
    let out = forced().output().unwrap();
    let t = text(&out);
    assert!(out.status.success() && !t.contains("resuming"), "{t}");
    assert!(outputs(&b) == outputs(&a), "forced clusters differ:\n{t}");
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The recommend stage's file holds, for every user of the training data, ranks 1..=k of
/// items outside the user's training items (original ids mapped back through the ingest's id
/// tables), scores never rising with rank.
fn check_recommendations(rt: &tokio::runtime::Runtime, ws: &Path, run: &str, k: usize) {
    use arrow_array::{Array, Float32Array, StringArray, UInt32Array};
    let (data, users, items) = rt.block_on(async {
        let w = diffrec_data::Workspace::open(ws.to_str().unwrap()).unwrap();
        (
            diffrec_data::load_splits(&w).await.unwrap(),
            diffrec_data::artifacts::load_ids(&w, "user").await.unwrap(),
            diffrec_data::artifacts::load_ids(&w, "item").await.unwrap(),
        )
    });
    let index = |ids: &[String]| -> std::collections::HashMap<String, usize> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect()
    };
    let (user_idx, item_idx) = (index(&users), index(&items));
    let path = ws.join(format!("runs/{run}/recommendations.parquet"));
    let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut rows: Vec<(usize, u32, usize, f32)> = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let (u, r, i, s) = (col("user_id"), col("rank"), col("item_id"), col("score"));
        let u = u.as_any().downcast_ref::<StringArray>().unwrap();
        let r = r.as_any().downcast_ref::<UInt32Array>().unwrap();
        let i = i.as_any().downcast_ref::<StringArray>().unwrap();
        let s = s.as_any().downcast_ref::<Float32Array>().unwrap();
        for j in 0..b.num_rows() {
            rows.push((
                user_idx[u.value(j)],
                r.value(j),
                item_idx[i.value(j)],
                s.value(j),
            ));
        }
    }
    assert_eq!(rows.len(), data.n_users * k, "k rows for every user");
    rows.sort_by_key(|&(u, rank, _, _)| (u, rank));
    for (n, chunk) in rows.chunks(k).enumerate() {
        let u = chunk[0].0;
        assert_eq!(u, n, "every user once");
        for (j, &(cu, rank, item, score)) in chunk.iter().enumerate() {
            assert_eq!((cu, rank as usize), (u, j + 1), "user {}: ranks", users[u]);
            // `recommend.exclude: seen`, the default: none of the user's items, in any split.
            for (split, m) in [
                ("train", &data.train),
                ("valid", &data.valid),
                ("test", &data.test),
            ] {
                assert!(
                    m.row(u).0.binary_search(&(item as u32)).is_err(),
                    "user {}: {split} item {} recommended",
                    users[u],
                    items[item]
                );
            }
            if j > 0 {
                assert!(
                    score <= chunk[j - 1].3,
                    "user {}: scores rise at rank {rank}",
                    users[u]
                );
            }
        }
    }
}

/// Says that a test did not run, on the process's stderr itself: libtest captures `eprintln!`
/// of passing tests, which would hide the skip behind an "ok".
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
}

/// Distinct `user_idx` per `split` value of `data/interactions.parquet`, read with arrow-rs.
fn users_per_split(path: &Path) -> std::collections::HashMap<String, usize> {
    use arrow_array::{Array, StringArray, UInt32Array};
    let bytes = bytes::Bytes::from(std::fs::read(path).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for batch in reader {
        let b = batch.unwrap();
        let users = b.column_by_name("user_idx").unwrap();
        let users = users.as_any().downcast_ref::<UInt32Array>().unwrap();
        let splits = b.column_by_name("split").unwrap();
        let splits = splits.as_any().downcast_ref::<StringArray>().unwrap();
        for j in 0..b.num_rows() {
            seen.insert((splits.value(j).to_owned(), users.value(j)));
        }
    }
    let mut counts = std::collections::HashMap::new();
    for (split, _) in seen {
        *counts.entry(split).or_insert(0) += 1;
    }
    counts
}

/// Reads a Parquet file's Arrow schema as "name:type" strings.
fn parquet_columns(path: &Path) -> (Vec<String>, usize) {
    let bytes = bytes::Bytes::from(std::fs::read(path).unwrap());
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let cols = b
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    let rows = b.metadata().file_metadata().num_rows() as usize;
    (cols, rows)
}

/// `diffrec recommend --history` weighs a T-DiffRec history by time as ingest weighs a user's
/// train items: a known user's train items, oldest first, rank and score exactly as `--user`
/// does; the same items newest first do not.
#[test]
fn history_of_a_time_weighted_run_is_weighted_by_time() {
    use arrow_array::cast::AsArray;
    let (dir, p) = synthetic_project(
        "t-history",
        &["--users", "300", "--items", "100"],
        "name: t\ndata:\n  source: {format: csv, path: log.csv}\n  temporal: {w_min: 0.1, w_max: 1.0}\n\
         model:\n  variant: t-diffrec\n  diffusion: {steps: 5}\n  denoiser: {dims: [32]}\n\
         train: {epochs: 2, eval_every: 1, batch_size: 64}\n",
    );
    let ws = dir.join("ws");
    let out = run_until_train(&p, &ws, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The first user's train items in the stored (time) order.
    let bytes = bytes::Bytes::from(std::fs::read(ws.join("data/interactions.parquet")).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let (mut user, mut items) = (None, Vec::new());
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (users, item_ids, split) = (col("user_id"), col("item_id"), col("split"));
        for r in 0..batch.num_rows() {
            let u = user.get_or_insert_with(|| users.value(r).to_string());
            if users.value(r) == u && split.value(r) == "train" {
                items.push(item_ids.value(r).to_string());
            }
        }
    }
    let user = user.unwrap();
    assert!(items.len() > 2, "{items:?}");
    let top = |who: &[&str]| {
        let out = recommend(&ws, "t", who, None);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    // The user's training items as a history leave out what `--exclude train` leaves out.
    let known = top(&["--user", &user, "--exclude", "train"]);
    assert_eq!(top(&["--history", &items.join(",")]), known);
    items.reverse();
    assert_ne!(top(&["--history", &items.join(",")]), known);
}

#[test]
fn cluster_stage_writes_its_artifacts_and_takes_given_embeddings() {
    let dir = tmpdir("cluster");
    let log = dir.join("log.csv");
    generate(&log, &["--users", "300", "--items", "120"]);
    let p = write_pipeline(
        &dir,
        &format!(
            "name: t\ndata:\n  source: {{format: csv, path: log.csv, columns: {{user: user_id, item: item_id, timestamp: timestamp, rating: rating}}}}\n  min_rating: 3\nmodel: {{variant: l-diffrec}}\ncluster:\n  k: 3\n  lightgcn: {{dim: 8, epochs: 10, eval_every: 5, lr: 0.01, batch_size: 1024}}\n"
        ),
    );
    let ws = dir.join("ws");
    let run = |extra: &[&str]| {
        let mut c = diffrec();
        c.args([
            "run",
            p.to_str().unwrap(),
            "--until",
            "cluster",
            "--workspace",
        ])
        .arg(&ws)
        .args(extra);
        c.output().unwrap()
    };
    let out = run(&[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("cluster: lightgcn best epoch"), "{t}");
    let items = {
        let (_, n) = parquet_columns(&ws.join("data/items.parquet"));
        n
    };
    let (cols, rows) = parquet_columns(&ws.join("cluster/item_embeddings.parquet"));
    assert_eq!(
        cols,
        [
            "item_idx:UInt32",
            "item_id:Utf8",
            "embedding:FixedSizeList(8 x non-null Float32)"
        ],
        "{cols:?}"
    );
    assert_eq!(rows, items);
    let (cols, _) = parquet_columns(&ws.join("cluster/user_embeddings.parquet"));
    assert_eq!(cols[0], "user_idx:UInt32");
    let (cols, rows) = parquet_columns(&ws.join("cluster/item_clusters.parquet"));
    assert_eq!(
        cols,
        [
            "item_idx:UInt32",
            "item_id:Utf8",
            "cluster:UInt32",
            "distance:Float32"
        ]
    );
    assert_eq!(rows, items);
    let (cols, rows) = parquet_columns(&ws.join("cluster/lightgcn_metrics.parquet"));
    assert_eq!(cols[0], "epoch:UInt32");
    assert!(rows > 0);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("cluster/summary.json")).unwrap()).unwrap();
    let sizes: Vec<u64> = summary["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<u64>() as usize, items);
    assert!(sizes.iter().all(|&s| s >= 2), "{sizes:?}");
    assert!(ws.join("cluster/_manifest.json").exists());

    // Up to date: skipped.
    let t = text(&run(&[]));
    assert!(t.contains("cluster: up to date"), "{t}");

    // Given embeddings with the wrong row count: exit 2, naming the file.
    let emb = dir.join("emb.npy");
    let values: Vec<f32> = (0..(items - 1) * 4).map(|k| (k % 7) as f32).collect();
    std::fs::write(
        &emb,
        diffrec_data::npy::write_npy_f32(items - 1, 4, &values),
    )
    .unwrap();
    let out = run(&["--set", "cluster.embeddings=emb.npy"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("emb.npy") && text(&out).contains("items"),
        "{}",
        text(&out)
    );
    // Right shape: used instead of pre-training; the pre-training outputs go away.
    let values: Vec<f32> = (0..items * 4).map(|k| ((k * 31) % 17) as f32).collect();
    std::fs::write(&emb, diffrec_data::npy::write_npy_f32(items, 4, &values)).unwrap();
    let out = run(&["--set", "cluster.embeddings=emb.npy"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("lightgcn best epoch"), "{t}");
    assert!(!ws.join("cluster/user_embeddings.parquet").exists());
    let (cols, _) = parquet_columns(&ws.join("cluster/item_embeddings.parquet"));
    assert_eq!(cols[2], "embedding:FixedSizeList(4 x non-null Float32)");

    // Ingested again with other settings (the same items, other weights): the clusters are of
    // other data, and the train stage alone says to run the cluster stage first.
    let out = diffrec()
        .args(["stage", "ingest", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .args(["--set", "data.temporal={w_min: 0.5, w_max: 1.0}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_stage_refuses(
        "train",
        p.to_str().unwrap(),
        &ws,
        &["cluster.embeddings=emb.npy"],
        "the cluster stage ran on other data than this workspace holds now \
         (data/interactions.parquet changed since): run it again",
    );

    // cluster.k = 1: every item in one cluster, with no pre-training and no embeddings.
    let out = run(&["--set", "cluster.k=1"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "cluster: 1 cluster of size [{items}] over no embeddings"
        )),
        "{t}"
    );
    assert!(!t.contains("lightgcn best epoch"), "{t}");
    for gone in ["item_embeddings.parquet", "user_embeddings.parquet"] {
        assert!(!ws.join("cluster").join(gone).exists(), "{gone}");
    }
    assert_eq!(
        parquet_columns(&ws.join("cluster/item_clusters.parquet")).1,
        items
    );
}

/// The GPU code path on every change: the same tiny pipeline trained with `train.backend: wgpu`
/// (in CI on Mesa's lavapipe, a CPU Vulkan driver) and with the CPU backend. Both must learn
/// (loss falls, ranking far above random) and land close to each other. Built only with the
/// `wgpu` feature; skips without a Vulkan adapter unless DIFFREC_REQUIRE_WGPU=1.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backend_trains_like_the_cpu_backend() {
    let have_vulkan = Command::new("vulkaninfo")
        .arg("--summary")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_vulkan {
        assert!(
            std::env::var_os("DIFFREC_REQUIRE_WGPU").is_none(),
            "DIFFREC_REQUIRE_WGPU is set but no Vulkan adapter was found (vulkaninfo failed)"
        );
        skipped(
            "wgpu_backend_trains_like_the_cpu_backend: no Vulkan adapter (install \
             mesa-vulkan-drivers vulkan-tools for lavapipe)",
        );
        return;
    }
    let (dir, p) = synthetic_project(
        "wgpu",
        &["--users", "600", "--items", "300"],
        "name: g\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  diffusion: {steps: 5}\n  denoiser: {dims: [64]}\n\
         train: {epochs: 20, eval_every: 5, batch_size: 100, patience: 100}\nevaluate: {ks: [20]}\n",
    );
    let train = |ws: &Path, sets: &[&str]| -> serde_json::Value {
        let mut c = diffrec();
        c.args([
            "run",
            p.to_str().unwrap(),
            "--until",
            "train",
            "--workspace",
        ])
        .arg(ws);
        for s in sets {
            c.args(["--set", s]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&std::fs::read(ws.join("runs/g/summary.json")).unwrap()).unwrap()
    };
    let gpu = train(
        &dir.join("wgpu"),
        &["train.backend=wgpu", "train.devices=[\"wgpu:cpu\"]"],
    );
    let cpu = train(&dir.join("cpu"), &[]);
    let r = |s: &serde_json::Value| s["test"]["recall@20"].as_f64().unwrap();
    let random = 20.0 / 300.0;
    println!(
        "recall@20: wgpu {:.4}, cpu {:.4}, random ≈ {random:.4}",
        r(&gpu),
        r(&cpu)
    );
    assert!(r(&gpu) > 2.0 * random, "wgpu run did not learn: {gpu}");
    assert!((r(&gpu) - r(&cpu)).abs() < 0.05, "wgpu {gpu} vs cpu {cpu}");
}

/// `diffrec run PIPELINE --until train --workspace WS`, then `extra` arguments.
fn run_until_train(p: &Path, ws: &Path, extra: &[&str]) -> Output {
    diffrec()
        .args([
            "run",
            p.to_str().unwrap(),
            "--until",
            "train",
            "--workspace",
        ])
        .arg(ws)
        .args(extra)
        .output()
        .unwrap()
}

/// A 60-user × 40-item synthetic log and a tiny DiffRec pipeline with the given `train:` flow
/// mapping, run up to the train stage in `<dir>/ws`: the directory, the pipeline, the
/// workspace and the run's output.
fn tiny_train_run(tag: &str, train: &str) -> (TestDir, PathBuf, PathBuf, Output) {
    let dir = tmpdir(tag);
    generate(&dir.join("log.csv"), &["--users", "60", "--items", "40"]);
    let p = write_pipeline(
        &dir,
        &format!(
            "name: g\ndata:\n  source: {{format: csv, path: log.csv}}\nmodel:\n  diffusion: {{steps: 5}}\n  \
             denoiser: {{dims: [16]}}\ntrain: {train}\nevaluate: {{ks: [20]}}\n"
        ),
    );
    let ws = dir.join("ws");
    let out = run_until_train(&p, &ws, &[]);
    (dir, p, ws, out)
}

/// A scheduler that closes the stage's standard output (a log shipper gone, `| head -1`), or
/// points it at a full disk, does not stop the work: the status lines are dropped with one
/// warning on stderr and every stage completes (exit code 0), instead of `println!`'s panic
/// (exit code 101) killing the training mid-run.
#[test]
fn an_unwritable_stdout_does_not_stop_the_stages() {
    let dir = tmpdir("stdout");
    generate(&dir.join("log.csv"), &["--users", "60", "--items", "40"]);
    let p = write_pipeline(
        &dir,
        "name: g\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  diffusion: {steps: 5}\n  \
         denoiser: {dims: [16]}\ntrain: {epochs: 2, eval_every: 1}\nevaluate: {ks: [20]}\n",
    );
    let run = |ws: &str, stdout: Stdio| {
        let mut child = diffrec()
            .env("RUST_LOG", "warn,diffrec=warn")
            .args(["run", p.to_str().unwrap(), "--workspace"])
            .arg(dir.join(ws))
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the first line is written: every write fails.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let t = text(&out);
        assert!(out.status.success() && !t.contains("panicked"), "{ws}: {t}");
        assert_eq!(
            t.matches("cannot write status lines to standard output")
                .count(),
            1,
            "{ws}: one warning, then quiet: {t}"
        );
        for key in ["runs/g/summary.json", "runs/g/recommendations.parquet"] {
            assert!(dir.join(ws).join(key).exists(), "{ws}: {key} missing: {t}");
        }
    };
    run("closed", Stdio::piped());
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        run("full", Stdio::from(full));
    }
}

/// A loss that stops being finite ends the run (exit code 1), and the message says truly what
/// was kept: the checkpoint of the last complete epoch, or nothing before the first ends.
/// Started over (`--force`) on a finished run, nothing of the old run is left to pass for the
/// new one's: not its evaluations either.
#[test]
fn a_diverged_run_says_what_it_kept() {
    let (_dir, p, ws, out) = tiny_train_run("diverge", "{epochs: 3, eval_every: 1, batch_size: 8}");
    assert!(out.status.success(), "{}", text(&out));
    assert!(ws.join("runs/g/metrics.parquet").exists());
    let out = run_until_train(&p, &ws, &["--force", "--set", "train.lr=1.0e30"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("training diverged"), "{t}");
    let latest = ws.join("runs/g/checkpoints/latest.ckpt");
    if t.contains("nothing was saved") {
        assert!(!latest.exists(), "{t}");
    } else {
        assert!(t.contains("the latest checkpoint holds epoch "), "{t}");
        assert!(latest.exists(), "{t}");
    }
    for gone in ["summary.json", "metrics.parquet", "curves.svg"] {
        assert!(!ws.join("runs/g").join(gone).exists(), "{gone}: {t}");
    }
}

/// A wgpu device that this machine does not have stops the train stage before its first batch
/// with an error naming the device and the adapters there are (exit code 1; 2 where discrete
/// GPUs exist and the index is past the last), not with panics from burn's device thread (exit
/// code 101). Needs no Vulkan: without it the list is empty.
#[cfg(feature = "wgpu")]
#[test]
fn a_missing_gpu_device_fails_naming_the_adapters_there_are() {
    let (_dir, _, ws, out) =
        tiny_train_run("nogpu", "{epochs: 2, backend: wgpu, devices: [\"wgpu:7\"]}");
    let t = text(&out);
    // No discrete GPU here (CI): exit 1 and the adapters listed. Fewer than 8 discrete GPUs:
    // exit 2, an index past the last one.
    let none = out.status.code() == Some(1)
        && t.contains("train.devices: wgpu:7 needs a discrete GPU, and ")
        && t.contains(" lists none on this machine");
    let past_last =
        out.status.code() == Some(2) && t.contains("train.devices: wgpu:7 does not exist: ");
    assert!(t.contains("(adapters: "), "{t}");
    assert!(none || past_last, "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!ws.join("runs/g/checkpoints/latest.ckpt").exists());
}

/// A pipeline for a backend this binary was built without is refused only by a run that trains,
/// before its first stage (nothing ingested, exit code 2); the stages that do not need the
/// backend run, and `validate` accepts it with a note. A scheduler validates and ingests on a
/// CPU-only machine and trains on a GPU one.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_backend_left_out_of_the_build_stops_only_training() {
    let (_dir, p, ws, out) = tiny_train_run("nocuda", "{epochs: 2, backend: cuda}");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains(
            "`train.backend`: cuda is not compiled into this binary; rebuild with `--features cuda`"
        ),
        "{t}"
    );
    assert!(
        !ws.join("data").exists(),
        "ingest ran before the refusal: {t}"
    );
    let p = p.to_str().unwrap();
    let out = diffrec()
        .args(["stage", "ingest", p, "--workspace"])
        .arg(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(ws.join("data/_manifest.json").exists());
    let out = diffrec()
        .args(["validate", p])
        .arg("--workspace")
        .arg(&ws)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("note: this binary cannot run the train stage: ")
            && t.contains("--features cuda"),
        "{t}"
    );
}

/// Only ingest starts a workspace: the commands that read one name a mistyped path (exit code
/// 2) instead of creating an empty directory there.
#[test]
fn a_mistyped_workspace_is_named_not_created() {
    let dir = tmpdir("typo");
    let p = write_pipeline(
        &dir,
        "name: t\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    let p = p.to_str().unwrap();
    let ws = dir.join("no-such-ws");
    let w = ws.to_str().unwrap();
    for args in [
        vec!["stage", "train", p, "--workspace", w],
        vec!["stage", "evaluate", p, "--workspace", w],
        vec!["recommend", "--workspace", w, "--run", "t", "--user", "1"],
    ] {
        let out = diffrec().args(&args).output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains(&format!("workspace `{w}`: no such directory")),
            "{args:?}: {t}"
        );
        assert!(!ws.exists(), "{args:?} created the workspace");
    }
}

/// A local path the file system cannot take (a file where the workspace's `data` folder goes,
/// a folder name over NAME_MAX) is permanent: exit 2, naming the path, so a scheduler does not
/// retry it; no data appears.
#[test]
fn a_path_the_file_system_cannot_take_exits_2() {
    let (dir, p) = synthetic_project(
        "badpath",
        &["--users", "40", "--items", "30"],
        "name: t\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    let ws = dir.join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("data"), b"not a folder").unwrap();
    let long = dir.join("w".repeat(300));
    for (w, says) in [
        (&ws, "Not a directory".to_owned()),
        (&long, "File name too long".to_owned()),
    ] {
        let out = diffrec()
            .args(["stage", "ingest", p.to_str().unwrap(), "--workspace"])
            .arg(w)
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{}: {t}", w.display());
        assert!(t.contains(&says), "{t}");
    }
    assert_eq!(std::fs::read(ws.join("data")).unwrap(), b"not a folder");
}

/// A run shorter than `train.eval_every` evaluates nothing: the train stage says so (no NaN
/// metrics), and the evaluate stage's missing-checkpoint error names the reason.
#[test]
fn a_run_that_evaluates_nothing_says_so() {
    let (_dir, p, ws, out) = tiny_train_run("noeval", "{epochs: 2, eval_every: 5}");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(
            "train: 2 epochs and no evaluation (train.eval_every 5 is more than the epochs run)"
        ),
        "{t}"
    );
    assert!(!t.contains("NaN"), "{t}");
    let out = diffrec()
        .args(["stage", "evaluate", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("train.epochs must reach train.eval_every"),
        "{t}"
    );
    // The whole pipeline, which runs the stages after training with it, skips them saying why.
    let t = run_ok(&p, &ws);
    for stage in ["evaluate", "recommend"] {
        assert!(
            t.contains(&format!(
                "{stage}: skipped: train.eval_every (5) is more than train.epochs (2)"
            )),
            "{t}"
        );
    }
    // Patience counts from an evaluation, so without any it stops nothing: all epochs train.
    let (_dir, _, _, out) = tiny_train_run("nopatience", "{epochs: 3, eval_every: 5, patience: 1}");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("train: 3 epochs and no evaluation"), "{t}");
    assert!(!t.contains("early stop"), "{t}");
}

/// With `model.diffusion.sampling_noise` the reverse pass draws noise, seeded for each
/// evaluation by the run's seed and the epoch: the evaluate stage repeats the training's
/// evaluation of the best epoch to the last digit, reruns of evaluate and recommend (forced:
/// they are up to date) repeat each other, and `summary.json` says which stage computed its
/// figures with which reverse pass.
#[test]
fn noisy_evaluations_are_seeded_and_recorded() {
    let (dir, p) = synthetic_project(
        "noisy",
        &["--users", "400", "--items", "300"],
        "name: n
data:
  source: {format: csv, path: log.csv}
model:
  diffusion: {steps: 10, \
         noise_scale: 0.005, noise_min: 0.005, noise_max: 0.01, sampling_noise: true}
  \
         denoiser: {dims: [64]}
train: {epochs: 4, eval_every: 2, patience: 3}
\
         evaluate: {ks: [10, 20]}
",
    );
    let ws = dir.join("ws");
    let out = run_until_train(&p, &ws, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(ws.join("runs/n/summary.json")).unwrap()).unwrap()
    };
    let stage = |stage: &str, sets: &[&str]| {
        let mut c = diffrec();
        c.arg("stage")
            .args(stage.split(' '))
            .args([p.to_str().unwrap(), "--workspace"])
            .arg(&ws);
        for set in sets {
            c.args(["--set", set]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{stage} {sets:?}: {}", text(&out));
    };
    let trained = summary();
    let by = |s: &serde_json::Value| s["evaluated_by"].clone();
    assert_eq!(
        by(&trained),
        serde_json::json!({"stage": "train", "sampling_steps": 0, "sampling_noise": true})
    );
    let figures = |s: &serde_json::Value| (s["valid"].clone(), s["test"].clone());
    for force in [false, true] {
        stage(
            if force {
                "evaluate --force"
            } else {
                "evaluate"
            },
            &[],
        );
        let evaluated = summary();
        assert_eq!(figures(&evaluated), figures(&trained));
        assert_eq!(by(&evaluated)["stage"], "evaluate");
    }
    // The noise counts here (so the equalities above could fail): without it, other figures.
    stage("evaluate", &["model.diffusion.sampling_noise=false"]);
    let plain = summary();
    assert_ne!(figures(&plain).1, figures(&trained).1);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("runs/n/_manifest.json")).unwrap()).unwrap();
    let best = manifest["outputs"]["runs/n/checkpoints/best.ckpt"]["sha256"].clone();
    assert!(best.is_string(), "{manifest}");
    assert_eq!(
        by(&plain),
        serde_json::json!({"stage": "evaluate", "sampling_steps": 0, "sampling_noise": false,
                           "ks": [10, 20], "checkpoint_sha256": best})
    );
    let recommendations = || std::fs::read(ws.join("runs/n/recommendations.parquet")).unwrap();
    stage("recommend", &[]);
    let first = recommendations();
    stage("recommend --force", &[]);
    assert!(first == recommendations(), "a rerun drew other noise");

    // What made them, for whoever reads the file alone: the file's key-value entry `diffrec`.
    let file = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(first),
    )
    .unwrap();
    let kv = file
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    let made = kv.iter().find(|e| e.key == "diffrec").unwrap();
    let made: serde_json::Value = serde_json::from_str(made.value.as_deref().unwrap()).unwrap();
    assert_eq!(
        made,
        serde_json::json!({"run": "n", "k": 20, "exclude": "seen", "sampling_steps": 0,
                           "sampling_noise": true, "checkpoint_sha256": best})
    );
    // The run's manifest names the build that trained it (what `diffrec -V` shows in
    // brackets) and keeps the ingest stage's settings and source, which a later ingest replaces.
    let version = text(&diffrec().arg("-V").output().unwrap());
    let build = manifest["build"].as_str().unwrap();
    assert!(
        !build.is_empty() && version.contains(&format!("({build})")),
        "{version}"
    );
    let ingest = &manifest["upstream"]["ingest"];
    assert_eq!(ingest["config"]["source"]["format"], "csv");
    let log = std::fs::read(dir.join("log.csv")).unwrap();
    let hashes: Vec<&str> = ingest["inputs"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|h| h.as_str())
        .collect();
    assert_eq!(
        hashes,
        vec![diffrec_data::workspace::sha256_hex(&log)],
        "the source and its hash"
    );
}

/// `diffrec -V` names the commit of this checkout, as git itself reads it (`-modified` when
/// tracked sources differ). The build script reads its checkout's path when it runs: a script
/// compiled from another clone sharing the target dir once named that clone's commit, or
/// `unknown` when it was gone.
#[test]
fn the_version_names_the_commit_of_this_checkout() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let head = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    let head = match head {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
        _ => {
            eprintln!("SKIPPED: not a git checkout (or no git): the version says `unknown`");
            return;
        }
    };
    let version = text(&diffrec().arg("-V").output().unwrap());
    let expected = format!("diffrec {} ({}", env!("CARGO_PKG_VERSION"), head.trim());
    assert!(
        version.starts_with(&expected),
        "{version:?} against {expected:?}"
    );
    let rest = &version[expected.len()..];
    assert!(
        rest.trim_end() == ")" || rest.trim_end() == "-modified)",
        "{version:?}"
    );
}

/// A global-time split leaves a user whose whole history is after the cut without training
/// rows: the recommend stage and `recommend --user` say that such a user's list is the
/// model's answer to an empty history (one list for all of them), instead of passing it off
/// as a personal one.
#[test]
fn users_without_training_rows_are_named_at_recommend() {
    let dir = tmpdir("cold");
    let mut csv = String::from("user_id,item_id,timestamp\n");
    for u in 0..8 {
        for k in 0..4 {
            csv.push_str(&format!("u{u},i{},{}\n", (u + k) % 6, 100 + 10 * u + k));
        }
    }
    for k in 0..4 {
        csv.push_str(&format!("late,i{k},{}\n", 1000 + k));
        // An id that reads like a flag: `--user -1` is an id, not an option.
        csv.push_str(&format!("-1,i{k},{}\n", 50 + k));
    }
    std::fs::write(dir.join("log.csv"), csv).unwrap();
    let p = dir.join("p.yaml");
    std::fs::write(
        &p,
        "name: c\ndata:\n  source: {format: csv, path: log.csv}\n  \
         split: {method: global_time, ratios: [0.88, 0.06, 0.06]}\n\
         model:\n  diffusion: {steps: 5}\n  denoiser: {dims: [8]}\n\
         train: {epochs: 2, eval_every: 1, batch_size: 4}\nevaluate: {ks: [2]}\nrecommend: {k: 2}\n",
    )
    .unwrap();
    let ws = dir.join("ws");
    let t = run_ok(&p, &ws);
    assert!(
        t.contains("1 of 10 users have no training interactions (e.g. \"late\")"),
        "{t}"
    );
    let out = recommend(&ws, "c", &["--user", "late", "--k", "2"], None);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("user \"late\" has no training interactions"),
        "{t}"
    );
    for user in ["u0", "-1"] {
        let out = recommend(&ws, "c", &["--user", user, "--k", "2"], None);
        let t = text(&out);
        assert!(
            out.status.success() && !t.contains("no training interactions"),
            "{t}"
        );
    }
}

/// `generate` writes beside the file and renames it once whole (a stopped generator leaves no
/// half file under the name ingest reads): nothing else is left in the folder. To standard
/// output it writes directly, and its status line goes to the log, not into the CSV.
#[test]
fn generate_leaves_a_whole_file_or_pure_csv_on_stdout() {
    let dir = tmpdir("generate");
    generate(&dir.join("log.csv"), &["--users", "30", "--items", "20"]);
    let names: Vec<String> = std::fs::read_dir(dir.join("."))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["log.csv"]);
    let out = diffrec()
        .env("RUST_LOG", "info")
        .args([
            "generate",
            "--out",
            "/dev/stdout",
            "--users",
            "30",
            "--items",
            "20",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv, std::fs::read_to_string(dir.join("log.csv")).unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrote"));
    // A link is written through, also to a regular file (`--out /dev/stdout > file.csv`), and
    // stays a link.
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink(dir.join("target.csv"), &link).unwrap();
    generate(&link, &["--users", "30", "--items", "20"]);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(
        std::fs::read_to_string(dir.join("target.csv")).unwrap(),
        csv
    );
}

/// A write past the file size limit (`ulimit -f`) is an error naming the file, exit code 1, not
/// the kernel's silent SIGXFSZ (exit code 153); what it left unfinished is not read after: the
/// generator leaves no file, and the stage run again without the limit succeeds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_file_size_limit_is_reported_naming_the_file() {
    fn limited(c: &mut Command, bytes: u64) -> Output {
        with_file_size_limit(c, bytes).output().unwrap()
    }
    let dir = tmpdir("fsize");
    let csv = dir.join("log.csv");
    let sizes = ["--users", "300", "--items", "100"];
    let mut c = diffrec();
    c.args(["generate", "--out", csv.to_str().unwrap()])
        .args(sizes);
    let out = limited(&mut c, 4096);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("File too large"), "{}", text(&out));
    assert!(text(&out).contains(csv.to_str().unwrap()), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&*dir).unwrap().count(), 0);

    generate(&csv, &sizes);
    let p = write_pipeline(
        &dir,
        "name: g\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    let ws = dir.join("ws");
    let ingest = || {
        let mut c = diffrec();
        c.args(["stage", "ingest", p.to_str().unwrap(), "--workspace"])
            .arg(&ws);
        c
    };
    let out = limited(&mut ingest(), 4096);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("File too large"), "{}", text(&out));
    assert!(
        text(&out).contains("parquet error on `data/"),
        "{}",
        text(&out)
    );
    let out = ingest().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// A finished run's outputs deleted or damaged by hand: the metrics table and curves are written again
/// from the latest checkpoint's record (the run is not up to date without them), and a lost
/// best checkpoint of an epoch before the latest, which nothing can rebuild, is named (exit 2)
/// instead of leaving a run that says it is up to date and has no best model.
#[test]
fn lost_outputs_of_a_finished_run_are_written_again_or_named() {
    // Early stopping ends the run one epoch after its best (patience 2), so the latest
    // checkpoint is not the best one.
    let (_dir, p, ws, out) = tiny_train_run("lost", "{epochs: 200, eval_every: 1, patience: 2}");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("early stop"), "{}", text(&out));
    let run_dir = ws.join("runs/g");
    let metrics = std::fs::read(run_dir.join("metrics.parquet")).unwrap();
    for (lost, deleted) in [
        ("metrics.parquet", true),
        ("curves.svg", true),
        ("metrics.parquet", false),
    ] {
        match deleted {
            true => std::fs::remove_file(run_dir.join(lost)).unwrap(),
            // Damaged: cut short.
            false => std::fs::write(run_dir.join(lost), &metrics[..100]).unwrap(),
        }
        let out = run_until_train(&p, &ws, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            std::fs::read(run_dir.join("metrics.parquet")).unwrap(),
            metrics
        );
        assert!(run_dir.join("curves.svg").exists());
        let out = run_until_train(&p, &ws, &[]);
        assert!(text(&out).contains("train: up to date"), "{}", text(&out));
    }
    // A deleted latest checkpoint: the training starts again from epoch 0, saying so.
    let latest = run_dir.join("checkpoints/latest.ckpt");
    let kept = std::fs::read(&latest).unwrap();
    std::fs::remove_file(&latest).unwrap();
    let out = run_until_train(&p, &ws, &["--set", "train.patience=3"]);
    let t = text(&out);
    assert!(
        out.status.success()
            && t.contains("latest.ckpt is missing while the run has a best checkpoint")
            && !t.contains("resuming"),
        "{t}"
    );
    std::fs::write(&latest, kept).unwrap();
    let out = run_until_train(&p, &ws, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(run_dir.join("checkpoints/best.ckpt")).unwrap();
    for _ in 0..2 {
        let out = run_until_train(&p, &ws, &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains("best.ckpt is missing, damaged or another run's")
                && t.contains("the best model is lost"),
            "{t}"
        );
    }
    // The finished run's summary still stands, and evaluate says the file went since.
    assert_stage_refuses(
        "evaluate",
        p.to_str().unwrap(),
        &ws,
        &[],
        "is missing, although the run finished with one",
    );
    let out = run_until_train(&p, &ws, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(run_dir.join("checkpoints/best.ckpt").exists());
}

/// Files replaced or damaged in place (one byte, the size unchanged, so only their content
/// tells) are neither trained on nor served: `stage evaluate` and `recommend` refuse them
/// (exit 2, naming the file), and `diffrec run` makes them anew: data by ingesting again, a
/// best checkpoint (changed, or another run's copied over it) from the latest checkpoint of
/// that epoch. A run folder copied from another run is refused by name; a damaged latest
/// checkpoint is refused on resume instead of trained on.
#[test]
fn replaced_artifacts_are_refused_then_made_anew() {
    let (_dir, p, ws, out) = tiny_train_run("replaced", "{epochs: 1, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    let pipeline = p.to_str().unwrap();
    let flip = |path: &Path| {
        // Near the end: a Parquet file's footer, a checkpoint's last tensor section.
        let mut b = std::fs::read(path).unwrap();
        let i = b.len() - 10;
        b[i] ^= 0x55;
        std::fs::write(path, b).unwrap();
    };
    let evaluate = || {
        let out = diffrec()
            .args(["stage", "evaluate", pipeline, "--workspace"])
            .arg(&ws)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let summary = std::fs::read(ws.join("runs/g/summary.json")).unwrap();
        serde_json::from_slice::<serde_json::Value>(&summary).unwrap()["test"].clone()
    };
    let tested = evaluate();
    let listed = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let served = recommend(&ws, "g", &["--user", "u1"], None);
    assert!(served.status.success(), "{}", text(&served));

    let items = ws.join("data/items.parquet");
    flip(&items);
    let out = recommend(&ws, "g", &["--user", "u1"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("artifact `data/items.parquet` changed since the ingest stage wrote it"),
        "{t}"
    );
    let out = run_until_train(&p, &ws, &[]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("ingest: 60 users") && !t.contains("ingest: up to date"),
        "{t}"
    );
    assert_eq!(
        listed(&recommend(&ws, "g", &["--user", "u1"], None)),
        listed(&served)
    );

    // `diffrec run` makes the best checkpoint anew, and it scores as before.
    let rebuilt = || {
        let out = run_until_train(&p, &ws, &[]);
        let t = text(&out);
        assert!(
            out.status.success() && t.contains("rebuilding it from the latest checkpoint"),
            "{t}"
        );
        assert_eq!(evaluate(), tested);
    };
    let best = ws.join("runs/g/checkpoints/best.ckpt");
    flip(&best);
    assert_stage_refuses(
        "evaluate",
        pipeline,
        &ws,
        &[],
        "best.ckpt is not the file training finished with",
    );
    rebuilt();

    // Another run of the same shape (another seed) in the workspace; its best checkpoint
    // copied over this run's.
    let out = run_until_train(&p, &ws, &["--set", "name=h", "--set", "train.seed=9"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(ws.join("runs/h/checkpoints/best.ckpt"), &best).unwrap();
    rebuilt();

    // The whole run folder of `h` as `g`.
    let g = ws.join("runs/g");
    let kept = ws.join("g-kept");
    std::fs::rename(&g, &kept).unwrap();
    std::fs::create_dir_all(g.join("checkpoints")).unwrap();
    for f in ["_manifest.json", "summary.json", "checkpoints/best.ckpt"] {
        std::fs::copy(ws.join("runs/h").join(f), g.join(f)).unwrap();
    }
    assert_stage_refuses(
        "evaluate",
        pipeline,
        &ws,
        &[],
        "runs/g/_manifest.json is not run `g`'s: it records runs/h/",
    );
    // `diffrec run` does not take the copy for the run's own outputs: it trains `g`.
    let out = run_until_train(&p, &ws, &[]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("train: best epoch") && !t.contains("train: up to"),
        "{t}"
    );
    std::fs::remove_dir_all(&g).unwrap();
    std::fs::rename(&kept, &g).unwrap();

    flip(&g.join("checkpoints/latest.ckpt"));
    let out = run_until_train(&p, &ws, &["--set", "train.epochs=2"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("latest.ckpt: its model and optimizer sections do not match the SHA-256"),
        "{t}"
    );
}

/// SIGTERM and SIGINT end a training at once with the shell's code for the signal (143, 130)
/// and a line saying what is kept (their heartbeat deleted), and the run resumes. The handler is what makes the signals
/// work when diffrec is PID 1 in a container (the kernel drops unhandled signals there); it
/// shows here as the exit code, where an unhandled signal ends the process without one.
#[test]
fn termination_signals_end_a_training_saying_so() {
    let (_dir, p, ws, out) = tiny_train_run("signals", "{epochs: 2, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    let latest = ws.join("runs/g/checkpoints/latest.ckpt");
    let mut kept = None;
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let written = std::fs::metadata(&latest).unwrap().modified().unwrap();
        let child = diffrec()
            .args(["run", p.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .args([
                "--set",
                "train.epochs=1000000",
                "--set",
                "train.patience=1000000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::fs::metadata(&latest).unwrap().modified().unwrap() == written {
            assert!(
                std::time::Instant::now() < deadline,
                "no epoch in two minutes"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Training: its heartbeat is there, and a recommend meanwhile is told to retry.
        let beats: Vec<String> = std::fs::read_dir(ws.join("runs/g/_running"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            beats
                .iter()
                .any(|b| b.starts_with(&format!("{}-", child.id()))),
            "{beats:?}"
        );
        let busy = recommend(&ws, "g", &["--user", "u1"], None);
        let t = text(&busy);
        assert_eq!(busy.status.code(), Some(1), "{t}");
        assert!(
            t.contains(&format!(
                "the train stage is running (process {} on ",
                child.id()
            )) && t.contains("has not finished training"),
            "{t}"
        );
        let killed = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(code), "{signal}: {t}");
        assert!(
            t.contains(&format!("stopped by SIG{signal}: finished writes are kept")),
            "{t}"
        );
        // Every start after the first resumes the run the signal stopped, after the epoch
        // the signal's line named.
        let after = |says: &str| -> usize {
            let at = t.find(says).unwrap_or_else(|| panic!("no {says:?}: {t}")) + says.len();
            let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap()
        };
        let resumed = after("train: resuming after epoch ");
        if let Some(kept) = kept {
            assert_eq!(resumed, kept, "{t}");
        }
        let said = after("; run `g` resumes after epoch ");
        assert!(said > resumed, "{t}");
        kept = Some(said);
        let runs = diffrec()
            .args(["runs", "--json", "--workspace"])
            .arg(&ws)
            .output()
            .unwrap();
        let row: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
        assert_eq!(
            (&row["state"], &row["epochs"]),
            (&"stopped".into(), &said.into()),
            "{row}"
        );
        // Nobody waits for a training that is no more (`busy`).
        assert!(
            !ws.join("runs/g/_running").exists(),
            "{signal}: heartbeat left"
        );
        let stopped = recommend(&ws, "g", &["--user", "u1"], None);
        assert_eq!(stopped.status.code(), Some(2), "{}", text(&stopped));
    }
}

/// A generator stopped by SIGTERM leaves neither the file it was writing (`.partial-PID`) nor
/// one under the name asked for.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_stopped_generator_leaves_no_file() {
    let dir = tmpdir("generate-term");
    let out = dir.join("log.csv");
    // Some gigabytes if let run; the limit ends it at 256 MiB should the signal be missed.
    let mut child = with_file_size_limit(&mut diffrec(), 256 << 20)
        .args(["generate", "--out", out.to_str().unwrap()])
        .args(["--users", "20000000", "--items", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&*dir).unwrap().count() == 0 {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no file in a minute");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(143), "{}", text(&done));
    let left: Vec<_> = std::fs::read_dir(&*dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// An S3 endpoint that refuses connections (a server restarting) is retried for
/// `DIFFREC_S3_RETRY_SECONDS` from the first attempt, not given up after object_store's ten
/// quick retries; then the stage fails with exit code 1 saying so. A value that is no number
/// of seconds is refused before any request, naming the variable (exit code 2).
#[test]
fn an_unreachable_s3_endpoint_is_retried_for_the_window() {
    let dir = tmpdir("s3-retry");
    generate(&dir.join("log.csv"), &["--users", "30", "--items", "20"]);
    let p = write_pipeline(
        &dir,
        "name: g\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ingest = |window: &str| {
        diffrec()
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_REGION", "us-east-1")
            .env("DIFFREC_S3_RETRY_SECONDS", window)
            .args(["stage", "ingest", p.to_str().unwrap()])
            .args(["--workspace", "s3://diffrec-nowhere/ws"])
            .output()
            .unwrap()
    };
    let started = std::time::Instant::now();
    let out = ingest("6");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(started.elapsed() >= Duration::from_secs(6), "{t}");
    assert!(t.contains("retry_timeout: 6s"), "{t}");
    // The window bounds the retries, not object_store's default count of ten (which a refused
    // connection uses up in 2–4 s).
    assert!(t.contains("max_retries: 10000"), "{t}");
    let out = ingest("soon");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("DIFFREC_S3_RETRY_SECONDS=\"soon\""),
        "{}",
        text(&out)
    );
}

/// A store that refuses the credentials (403 AccessDenied, or 400 InvalidAccessKeyId, on every
/// request: the listing the stage starts with included) is exit code 2 at once, naming the
/// answer: a scheduler's retry would meet the same policy.
#[test]
fn a_store_refusing_the_credentials_exits_2() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tmpdir("s3-refused");
    generate(&dir.join("log.csv"), &["--users", "30", "--items", "20"]);
    let p = write_pipeline(
        &dir,
        "name: g\ndata:\n  source: {format: csv, path: log.csv}\n",
    );
    for (status, code) in [
        ("403 Forbidden", "AccessDenied"),
        ("400 Bad Request", "InvalidAccessKeyId"),
    ] {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let answer = format!("<Error><Code>{code}</Code><Message>no</Message></Error>");
        std::thread::spawn(move || {
            for conn in server.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn);
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let _ = reader
                    .by_ref()
                    .take(length as u64)
                    .read_to_end(&mut Vec::new());
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: \
                     {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        let out = diffrec()
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_REGION", "us-east-1")
            .env("DIFFREC_S3_RETRY_SECONDS", "30")
            .args(["stage", "ingest", p.to_str().unwrap()])
            .args(["--workspace", "s3://diffrec-refused/ws"])
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{status}: {t}");
        assert!(t.contains(code), "{t}");
    }
}

/// A JSON artifact damaged since diffrec wrote it (every write is atomic, so a hand or a disk
/// did it) is exit code 2, naming it and the rerun that rebuilds it: a scheduler's retry would
/// meet the same bytes. A damaged run manifest does not block that rerun, and `diffrec run`
/// counts a stage with a damaged manifest as one to run again.
#[test]
fn damaged_artifacts_are_for_the_user_to_fix() {
    let (_dir, p, ws, out) = tiny_train_run("damaged", "{epochs: 2, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    // `diffrec run` would ingest again (the file's size differs from the manifest's record);
    // the stage alone reads it.
    std::fs::write(ws.join("data/stats.json"), "{bad").unwrap();
    let out = diffrec()
        .args(["stage", "train", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .args(["--set", "train.epochs=3"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("artifact `data/stats.json` changed since the ingest stage wrote it")
            && t.contains("Run that stage again with --force"),
        "{t}"
    );
    let out = run_until_train(&p, &ws, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = ws.join("runs/g/_manifest.json");
    std::fs::write(&manifest, "{bad").unwrap();
    for (stage, force, code) in [("evaluate", false, Some(2)), ("train", true, Some(0))] {
        let mut c = diffrec();
        c.args(["stage", stage, p.to_str().unwrap(), "--workspace"])
            .arg(&ws);
        if force {
            c.arg("--force");
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), code, "{stage}: {}", text(&out));
    }
    std::fs::write(&manifest, "{bad").unwrap();
    let out = run_until_train(&p, &ws, &[]);
    let t = text(&out);
    // Not "up to date": the stage ran again (its checkpoint complete, it only rewrites).
    assert!(
        out.status.success() && t.contains("train: resuming after epoch 2"),
        "{t}"
    );
    // A damaged summary (no size check: evaluate rewrites it) is rewritten by the train stage
    // from the checkpoint, without --force; evaluate says so instead of "--force".
    let summary = ws.join("runs/g/summary.json");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    std::fs::write(&summary, "{bad").unwrap();
    let stage = |stage: &str| {
        diffrec()
            .args(["stage", stage, p.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .output()
            .unwrap()
    };
    let out = stage("evaluate");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("runs/g/summary.json` is malformed")
            && t.contains("without `--force`")
            && t.contains("diffrec stage train PIPELINE"),
        "{t}"
    );
    let out = stage("train");
    let t = text(&out);
    assert!(
        out.status.success()
            && t.contains("summary.json is damaged")
            && t.contains("train: resuming after epoch 2"),
        "{t}"
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(again["best_epoch"], good["best_epoch"]);
    assert_eq!(again["test"], good["test"]);
    assert!(stage("evaluate").status.success());

    // A deleted one: the run finished, and the same rerun of train restores it.
    std::fs::remove_file(&summary).unwrap();
    let out = stage("evaluate");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("run `g` finished training, but runs/g/summary.json is missing")
            && t.contains("diffrec stage train PIPELINE")
            && !t.contains("has not finished training"),
        "{t}"
    );
    let out = stage("train");
    assert!(out.status.success(), "{}", text(&out));
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(again["test"], good["test"]);
    assert!(stage("evaluate").status.success());
}

/// Upgrading over a workspace ingested under older ingest rules (its manifest without
/// `rules`): a stage run alone refuses the data until ingest runs again; `diffrec run` ingests
/// again, and the run, whose data came out the same, stays up to date (not trained anew).
#[test]
fn an_ingest_of_older_rules_is_redone_and_the_run_stays() {
    let (_dir, p, ws, out) = tiny_train_run("rules", "{epochs: 2, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    let path = ws.join("data/_manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(m["rules"], 1);
    m.as_object_mut().unwrap().remove("rules");
    std::fs::write(&path, m.to_string()).unwrap();
    for stage in ["train", "evaluate"] {
        let out = diffrec()
            .args(["stage", stage, p.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stage}: {t}");
        assert!(
            t.contains(
                "the ingest stage completed under other rules (revision 0; this diffrec's is 1"
            ),
            "{stage}: {t}"
        );
    }
    let out = run_until_train(&p, &ws, &[]);
    let t = text(&out);
    assert!(
        out.status.success()
            && !t.contains("ingest: up to date")
            && t.contains("train: up to date"),
        "{t}"
    );
}

/// A run started on two (logical) devices resumes on one: the devices are no part of the run's
/// identity (data-parallel training equals one device's up to float error).
#[test]
fn a_run_resumes_on_other_devices() {
    let (_dir, p, ws, out) = tiny_train_run(
        "devices",
        "{epochs: 2, eval_every: 1, batch_size: 20, devices: [cpu, cpu]}",
    );
    assert!(out.status.success(), "{}", text(&out));
    for (devices, epochs) in [("[]", 4), ("[cpu, cpu, cpu]", 6)] {
        let (devices, epochs_set) = (
            format!("train.devices={devices}"),
            format!("train.epochs={epochs}"),
        );
        let out = run_until_train(&p, &ws, &["--set", &devices, "--set", &epochs_set]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(
            t.contains(&format!("resuming after epoch {}", epochs - 2)),
            "{t}"
        );
    }
}

/// A checkpoint written before `train.nodes` left the fingerprint (its fingerprint hashes the
/// config with `train.nodes`, and records nothing of what it hashed) still resumes: the train
/// stage tries the earlier fingerprints in turn. The checkpoint is rebuilt here from the run's
/// manifest as that version wrote it: the fingerprint of (config without the `train` keys it
/// left out, input hashes), serialised as the train stage does.
#[test]
fn a_checkpoint_of_the_previous_fingerprint_resumes() {
    let (_dir, p, ws, out) =
        tiny_train_run("earlier", "{epochs: 2, eval_every: 1, batch_size: 20}");
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("runs/g/_manifest.json")).unwrap()).unwrap();
    let mut config = manifest["config"].clone();
    for key in ["epochs", "patience", "devices", "parallel"] {
        config["train"].as_object_mut().unwrap().remove(key);
    }
    assert!(config["train"].get("nodes").is_some(), "{config}");
    let inputs = &manifest["inputs"];
    let earlier = diffrec_data::workspace::sha256_hex(
        serde_json::to_string(&(&config, inputs))
            .unwrap()
            .as_bytes(),
    );
    let path = ws.join("runs/g/checkpoints/latest.ckpt");
    let mut state = checkpoint_state(&path);
    assert!(
        state["fingerprinted"].is_object(),
        "this version records it"
    );
    assert_ne!(
        state["fingerprint"],
        earlier.as_str(),
        "train.nodes left out now"
    );
    state["fingerprint"] = earlier.clone().into();
    state.as_object_mut().unwrap().remove("fingerprinted");
    let bytes = std::fs::read(&path).unwrap();
    let len = u64::from_le_bytes(bytes[4..12].try_into().unwrap()) as usize;
    let head = serde_json::to_vec(&state).unwrap();
    let mut rebuilt = b"DRCK".to_vec();
    rebuilt.extend_from_slice(&(head.len() as u64).to_le_bytes());
    rebuilt.extend_from_slice(&head);
    rebuilt.extend_from_slice(&bytes[12 + len..]);
    std::fs::write(&path, rebuilt).unwrap();

    let out = run_until_train(&p, &ws, &["--set", "train.epochs=3"]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("resuming after epoch 2"),
        "{t}"
    );
    // It keeps the fingerprint it was started with, now saying what it hashes.
    let state = checkpoint_state(&path);
    assert_eq!(state["fingerprint"], earlier.as_str());
    assert!(
        state["fingerprinted"]["config"]["train"]
            .get("nodes")
            .is_some(),
        "{state}"
    );
}

/// A run that would evaluate on an empty validation split is refused when the pipeline loads
/// (exit 2), saying why and the two ways out; without evaluation it trains.
#[test]
fn an_empty_validation_split_is_refused_when_the_run_evaluates() {
    let dir = tmpdir("novalid");
    generate(&dir.join("log.csv"), &["--users", "100", "--items", "50"]);
    let p = write_pipeline(
        &dir,
        "name: v\ndata:\n  source: {format: csv, path: log.csv}\n  split: {ratios: [0.9, 0, 0.1]}\n\
         model:\n  diffusion: {steps: 5}\n  denoiser: {dims: [8]}\ntrain: {epochs: 2, eval_every: 1, batch_size: 50}\n",
    );
    let ws = dir.join("ws");
    let train = |extra: &[&str]| {
        diffrec()
            .args(["run", p.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .args(["--until", "train"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = train(&[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("`data.split.ratios`") && t.contains("the validation split is empty"),
        "{t}"
    );
    // Refused when the pipeline loads: not even ingest ran.
    assert!(!ws.join("data").exists(), "{t}");
    assert!(!ws.join("runs/v").exists(), "{t}");
    let out = diffrec()
        .args(["validate", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = train(&["--set", "train.eval_every=3"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The training state (JSON) at the head of a checkpoint: magic, u64 length, JSON.
fn checkpoint_state(path: &Path) -> serde_json::Value {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"DRCK");
    let len = u64::from_le_bytes(b[4..12].try_into().unwrap()) as usize;
    serde_json::from_slice(&b[12..12 + len]).unwrap()
}

/// Kills the child when dropped (a failed assertion must not leave an orchestrator behind).
struct Reaped(std::process::Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 5 (b): two processes on 127.0.0.1 joined by `diffrec orchestrator` (burn-collective's
/// global level) train like one process with two devices (local level), noise and dropout on
/// (draws are keyed by the row's index in the whole batch, so both layouts draw the same);
/// per-epoch losses must agree to 1e-4 relative. Needs the patched burn-collective of
/// vendor/ (the published 0.21.0 hangs at the second global all-reduce); a node that does not
/// finish within two minutes fails the test instead of hanging CI.
#[test]
fn two_nodes_through_the_orchestrator_train_like_one_process() {
    let (dir, p) = synthetic_project(
        "nodes",
        &["--users", "300", "--items", "120"],
        "name: g\ndata:\n  source: {format: csv, path: log.csv}\nmodel:\n  diffusion: {steps: 5}\n  denoiser: {dims: [32]}\n\
         train: {epochs: 4, eval_every: 2, batch_size: 50, patience: 100, lr: 0.005}\nevaluate: {ks: [20]}\n",
    );
    let stage = |stage: &str, ws: &Path, sets: &[String]| {
        let mut c = diffrec();
        match stage {
            "run" => c.args(["run", p.to_str().unwrap(), "--workspace"]),
            _ => c.args(["stage", stage, p.to_str().unwrap(), "--workspace"]),
        }
        .arg(ws);
        for s in sets {
            c.args(["--set", s]);
        }
        c
    };
    let (one, two) = (dir.join("one"), dir.join("two"));
    for ws in [&one, &two] {
        let out = stage("ingest", ws, &[]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = stage("train", &one, &["train.devices=[cpu, cpu]".into()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Ports below Linux's ephemeral range (32768 and up), where another test's outgoing
    // connection can hold any port; an orchestrator that still cannot listen (exit 1 at once)
    // is started again on other ports.
    let (base, orchestrator) = (0..5)
        .find_map(|_| {
            let base = 20000 + (nonce() % 12000) as u16;
            let mut orchestrator = Reaped(
                diffrec()
                    .args(["orchestrator", "--bind", &format!("127.0.0.1:{base}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            std::thread::sleep(Duration::from_millis(500));
            let listening = orchestrator.0.try_wait().unwrap().is_none();
            listening.then_some((base, orchestrator))
        })
        .expect("an orchestrator listening on one of five port ranges");
    let orch = format!("127.0.0.1:{base}");
    // A second orchestrator on the same port fails instead of claiming to listen.
    let out = diffrec()
        .args(["orchestrator", "--bind", &orch])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot listen on port"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("listening on"), "{}", text(&out));
    // Nodes `ranks` of a 2-node run in `ws` (rank r in `ws[r]`, or the last), rank r with
    // `extra(r)`; each one's exit status
    // and stderr once all have ended (a node still running after two minutes fails the test).
    // `what`: "train" (`diffrec stage train`) or "run" (`diffrec run`).
    // Each node's process id by (tag, rank), for a node killed mid-run.
    let pids = std::sync::Mutex::new(Vec::<(String, usize, u32)>::new());
    let run_nodes = |what: &str,
                     tag: &str,
                     ws: &[&Path],
                     ranks: &[usize],
                     extra: &dyn Fn(usize) -> Vec<String>| {
        let nodes: Vec<_> = ranks
            .iter()
            .map(|&rank| {
                let mut sets = vec![
                    "train.nodes=2".to_string(),
                    format!("train.node_rank={rank}"),
                    format!("train.orchestrator={orch}"),
                    format!("train.node_address=127.0.0.1:{}", base + 1 + rank as u16),
                ];
                // `extra` gives `--set` values and flags (`--force`).
                let (flags, more): (Vec<String>, Vec<String>) =
                    extra(rank).into_iter().partition(|s| s.starts_with("--"));
                sets.extend(more);
                let log = |what: &str| {
                    std::fs::File::create(dir.join(format!("{tag}{rank}.{what}"))).unwrap()
                };
                // The default log filter, as a user runs it.
                let node = Reaped(
                    stage(what, ws[rank.min(ws.len() - 1)], &sets)
                        .args(&flags)
                        .env_remove("RUST_LOG")
                        .stdout(log("out"))
                        .stderr(log("err"))
                        .spawn()
                        .unwrap(),
                );
                pids.lock()
                    .unwrap()
                    .push((tag.to_string(), rank, node.0.id()));
                node
            })
            .collect();
        let err = |rank: usize| {
            std::fs::read_to_string(dir.join(format!("{tag}{rank}.err"))).unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let ends: Vec<(std::process::ExitStatus, String)> = nodes
            .into_iter()
            .zip(ranks)
            .map(|(mut node, &rank): (Reaped, &usize)| {
                let status = loop {
                    if let Some(status) = node.0.try_wait().unwrap() {
                        break status;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{tag} node {rank} did not finish within 2 minutes (all-reduce stall?): {}",
                        err(rank)
                    );
                    std::thread::sleep(Duration::from_millis(100));
                };
                (status, err(rank))
            })
            .collect();
        ends
    };
    // Every node of `ends` exited with `code`, saying `says` on stderr.
    let each_ends = |ends: Vec<(std::process::ExitStatus, String)>, code: i32, says: &str| {
        for (rank, (status, err)) in ends.iter().enumerate() {
            assert_eq!(status.code(), Some(code), "node {rank}: {err}");
            assert!(err.contains(says), "node {rank}: {err}");
        }
    };
    for (rank, (status, err)) in run_nodes("train", "node", &[&two], &[0, 1], &|_| vec![])
        .iter()
        .enumerate()
    {
        assert!(status.success(), "node {rank}: {err}");
        // By default a node says it waits for the others, and burn-collective's per-tensor
        // info lines (thousands an epoch) and its stdout prints stay out.
        assert!(
            err.contains("joining the orchestrator"),
            "node {rank}: {err}"
        );
        assert!(!err.contains("Downloading tensor"), "node {rank}: {err}");
        let out = std::fs::read_to_string(dir.join(format!("node{rank}.out"))).unwrap();
        assert!(!out.contains("Connecting to"), "node {rank}: {out}");
    }
    let ckpt = |ws: &Path| checkpoint_state(&ws.join("runs/g/checkpoints/latest.ckpt"));
    let (a, b) = (ckpt(&one), ckpt(&two));
    let losses = |s: &serde_json::Value| -> Vec<f64> {
        s["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (la, lb) = (losses(&a), losses(&b));
    println!("epoch losses: one process {la:?}, two nodes {lb:?}");
    assert_eq!(la.len(), 4);
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "{la:?} vs {lb:?}");
    }
    // Training moved: the last epoch's loss is below the first's.
    assert!(la[3] < la[0], "{la:?}");
    // Nodes that refuse to train together leave the trained run as it was (checkpoints and
    // manifest): node 0 gives them up only once all agree. With `--force` and another seed on
    // node 1 they differ at once (the runs' fingerprints) ...
    let run_is_intact = |why: &str| {
        assert_eq!(losses(&ckpt(&two)), lb, "{why}");
        assert!(two.join("runs/g/checkpoints/best.ckpt").exists(), "{why}");
    };
    let force = |rank: usize| match rank {
        1 => vec!["--force".to_string(), "train.seed=7".to_string()],
        _ => vec!["--force".to_string()],
    };
    each_ends(run_nodes("train", "force", &[&two], &[0, 1], &force), 2, "");
    run_is_intact("another seed");
    assert!(two.join("runs/g/_manifest.json").exists());
    // ... with `--force` on node 0 alone, at the start epoch: node 1 resumes after epoch 4
    // (its run made stale by removing the manifest, else it would skip the run as up to date).
    std::fs::remove_file(two.join("runs/g/_manifest.json")).unwrap();
    let node_0_forced = on_rank(0, "--force");
    each_ends(
        run_nodes("train", "force0", &[&two], &[0, 1], &node_0_forced),
        2,
        "only some nodes were given --force",
    );
    run_is_intact("--force on node 0 alone");

    // Nodes that would train different runs (another seed on node 1) all stop before the first
    // step, as a user mistake, saying so; nothing is trained.
    let three = dir.join("three");
    let out = stage("ingest", &three, &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seed = on_rank(1, "train.seed=7");
    each_ends(
        run_nodes("train", "seed", &[&three], &[0, 1], &seed),
        2,
        "the nodes train different runs",
    );
    assert!(!three.join("runs/g/_manifest.json").exists());
    let epochs = on_rank(1, "train.epochs=6");
    each_ends(
        run_nodes("train", "epochs", &[&three], &[0, 1], &epochs),
        2,
        "would stop at different epochs",
    );
    // A node whose tensor-service port is taken says so at once (exit 2).
    let taken = std::net::TcpListener::bind(("0.0.0.0", base + 1)).unwrap();
    let ends = run_nodes("train", "taken", &[&three], &[0], &|_| vec![]);
    drop(taken);
    each_ends(ends, 2, &format!("cannot listen on port {}", base + 1));

    // A node whose peer never comes stops after train.peer_timeout, saying what it waited for.
    let alone = |_| vec!["train.peer_timeout=2".to_string()];
    each_ends(
        run_nodes("train", "alone", &[&three], &[0], &alone),
        1,
        "node 0 waited train.peer_timeout (2 s) for all 2 nodes to join",
    );
    // The orchestrator forgets the node that left without finishing (burn-collective patched
    // in vendor/; before, it kept it and refused its address as `DoubleRegister`), so the same
    // nodes train on the same orchestrator without a restart.
    std::thread::sleep(Duration::from_millis(300));
    each_ends(
        run_nodes("train", "again", &[&three], &[0, 1], &|_| vec![]),
        0,
        "",
    );
    assert!(three.join("runs/g/_manifest.json").exists());
    // Nodes with different numbers of devices stop before the first step, saying so (with
    // --force on both: without, node 1 would find the run up to date and exit).
    let devices = |rank: usize| match rank {
        0 => vec![
            "--force".to_string(),
            "train.devices=[cpu, cpu]".to_string(),
        ],
        _ => vec!["--force".to_string()],
    };
    each_ends(
        run_nodes("train", "devices", &[&three], &[0, 1], &devices),
        2,
        "the nodes have different numbers of devices (node 0 2, node 1 1)",
    );
    // The run trained on two nodes goes on in one process with as many devices (a machine
    // lost, say): the node count is no part of the run.
    let out = stage(
        "train",
        &three,
        &["train.devices=[cpu, cpu]".into(), "train.epochs=6".into()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success() && text(&out).contains("resuming after epoch 4"),
        "{}",
        text(&out)
    );
    // Nodes on two workspaces holding the same data would each resume from their own
    // checkpoints: stopped at the start, before anything is trained or written.
    let (five, six) = (dir.join("five"), dir.join("six"));
    for ws in [&five, &six] {
        let out = stage("ingest", ws, &[]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    each_ends(
        run_nodes("train", "apart", &[&five, &six], &[0, 1], &|_| vec![]),
        2,
        "the nodes do not share one workspace",
    );
    assert!(!five.join("runs/g/checkpoints/latest.ckpt").exists());

    // The same `diffrec run` started at once on both nodes, in a new workspace: node 1 waits
    // for node 0's ingest, trains, and leaves evaluation and recommendations to node 0.
    let four = dir.join("four");
    each_ends(
        run_nodes("run", "whole", &[&four], &[0, 1], &|_| vec![]),
        0,
        "",
    );
    let out = |rank: usize| std::fs::read_to_string(dir.join(format!("whole{rank}.out"))).unwrap();
    assert!(
        out(1).contains("node 1 of 2 runs only the train stage") && !out(1).contains("evaluate:"),
        "{}",
        out(1)
    );
    assert!(out(0).contains("evaluate:"), "{}", out(0));
    assert!(four.join("runs/g/recommendations.parquet").exists());

    // Once `out` (a node's stdout file) shows epoch 2 evaluated, runs `then`; false if it never
    // did within a minute.
    let at_epoch_2 = |out: &Path, then: &mut dyn FnMut()| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if std::fs::read_to_string(out)
                .unwrap_or_default()
                .contains("train: epoch 2:")
            {
                then();
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    let long = |_| {
        vec![
            "train.epochs=12".to_string(),
            "train.peer_timeout=20".to_string(),
        ]
    };

    // A node killed mid-run (SIGKILL) stops the other at its next all-reduce (exit 1, saying
    // so). burn-collective reports the lost connection by panicking in its tasks: one warning
    // line each, not a "panicked" report that reads as a crash.
    let eight = dir.join("eight");
    let out = stage("ingest", &eight, &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let ends = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            at_epoch_2(&dir.join("peer0.out"), &mut || {
                let pid = pids
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(t, r, _)| t == "peer" && *r == 1)
                    .unwrap()
                    .2;
                let killed = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(killed.success());
            })
        });
        let ends = run_nodes("train", "peer", &[&eight], &[0, 1], &long);
        assert!(killer.join().unwrap(), "node 0 never evaluated epoch 2");
        ends
    });
    let (status, err) = &ends[0];
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        (err.contains("another replica or node stopped")
            || err.contains("another node stopped or hangs"))
            && !err.contains("panicked"),
        "{err}"
    );

    // The orchestrator stopped mid-run (a machine lost): the nodes' all-reduces go peer to
    // peer, so training ends; leaving the collective then meets no orchestrator, which is
    // said, not waited for forever (it was: no manifest, nodes up until killed) nor a panic.
    // The orchestrator forgets the killed node's session first (as above).
    std::thread::sleep(Duration::from_millis(300));
    let seven = dir.join("seven");
    let out = stage("ingest", &seven, &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut orchestrator = orchestrator;
    let ends = std::thread::scope(|s| {
        let stopper = s.spawn(|| {
            at_epoch_2(&dir.join("lost0.out"), &mut || {
                orchestrator.0.kill().unwrap();
                orchestrator.0.wait().unwrap();
            })
        });
        let ends = run_nodes("train", "lost", &[&seven], &[0, 1], &long);
        assert!(stopper.join().unwrap(), "node 0 never evaluated epoch 2");
        ends
    });
    for (rank, (status, err)) in ends.iter().enumerate() {
        assert!(status.success(), "node {rank}: {err}");
        assert!(!err.contains("panicked"), "node {rank}: {err}");
        assert!(
            err.contains("Lost the connection to the orchestrator")
                && err.contains("without the orchestrator's acknowledgement"),
            "node {rank}: {err}"
        );
    }
    let done = std::fs::read_to_string(dir.join("lost0.out")).unwrap();
    assert!(done.contains("train: epoch 12:"), "{done}");
    assert!(seven.join("runs/g/_manifest.json").exists());
}

/// L-DiffRec end to end on a small synthetic log with planted item groups: cluster → train →
/// evaluate → recommend, then one user from the best checkpoint. The model must rank held-out
/// items well above chance (random Recall@20 = 20/300).
/// `model.autoencoder.input: auto` reads a catalogue under 1 % dense sparsely: in training (the
/// summary records it) and in the evaluate stage and `diffrec recommend`, which resolve it from
/// the data as training did (their log says so), so re-evaluation gives the trained metrics.
#[test]
fn auto_encoder_input_reads_a_thin_catalogue_sparsely() {
    let (dir, p) = synthetic_project(
        "thin",
        &[
            "--users",
            "300",
            "--items",
            "2000",
            "--clusters",
            "4",
            "--mean-interactions",
            "8",
        ],
        "name: thin\ndata:\n  source: {format: csv, path: log.csv}\n\
         cluster: {k: 2, lightgcn: {epochs: 2, eval_every: 2}}\n\
         model:\n  variant: l-diffrec\n  diffusion: {steps: 5}\n  denoiser: {dims: [32]}\n  autoencoder: {dims: [24]}\n\
         train: {epochs: 2, eval_every: 2, batch_size: 100}\nevaluate: {ks: [20]}\n",
    );
    let p = p.to_str().unwrap();
    let ws = dir.join("ws");
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(ws.join(path)).unwrap()).unwrap()
    };
    let out = diffrec()
        .args(["run", p, "--workspace"])
        .arg(&ws)
        .args(["--until", "train"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let density = json("data/stats.json")["train_density"].as_f64().unwrap();
    assert!(density < 0.01, "the data is meant to be thin: {density}");
    let trained = json("runs/thin/summary.json");
    assert_eq!(trained["encoder_input"], "sparse", "{trained}");
    // The users the metrics cover, counted from the interactions' `split` column: with about 8
    // interactions per user, some users hold no test item.
    let held_out = users_per_split(&ws.join("data/interactions.parquet"));
    let users = &trained["users"];
    assert_eq!(users["all"], 300, "{trained}");
    for split in ["valid", "test"] {
        assert_eq!(users[split], held_out[split], "{split}: {trained}");
    }
    assert!(held_out["test"] < 300, "every user holds a test item");
    let resolved = "auto resolved by the training matrix's density";
    let logged = "warn,diffrec_trainer::train=info";
    let out = diffrec()
        .env("RUST_LOG", logged)
        .args(["stage", "evaluate", p, "--workspace"])
        .arg(&ws)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        out.status.success() && t.contains(resolved) && t.contains("input=Sparse"),
        "{t}"
    );
    let evaluated = json("runs/thin/summary.json");
    assert_eq!(evaluated["users"], trained["users"], "{evaluated}");
    for split in ["valid", "test"] {
        let (a, b) = (&trained[split]["recall@20"], &evaluated[split]["recall@20"]);
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6,
            "{split}: trained {a}, re-evaluated {b}"
        );
    }
    let out = diffrec()
        .env("RUST_LOG", logged)
        .args(["recommend", "--workspace", ws.to_str().unwrap()])
        .args(["--run", "thin", "--user", "u0", "--k", "3"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success() && t.contains("input=Sparse"), "{t}");
}

#[test]
fn l_diffrec_pipeline_runs_end_to_end_and_learns() {
    let (dir, p) = synthetic_project(
        "ldiffrec",
        &["--users", "600", "--items", "300", "--clusters", "4"],
        "name: l\ndata:\n  source: {format: csv, path: log.csv}\n\
         cluster: {k: 3, lightgcn: {epochs: 5, eval_every: 5}}\n\
         model:\n  variant: l-diffrec\n  diffusion: {steps: 5, noise_max: 0.02}\n  denoiser: {dims: [64]}\n  autoencoder: {dims: [48]}\n\
         train: {epochs: 30, eval_every: 5, batch_size: 100, patience: 100, lr: 0.0005, ae_lr: 0.001}\nevaluate: {ks: [20]}\nrecommend: {k: 5}\n",
    );
    let ws = dir.join("ws");
    run_ok(&p, &ws);
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("runs/l/summary.json")).unwrap()).unwrap();
    assert_eq!(s["variant"], "l-diffrec");
    // About 9 % of users × items: `auto` keeps the dense product.
    assert_eq!(s["encoder_input"], "dense", "{s}");
    let r = s["test"]["recall@20"].as_f64().unwrap();
    println!("l-diffrec recall@20 {r:.4} (random {:.4})", 20.0 / 300.0);
    assert!(r > 2.0 * 20.0 / 300.0, "{s}");
    let (cols, rows) = parquet_columns(&ws.join("runs/l/recommendations.parquet"));
    assert_eq!(
        cols,
        [
            "user_id:Utf8",
            "rank:UInt32",
            "item_id:Utf8",
            "score:Float32"
        ]
    );
    assert!(rows > 0 && rows % 5 == 0, "{rows}");
    check_recommendations(&tokio::runtime::Runtime::new().unwrap(), &ws, "l", 5);
    let out = recommend(&ws, "l", &["--history", "1,2,3", "--k", "3"], None);
    assert!(out.status.success(), "{}", text(&out));

    // The latent divided by training interactions: other widths, so other parameter counts,
    // and the checkpoint carries the weights, so re-evaluating the best checkpoint (a model
    // rebuilt from it) gives the metrics the trained model had.
    let li = [
        "--set",
        "name=li",
        "--set",
        "model.autoencoder.latent_share=interactions",
    ];
    let summary = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(ws.join("runs/li/summary.json")).unwrap()).unwrap()
    };
    for stage in ["train", "evaluate"] {
        let out = diffrec()
            .env("RUST_LOG", "warn,diffrec_trainer=info")
            .args(["stage", stage, p.to_str().unwrap(), "--workspace"])
            .arg(&ws)
            .args(li)
            .args(["--set", "train.epochs=10"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{stage}: {}", text(&out));
        if stage == "train" {
            // The log says where the latent went: three clusters' widths, summing to 48.
            let t = text(&out);
            let line = t
                .lines()
                .find(|l| l.contains("the latent shared by cluster weight"))
                .unwrap_or_else(|| panic!("no latent line in:\n{t}"));
            let widths = line.split("latent_widths=[").nth(1).unwrap();
            let widths: Vec<usize> = widths[..widths.find(']').unwrap()]
                .split(", ")
                .map(|w| w.parse().unwrap())
                .collect();
            assert!(
                line.contains("share=interactions") && widths.len() == 3,
                "{line}"
            );
            assert_eq!(widths.iter().sum::<usize>(), 48, "{line}");
            let trained = summary();
            assert_ne!(trained["params"], s["params"], "{trained}");
            std::fs::write(dir.join("trained.json"), trained.to_string()).unwrap();
        }
    }
    let trained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trained.json")).unwrap()).unwrap();
    let evaluated = summary();
    for split in ["valid", "test"] {
        let (a, b) = (&trained[split]["recall@20"], &evaluated[split]["recall@20"]);
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!(
            (a - b).abs() < 1e-6,
            "{split}: trained {a}, re-evaluated {b}"
        );
    }
    // How the encoders' first layers read the rows may change at evaluation: sparse is the
    // same function of the same parameters, so it gives the (dense) trained metrics.
    let out = diffrec()
        .args(["stage", "evaluate", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .args(li)
        .args(["--set", "train.epochs=10"])
        .args(["--set", "model.autoencoder.input=sparse"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let sparse = summary();
    for split in ["valid", "test"] {
        for metric in ["recall@20", "ndcg@20"] {
            let a = trained[split][metric].as_f64().unwrap();
            let b = sparse[split][metric].as_f64().unwrap();
            assert!(
                (a - b).abs() < 1e-6,
                "{split} {metric}: trained {a}, sparse {b}"
            );
        }
    }

    // Evaluating with a model configuration other than the trained one is a user error (exit
    // code 2): the run's manifest names the settings that differ. Where the manifest agrees
    // and the best checkpoint does not (one copied from another run, say), the checkpoint's
    // check names the first parameter that does not fit. Another latent size, and another
    // number of denoiser layers (burn itself would have panicked).
    let manifest = ws.join("runs/li/_manifest.json");
    for (set, pointer, value, trained, checked) in [
        (
            "model.autoencoder.dims=[32]",
            "/config/model/autoencoder/dims",
            serde_json::json!([32]),
            "`model.autoencoder.dims` [48] (trained) vs [32] (now)",
            "`autoencoder.encoders.0.0.weight` is",
        ),
        (
            "model.denoiser.dims=[64, 64]",
            "/config/model/denoiser/dims",
            serde_json::json!([64, 64]),
            "`model.denoiser.dims` [64] (trained) vs [64,64] (now)",
            "only in the configured model `denoiser.in_layers.1.weight`",
        ),
    ] {
        let sets = [
            "name=li",
            "model.autoencoder.latent_share=interactions",
            set,
        ];
        let kept = std::fs::read(&manifest).unwrap();
        assert_stage_refuses("evaluate", p.to_str().unwrap(), &ws, &sets, trained);
        let mut agreeing: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        *agreeing.pointer_mut(pointer).unwrap() = value;
        std::fs::write(&manifest, serde_json::to_vec(&agreeing).unwrap()).unwrap();
        // (`--force`: the summary holds the evaluation of this very checkpoint, and a stage
        // that finds it up to date would not read the file.)
        let out = diffrec()
            .args([
                "stage",
                "evaluate",
                p.to_str().unwrap(),
                "--force",
                "--workspace",
            ])
            .arg(&ws)
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .output()
            .unwrap();
        let t = text(&out);
        assert!(out.status.code() == Some(2) && t.contains(checked), "{t}");
        std::fs::write(&manifest, kept).unwrap();
    }
}

/// A heartbeat as another process's running `stage` writes it under `folder` of `ws`
/// (`diffrec_data::running`), last written `ago` before now.
fn plant_heartbeat(ws: &Path, folder: &str, stage: &str, ago: std::time::Duration) -> PathBuf {
    let path = ws
        .join(folder)
        .join("_running/4000001-00000000000000ab.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let beat = serde_json::json!({
        "stage": stage, "pid": 4000001, "host": "elsewhere",
        "started_at": "2026-12-02T10:00:00Z",
    });
    std::fs::write(&path, serde_json::to_vec(&beat).unwrap()).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
    path
}

/// A workspace another process is writing (its manifest gone while the stage rewrites the
/// outputs) fails the stages that read it with exit code 1, naming the running stage: a
/// scheduler's retry once it has finished succeeds. Once the heartbeat is stale (the writer
/// was killed), or for what no running stage explains (an unknown user), exit code 2.
#[test]
fn a_stage_running_elsewhere_makes_its_readers_retry() {
    let (_dir, p, ws, out) = tiny_train_run("busy", "{epochs: 1, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    for folder in ["data", "runs/g"] {
        assert!(
            !ws.join(folder).join("_running").exists(),
            "a finished stage leaves no heartbeat under {folder}"
        );
    }
    let pipeline = p.to_str().unwrap();
    let evaluate = || {
        diffrec()
            .args(["stage", "evaluate", pipeline, "--workspace"])
            .arg(&ws)
            .output()
            .unwrap()
    };
    let fresh = std::time::Duration::from_secs(3);
    let killed = std::time::Duration::from_secs(300);
    let running = "the ingest stage is running (process 4000001 on elsewhere, started \
                   2026-12-02 10:00:00 UTC";
    let incomplete = "the workspace's ingested data is incomplete";

    let manifest = ws.join("data/_manifest.json");
    let kept = std::fs::read(&manifest).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    let beat = plant_heartbeat(&ws, "data", "ingest", fresh);
    for out in [evaluate(), recommend(&ws, "g", &["--user", "u1"], None)] {
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains(running) && t.contains(incomplete), "{t}");
    }
    plant_heartbeat(&ws, "data", "ingest", killed);
    let out = evaluate();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains(incomplete) && !t.contains("is running"), "{t}");
    std::fs::remove_file(beat).unwrap();
    std::fs::write(&manifest, kept).unwrap();

    // The run being trained again: its manifest is gone until the training ends.
    let manifest = ws.join("runs/g/_manifest.json");
    let kept = std::fs::read(&manifest).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    plant_heartbeat(&ws, "runs/g", "train", fresh);
    let out = recommend(&ws, "g", &["--user", "u1"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the train stage is running") && t.contains("has not finished training"),
        "{t}"
    );
    std::fs::write(&manifest, kept).unwrap();
    let out = recommend(&ws, "g", &["--user", "nobody"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("is not in the training data") && !t.contains("is running"),
        "{t}"
    );
    assert!(
        recommend(&ws, "g", &["--user", "u1"], None)
            .status
            .success()
    );
}

/// `diffrec runs` tells a finished run, a stopped one (its latest checkpoint and nothing else)
/// and one a live heartbeat says is training apart, with the figures their summary or
/// checkpoint records; a killed process's heartbeat alone is no run; a re-ingest marks the runs
/// trained on the data before it. The JSON lines and the table say the same.
#[test]
fn runs_lists_each_runs_state_and_figures() {
    let (_dir, p, ws, out) = tiny_train_run("runs", "{epochs: 3, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    // (The default batch of 400 users holds all of the tiny log's: one step an epoch, said.)
    assert!(
        text(&out).contains("train.batch_size 400 is above the 60 users"),
        "{}",
        text(&out)
    );
    let runs = |extra: &[&str]| {
        diffrec()
            .args(["runs", "--workspace"])
            .arg(&ws)
            .args(extra)
            .output()
            .unwrap()
    };
    let rows = || -> Vec<serde_json::Value> {
        let out = runs(&["--json"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(ws.join(path)).unwrap()).unwrap()
    };
    let summary = json("runs/g/summary.json");
    let manifest = json("runs/g/_manifest.json");
    let r = rows();
    assert_eq!(r.len(), 1, "{r:?}");
    let g = &r[0];
    for (field, want) in [
        ("run", serde_json::json!("g")),
        ("state", "finished".into()),
        ("variant", "diffrec".into()),
        ("seed", manifest["config"]["train"]["seed"].clone()),
        ("epochs", summary["epochs_run"].clone()),
        ("best_epoch", summary["best_epoch"].clone()),
        ("k", 20.into()),
        ("valid_recall", summary["valid"]["recall@20"].clone()),
        ("test_recall", summary["test"]["recall@20"].clone()),
        ("test_ndcg", summary["test"]["ndcg@20"].clone()),
        ("data", "current".into()),
        ("recommendations", false.into()),
        ("finished_at", manifest["finished_at"].clone()),
        ("note", "".into()),
    ] {
        assert_eq!(g[field], want, "{field}: {g}");
    }
    assert_eq!(summary["epochs_run"], 3);
    // Training's last line names the figure that chose the epoch, as the summary has it.
    let chose = format!(
        "train: best epoch {} of 3 (valid recall@20 {:.4}); test ",
        summary["best_epoch"],
        summary["valid"]["recall@20"].as_f64().unwrap()
    );
    assert!(text(&out).contains(&chose), "{chose}: {}", text(&out));

    // A training killed after its last checkpoint, before the stage ended.
    std::fs::create_dir_all(ws.join("runs/h/checkpoints")).unwrap();
    std::fs::copy(
        ws.join("runs/g/checkpoints/latest.ckpt"),
        ws.join("runs/h/checkpoints/latest.ckpt"),
    )
    .unwrap();
    let r = rows();
    assert_eq!(r.len(), 2, "{r:?}");
    let h = &r[1];
    for field in [
        "variant",
        "seed",
        "epochs",
        "best_epoch",
        "k",
        "valid_recall",
    ] {
        assert_eq!(h[field], g[field], "{field}: {h}");
    }
    assert_eq!(
        (&h["run"], &h["state"], &h["data"], &h["finished_at"]),
        (
            &"h".into(),
            &"stopped".into(),
            &"current".into(),
            &serde_json::Value::Null
        ),
        "{h}"
    );
    assert!(h["note"].as_str().unwrap().contains("resumes it"), "{h}");

    // A process training it now; and a killed one's heartbeat where nothing else is.
    let beat = plant_heartbeat(&ws, "runs/h", "train", Duration::from_secs(3));
    plant_heartbeat(&ws, "runs/i", "train", Duration::from_secs(300));
    let r = rows();
    assert_eq!(r.len(), 2, "no run `i`: {r:?}");
    let h = &r[1];
    assert_eq!(h["state"], "training", "{h}");
    assert_eq!(h["running"]["pid"], 4000001, "{h}");
    assert_eq!(h["running"]["host"], "elsewhere", "{h}");
    assert_eq!(h["epochs"], g["epochs"], "{h}");
    std::fs::remove_file(beat).unwrap();

    // The source refreshed and ingested again: both were trained on the data before.
    let log = p.parent().unwrap().join("log.csv");
    generate(&log, &["--users", "60", "--items", "40", "--seed", "8"]);
    let out = diffrec()
        .args(["stage", "ingest", p.to_str().unwrap(), "--workspace"])
        .arg(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = rows();
    assert_eq!(
        (&r[0]["data"], &r[1]["data"]),
        (&"changed".into(), &"changed".into())
    );
    assert!(
        r[0]["note"].as_str().unwrap().contains("trains it anew"),
        "{}",
        r[0]
    );

    let out = runs(&[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("RUN  STATE"), "{t}");
    let valid = format!("{:.4}", g["valid_recall"].as_f64().unwrap());
    assert!(
        lines[1].starts_with("g    finished") && lines[1].contains(&valid),
        "{t}"
    );
    assert!(
        lines[2].starts_with("h    stopped") && lines[2].contains("changed"),
        "{t}"
    );

    let out = diffrec()
        .args(["runs", "--workspace"])
        .arg(ws.join("nope"))
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("no runs to list; check --workspace"), "{t}");
}

/// `diffrec run` again on an unchanged workspace finds evaluate and recommend up to date as
/// well and rewrites neither file; a change to a stage's own settings (`recommend.k`,
/// `evaluate.ks`, the reverse pass) reruns that stage alone; `--force` reruns it; a damaged
/// list is written again.
#[test]
fn evaluate_and_recommend_skip_what_they_already_wrote() {
    let (_dir, p, ws, out) = tiny_train_run("skip", "{epochs: 2, eval_every: 1}");
    assert!(out.status.success(), "{}", text(&out));
    let pipeline = p.to_str().unwrap();
    let command = |args: &[&str]| {
        let out = diffrec()
            .args(args)
            .arg(pipeline)
            .arg("--workspace")
            .arg(&ws)
            .output()
            .unwrap();
        let t = text(&out);
        assert!(out.status.success(), "{args:?}: {t}");
        t
    };
    let (summary, recs) = (
        ws.join("runs/g/summary.json"),
        ws.join("runs/g/recommendations.parquet"),
    );
    let files = || {
        let read = |f: &Path| {
            (
                std::fs::read(f).unwrap(),
                std::fs::metadata(f).unwrap().modified().unwrap(),
            )
        };
        (read(&summary), read(&recs))
    };
    let evaluated = "evaluate: best checkpoint (epoch";
    let (evaluate_skipped, recommend_skipped) = ("evaluate: up to date", "recommend: up to date");

    let t = command(&["run"]);
    assert!(
        t.contains(evaluated) && !t.contains(evaluate_skipped),
        "{t}"
    );
    assert!(!t.contains(recommend_skipped), "{t}");
    let users = parquet_columns(&recs).1 / 20;
    let before = files();
    let t = command(&["run"]);
    assert!(
        t.contains(evaluate_skipped) && t.contains(recommend_skipped),
        "{t}"
    );
    assert!(files() == before, "neither file rewritten");

    // The list's own settings: the list alone is made again.
    let t = command(&["run", "--set", "recommend.k=3"]);
    assert!(
        t.contains(evaluate_skipped) && !t.contains(recommend_skipped),
        "{t}"
    );
    assert_eq!(parquet_columns(&recs).1, 3 * users);
    assert!(files().0 == before.0);
    let t = command(&["stage", "recommend", "--set", "recommend.k=3"]);
    assert!(t.contains(recommend_skipped), "{t}");
    let t = command(&["stage", "recommend", "--set", "recommend.k=3", "--force"]);
    assert!(!t.contains(recommend_skipped), "{t}");

    // The evaluation's own settings, on the stage alone (evaluate.ks is also training's).
    let t = command(&["stage", "evaluate", "--set", "evaluate.ks=[5,20]"]);
    assert!(t.contains(evaluated), "{t}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert!(s["test"]["recall@5"].is_number(), "{s}");
    assert_eq!(s["evaluated_by"]["ks"], serde_json::json!([5, 20]), "{s}");
    let t = command(&["stage", "evaluate", "--set", "evaluate.ks=[5,20]"]);
    assert!(t.contains(evaluate_skipped), "{t}");
    let t = command(&[
        "stage",
        "evaluate",
        "--set",
        "evaluate.ks=[5,20]",
        "--force",
    ]);
    assert!(t.contains(evaluated), "{t}");
    let steps = [
        "--set",
        "model.diffusion.sampling_steps=2",
        "--set",
        "recommend.k=3",
    ];
    let t = command(&[&["stage", "evaluate"][..], &steps].concat());
    assert!(t.contains(evaluated), "{t}");
    let t = command(&[&["stage", "recommend"][..], &steps].concat());
    assert!(!t.contains(recommend_skipped), "{t}");

    // Not a Parquet file any more: made again, saying why.
    std::fs::write(&recs, b"not parquet").unwrap();
    let t = command(&[&["stage", "recommend"][..], &steps].concat());
    assert!(
        t.contains("does not read") && !t.contains(recommend_skipped),
        "{t}"
    );
    assert_eq!(parquet_columns(&recs).1, 3 * users);
}
