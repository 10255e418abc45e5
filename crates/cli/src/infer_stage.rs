//! The evaluate and recommend stages, and the one-user `diffrec recommend` command. Inference
//! runs on the CPU backend (burn-flex).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow_array::{Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use diffrec_data::artifacts::load_ids;
use diffrec_data::config::TemporalConfig;
use diffrec_data::manifest::{StageManifest, manifest_key, upstream_hashes};
use diffrec_data::{DataError, Workspace, load_splits};
use diffrec_model::ModelConfig;
use diffrec_trainer::config::Backend;
use diffrec_trainer::infer::{excluded, load_best, recommend_all, recommend_history};
use diffrec_trainer::pool::on_pool_thread;
use diffrec_trainer::train::{
    EvaluatedBy, Summary, UserCounts, best_key, diffusion_of, evaluate, model_input,
    recommendations_key, resolve_input, run_dir, seed_evaluation, summary_key,
};
use diffrec_trainer::{Exclude, TrainError};

use crate::pipeline::Loaded;
use crate::progress::{Spinner, headline_metrics};
use crate::stdout::status;
use crate::train_stage::refuse_other_data_settings;
use crate::usage::{NotReady, TrainedOnOtherData, UsageError};
use diffrec_data::differences::differing_keys;

type Cpu = burn_flex::Flex;

/// A pipeline's data and best model, ready for inference on the CPU.
struct RunModel {
    data: diffrec_data::SplitMatrices,
    model: diffrec_model::Recommender<Cpu>,
    /// The model input (weighted rows for T-DiffRec, binary otherwise).
    input: diffrec_data::CsrMatrix,
    dev: burn_flex::FlexDevice,
    /// Which training the model came from: its manifest's `finished_at` and best checkpoint.
    trained: (chrono::DateTime<chrono::Utc>, Option<String>),
}

/// The finished run's manifest, once the pipeline is found to describe the run as trained:
/// its model settings (less the reverse pass's) and its data (settings and ingested artifacts).
async fn checked_run(ws: &Workspace, loaded: &Loaded) -> Result<StageManifest> {
    let p = &loaded.pipeline;
    let manifest = check_trained_settings(ws, &p.name, &p.model).await?;
    // As train and cluster do: a pipeline whose `data` section is not what was ingested
    // would evaluate (or recommend) on other data than it says.
    refuse_other_data_settings(ws, loaded, "ingest and train").await?;
    Ok(manifest)
}

impl RunModel {
    /// The run's data and model; `manifest` is [`checked_run`]'s.
    async fn load(ws: &Workspace, loaded: &Loaded, manifest: StageManifest) -> Result<Self> {
        let p = &loaded.pipeline;
        let data = load_splits(ws).await?;
        let dev = Default::default();
        // `model.autoencoder.input: auto` by this data's density, as training on the CPU
        // resolves it (inference runs on the CPU; a GPU trains dense, and either reads the
        // same parameters).
        let model_cfg = resolve_input(&p.model, &data.train, Backend::Cpu);
        let model = load_seeded(ws, &p.name, &model_cfg, data.n_items, &manifest, &dev).await?;
        let input = model_input(&data.train, p.model.variant);
        Ok(RunModel {
            data,
            model,
            input,
            dev,
            trained: (
                manifest.finished_at,
                best_sha256(&manifest, &p.name).map(str::to_owned),
            ),
        })
    }
}

