//! LightGCN (He et al., SIGIR 2020): ego embeddings for users and items, `layers` propagations
//! over the normalised graph, layer-mean combination, BPR with one sampled negative per
//! positive, L2 on the batch's ego embeddings, Adam; validation Recall@20 with the trainer's
//! metric code (train items masked), early stopping, best embeddings kept.

use std::collections::BTreeMap;
use std::time::Instant;

use diffrec_data::SplitMatrices;
use diffrec_data::metrics::{Evaluation, SplitEvaluator, round4};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::adam::Adam;
use crate::bpr::{self, Triple};
use crate::config::LightGcnConfig;
use crate::error::ClusterError;
use crate::graph::NormalizedGraph;

/// Standard deviation of the initial embeddings (LightGCN's PyTorch code: `normal_(std=0.1)`).
pub const INIT_STD: f64 = 0.1;

/// The parameters: one ego embedding per node (users first), row-major `n_nodes × dim`.
#[derive(Debug, Clone)]
pub struct LightGcn {
    pub dim: usize,
    pub layers: usize,
    pub ego: Vec<f32>,
}

/// Loss parts of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchLoss {
    pub bpr: f64,
    /// The unweighted L2 term (the loss adds `reg ×` this).
    pub l2: f64,
}

impl LightGcn {
    /// Ego embeddings drawn from N(0, 0.1²).
    pub fn new(n_nodes: usize, dim: usize, layers: usize, rng: &mut StdRng) -> Self {
        let normal = Normal::new(0.0, INIT_STD).expect("valid std");
        let ego = (0..n_nodes * dim)
            .map(|_| normal.sample(rng) as f32)
            .collect();
        LightGcn { dim, layers, ego }
    }

    /// The final representations: the mean over layers 0..=layers of Â^l · ego.
    pub fn embed(&self, graph: &NormalizedGraph) -> Vec<f32> {
        graph.layer_mean(&self.ego, self.layers, self.dim)
    }

    /// Loss of `batch` and its gradient with respect to the ego embeddings.
    pub fn loss_grad(
        &self,
        graph: &NormalizedGraph,
        batch: &[Triple],
        reg: f32,
    ) -> (BatchLoss, Vec<f32>) {
        let fin = self.embed(graph);
        let mut grad_fin = vec![0f32; fin.len()];
        let bpr = bpr::loss_grad(batch, graph.n_users, &fin, self.dim, &mut grad_fin);
        // Back through the layer mean: the same map, Â being symmetric.
        let mut grad = graph.layer_mean(&grad_fin, self.layers, self.dim);
        let l2 = bpr::reg_grad(batch, graph.n_users, &self.ego, self.dim, reg, &mut grad);
        (BatchLoss { bpr, l2 }, grad)
    }
}

/// Reports from [`pretrain`] (the CLI draws them).
#[derive(Debug, Clone)]
pub enum Progress {
    EpochStart {
        epoch: usize,
        batches: usize,
    },
    Batch,
    Evaluated {
        epoch: usize,
        loss: f64,
        valid_recall20: f64,
        valid_ndcg20: f64,
        test_recall20: f64,
        test_ndcg20: f64,
        best_epoch: usize,
    },
    Stopped {
        epoch: usize,
        best_epoch: usize,
    },
}

/// The result of pre-training: the best evaluation's final embeddings and the history.
#[derive(Debug, Clone)]
pub struct Pretrained {
    pub dim: usize,
    /// `n_users × dim`, row-major.
    pub users: Vec<f32>,
    /// `n_items × dim`, row-major.
    pub items: Vec<f32>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub evaluations: Vec<Evaluation>,
    pub train_seconds: f64,
}

impl Pretrained {
    /// The evaluation the embeddings come from.
    pub fn best(&self) -> Option<&Evaluation> {
        self.evaluations.iter().find(|e| e.epoch == self.best_epoch)
    }
}

