//! Inference from a trained run: re-evaluating the best checkpoint, top-K recommendations for
//! every user, and scoring an arbitrary history (fold-in: DiffRec denoises any interaction
//! vector, so a user unseen in training needs no retraining).

use burn::prelude::*;
use diffrec_data::workspace::sha256_hex;
use diffrec_data::{CsrMatrix, SplitMatrices, Workspace};
use diffrec_model::{Denoiser, InitScheme, ItemClusters, LatentDiffRec, ModelConfig, Recommender};

use crate::checkpoint::{Checkpoint, decode};
use crate::config::Exclude;
use crate::error::TrainError;
use crate::learner::{Origin, load_recommender};
use crate::metrics::top_k;
use crate::train::{best_key, diffusion_of, eval_block, score_rows};

/// The best checkpoint's model, on the inference backend `B`, and its epoch. L-DiffRec's item
/// clusters come from the checkpoint itself, so a later cluster-stage rerun cannot mismatch it.
/// With `expect_sha256` (what the run's manifest records), a checkpoint of other bytes is
/// refused.
pub async fn load_best<B: Backend>(
    ws: &Workspace,
    run: &str,
    model: &ModelConfig,
    n_items: usize,
    expect_sha256: Option<&str>,
    device: &B::Device,
) -> Result<(Recommender<B>, usize), TrainError> {
    let bytes = ws.get(&best_key(run)).await.map_err(|e| match e {
        // The run's manifest records one: deleted since the run finished.
        diffrec_data::DataError::MissingArtifact { .. } if expect_sha256.is_some() => {
            TrainError::Input(format!(
                "{} is missing, although the run finished with one: it was deleted since. Run \
                 the train stage again: it rebuilds the file from the latest checkpoint where \
                 that is of the best epoch, and says so where it cannot (then train the run \
                 anew with --force)",
                best_key(run)
            ))
        }
        diffrec_data::DataError::MissingArtifact { .. } => TrainError::Input(format!(
            "run `{run}` has no best checkpoint ({}): run the train stage first (it writes \
             one at its first evaluation, so train.epochs must reach train.eval_every)",
            best_key(run)
        )),
        e => e.into(),
    })?;
    // Read whole anyway, so the check costs one hash: a byte changed inside keeps the size
    // the manifest's freshness check compares.
    if let Some(want) = expect_sha256 {
        let got = sha256_hex(&bytes);
        if got != want {
            return Err(TrainError::Damaged(format!(
                "{} is not the file training finished with: its SHA-256 is {got}, the run's \
                 manifest records {want}. It was changed or damaged since. Run the train stage \
                 again (`diffrec run`): it rebuilds the file from the latest checkpoint where \
                 that holds the best epoch, and says so where it cannot (then train the run \
                 anew with --force)",
                best_key(run)
            )));
        }
    }
    let Checkpoint {
        state,
        model: model_bytes,
        ..
    } = decode(&bytes).map_err(|e| e.within(&best_key(run)))?;
    let key = best_key(run);
    // A record that does not load may come from another diffrec version: its errors say which.
    let writer = state.other_writer();
    let hint = format!(
        "Evaluate and recommend with the model settings the run was trained with (`config.model` \
         in runs/{run}/_manifest.json); if the data changed since, retrain it with `--force`"
    );
    let origin = Origin {
        checkpoint: &key,
        hint: &hint,
    };
    match (model.variant.is_latent(), state.item_clusters.len()) {
        (false, 0) => {
            let m = Denoiser::<B>::new(n_items, &model.denoiser, InitScheme::DiffRec, device);
            return load_recommender(Recommender::Dense(m), model_bytes, origin, device)
                .map(|m| (m, state.best_epoch))
                .map_err(|e| e.noting(writer));
        }
        (false, _) => {
            return Err(origin.mismatch(format!(
                "it holds item clusters (an L-DiffRec or LT-DiffRec model), the configuration \
                 says `model.variant: {}`",
                model.variant.name()
            )));
        }
        (true, 0) => {
            return Err(origin.mismatch(format!(
                "it holds no item clusters (a DiffRec or T-DiffRec model), the configuration \
                 says `model.variant: {}`",
                model.variant.name()
            )));
        }
        (true, n) if n != n_items => {
            return Err(origin.mismatch(format!(
                "it clusters {n} items, this workspace's data has {n_items}"
            )));
        }
        (true, _) => {}
    }
    let clusters = if state.cluster_weights.is_empty() {
        ItemClusters::by_items(&state.item_clusters)
    } else {
        let k = state.cluster_weights.len();
        ItemClusters::with_weights(state.item_clusters, state.cluster_weights).ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "{key} holds {k} cluster weights, not one per cluster"
            ))
        })?
    };
    let m = LatentDiffRec::<B>::new(&clusters, model, device);
    load_recommender(Recommender::Latent(m), model_bytes, origin, device)
        .map(|m| (m, state.best_epoch))
        .map_err(|e| e.noting(writer))
}