/// Refuses to evaluate or recommend a finished run with model settings other than those it was
/// trained with (its manifest's `config.model`), naming the keys: a changed diffusion or input
/// would score with another model than the trained one, and shapes alone do not show it. The
/// reverse pass's own settings (`sampling_steps`, `sampling_noise`) may change, and so may
/// `model.autoencoder.input` (dense and sparse first layers compute the same function of the
/// same parameters); the autoencoder's do not matter to DiffRec/T-DiffRec. A run without a
/// manifest (still training, or stopped) is refused: its best checkpoint may be the one of an
/// unfinished training.
async fn check_trained_settings(
    ws: &Workspace,
    run: &str,
    model: &ModelConfig,
) -> Result<StageManifest> {
    let (trained, manifest) = trained_run(ws, run).await?;
    let latent = trained.variant.is_latent() || model.variant.is_latent();
    let comparable = |m: &ModelConfig| -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(m)?;
        if let Some(d) = v["diffusion"].as_object_mut() {
            d.remove("sampling_steps");
            d.remove("sampling_noise");
            // The variant's default, written out or not, is one setting.
            d.insert("beta_fixed".into(), m.beta_fixed().into());
        }
        if let Some(a) = v["autoencoder"].as_object_mut() {
            a.remove("input");
        }
        if let (false, Some(o)) = (latent, v.as_object_mut()) {
            o.remove("autoencoder");
        }
        Ok(v)
    };
    let mut differences = Vec::new();
    differing_keys(
        "model",
        &comparable(&trained)?,
        &comparable(model)?,
        &mut differences,
    );
    if differences.is_empty() {
        check_trained_data(ws, run, &manifest).await?;
        return Ok(manifest);
    }
    Err(UsageError(format!(
        "run `{run}` was trained with other model settings: {}. Use the settings it was trained \
         with (`config.model` in runs/{run}/_manifest.json), or retrain it with `--force`",
        differences.join("; ")
    ))
    .into())
}

/// Refuses a finished run whose ingested data changed since it was trained (its manifest's
/// `inputs` against the ingest stage's outputs now): the same item count can hold other
/// interactions, weights or splits, and the evaluation would silently score those. The item
/// clusters may change: the checkpoint keeps those it was trained with.
async fn check_trained_data(ws: &Workspace, run: &str, manifest: &StageManifest) -> Result<()> {
    let stage = diffrec_data::ingest::STAGE_DIR;
    let Some(changed) = changed_data(ws, &manifest.inputs).await? else {
        return Err(NotReady(format!(
            "the workspace's ingested data is incomplete (no {}: the ingest stage has not \
             finished): run it to the end first",
            manifest_key(stage)
        ))
        .into());
    };
    if changed.is_empty() {
        return Ok(());
    }
    Err(TrainedOnOtherData(format!(
        "run `{run}` was trained on other data: {} changed since (ingested again, from a \
         refreshed source or with other settings). To score the data there is now, train the \
         run again: `diffrec run` (or `diffrec stage train`) trains it anew on it when only the \
         data changed, `--force` whatever changed; to score the run as trained, ingest the data \
         it was trained on again",
        changed.join(", ")
    ))
    .into())
}

/// The ingested artifacts among a run's `inputs` (its manifest's, or a checkpoint's
/// fingerprint's) whose hashes the ingest stage's manifest no longer records: empty when the
/// run was trained on the data there is now, `None` when the workspace has no completed ingest.
pub async fn changed_data(
    ws: &Workspace,
    inputs: &BTreeMap<String, String>,
) -> Result<Option<Vec<String>>> {
    let stage = diffrec_data::ingest::STAGE_DIR;
    let Some(now) = upstream_hashes(ws, stage).await? else {
        return Ok(None);
    };
    Ok(Some(
        inputs
            .iter()
            .filter(|(k, v)| k.starts_with(&format!("{stage}/")) && now.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect(),
    ))
}

/// The finished run's best model (the checkpoint its manifest records), with the random
/// numbers seeded as for the training's evaluation of that epoch (`seed_evaluation`): with
/// `model.diffusion.sampling_noise` the evaluate stage then repeats that evaluation, and every
/// rerun of a stage, or of `diffrec recommend`, draws the same noise.
async fn load_seeded(
    ws: &Workspace,
    run: &str,
    model: &ModelConfig,
    n_items: usize,
    manifest: &StageManifest,
    dev: &burn_flex::FlexDevice,
) -> Result<diffrec_model::Recommender<Cpu>> {
    let best = best_sha256(manifest, run);
    let (recommender, epoch) = match load_best::<Cpu>(ws, run, model, n_items, best, dev).await {
        // Not damage where the run's manifest changed meanwhile: it is being trained again.
        Err(TrainError::Damaged(_))
            if ws
                .get_json::<StageManifest>(&manifest_key(&run_dir(run)))
                .await
                .ok()
                .flatten()
                .as_ref()
                != Some(manifest) =>
        {
            anyhow::bail!(
                "run `{run}` is being trained again (its manifest changed while this process \
                 read its best checkpoint): run this again once training has finished"
            )
        }
        loaded => loaded?,
    };
    let seed = manifest.config["train"]["seed"]
        .as_u64()
        .context("the run manifest records no train.seed")?;
    seed_evaluation::<Cpu>(dev, seed, epoch);
    Ok(recommender)
}

/// Whether the run's best checkpoint is the file its manifest records (the same size and
/// entity tag, or else the same SHA-256): what a stage that skips as up to date leans on
/// without reading it. `false` where the manifest records none; a stage that then goes on reads
/// the file and names what is wrong with it.
async fn best_intact(ws: &Workspace, manifest: &StageManifest, run: &str) -> Result<bool> {
    let key = best_key(run);
    let Some(info) = manifest.outputs.get(&key) else {
        return Ok(false);
    };
    Ok(diffrec_data::manifest::output_differs(ws, &key, info)
        .await?
        .is_none())
}

/// The SHA-256 a finished run's manifest records for its best checkpoint.
fn best_sha256<'a>(manifest: &'a StageManifest, run: &str) -> Option<&'a str> {
    manifest
        .outputs
        .get(&best_key(run))
        .map(|o| o.sha256.as_str())
}

