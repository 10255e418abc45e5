//! The train stage: reads the ingest artifacts, trains (or resumes) the run, writes
//! `runs/<name>/…` and the run manifest, with a progress bar on a terminal.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::Utc;
use diffrec_data::manifest::{
    Freshness, INGEST_RULES, StageManifest, freshness, manifest_key, upstream_hashes,
    upstream_records,
};
use diffrec_data::workspace::sha256_hex;
use diffrec_data::{DataConfig, Workspace, load_splits};
use diffrec_model::ModelConfig;
use diffrec_trainer::train::{
    best_key, check_resumable, checkpoint_fingerprinted, curves_key, latest_key, metrics_key,
    run_dir, summary_key,
};
use diffrec_trainer::{Progress, RunSpec, TrainError, train_on};

use crate::pipeline::Loaded;
use crate::progress::{EpochBar, headline_metrics};
use crate::stages::{other_node, wait_for_node_0};
use crate::stdout::status;
use crate::usage::UsageError;
use diffrec_data::differences::{InputChange, differing_inputs, differing_keys, differing_keys_as};

/// Removes what an interrupted run of `name` was writing (checkpoints, metrics, curves, summary,
/// manifest: temporaries are never read, and the complete files beside them are what a resume
/// starts from), also when the run is complete and the stage is skipped. The recommend stage's
/// temporaries are left to it: it may be writing now.
async fn clean_temporaries(ws: &Workspace, name: &str) -> Result<()> {
    let dir = run_dir(name);
    let mut cleaned = ws.clean_temporaries(&format!("{dir}/checkpoints")).await?;
    for key in [
        metrics_key(name),
        curves_key(name),
        summary_key(name),
        manifest_key(&dir),
    ] {
        cleaned += ws.clean_temporaries_of(&key).await?;
    }
    if cleaned > 0 {
        tracing::info!(
            cleaned,
            "train: removed the temporaries of an interrupted run"
        );
    }
    Ok(())
}

/// What a run that cannot be resumed was trained with, read once: its manifest's config and
/// inputs (`finished`), or, for a run stopped before it finished, what its latest checkpoint
/// says its fingerprint hashes (written since checkpoints did, 2026-12-01).
struct TrainedOn {
    config: serde_json::Value,
    inputs: BTreeMap<String, String>,
    finished: bool,
}

impl TrainedOn {
    /// `None` when neither the manifest nor the checkpoint says.
    async fn read(ws: &Workspace, run: &str) -> Option<TrainedOn> {
        let key = manifest_key(&run_dir(run));
        if let Ok(Some(m)) = ws.get_json::<StageManifest>(&key).await {
            return Some(TrainedOn {
                config: m.config,
                inputs: m.inputs,
                finished: true,
            });
        }
        let mut hashed = checkpoint_fingerprinted(ws, run).await.ok().flatten()?;
        let mut take = |key: &str| hashed.get_mut(key).map(serde_json::Value::take);
        let inputs = serde_json::from_value(take("inputs")?).ok()?;
        Some(TrainedOn {
            config: take("config")?,
            inputs,
            finished: false,
        })
    }

    /// What differs from the settings and inputs a new training would fingerprint
    /// (`trajectory`: the config without the `train` keys `leaves_out`, as the fingerprint
    /// leaves them out); `None` when nothing does.
    fn changes(
        &self,
        (trajectory, leaves_out): (&serde_json::Value, &[&str]),
        inputs: &BTreeMap<String, String>,
    ) -> Option<String> {
        let mut trained = self.config.clone();
        remove_train_keys(&mut trained, leaves_out);
        let mut changed = Vec::new();
        differing_keys("", &trained, trajectory, &mut changed);
        for (name, change) in differing_inputs(&self.inputs, inputs) {
            changed.push(match change {
                InputChange::Changed => format!("input `{name}` changed"),
                InputChange::New => format!("input `{name}` is new (the run read none)"),
                InputChange::Gone => format!("input `{name}` is no longer read"),
            });
        }
        (!changed.is_empty()).then(|| changed.join("; "))
    }
}

/// The `train` keys the checkpoint fingerprint leaves out: how long to train and when to stop
/// do not change the trajectory, so a run can be extended or resumed with more epochs; nor do
/// the devices and how they share the work (data- and model-parallel training equal one
/// device's up to float error, as the trainer's tests show), or over how many nodes (the same
/// replicas in all), so a run resumes on other devices, after losing a GPU or a machine, say.
const FINGERPRINT_LEAVES_OUT: &[&str] = &["epochs", "patience", "devices", "parallel", "nodes"];

