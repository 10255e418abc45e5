//! Pipelines: YAML files with sections `data`, `cluster`, `model`, `train`, `evaluate`,
//! `recommend`, loaded into typed structs that reject unknown keys, with `--set a.b=VALUE`
//! overrides applied before typing, and every value validated once before any work starts.

use std::path::{Path, PathBuf};

use diffrec_cluster::ClusterConfig;
use diffrec_data::config::SplitMethod;
use diffrec_data::{DataConfig, Workspace};
use diffrec_model::ModelConfig;
use diffrec_trainer::{EvaluateConfig, Parallel, RecommendConfig, TrainConfig};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

/// A whole pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `name`: the pipeline's and its run's name (`runs/<name>/`). Letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// `workspace`: the workspace URL (path, `file://`, `memory://`, `s3://`). Required here or
    /// with `--workspace`.
    #[serde(default)]
    pub workspace: Option<String>,
    /// `data`: see `diffrec_data::config`.
    pub data: DataConfig,
    /// `cluster`: see `diffrec_cluster::config`.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `model`: see `diffrec_model::config`.
    #[serde(default)]
    pub model: ModelConfig,
    /// `train`: see `diffrec_trainer::config`.
    #[serde(default)]
    pub train: TrainConfig,
    /// `evaluate`.
    #[serde(default)]
    pub evaluate: EvaluateConfig,
    /// `recommend`.
    #[serde(default)]
    pub recommend: RecommendConfig,
}

/// Why a pipeline could not be loaded. Always the user's to fix (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read pipeline {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pipeline {path} is not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("pipeline {path}: `{key}`: {message}")]
    Key {
        path: String,
        key: String,
        message: String,
    },
    #[error("pipeline {path}: bad --set {arg:?}: {message}")]
    Set {
        path: String,
        arg: String,
        message: String,
    },
}

/// A loaded, validated pipeline and the directory its relative paths resolve against.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub pipeline: Pipeline,
    pub base_dir: PathBuf,
    pub workspace: String,
    /// The pipeline file as errors name it.
    pub source: String,
}

impl Loaded {
    /// What only the train stage needs of this binary (its `train.backend` compiled in), as a
    /// keyed error: checked before the first of a run's stages when the run trains, and only then,
    /// so a CPU-only binary still ingests, clusters and evaluates a `cuda` pipeline.
    pub fn check_can_train(&self) -> Result<(), PipelineError> {
        self.pipeline
            .train
            .check_backend_built()
            .map_err(|e| PipelineError::Key {
                path: self.source.clone(),
                key: e.key,
                message: e.message,
            })
    }
}

/// Loads `path`, applies `--set` overrides and `--workspace`, types and validates it.
pub fn load(
    path: &Path,
    sets: &[String],
    workspace: Option<&str>,
) -> Result<Loaded, PipelineError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
        path: shown.clone(),
        source,
    })?;
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    from_yaml(&text, &shown, base_dir, sets, workspace)
}

/// Like [`load`], from YAML text (`shown` names it in errors).
pub fn from_yaml(
    text: &str,
    shown: &str,
    base_dir: PathBuf,
    sets: &[String],
    workspace: Option<&str>,
) -> Result<Loaded, PipelineError> {
    // A byte-order mark (some Windows editors write one) is no part of the YAML.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let yaml_err = |e: serde_norway::Error| PipelineError::Yaml {
        path: shown.to_owned(),
        message: e.to_string(),
    };
    let mut value: Value = serde_norway::from_str(text).map_err(yaml_err)?;
    // Merge keys (`<<: *defaults`) take the aliased mapping's keys, as YAML 1.1 defines them (a
    // mapping's own keys win), before any `--set` changes a key of the merged mapping.
    value.apply_merge().map_err(yaml_err)?;
    for arg in sets {
        apply_set(&mut value, arg).map_err(|message| PipelineError::Set {
            path: shown.to_owned(),
            arg: arg.clone(),
            message,
        })?;
    }
    if let Some(ws) = workspace {
        // Taken as it is, not parsed as YAML: `2024` stays a folder name and `out #2` keeps
        // its `#2`.
        let map = value.as_mapping_mut().ok_or_else(|| PipelineError::Key {
            path: shown.to_owned(),
            key: "(top level)".into(),
            message: "a pipeline is a mapping of sections".into(),
        })?;
        map.insert(
            Value::String("workspace".into()),
            Value::String(ws.to_owned()),
        );
    }
    let key_err = |key: String, message: String| PipelineError::Key {
        path: shown.to_owned(),
        message: format!("{message}{}", given_by_set(sets, &key)),
        key,
    };
    let mut pipeline: Pipeline = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".into()
        } else {
            key
        };
        key_err(key, e.into_inner().to_string())
    })?;
    validate(&pipeline).map_err(|(k, m)| key_err(k, m))?;
    // Shown, compared and recorded with its defaults that depend on other keys written out.
    pipeline.data = pipeline.data.resolved();
    let workspace = pipeline.workspace.clone().ok_or_else(|| {
        key_err(
            "workspace".into(),
            "no workspace: set `workspace:` or pass --workspace".into(),
        )
    })?;
    Ok(Loaded {
        pipeline,
        base_dir,
        workspace,
        source: shown.to_owned(),
    })
}

