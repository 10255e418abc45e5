//! Records the commit the binary is built from as `DIFFREC_BUILD` (`diffrec -V` shows it, and
//! every stage manifest records it as `build`), so a result can be traced to the code that
//! made it: the release version alone is shared by every build of it. `<commit>-modified` when
//! tracked sources differ from that commit; `unknown` outside a git checkout (a source
//! tarball).

use std::path::Path;
use std::process::Command;

/// What the build depends on, relative to the workspace root.
const SOURCES: &[&str] = &["crates", "vendor", "pipelines", "Cargo.toml", "Cargo.lock"];

fn git(root: &Path, args: &[&str]) -> Option<String> {
    // No optional locks: `status` must not rewrite the index (a change that would make this
    // script run again on the next build, and again).
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    // Read when the script runs, not when it compiles (`env!`): cargo keeps one compiled
    // script for every clone that shares a target dir (`.ci/run`'s default), so a path baked
    // in at compile time can name another clone, or one that is gone.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join("../..");
    let build = match git(&root, &["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            match git(&root, &status) {
                Some(changes) if changes.is_empty() => commit,
                _ => format!("{commit}-modified"),
            }
        }
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=DIFFREC_BUILD={build}");
    // Again after a commit or a checkout, and when a source changes. Only paths that exist:
    // cargo runs the script again on every build for one that does not.
    // A commit or checkout moves HEAD's reflog (in a worktree, its own git folder); the refs
    // live in the common folder, loose or packed.
    let mut watched: Vec<_> = SOURCES.iter().map(|s| root.join(s)).collect();
    if let Some(dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        watched.extend([dir.join("HEAD"), dir.join("logs/HEAD")]);
    }
    if let Some(common) = git(
        &root,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    ) {
        let common = Path::new(&common);
        watched.extend([common.join("packed-refs"), common.join("refs/heads")]);
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