/// Top-`k` (item_idx, score) per user, the user's items that `exclude` names left out, users in
/// index order.
pub fn recommend_all<B: Backend>(
    model: &Recommender<B>,
    cfg: &ModelConfig,
    input: &CsrMatrix,
    data: &SplitMatrices,
    (k, exclude): (usize, Exclude),
    device: &B::Device,
) -> Result<Vec<Vec<(u32, f32)>>, TrainError> {
    let diffusion = diffusion_of(cfg)?;
    let n_items = data.n_items;
    let users: Vec<usize> = (0..data.n_users).collect();
    let mut out = Vec::with_capacity(users.len());
    let prepared = model.prepare(&diffusion);
    let mut seen = Vec::new();
    for block in users.chunks(eval_block(n_items)) {
        let scores = score_rows(model, &diffusion, &prepared, input, block, n_items, device);
        for (row, &u) in block.iter().enumerate() {
            let s = &scores[row * n_items..(row + 1) * n_items];
            let top = top_k(s, excluded(data, u, exclude, &mut seen), k);
            out.push(top.into_iter().map(|i| (i, s[i as usize])).collect());
        }
    }
    Ok(out)
}

/// User `u`'s items that `exclude` keeps out of their recommendations, sorted (`seen`, reused
/// across users, holds them where they span several splits).
pub fn excluded<'a>(
    data: &'a SplitMatrices,
    u: usize,
    exclude: Exclude,
    seen: &'a mut Vec<u32>,
) -> &'a [u32] {
    match exclude {
        Exclude::Train => data.train.row(u).0,
        Exclude::Seen => {
            seen.clear();
            for split in [&data.train, &data.valid, &data.test] {
                seen.extend_from_slice(split.row(u).0);
            }
            seen.sort_unstable();
            seen.dedup();
            seen
        }
    }
}

/// Top-`k` items for an arbitrary history (item indices with their input weights; duplicates
/// summed), neither the history's items nor `also` (sorted) recommended. Serves both known
/// users (their training row, `also` their other items) and fold-in.
pub fn recommend_history<B: Backend>(
    model: &Recommender<B>,
    cfg: &ModelConfig,
    (n_items, k): (usize, usize),
    history: &[(u32, f32)],
    also: &[u32],
    device: &B::Device,
) -> Result<Vec<(u32, f32)>, TrainError> {
    let diffusion = diffusion_of(cfg)?;
    let row = CsrMatrix::from_triplets(
        1,
        n_items,
        history.iter().map(|&(i, w)| (0, i, w)).collect(),
    );
    let prepared = model.prepare(&diffusion);
    let scores = score_rows(model, &diffusion, &prepared, &row, &[0], n_items, device);
    let mut never: Vec<u32> = row.row(0).0.iter().chain(also).copied().collect();
    never.sort_unstable();
    never.dedup();
    let top = top_k(&scores, &never, k);
    Ok(top.into_iter().map(|i| (i, scores[i as usize])).collect())
}