/// The model settings a finished run was trained with (its manifest's `config.model`), and
/// the manifest; refused when the run has none (still training, or stopped).
async fn trained_run(ws: &Workspace, run: &str) -> Result<(ModelConfig, StageManifest)> {
    let key = manifest_key(&run_dir(run));
    let Some(manifest) = ws.get_json::<StageManifest>(&key).await? else {
        // Heartbeats (`_running/`) alone are a training that has written nothing yet, or one
        // killed before it did: no run.
        let written = ws.list(&run_dir(run)).await?;
        if written.iter().any(|k| !k.contains("/_running/")) {
            return Err(unfinished(run, &key).into());
        }
        // No such run at all: a typo, say. Name the runs there are.
        let finished: Vec<String> = ws
            .list("runs")
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix("runs/")?.strip_suffix("/_manifest.json"))
            .map(|r| format!("`{r}`"))
            .collect();
        return Err(UsageError(format!(
            "no run `{run}` in the workspace: check the name, or train it first ({})",
            match finished.is_empty() {
                true => "the workspace holds no finished run".to_owned(),
                false => format!("finished runs: {}", finished.join(", ")),
            }
        ))
        .into());
    };
    // A run folder copied or renamed from another run keeps that run's manifest, whose
    // outputs (the best checkpoint's hash among them) are under the other run's folder.
    let own = format!("{}/", run_dir(run));
    if let Some(other) = manifest.outputs.keys().find(|k| !k.starts_with(&own)) {
        return Err(UsageError(format!(
            "{key} is not run `{run}`'s: it records {other}, an output of another run (the run \
             folder was copied or renamed from that run). Train run `{run}` (`diffrec run`), or \
             use the other run by its own name"
        ))
        .into());
    }
    let model: ModelConfig = serde_json::from_value(manifest.config["model"].clone())
        .context("the run manifest holds no readable model configuration")?;
    // As a pipeline's is, before anything is built from it (a damaged manifest's step count
    // would otherwise allocate until the process dies).
    model.validate().map_err(|e| {
        UsageError(format!(
            "{key} records a model configuration diffrec refuses ({e}): damaged since it was \
             written? Train the run again (`diffrec stage train … --force`)"
        ))
    })?;
    Ok((model, manifest))
}

/// A run that has not finished training (`missing` is the artifact that shows it).
fn unfinished(run: &str, missing: &str) -> NotReady {
    NotReady(format!(
        "run `{run}` has not finished training (no {missing}): run the train stage first (a \
         stopped run resumes where its settings and data are unchanged)"
    ))
}