/// Valid and test metrics of final embeddings `fin` (users first), full ranking over all items
/// with train items masked for valid and train ∪ valid masked for test (spec §6).
pub fn evaluate(
    fin: &[f32],
    dim: usize,
    data: &SplitMatrices,
    ks: &[usize],
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let (n_users, n_items) = (data.n_users, data.n_items);
    // Items transposed (dim × n_items) so a user's scores are `dim` contiguous axpy passes.
    let mut items_t = vec![0f32; dim * n_items];
    for i in 0..n_items {
        for k in 0..dim {
            items_t[k * n_items + i] = fin[(n_users + i) * dim + k];
        }
    }
    const BLOCK: usize = 256;
    let mut ev = SplitEvaluator::new(&data.train, &data.valid, &data.test, ks);
    let mut scores = vec![0f32; BLOCK * n_items];
    let users: Vec<usize> = (0..n_users).collect();
    for block in users.chunks(BLOCK) {
        let s = &mut scores[..block.len() * n_items];
        s.par_chunks_mut(n_items)
            .zip(block.par_iter())
            .for_each(|(row, &u)| {
                row.fill(0.0);
                let eu = &fin[u * dim..(u + 1) * dim];
                for (k, &w) in eu.iter().enumerate() {
                    for (r, &v) in row.iter_mut().zip(&items_t[k * n_items..(k + 1) * n_items]) {
                        *r += w * v;
                    }
                }
            });
        ev.add_block(block, s);
    }
    (ev.valid_sums.finish(n_users), ev.test_sums.finish(n_users))
}