/// ` (given by --set K=V)` when the last `--set` that touches `key` (the key itself, a key
/// inside it, or a section holding it) is the likely source of its error; empty otherwise.
fn given_by_set(sets: &[String], key: &str) -> String {
    let touches = |set: &str| {
        let k = set.split_once('=').map_or(set, |(k, _)| k).trim();
        // `evaluate.ks[1]` (a list element, as error paths name it) is inside `evaluate.ks`.
        let inside = |outer: &str, inner: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        k == key || inside(key, k) || inside(k, key)
    };
    sets.iter()
        .rev()
        .find(|s| touches(s))
        .map(|s| format!(" (given by --set {s})"))
        .unwrap_or_default()
}

/// The longest run name: a folder name of at most 255 bytes is what file systems take.
const MAX_RUN_NAME: usize = 200;

/// A pipeline (run) name: letters, digits, '.', '_' or '-', not only dots (nor none), at most
/// [`MAX_RUN_NAME`] characters. Also what `diffrec recommend --run` takes.
pub fn check_run_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.chars().all(|c| c == '.') || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} must be letters, digits, '.', '_' or '-', not only dots (the run's folder \
             is runs/<name>)"
        ));
    }
    if name.len() > MAX_RUN_NAME {
        return Err(format!(
            "\"{}…\" has {} characters, more than {MAX_RUN_NAME} (the run's folder is runs/<name>, \
             and file systems take names of at most 255 bytes)",
            &name[..40],
            name.len()
        ));
    }
    Ok(())
}

/// Cross-section and per-section checks; returns (key, message) on the first problem.
fn validate(p: &Pipeline) -> Result<(), (String, String)> {
    check_run_name(&p.name).map_err(|why| ("name".into(), why))?;
    // Where the stages would refuse them, before any work: a workspace URL with an unknown
    // scheme or a slip (`s3:/b/x`), and likewise a source URL.
    if let Some(ws) = &p.workspace {
        Workspace::check_url(ws).map_err(|m| ("workspace".to_owned(), m))?;
    }
    let source = &p.data.source.path;
    if !source.starts_with("file://") && !source.starts_with("workspace:") {
        Workspace::check_url(source).map_err(|m| ("data.source.path".to_owned(), m))?;
    }
    p.data.validate().map_err(|e| match e {
        diffrec_data::DataError::Config { key, message } => (key, message),
        other => ("data".into(), other.to_string()),
    })?;
    p.cluster.validate().map_err(|e| (e.key, e.message))?;
    p.model.validate().map_err(|e| (e.key, e.message))?;
    p.train.validate().map_err(|e| (e.key, e.message))?;
    p.evaluate.validate().map_err(|e| (e.key, e.message))?;
    p.recommend.validate().map_err(|e| (e.key, e.message))?;
    if p.model.variant.is_latent() {
        let a = &p.model.autoencoder;
        a.check_clusters(p.cluster.k)
            .map_err(|e| (e.key, e.message))?;
        if let Some(&narrow) = a.dims.iter().find(|&&d| d < p.cluster.k) {
            tracing::warn!(
                "model.autoencoder.dims {:?}: the layer of {narrow} is split among {k} cluster \
                 encoders, each at least 1 wide, so together they are at least {k} wide, wider \
                 than asked",
                a.dims,
                k = p.cluster.k,
            );
        }
    }
    if p.train.parallel == Parallel::Model && !p.model.variant.is_latent() {
        return Err((
            "train.parallel".into(),
            format!(
                "model spreads L-DiffRec's cluster encoders over the devices; {} has none \
                 (use train.parallel: data)",
                p.model.variant.name()
            ),
        ));
    }
    if p.train.parallel == Parallel::Model && p.train.devices.len() < 2 {
        tracing::warn!(
            "train.parallel: model spreads the cluster encoders over train.devices, and there \
             is only one device: training runs as on one device"
        );
    }
    // Known from the settings alone (the runtime check in the train stage catches a split that
    // comes out empty for other reasons): a 0 valid share cuts no validation row for anyone.
    let valid_share = p.data.split.ratios[1];
    if p.data.split_method() != SplitMethod::Predefined && valid_share <= 0.0 && p.train.evaluates()
    {
        return Err((
            "data.split.ratios".into(),
            format!(
                "the validation split is empty (valid share {valid_share} in {:?}), and each \
                 evaluation (train.eval_every {} ≤ train.epochs {}) selects the best epoch on \
                 it: give validation a share, or set train.eval_every above train.epochs to \
                 train without evaluating",
                p.data.split.ratios, p.train.eval_every, p.train.epochs
            ),
        ));
    }
    if p.model.variant.is_temporal() && p.data.temporal.is_none() {
        return Err((
            "model.variant".into(),
            format!(
                "{} reads time-weighted interactions: add a data.temporal section",
                p.model.variant.name()
            ),
        ));
    }
    Ok(())
}