/// Re-evaluates the best checkpoint on valid and test and updates `summary.json`; skipped
/// where this stage already evaluated the run's best checkpoint with the same `evaluate.ks` and
/// reverse pass (`summary.json`'s `evaluated_by`) and `force` is not set. The pipeline is
/// checked against the run either way.
pub async fn evaluate_stage(ws: &Workspace, loaded: &Loaded, force: bool) -> Result<()> {
    let p = &loaded.pipeline;
    // Read first: without it there is nothing to update, and the evaluation would be wasted.
    let key = summary_key(&p.name);
    let mut summary: Summary = match ws.get_json(&key).await {
        Err(DataError::BadArtifact { message, .. }) => {
            return Err(UsageError(format!(
                "artifact `{key}` is malformed ({}): the train stage rewrites it from the \
                 run's checkpoint, without training and without `--force` (which would train \
                 the run anew): `diffrec stage train PIPELINE`, then evaluate again, or \
                 `diffrec run PIPELINE`",
                message
                    .split_once("; rerun")
                    .map_or(message.as_str(), |(why, _)| why)
            ))
            .into());
        }
        Ok(None) if ws.exists(&manifest_key(&run_dir(&p.name))).await? => {
            // Training writes the summary before the manifest, so this is no training under
            // way: the file went since.
            return Err(UsageError(format!(
                "run `{}` finished training, but {key} is missing: the train stage writes it \
                 again from the run's checkpoint, without training and without `--force` \
                 (which would train the run anew): `diffrec stage train PIPELINE`, then \
                 evaluate again, or `diffrec run PIPELINE`",
                p.name
            ))
            .into());
        }
        read => read?.ok_or_else(|| unfinished(&p.name, &key))?,
    };
    let manifest = checked_run(ws, loaded).await?;
    let now = EvaluatedBy {
        ks: Some(p.evaluate.ks.clone()),
        checkpoint_sha256: best_sha256(&manifest, &p.name).map(str::to_owned),
        ..EvaluatedBy::new("evaluate", &p.model)
    };
    if !force
        && summary.evaluated_by.as_ref() == Some(&now)
        && best_intact(ws, &manifest, &p.name).await?
    {
        status!(
            "evaluate: up to date (summary.json holds this stage's evaluation of the best \
             checkpoint with these evaluate.ks and sampling settings), skipped; use --force to \
             rerun"
        );
        return Ok(());
    }
    let RunModel {
        data,
        model,
        input,
        dev,
        ..
    } = RunModel::load(ws, loaded, manifest).await?;
    let diffusion = diffusion_of(&p.model)?;
    let t = Instant::now();
    let spinner = Spinner::start(&format!(
        "evaluate: ranking every item for {} users",
        data.n_users
    ));
    // Inference runs on the CPU backend (its pool) whatever `train.backend` says.
    let (valid, test) = on_pool_thread(true, || {
        evaluate(&model, &diffusion, &input, &data, &p.evaluate.ks, &dev)
    });
    spinner.finish();
    let secs = t.elapsed().as_secs_f64();
    summary.valid = valid;
    summary.test = test;
    summary.users = Some(UserCounts::of(&data));
    summary.evaluated_by = Some(now);
    ws.clean_temporaries_of(&key).await?;
    ws.put_json(&key, &summary).await?;
    status!(
        "evaluate: best checkpoint (epoch {}): test {} ({secs:.1}s)",
        summary.best_epoch,
        headline_metrics(&summary.test, &p.evaluate.ks),
    );
    Ok(())
}