/// What the fingerprint left out before, newest first, with what a run started then keeps:
/// the checkpoints of runs started then carry those fingerprints, and resume with them.
const EARLIER_LEAVES_OUT: &[(&[&str], &str)] = &[
    (
        &["epochs", "patience", "devices", "parallel"],
        "a run started before diffrec let runs resume on another number of nodes keeps its \
         train.nodes",
    ),
    (
        &["epochs", "patience"],
        "a run started before diffrec let runs resume on other devices keeps its \
         train.devices, train.parallel and train.nodes",
    ),
];

/// The checkpoint fingerprint of a run's config tree (`trajectory`: what the fingerprint
/// covers of it) trained on `inputs`.
fn fingerprint_of(
    trajectory: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
) -> Result<String> {
    Ok(sha256_hex(
        serde_json::to_string(&(trajectory, inputs))?.as_bytes(),
    ))
}

/// `config` spelled as the run recorded it, where the spelling is all that differs:
/// `model.diffusion.beta_fixed` written out as the variant's default is the same run as left
/// unset, so a run started with either spelling (its manifest, or a stopped run's checkpoint
/// fingerprint) keeps it, and is neither refused nor retrained for the other.
async fn recorded_spelling(
    ws: &Workspace,
    run: &str,
    config: serde_json::Value,
    model: &ModelConfig,
    inputs: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    let spelled = |v: &serde_json::Value| v["model"]["diffusion"]["beta_fixed"].clone();
    let mut other = config.clone();
    other["model"]["diffusion"]["beta_fixed"] = match model.diffusion.beta_fixed {
        None => model.beta_fixed().into(),
        Some(b) if b == variant_default(model) => serde_json::Value::Null,
        Some(_) => return Ok(config),
    };
    let manifest: Option<StageManifest> = match ws.get_json(&manifest_key(&run_dir(run))).await {
        Ok(m) => m,
        // Damaged: as if there were none (the stage writes it again when training ends).
        Err(diffrec_data::DataError::BadArtifact { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(m) = manifest {
        return Ok(match spelled(&m.config) == spelled(&other) {
            true => other,
            false => config,
        });
    }
    if !ws.exists(&latest_key(run)).await? {
        return Ok(config);
    }
    let earlier = EARLIER_LEAVES_OUT.iter().map(|(leaves, _)| *leaves);
    for leaves in std::iter::once(FINGERPRINT_LEAVES_OUT).chain(earlier) {
        let mut t = other.clone();
        remove_train_keys(&mut t, leaves);
        if check_resumable(ws, run, &fingerprint_of(&t, inputs)?)
            .await
            .is_ok()
        {
            return Ok(other);
        }
    }
    Ok(config)
}

/// `model.diffusion.beta_fixed` when left unset, for `model`'s variant.
fn variant_default(model: &ModelConfig) -> bool {
    let mut unset = model.clone();
    unset.diffusion.beta_fixed = None;
    unset.beta_fixed()
}

/// Removes `keys` from the `train` section of a stage's config tree.
fn remove_train_keys(config: &mut serde_json::Value, keys: &[&str]) {
    if let Some(t) = config.get_mut("train").and_then(|t| t.as_object_mut()) {
        for key in keys {
            t.remove(*key);
        }
    }
}

/// The hashes of what training reads from the stages before it (the ingest artifacts, and
/// L-DiffRec's item clusters), or why they cannot be read yet: a stage not completed.
async fn upstream(
    ws: &Workspace,
    loaded: &Loaded,
) -> Result<Result<BTreeMap<String, String>, String>> {
    let p = &loaded.pipeline;
    let Some(mut inputs) = upstream_hashes(ws, diffrec_data::ingest::STAGE_DIR).await? else {
        return Ok(Err(
            "the ingest stage has not completed in this workspace (no \
                       data/_manifest.json): run it first"
                .into(),
        ));
    };
    // L-DiffRec reads the item clusters: their hash (not the cluster stage's timings) decides
    // whether training is stale.
    if p.model.variant.is_latent() {
        use diffrec_cluster::artifacts::{ITEM_CLUSTERS, STAGE_DIR};
        // Clusters of other data than the workspace holds now (ingest ran again since, with the
        // same items or not): the cluster stage must run again first.
        let clustered: Option<StageManifest> = ws.get_json(&manifest_key(STAGE_DIR)).await?;
        if let Some(key) = clustered.and_then(|m| {
            m.inputs
                .into_iter()
                .find(|(k, v)| inputs.contains_key(k) && inputs.get(k) != Some(v))
                .map(|(k, _)| k)
        }) {
            return Ok(Err(format!(
                "the cluster stage ran on other data than this workspace holds now ({key} \
                 changed since): run it again"
            )));
        }
        let hash = upstream_hashes(ws, STAGE_DIR)
            .await?
            .and_then(|mut h| h.remove(ITEM_CLUSTERS));
        let Some(hash) = hash else {
            return Ok(Err(format!(
                "model.variant {} needs {ITEM_CLUSTERS}, and the cluster stage has not \
                 completed in this workspace: run it first",
                p.model.variant.name()
            )));
        };
        inputs.insert(ITEM_CLUSTERS.to_owned(), hash);
    }
    Ok(Ok(inputs))
}

/// Which stage before training, if any, completed with other settings than this pipeline's
/// (`data`; `cluster` for L-DiffRec, its LightGCN settings aside): node 0 is about to run it
/// anew, and a node that trained on the old outputs would be refused by the nodes' check.
async fn upstream_settings_differ(ws: &Workspace, loaded: &Loaded) -> Result<Option<String>> {
    let p = &loaded.pipeline;
    if let Some(why) = data_settings_differ(ws, loaded).await? {
        return Ok(Some(why));
    }
    if p.model.variant.is_latent() {
        let without_lightgcn = |mut c: serde_json::Value| {
            if let Some(m) = c.as_object_mut() {
                m.remove("lightgcn");
            }
            c
        };
        let done: Option<StageManifest> = ws
            .get_json(&manifest_key(diffrec_cluster::artifacts::STAGE_DIR))
            .await?;
        let mine = without_lightgcn(serde_json::to_value(&p.cluster)?);
        if let Some(done) = done {
            let done = without_lightgcn(done.config["cluster"].clone());
            if done != mine {
                return Ok(Some(format!(
                    "the cluster stage completed with other cluster settings than this pipeline's ({})",
                    settings_changes("cluster", "clustered", &done, &mine)
                )));
            }
        }
    }
    Ok(None)
}

/// Refuses (exit 2) data ingested with another `data` section than the pipeline's, naming the
/// keys and saying which stages to run `first`: the stages after ingest run alone must not take
/// such data for the pipeline's own.
pub(crate) async fn refuse_other_data_settings(
    ws: &Workspace,
    loaded: &Loaded,
    first: &str,
) -> Result<()> {
    match data_settings_differ(ws, loaded).await? {
        Some(why) => Err(UsageError(format!(
            "{why}: run {first} with this pipeline first (`diffrec run` runs every stage in \
             order)"
        ))
        .into()),
        None => Ok(()),
    }
}

/// Why the ingest stage's outputs are not this pipeline's: it completed under other rules
/// (an older diffrec), or with another `data` section (its differing keys named); or `None`.
async fn data_settings_differ(ws: &Workspace, loaded: &Loaded) -> Result<Option<String>> {
    let done: Option<StageManifest> = ws
        .get_json(&manifest_key(diffrec_data::ingest::STAGE_DIR))
        .await?;
    let Some(done) = done else {
        return Ok(None);
    };
    if done.rules != INGEST_RULES {
        return Ok(Some(format!(
            "the ingest stage completed under other rules (revision {}; this diffrec's is \
             {INGEST_RULES}, docs/decisions.md), so its data may not be what it makes now",
            done.rules
        )));
    }
    let done = DataConfig::resolved_value(&done.config);
    let mine = serde_json::to_value(&loaded.pipeline.data)?;
    Ok((done != mine).then(|| {
        format!(
            "the ingest stage completed with other data settings than this pipeline's ({})",
            settings_changes("data", "ingested", &done, &mine)
        )
    }))
}

/// `done`'s and `mine`'s differing keys under `section`, as "`key` a (`was`) vs b (now)".
fn settings_changes(
    section: &str,
    was: &str,
    done: &serde_json::Value,
    mine: &serde_json::Value,
) -> String {
    let mut changed = Vec::new();
    differing_keys_as(section, done, mine, was, &mut changed);
    changed.join("; ")
}

/// [`upstream`], for which a node other than node 0 of a multi-node run waits
/// ([`wait_for_node_0`]); also while the stages completed with other settings than this
/// pipeline's, which node 0 is about to run anew.
async fn upstream_for_node(ws: &Workspace, loaded: &Loaded) -> Result<BTreeMap<String, String>> {
    let t = &loaded.pipeline.train;
    wait_for_node_0(t, true, || async {
        if other_node(t)
            && let Some(why) = upstream_settings_differ(ws, loaded).await?
        {
            return Ok(Err(why));
        }
        upstream(ws, loaded).await
    })
    .await
}

pub async fn run(ws: &Workspace, loaded: &Loaded, force: bool) -> Result<()> {
    let p = &loaded.pipeline;
    let dir = run_dir(&p.name);
    let inputs = upstream_for_node(ws, loaded).await?;
    // Run alone (`diffrec stage train`, from a scheduler), training must not take data or
    // clusters made with other settings than this pipeline's for its own (a node other than 0
    // waited above for node 0 to redo them).
    if let Some(why) = upstream_settings_differ(ws, loaded).await? {
        return Err(UsageError(format!(
            "{why}: run that stage with this pipeline first (`diffrec run` \
             runs every stage in order)"
        ))
        .into());
    }
    let latent = p.model.variant.is_latent();
    // Which data and clusters, made how, the run trains on: kept in its manifest.
    let mut stages = vec![("ingest", diffrec_data::ingest::STAGE_DIR)];
    if latent {
        stages.push(("cluster", diffrec_cluster::artifacts::STAGE_DIR));
    }
    let upstream_runs = upstream_records(ws, &stages).await?;
    // Where this process sits among several nodes, and how long it waits for them, is no part
    // of the run's identity: every node of a multi-node run sees the same manifest and shares
    // the checkpoints node 0 writes.
    let mut config =
        serde_json::json!({"model": p.model, "train": p.train, "evaluate": p.evaluate});
    remove_train_keys(
        &mut config,
        &["node_rank", "orchestrator", "node_address", "peer_timeout"],
    );
    let config = recorded_spelling(ws, &p.name, config, &p.model, &inputs).await?;
    let writer = p.train.node_rank == 0;
    if writer {
        clean_temporaries(ws, &p.name).await?;
    }
    if !force {
        let mut fresh = freshness(ws, &dir, &config, &inputs).await?;
        // The summary is left out of the manifest's size check (the evaluate stage rewrites
        // it); damaged, the finished run is rewritten from its checkpoint, as for a damaged
        // manifest.
        if fresh == Freshness::UpToDate
            && let Err(diffrec_data::DataError::BadArtifact { .. }) = ws
                .get_json::<diffrec_trainer::train::Summary>(&summary_key(&p.name))
                .await
        {
            let why = format!(
                "{} is damaged: rewriting it from the run's checkpoint",
                summary_key(&p.name)
            );
            tracing::warn!("train: {why}");
            fresh = Freshness::Stale(why);
        }
        match fresh {
            Freshness::UpToDate => {
                status!(
                    "train: up to date (manifest matches config and input hashes), skipped; use --force to rerun"
                );
                return Ok(());
            }
            Freshness::Stale(why) => tracing::info!("train: running ({why})"),
        }
    }
    // The checkpoint fingerprint leaves out what does not change the trajectory (how long to
    // train, when to stop, on which devices), so a run can be extended or resumed.
    let trajectory_without = |keys: &[&str]| {
        let mut t = config.clone();
        remove_train_keys(&mut t, keys);
        t
    };
    let fingerprint_of = |t: &serde_json::Value| fingerprint_of(t, &inputs);
    let trajectory = trajectory_without(FINGERPRINT_LEAVES_OUT);
    let mut fingerprint = fingerprint_of(&trajectory)?;
    // What the fingerprint hashes, for checkpoints to carry (`TrainedOn::read`).
    let fingerprinted = |t: &serde_json::Value| serde_json::json!({"config": t, "inputs": &inputs});
    let mut hashed = fingerprinted(&trajectory);
    // Before the manifest goes, what would stop the run: a finished run stays as it was.
    let mut resumable = match force {
        true => Ok(()),
        false => check_resumable(ws, &p.name, &fingerprint).await,
    };
    for (leaves, _) in EARLIER_LEAVES_OUT {
        if resumable.is_ok() {
            break;
        }
        let earlier = trajectory_without(leaves);
        let old = fingerprint_of(&earlier)?;
        if check_resumable(ws, &p.name, &old).await.is_ok() {
            (fingerprint, resumable) = (old, Ok(()));
            hashed = fingerprinted(&earlier);
        }
    }
    // A run whose data changed since it was trained or stopped (a scheduled refresh: new
    // events ingested, and the items clustered anew on them), and nothing else, trains anew:
    // it no longer describes the workspace's data, its checkpoint cannot resume on other data,
    // and no setting of the user's is overridden (a refresh after a killed training would
    // otherwise fail every day until someone ran --force). Clusters made anew on the same data
    // (another LightGCN setting, `--force`, another thread count) are no refresh: like other
    // changes, they are refused below, and the run is kept.
    let trained = match resumable {
        Ok(()) => None,
        Err(_) => TrainedOn::read(ws, &p.name).await,
    };
    let mut anew = false;
    if let Some(trained) = trained.as_ref()
        && let Some(changed) = trained.changes((&trajectory, FINGERPRINT_LEAVES_OUT), &inputs)
        && changed.split("; ").all(|c| c.starts_with("input `"))
        && changed.split("; ").any(|c| c.starts_with("input `data/"))
    {
        status!(
            "train: run `{}` {} on other data ({changed}): training it anew",
            p.name,
            if trained.finished {
                "finished"
            } else {
                "was stopped"
            }
        );
        (anew, resumable) = (true, Ok(()));
    }
    if let Err(e) = resumable {
        let changed = trained.as_ref().and_then(|t| {
            t.changes((&trajectory, FINGERPRINT_LEAVES_OUT), &inputs)
                // Nothing the fingerprint covers now: a run started before some keys left it.
                .or_else(|| {
                    EARLIER_LEAVES_OUT.iter().find_map(|(leaves, note)| {
                        let earlier = trajectory_without(leaves);
                        t.changes((&earlier, leaves), &inputs)
                            .map(|changed| format!("{changed} ({note})"))
                    })
                })
        });
        return Err(match (e, changed) {
            (TrainError::Input(why), Some(changed)) => {
                UsageError(format!("{why}. Since it was trained: {changed}{}", {
                    // The reverse pass's settings pick the best epoch while training
                    // (so they are the run's), and the inference stages take them anew.
                    let sampling = ["sampling_steps", "sampling_noise"]
                        .map(|k| format!("`model.diffusion.{k}`"));
                    let only_sampling = changed
                        .split("; ")
                        .all(|c| sampling.iter().any(|k| c.starts_with(k.as_str())));
                    if only_sampling {
                        ". To score the trained run with them instead, run `diffrec stage \
                             evaluate` and `diffrec stage recommend` with these settings"
                    } else {
                        ""
                    }
                }))
                .into()
            }
            (e, _) => e.into(),
        });
    }
    let data = load_splits(ws).await?;
    if data.valid.nnz() == 0 && p.train.evaluates() {
        return Err(UsageError(format!(
            "the validation split is empty (data.split.ratios {:?}{}), and each evaluation \
             selects the best epoch on it: {}, or set train.eval_every above train.epochs to \
             train without evaluating",
            p.data.split.ratios,
            match p.data.split_method() {
                diffrec_data::config::SplitMethod::GlobalTime => {
                    "; with `global_time` the rows of the cut's timestamp all stay in train, so \
                     coarse timestamps can take the whole share"
                }
                _ => "",
            },
            match (p.data.split.ratios[1] > 0.0, p.data.split_method()) {
                (true, diffrec_data::config::SplitMethod::PerUserRatio) => {
                    "every user's history is too short to leave a row for validation (a user's \
                     first floor(r0·n)+1 rows go to train): keep users with enough rows \
                     (data.k_core: 5, say) or give validation a larger share"
                }
                _ => "give validation a share",
            }
        ))
        .into());
    }
    if data.test.nnz() == 0 && p.train.evaluates() {
        tracing::warn!(
            "the test split is empty: test metrics will read 0 and mean nothing (validation \
             still selects the best epoch)"
        );
    }
    let started = Utc::now();
    let item_clusters = if latent {
        use diffrec_cluster::artifacts::{ITEM_CLUSTERS, STAGE_DIR, read_item_clusters};
        let bytes = diffrec_data::manifest::read_recorded(ws, STAGE_DIR, ITEM_CLUSTERS).await?;
        let labels = read_item_clusters(bytes, data.n_items)?;
        let k = labels.iter().max().map_or(0, |&m| m + 1);
        tracing::info!(clusters = k, "train: item clusters loaded");
        Some(labels)
    } else {
        None
    };
    let spec = RunSpec {
        run: p.name.clone(),
        model: p.model.clone(),
        train: p.train.clone(),
        ks: p.evaluate.ks.clone(),
        backend: format!("{:?}", p.train.backend).to_lowercase(),
        fingerprint,
        fingerprinted: hashed,
        item_clusters,
        // --force starts over on every node: none reads the checkpoints, and node 0 deletes
        // them once the nodes agree to train together.
        fresh: force || anew,
    };
    tracing::info!(
        users = data.n_users,
        items = data.n_items,
        train = data.train.nnz(),
        "train: data loaded"
    );

    let bar = EpochBar::new("train");
    let mut report = |ev: Progress| match ev {
        Progress::Resumed { epoch } => status!("train: resuming after epoch {epoch}"),
        Progress::EpochStart { epoch, batches } => {
            bar.start_epoch(format!("epoch {epoch} of {}", p.train.epochs), batches)
        }
        Progress::Batch => bar.inc(),
        Progress::EpochEnd {
            epoch,
            loss,
            seconds,
        } => {
            tracing::debug!(epoch, loss, seconds, "epoch done");
            bar.set_message(format!("loss {loss:.3}"));
            bar.between_epochs(format!("epoch {epoch}: ended, writing its checkpoint"));
        }
        Progress::Evaluating { epoch, users } => {
            bar.evaluating(format!("epoch {epoch}: evaluating {users} users"))
        }
        Progress::Evaluated {
            epoch,
            select_k: k,
            valid_recall,
            test_recall,
            best_epoch,
        } => {
            bar.say(format!(
                "train: epoch {epoch}: valid recall@{k} {valid_recall:.4}, test recall@{k} {test_recall:.4} (best epoch {best_epoch})"
            ));
            bar.between_epochs(format!("epoch {epoch}: evaluated, writing its checkpoints"));
        }
        Progress::Stopped { epoch, best_epoch } => bar.say(format!(
            "train: early stop before epoch {epoch} (best epoch {best_epoch})"
        )),
    };
    // Node 0 writes the checkpoints: a signal's line says which epoch a rerun resumes after
    // (not for a run trained anew: the same command starts it over again).
    let training = (writer && !spec.fresh)
        .then(|| crate::shutdown::Training::start(ws, &p.name, &spec.fingerprint));
    let summary = train_on(p.train.backend, ws, &data, &spec, &mut report)
        .await
        .context("train stage failed")?;
    drop(training);
    bar.finish();
    if !writer {
        status!(
            "train: node {} of {} done (node 0 writes the run's artifacts)",
            p.train.node_rank,
            p.train.nodes
        );
        return Ok(());
    }

    let mut outputs = BTreeMap::new();
    for key in [
        summary_key(&p.name),
        format!("{dir}/metrics.parquet"),
        curves_key(&p.name),
        best_key(&p.name),
    ] {
        if ws.exists(&key).await? {
            let mut info = ws.output_info(&key, None).await?;
            if key == summary_key(&p.name) {
                // The evaluate stage rewrites it (other sampling settings give other
                // metrics): its size is no sign of damage.
                info.bytes = None;
            }
            outputs.insert(key.clone(), info);
        }
    }
    let manifest = StageManifest {
        stage: "train".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config,
        inputs,
        outputs,
        started_at: started,
        finished_at: Utc::now(),
        build: diffrec_data::manifest::build(),
        upstream: upstream_runs,
        rules: 0,
    };
    ws.put_json(&manifest_key(&dir), &manifest).await?;
    if summary.best_epoch == 0 {
        // No evaluation ran (any evaluation becomes the best): say so instead of NaNs.
        status!(
            "train: {} epochs and no evaluation (train.eval_every {} is more than the epochs \
             run): no best checkpoint was written, so evaluate and recommend have no model to \
             use; {:.2} s/epoch",
            summary.epochs_run,
            p.train.eval_every,
            summary.epoch_seconds_median
        );
        return Ok(());
    }
    // The figure that chose the epoch first, then the test figures at it.
    let k = diffrec_trainer::train::select_k(&p.evaluate.ks);
    let chose = summary.valid.get(&format!("recall@{k}")).copied();
    status!(
        "train: best epoch {} of {} (valid recall@{k} {:.4}); test {}; {:.2} s/epoch, {:.1} \
         s/eval; {} parameters, peak memory {:.2} GiB, {:.1} s in all",
        summary.best_epoch,
        summary.epochs_run,
        chose.unwrap_or(f64::NAN),
        headline_metrics(&summary.test, &p.evaluate.ks),
        summary.epoch_seconds_median,
        summary.eval_seconds_median,
        summary.params,
        summary.peak_rss_bytes as f64 / (1u64 << 30) as f64,
        (Utc::now() - started).as_seconds_f64()
    );
    Ok(())
}