/// Applies `a.b.c=VALUE` to a YAML tree; VALUE is parsed as YAML (so `3` is a number and
/// `[10, 20]` a list). Missing intermediate maps are created; typing happens afterwards, so a
/// misspelt key is still refused by name.
fn apply_set(root: &mut Value, arg: &str) -> Result<(), String> {
    let (path, raw) = arg
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE, e.g. train.seed=3".to_owned())?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!("bad key {path:?}"));
    }
    let mut value: Value =
        serde_norway::from_str(raw).map_err(|e| format!("value is not YAML: {e}"))?;
    value
        .apply_merge()
        .map_err(|e| format!("value's merge key: {e}"))?;
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| format!("`{}` is not a section", parts[..i].join(".")))?;
        let key = Value::String((*part).to_owned());
        if i + 1 == parts.len() {
            merge(map.entry(key).or_insert(Value::Null), value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    unreachable!("the loop returns at the last part")
}

/// `value` set over `section`: a mapping changes the keys it names, recursively, and keeps the
/// others (`--set 'train={epochs: 2}'` is `--set train.epochs=2`); anything else replaces it.
fn merge(section: &mut Value, value: Value) {
    match (section, value) {
        (Value::Mapping(old), Value::Mapping(new)) => {
            for (k, v) in new {
                merge(old.entry(k).or_insert(Value::Null), v);
            }
        }
        (section, value) => *section = value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str =
        "name: t\nworkspace: memory://x\ndata:\n  source: {format: csv, path: a.csv}\n";

    fn load_str(text: &str, sets: &[&str]) -> Result<Loaded, PipelineError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        from_yaml(text, "p.yaml", ".".into(), &sets, None)
    }

    #[test]
    fn set_overrides_types_values() {
        let l = load_str(
            MINI,
            &[
                "train.seed=3",
                "evaluate.ks=[5, 7]",
                "data.temporal.w_min=0.3",
            ],
        )
        .unwrap();
        assert_eq!(l.pipeline.train.seed, 3);
        assert_eq!(l.pipeline.evaluate.ks, vec![5, 7]);
        assert_eq!(l.pipeline.data.temporal.unwrap().w_min, 0.3);
    }

    /// A mapping set on a section changes the keys it names and keeps the others (it replaced
    /// the section, resetting the others to their defaults); `null` clears a section.
    #[test]
    fn set_of_a_section_merges_into_it() {
        let text = format!("{MINI}train: {{batch_size: 64, seed: 9}}\n");
        let l = load_str(&text, &["train={epochs: 2, seed: 4}"]).unwrap();
        let t = &l.pipeline.train;
        assert_eq!((t.epochs, t.seed, t.batch_size), (2, 4, 64));
        let l = load_str(
            MINI,
            &[
                "data.noise={kind: random, ratio: 0.3}",
                "data.noise={seed: 5}",
            ],
        )
        .unwrap();
        let n = l.pipeline.data.noise.unwrap();
        assert_eq!((n.effective_ratio(), n.seed), (0.3, 5));
        let l = load_str(&text, &["train=null", "train={epochs: 2}"]).unwrap();
        assert_eq!(
            l.pipeline.train.batch_size,
            TrainConfig::default().batch_size
        );
    }

    /// What editors and YAML habits put in a file: a byte-order mark, CRLF line ends, merge
    /// keys over an anchored mapping.
    #[test]
    fn byte_order_marks_and_merge_keys_are_read() {
        let text = format!("\u{feff}{}", MINI.replace('\n', "\r\n"));
        assert_eq!(load_str(&text, &[]).unwrap().pipeline.name, "t");
        let merged = format!("{MINI}train: {{<<: &base {{seed: 9, epochs: 4}}, epochs: 3}}\n");
        let p = load_str(&merged, &[]).unwrap().pipeline;
        assert_eq!(
            (p.train.seed, p.train.epochs),
            (9, 3),
            "the mapping's own key wins"
        );
        let p = load_str(MINI, &["train={<<: {seed: 4, epochs: 6}, epochs: 2}"]).unwrap();
        let t = p.pipeline.train;
        assert_eq!((t.seed, t.epochs), (4, 2), "and in a --set value");
        // A key set into a merged mapping keeps the mapping's other merged keys.
        let merged = format!("{MINI}train: {{<<: {{seed: 9, epochs: 4}}}}\n");
        let t = load_str(&merged, &["train.epochs=5"])
            .unwrap()
            .pipeline
            .train;
        assert_eq!((t.seed, t.epochs), (9, 5));
    }

    /// `--workspace` is a path or URL as typed, never parsed as YAML.
    #[test]
    fn workspace_flag_is_taken_verbatim() {
        for ws in ["2024", "out #2", "@tmp", "[a]", "true"] {
            let l = from_yaml(MINI, "p.yaml", ".".into(), &[], Some(ws))
                .unwrap_or_else(|e| panic!("{ws}: {e}"));
            assert_eq!(l.pipeline.workspace.as_deref(), Some(ws));
        }
    }

    #[test]
    fn typos_are_refused_by_name_before_work() {
        let e = load_str(&format!("{MINI}train:\n  sed: 3\n"), &["train.seed=2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`train`") || e.contains("train.sed"), "{e}");
        assert!(e.contains("unknown field `sed`"), "{e}");
        assert!(
            !e.contains("--set"),
            "a typo in the file is not blamed on --set: {e}"
        );
        let e = load_str(MINI, &["train.seed=2", "model.diffusion.stepz=4"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.diffusion") && e.contains("stepz"), "{e}");
        assert!(
            e.ends_with(" (given by --set model.diffusion.stepz=4)"),
            "{e}"
        );
        // A value refused by validation names the --set that gave it, the last one that did.
        let e = load_str(MINI, &["train.lr=0.1", "train.lr=-1", "train.seed=2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`train.lr`"), "{e}");
        assert!(e.ends_with(" (given by --set train.lr=-1)"), "{e}");
        let e = load_str(MINI, &["evaluate.ks=[5, x]"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("evaluate.ks[1]"), "{e}");
        assert!(e.ends_with(" (given by --set evaluate.ks=[5, x])"), "{e}");
    }

    #[test]
    fn values_are_validated_with_their_key() {
        let e = load_str(MINI, &["data.split.ratios=[0.5, 0.5, 0.5]"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`data.split.ratios`"), "{e}");
        let e = load_str(MINI, &["data.split.ratios=[0, 0.8, 0.2]"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`data.split.ratios`") && e.contains("train share"),
            "{e}"
        );
        // No validation share while the run evaluates: refused here, not after ingest.
        let e = load_str(MINI, &["data.split.ratios=[0.9, 0, 0.1]"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`data.split.ratios`") && e.contains("the validation split is empty"),
            "{e}"
        );
        let no_eval = [
            "data.split.ratios=[0.9, 0, 0.1]",
            "train.epochs=3",
            "train.eval_every=4",
        ];
        assert!(load_str(MINI, &no_eval).is_ok());
        let predefined = "data.source={format: diffrec-npy, path: d}";
        assert!(load_str(MINI, &[predefined, "data.split.ratios=[0.9, 0, 0.1]"]).is_ok());
        let e = load_str(MINI, &["model.variant=t-diffrec"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.temporal"), "{e}");
        for name in ["a/b", ".", "..", &"a".repeat(201)] {
            let e = load_str(MINI, &[&format!("name={name}")]).unwrap_err();
            assert!(e.to_string().contains("`name`"), "{name}: {e}");
        }
        assert!(load_str(MINI, &["name=v1.2-a_b"]).is_ok());
        assert!(load_str(MINI, &[&format!("name={}", "a".repeat(200))]).is_ok());
        // L-DiffRec's latent is split among the cluster encoders, each at least 1 wide (an
        // inner layer narrower than cluster.k only makes those encoders wider than asked).
        assert!(
            load_str(
                MINI,
                &[
                    "model.variant=l-diffrec",
                    "cluster.k=3",
                    "model.autoencoder.dims=[2, 30]"
                ]
            )
            .is_ok()
        );
        let latent = ["model.variant=l-diffrec", "cluster.k=3"];
        let e = load_str(
            MINI,
            &[&latent[..], &["model.autoencoder.dims=[64, 2]"]].concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`model.autoencoder.dims`")
                && e.contains("the latent (its last entry) is 2 wide"),
            "{e}"
        );
        assert!(
            load_str(
                MINI,
                &[&latent[..], &["model.autoencoder.dims=[3]"]].concat()
            )
            .is_ok()
        );
    }

    /// Settings that only the train stage used to reject (after ingest had run) fail at load.
    #[test]
    fn train_settings_that_cannot_run_fail_at_load() {
        let refusal = |sets: &[&str]| load_str(MINI, sets).unwrap_err().to_string();
        for (sets, says) in [
            (&["train.parallel=model"][..], "`train.parallel`"),
            (&["train.devices=[cpu, gpu:0]"], "`train.devices`"),
            (&["train.backend=ndarray"], "ndarray"),
        ] {
            let e = refusal(sets);
            assert!(e.contains(says), "{sets:?}: {e}");
        }
        assert!(refusal(&["train.parallel=model"]).contains("diffrec has none"));
        assert!(refusal(&["train.devices=[cpu, gpu:0]"]).contains("\"gpu:0\" is not a cpu device"));
        assert!(
            refusal(&["train.devices=[cuda:0]"]).contains("or set train.backend: cuda for it"),
            "{}",
            refusal(&["train.devices=[cuda:0]"])
        );
        assert!(refusal(&["train.devices=[wgpu:0]"]).contains("train.backend: wgpu"));
        assert!(!refusal(&["train.devices=[tpu:0]"]).contains("train.backend"));
        // A backend this binary lacks loads (ingest, cluster and evaluate do not need it);
        // only a run that trains is refused, before its first stage.
        let cuda = load_str(
            MINI,
            &["train.backend=cuda", "train.devices=[cuda:0, gpu:1]"],
        )
        .unwrap();
        if diffrec_trainer::Backend::Cuda.built_in() {
            assert!(cuda.check_can_train().is_ok());
        } else {
            let e = cuda.check_can_train().unwrap_err().to_string();
            assert!(
                e.contains("`train.backend`") && e.contains("--features cuda"),
                "{e}"
            );
        }
        assert!(load_str(MINI, &[]).unwrap().check_can_train().is_ok());
        assert!(load_str(MINI, &["train.devices=[cpu, \"cpu:1\"]"]).is_ok());
        assert!(
            load_str(
                MINI,
                &[
                    "model.variant=l-diffrec",
                    "train.parallel=model",
                    "train.devices=[cpu, cpu]"
                ]
            )
            .is_ok()
        );
    }

    #[test]
    fn workspace_is_required_somewhere() {
        let text = MINI.replace("workspace: memory://x\n", "");
        let e = load_str(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("--workspace"), "{e}");
        let l = from_yaml(&text, "p", ".".into(), &[], Some("/tmp/w")).unwrap();
        assert_eq!(l.workspace, "/tmp/w");
    }

    #[test]
    fn bad_set_syntax_is_explained() {
        let e = load_str(MINI, &["train.seed"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = load_str(MINI, &["name.x=1"]).unwrap_err().to_string();
        assert!(e.contains("not a section"), "{e}");
    }

    #[test]
    fn shipped_pipelines_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                load(&p, &[], Some("memory://check")).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(
            n >= 2,
            "expected the shipped pipelines in {}",
            dir.display()
        );
    }
}

#[cfg(test)]
mod doc_sync {
    use super::*;

    fn leaf_keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaf_keys(&key, child, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn docs_list_every_key() {
        // Optional sections, `None` values and the keys serialised only away from their default
        // (`skip_serializing_if`: latent_share, input, ema_decay, ema_warmup) are all set here.
        let text = "name: t\nworkspace: w\ndata:\n  source: {format: csv, path: a.csv, columns: {rating: r}}\n  \
                    min_rating: 1\n  k_core: 1\n  temporal: {}\n  noise: {kind: random}\n  split: {method: per_user_ratio}\n\
                    cluster: {embeddings: e.npy}\nmodel: {diffusion: {beta_fixed: true}, \
                    autoencoder: {latent_share: interactions, input: sparse}}\n\
                    train: {ema_decay: 0.999, ema_warmup: debias}\n";
        let l = from_yaml(text, "p", ".".into(), &[], None).unwrap();
        let mut keys = Vec::new();
        leaf_keys("", &serde_json::to_value(&l.pipeline).unwrap(), &mut keys);
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/pipeline.md"),
        )
        .unwrap();
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !doc.contains(&format!("`{k}`")))
            .collect();
        assert!(missing.is_empty(), "docs/pipeline.md lacks {missing:?}");
        assert!(keys.len() > 50, "{keys:?}");
    }
}