/// The cut-offs LightGCN is evaluated at: the pipeline's `evaluate.ks` plus 20 (selection).
fn with_20(ks: &[usize]) -> Vec<usize> {
    let mut ks = ks.to_vec();
    if !ks.contains(&20) {
        ks.push(20);
    }
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Pre-trains LightGCN on `data.train` (seeded, deterministic for a given thread count up to
/// float summation order), evaluating every `eval_every` epochs and stopping after `patience`
/// evaluations without a better (4-decimal) valid Recall@20.
pub fn pretrain(
    data: &SplitMatrices,
    cfg: &LightGcnConfig,
    seed: u64,
    ks: &[usize],
    progress: &mut dyn FnMut(Progress),
) -> Result<Pretrained, ClusterError> {
    let started = Instant::now();
    let ks = with_20(ks);
    let graph = NormalizedGraph::from_train(&data.train);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = LightGcn::new(graph.n_nodes(), cfg.dim, cfg.layers, &mut rng);
    let mut opt = Adam::new(model.ego.len(), cfg.lr as f32);
    let reg = cfg.reg as f32;
    tracing::info!(
        nodes = graph.n_nodes(),
        edges = graph.nnz() / 2,
        dim = cfg.dim,
        layers = cfg.layers,
        "lightgcn: graph built"
    );

    let mut best_recall = f64::NEG_INFINITY;
    let mut best_epoch = 0;
    let mut best_fin: Option<Vec<f32>> = None;
    let mut evaluations = Vec::new();
    let mut since_best = 0;
    let mut epochs_run = 0;
    for epoch in 1..=cfg.epochs {
        let epoch_start = Instant::now();
        // A fresh stream per epoch: the triples of epoch e do not depend on earlier epochs.
        let mut erng =
            StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let triples = bpr::epoch_triples(&data.train, &mut erng);
        let batches = triples.len().div_ceil(cfg.batch_size);
        progress(Progress::EpochStart { epoch, batches });
        let mut loss_sum = 0.0;
        for batch in triples.chunks(cfg.batch_size) {
            let (loss, grad) = model.loss_grad(&graph, batch, reg);
            opt.step(&mut model.ego, &grad);
            loss_sum += loss.bpr + cfg.reg * loss.l2;
            progress(Progress::Batch);
        }
        epochs_run = epoch;
        let epoch_seconds = epoch_start.elapsed().as_secs_f64();
        let loss = loss_sum / batches.max(1) as f64;
        if !loss.is_finite() {
            tracing::warn!(
                epoch,
                "lightgcn: the loss is not finite; stopping (lower cluster.lightgcn.lr)"
            );
            break;
        }
        if epoch % cfg.eval_every != 0 && epoch != cfg.epochs {
            continue;
        }
        let eval_start = Instant::now();
        let fin = model.embed(&graph);
        let (valid, test) = evaluate(&fin, cfg.dim, data, &ks);
        let eval_seconds = eval_start.elapsed().as_secs_f64();
        let recall = round4(valid["recall@20"]);
        if recall > best_recall && fin.iter().all(|x| x.is_finite()) {
            best_recall = recall;
            best_epoch = epoch;
            best_fin = Some(fin);
            since_best = 0;
        } else {
            since_best += 1;
        }
        progress(Progress::Evaluated {
            epoch,
            loss,
            valid_recall20: valid["recall@20"],
            valid_ndcg20: valid["ndcg@20"],
            test_recall20: test["recall@20"],
            test_ndcg20: test["ndcg@20"],
            best_epoch,
        });
        tracing::debug!(
            epoch,
            loss,
            valid_recall20 = valid["recall@20"],
            "lightgcn: evaluated"
        );
        evaluations.push(Evaluation {
            epoch,
            loss,
            epoch_seconds,
            eval_seconds,
            valid,
            test,
        });
        if since_best >= cfg.patience {
            progress(Progress::Stopped { epoch, best_epoch });
            break;
        }
    }
    let Some(fin) = best_fin else {
        return Err(ClusterError::Diverged(format!(
            "LightGCN produced no usable embeddings after {epochs_run} epoch(s) (the loss became \
             non-finite before the first evaluation); lower cluster.lightgcn.lr or evaluate \
             earlier with cluster.lightgcn.eval_every"
        )));
    };
    let split = data.n_users * cfg.dim;
    Ok(Pretrained {
        dim: cfg.dim,
        users: fin[..split].to_vec(),
        items: fin[split..].to_vec(),
        best_epoch,
        epochs_run,
        evaluations,
        train_seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffrec_data::CsrMatrix;

    fn graph() -> NormalizedGraph {
        // 4 users × 5 items.
        let t = vec![
            (0, 0, 1.0),
            (0, 1, 1.0),
            (1, 1, 1.0),
            (1, 2, 1.0),
            (1, 4, 1.0),
            (2, 3, 1.0),
            (3, 0, 1.0),
            (3, 3, 1.0),
            (3, 4, 1.0),
        ];
        NormalizedGraph::from_train(&CsrMatrix::from_triplets(4, 5, t))
    }

    fn total_loss(m: &LightGcn, g: &NormalizedGraph, b: &[Triple], reg: f32) -> f64 {
        let (l, _) = m.loss_grad(g, b, reg);
        l.bpr + reg as f64 * l.l2
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let g = graph();
        let mut rng = StdRng::seed_from_u64(7);
        let mut m = LightGcn::new(g.n_nodes(), 3, 2, &mut rng);
        // Larger embeddings than the init, so the sigmoid is away from its linear part.
        m.ego.iter_mut().for_each(|x| *x *= 8.0);
        let t = |user, pos, neg| Triple { user, pos, neg };
        let batch = [t(0, 1, 3), t(1, 4, 0), t(3, 3, 2), t(0, 0, 2)];
        let reg = 0.5;
        let (_, grad) = m.loss_grad(&g, &batch, reg);
        let h = 1e-2f32;
        let mut checked = 0;
        for p in 0..m.ego.len() {
            let orig = m.ego[p];
            m.ego[p] = orig + h;
            let up = total_loss(&m, &g, &batch, reg);
            m.ego[p] = orig - h;
            let down = total_loss(&m, &g, &batch, reg);
            m.ego[p] = orig;
            let fd = (up - down) / (2.0 * h as f64);
            assert!(
                (fd - grad[p] as f64).abs() < 2e-3 + 1e-2 * fd.abs(),
                "parameter {p}: finite difference {fd}, analytic {}",
                grad[p]
            );
            checked += (grad[p] != 0.0) as usize;
        }
        // Propagation spreads the batch's gradient to nodes outside the batch (user 2).
        assert!(
            checked > m.ego.len() / 2,
            "only {checked} non-zero gradients"
        );
        assert!(
            grad[2 * 3..3 * 3].iter().any(|&x| x != 0.0),
            "user 2 gets a gradient through the graph"
        );
    }
}