/// Writes `runs/<name>/recommendations.parquet`: top-`recommend.k` per user, the user's items
/// that `recommend.exclude` names left out, original ids. Skipped where the file there was
/// made from the run's best checkpoint with the same settings (its key-value metadata
/// `diffrec`) and `force` is not set; the pipeline is checked against the run either way.
pub async fn recommend_stage(ws: &Workspace, loaded: &Loaded, force: bool) -> Result<()> {
    let p = &loaded.pipeline;
    let t = Instant::now();
    let manifest = checked_run(ws, loaded).await?;
    // What made the list, for whoever reads the file alone (a key-value entry `diffrec`), and
    // what a later stage compares to tell whether it is up to date.
    let made_with = serde_json::json!({
        "run": p.name,
        "k": p.recommend.k,
        "exclude": p.recommend.exclude,
        "sampling_steps": p.model.diffusion.sampling_steps,
        "sampling_noise": p.model.diffusion.sampling_noise,
        "checkpoint_sha256": best_sha256(&manifest, &p.name),
    });
    let key = recommendations_key(&p.name);
    if !force && best_intact(ws, &manifest, &p.name).await? {
        match ws.parquet_key_values(&key).await {
            Ok(Some(kv))
                if kv
                    .get("diffrec")
                    .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
                    .as_ref()
                    == Some(&made_with) =>
            {
                status!(
                    "recommend: up to date ({key} was made from the best checkpoint with these \
                     recommend and sampling settings), skipped; use --force to rerun"
                );
                return Ok(());
            }
            Ok(_) => {}
            // Written again below.
            Err(e) => tracing::warn!("recommend: {key} does not read ({e}): writing it again"),
        }
    }
    let RunModel {
        data,
        model,
        input,
        dev,
        trained,
    } = RunModel::load(ws, loaded, manifest).await?;
    let spinner = Spinner::start(&format!(
        "recommend: ranking every item for {} users",
        data.n_users
    ));
    let recs = on_pool_thread(true, || {
        recommend_all(
            &model,
            &p.model,
            &input,
            &data,
            (p.recommend.k, p.recommend.exclude),
            &dev,
        )
    })?;
    spinner.finish();
    let users = load_ids(ws, "user").await?;
    let items = load_ids(ws, "item").await?;
    let (mut u, mut rank, mut it, mut score) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (user, list) in recs.iter().enumerate() {
        for (r, &(item, s)) in list.iter().enumerate() {
            u.push(users[user].as_str());
            rank.push(r as u32 + 1);
            it.push(items[item as usize].as_str());
            score.push(s);
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("rank", DataType::UInt32, false),
            Field::new("item_id", DataType::Utf8, false),
            Field::new("score", DataType::Float32, false),
        ],
        HashMap::from([("diffrec".to_owned(), made_with.to_string())]),
    ));
    let rows = u.len();
    // Users without training rows (a global-time split puts a user whose whole history is
    // after the cut there) get the model's answer to an empty history: one list for all.
    let mut cold = (0..recs.len()).filter(|&u| data.train.row(u).0.is_empty());
    if let Some(first) = cold.next() {
        tracing::warn!(
            "{} of {} users have no training interactions (e.g. {:?}): their lists are the \
             model's answer to an empty history: the same scores for all of them (each without its \
             own seen items), not personal ones",
            1 + cold.count(),
            recs.len(),
            users[first]
        );
    }
    let short = recs.iter().filter(|l| l.len() < p.recommend.k).count();
    if short > 0 {
        tracing::warn!(
            "recommend.k {}: {short} of {} users get fewer items (the model knows {}, and a \
             user's {} are never recommended back)",
            p.recommend.k,
            recs.len(),
            items.len(),
            excluded_items(p.recommend.exclude),
        );
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(u)),
            Arc::new(UInt32Array::from(rank)),
            Arc::new(StringArray::from(it)),
            Arc::new(Float32Array::from(score)),
        ],
    )?;
    ws.clean_temporaries_of(&key).await?;
    ws.write_parquet(&key, schema, [batch]).await?;
    still_the_trained_run(ws, &p.name, &key, &trained).await?;
    status!(
        "recommend: {rows} recommendations for {} users in {key} ({:.1}s)",
        recs.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// After `key` was written from the model of the training `trained` (its manifest's
/// `finished_at` and best checkpoint): the run's manifest still records that training. A
/// training started meanwhile removes the manifest first, then the summary and the list, so a
/// list written after that describes the model being replaced and would sit beside the new one:
/// it is removed, and the stage fails to be run again (exit 1). A manifest that cannot be read
/// now is that error, not a replaced run.
async fn still_the_trained_run(
    ws: &Workspace,
    run: &str,
    key: &str,
    trained: &(chrono::DateTime<chrono::Utc>, Option<String>),
) -> Result<()> {
    let now: Option<StageManifest> = ws.get_json(&manifest_key(&run_dir(run))).await?;
    if now
        .as_ref()
        .is_some_and(|m| m.finished_at == trained.0 && best_sha256(m, run) == trained.1.as_deref())
    {
        return Ok(());
    }
    ws.delete(key).await?;
    anyhow::bail!(
        "run `{run}` began training again while {key} was written from its previous model: \
         removed the list; run this stage again once training has finished"
    )
}

/// The time weights the workspace's data was ingested with (`data.temporal` in its manifest),
/// which T-DiffRec and LT-DiffRec runs were trained on.
async fn temporal_weights(ws: &Workspace) -> Result<TemporalConfig> {
    let key = manifest_key(diffrec_data::ingest::STAGE_DIR);
    let manifest: StageManifest = ws
        .get_json(&key)
        .await?
        .ok_or_else(|| NotReady(format!("no {key}: the workspace has no ingested data")))?;
    serde_json::from_value::<Option<TemporalConfig>>(manifest.config["temporal"].clone())
        .with_context(|| format!("{key} holds no readable data.temporal"))?
        .ok_or_else(|| {
            UsageError(format!(
                "the run is time-weighted, but {key} records no data.temporal"
            ))
            .into()
        })
}

/// What `exclude` keeps out of a user's recommendations, in words.
fn excluded_items(exclude: Exclude) -> &'static str {
    match exclude {
        Exclude::Seen => "items (training, validation and test)",
        Exclude::Train => "training items",
    }
}

/// Each id's index.
fn id_index(ids: &[String]) -> HashMap<&str, u32> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect()
}

/// The index of `id` among `ids` as written or, failing that, without the spaces around it
/// (`--history 'a, b'`, a padded line of `--history-file`), so that an id ingested with spaces
/// is found too.
fn find_id(index: &HashMap<&str, u32>, id: &str) -> Option<u32> {
    index.get(id).or_else(|| index.get(id.trim())).copied()
}

/// A field of `diffrec recommend`'s tab-separated output: tab, line feed, carriage return and
/// backslash escaped as `\t`, `\n`, `\r` and `\\` (PostgreSQL's text format), so that every
/// line has three fields whatever the ids hold; any other control character (a terminal's
/// escape sequences, NUL) as `\xNN`, or `\u{NNNN}` past ASCII.
fn tsv_field(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || c.is_control()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The existing workspace at `url` (`--workspace`), for a command that only reads one: a
/// folder that is not there is a usage error saying `nothing_there` and to check the flag.
pub fn open_workspace(url: &str, nothing_there: &str) -> Result<Workspace, UsageError> {
    Workspace::open_existing(url).map_err(|e| {
        let no_folder =
            matches!(&e, DataError::WorkspaceUrl { message, .. } if message == "no such directory");
        UsageError(match no_folder {
            true => format!("{e}: {nothing_there}; check --workspace"),
            false => e.to_string(),
        })
    })
}

/// `diffrec recommend`: top-K for one known user, or for a history of item ids (oldest first).
pub async fn recommend_one(
    ws_url: &str,
    run: &str,
    (user, history): (Option<&str>, Option<Vec<String>>),
    (k, exclude): (usize, Exclude),
) -> Result<()> {
    let ws = open_workspace(ws_url, "no run to recommend from")?;
    ws.check_reachable().await?;
    let dev = Default::default();
    // What the run was trained with and on; a state that a stage running elsewhere explains
    // (a run being trained again, data being ingested) is retried (`busy`).
    let ready = async {
        let (model_cfg, manifest) = trained_run(&ws, run).await?;
        check_trained_data(&ws, run, &manifest).await?;
        let items = load_ids(&ws, "item").await?;
        let data = load_splits(&ws).await?;
        // `auto` resolved as `diffrec stage recommend` resolves it, so both rank alike.
        let model_cfg = resolve_input(&model_cfg, &data.train, Backend::Cpu).into_owned();
        let model = load_seeded(&ws, run, &model_cfg, items.len(), &manifest, &dev).await?;
        let users = load_ids(&ws, "user").await?;
        let temporal = match model_cfg.variant.is_temporal() {
            true => Some(temporal_weights(&ws).await?),
            false => None,
        };
        anyhow::Ok((model_cfg, items, data, model, users, temporal))
    };
    let (model_cfg, items, data, model, users, temporal) = match ready.await {
        Ok(ready) => ready,
        Err(e) => {
            let upstream = crate::busy::upstream_of(crate::stages::Stage::Recommend, run, false);
            return Err(crate::busy::explain(&ws, &upstream, e).await);
        }
    };
    let recs = match (user, history) {
        (Some(id), None) => {
            let u = find_id(&id_index(&users), id).ok_or_else(|| {
                UsageError(format!(
                    "user {id:?} is not in the training data; pass --history or --history-file instead"
                ))
            })? as usize;
            let input = model_input(&data.train, model_cfg.variant);
            let (idx, vals) = input.row(u);
            if idx.is_empty() {
                tracing::warn!(
                    "user {id:?} has no training interactions: this is the model's answer to \
                     an empty history, the same scores for every such user (pass --history to \
                     score the items they have)"
                );
            }
            let history: Vec<(u32, f32)> = idx.iter().copied().zip(vals.iter().copied()).collect();
            let mut seen = Vec::new();
            let never = excluded(&data, u, exclude, &mut seen);
            recommend_history(&model, &model_cfg, (items.len(), k), &history, never, &dev)?
        }
        (None, Some(h)) => {
            let index = id_index(&items);
            let mut seen = std::collections::HashSet::new();
            let mut hist = Vec::new();
            let mut unknown = Vec::new();
            for id in h.iter().filter(|s| !s.trim().is_empty()) {
                match find_id(&index, id) {
                    // An item named twice is one interaction, as in training.
                    Some(i) if !seen.insert(i) => {}
                    Some(i) => hist.push((i, 1.0)),
                    None => unknown.push(id),
                }
            }
            // One line, however many (a history file of another catalogue's ids).
            match unknown.as_slice() {
                [] => {}
                [id] => tracing::warn!("item {id:?} is unknown to the model, ignored"),
                ids => tracing::warn!(
                    "{} items are unknown to the model, ignored: {:?}{}",
                    ids.len(),
                    &ids[..ids.len().min(5)],
                    if ids.len() > 5 { " …" } else { "" }
                ),
            }
            if hist.is_empty() {
                return Err(
                    UsageError("the history names no item known to the model".into()).into(),
                );
            }
            if let Some(temporal) = &temporal {
                // Time-weighted as ingest weighs a user's train rows, oldest first.
                let weights = temporal.weights(hist.len());
                for ((_, w), weight) in hist.iter_mut().zip(weights) {
                    *w = weight;
                }
            }
            recommend_history(&model, &model_cfg, (items.len(), k), &hist, &[], &dev)?
        }
        _ => {
            return Err(
                UsageError("pass one of --user, --history or --history-file".into()).into(),
            );
        }
    };
    let whose = match (user, exclude) {
        (Some(_), Exclude::Seen) => "the user's items (training, validation and test)",
        (Some(_), Exclude::Train) => "the user's training items",
        (None, _) => "the history's items",
    };
    if recs.is_empty() {
        tracing::warn!(
            "nothing to recommend: {whose} are every item the model knows, and they are never \
             recommended back"
        );
    } else if recs.len() < k {
        tracing::warn!(
            "{} items recommended, fewer than --k {k}: the model knows {} items, and {whose} are \
             never recommended back",
            recs.len(),
            items.len()
        );
    }
    crate::stdout::write_data(|out| {
        writeln!(out, "rank\titem_id\tscore")?;
        for (r, (i, s)) in recs.iter().enumerate() {
            writeln!(
                out,
                "{}\t{}\t{:.5}",
                r + 1,
                tsv_field(&items[*i as usize]),
                s
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fields_escape_what_would_split_a_line() {
        assert_eq!(tsv_field("m 12"), "m 12");
        assert!(matches!(tsv_field("plain"), Cow::Borrowed(_)));
        assert_eq!(tsv_field("a\tb"), r"a\tb");
        assert_eq!(tsv_field("a\r\nb"), r"a\r\nb");
        // The backslash itself, so that `a\tb` written by an id is not read back as a tab.
        assert_eq!(tsv_field(r"a\tb"), r"a\\tb");
        // A terminal's escape sequence and NUL: shown, not obeyed.
        assert_eq!(tsv_field("a\u{1b}[2Jb\0"), r"a\x1b[2Jb\x00");
        assert_eq!(tsv_field("a\u{85}b"), r"a\u{0085}b");
    }

    #[test]
    fn ids_are_found_as_written_then_without_surrounding_spaces() {
        let ids = [" padded ", "b", "c "].map(str::to_owned);
        let index = id_index(&ids);
        assert_eq!(find_id(&index, " padded "), Some(0));
        assert_eq!(find_id(&index, " b"), Some(1));
        assert_eq!(find_id(&index, "c "), Some(2));
        // Only spaces around the id as given are dropped, not added.
        assert_eq!(find_id(&index, "padded"), None);
        assert_eq!(find_id(&index, "c"), None);
    }
}
