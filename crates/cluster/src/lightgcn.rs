//! LightGCN (He et al., SIGIR 2020): ego embeddings for users and items, `layers` propagations
//! over the normalised graph, layer-mean combination, BPR with one sampled negative per
//! positive, L2 on the batch's ego embeddings, Adam; validation Recall@20 with the trainer's
//! metric code (train items masked), early stopping, best embeddings kept.

use std::collections::BTreeMap;
use std::time::Instant;

use diffrec_data::SplitMatrices;
use diffrec_data::metrics::{Evaluation, SplitEvaluator, round4, users_per_block};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

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

/// Reports from [`pretrain`] and the cluster stage's k-means (the CLI draws them).
#[derive(Debug, Clone)]
pub enum Progress {
    /// Continuing from a checkpoint written after `epoch`.
    Resumed {
        epoch: usize,
    },
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
    /// k-means starts (after the pre-training, or on given or reused embeddings): `k`
    /// clusters, `n_runs` restarts, over `items` items. Its whole runs before the next event.
    Clustering {
        k: usize,
        n_runs: usize,
        items: usize,
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
    let (user_rows, item_rows) = fin.split_at(n_users * dim);
    assert_eq!(item_rows.len(), n_items * dim, "users first, then items");
    // 256 users a block, fewer from 262,144 items up (each block's scores within 256 MiB).
    let rows = users_per_block(n_items, 256);
    let mut ev = SplitEvaluator::new(&data.train, &data.valid, &data.test, ks);
    let mut scores = vec![0f32; rows * n_items];
    let users: Vec<usize> = (0..n_users).collect();
    for (b, block) in users.chunks(rows).enumerate() {
        let s = &mut scores[..block.len() * n_items];
        // The blocks are consecutive users: rows `first..first + len` of `user_rows`.
        let first = b * rows;
        dot_all(
            &user_rows[first * dim..(first + block.len()) * dim],
            item_rows,
            dim,
            s,
        );
        ev.add_block(block, s);
    }
    (ev.valid_sums.finish(n_users), ev.test_sums.finish(n_users))
}

/// `out[r × n + i]` = row `r` of `rows` · row `i` of `items` (both row-major with `dim` columns,
/// `n` items): one matrix product `rows × itemsᵀ` with `gemm` on rayon's threads.
fn dot_all(rows: &[f32], items: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (rows.len() / dim.max(1), items.len() / dim.max(1));
    assert!(
        dim > 0 && rows.len() == m * dim && items.len() == n * dim && out.len() == m * n,
        "shapes: rows {} items {} dim {dim} out {}",
        rows.len(),
        items.len(),
        out.len()
    );
    // SAFETY: the three pointers cover m × dim, n × dim and m × n f32s (asserted above) with the
    // strides given (row-major: element (i, k) of `rows` at i·dim + k, element (k, j) of the
    // right factor `itemsᵀ` at j·dim + k, element (i, j) of `out` at i·n + j); `out` does not
    // overlap the inputs (it is a distinct `&mut`), and `read_dst` is false, so its prior
    // contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            rows.as_ptr(),
            1,
            dim as isize,
            items.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
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
/// evaluations without a better (4-decimal) valid Recall@20. [`Pretraining`] does the same a
/// stretch at a time, with checkpoints between.
pub fn pretrain(
    data: &SplitMatrices,
    cfg: &LightGcnConfig,
    seed: u64,
    ks: &[usize],
    progress: &mut dyn FnMut(Progress),
) -> Result<Pretrained, ClusterError> {
    let mut run = Pretraining::new(data, cfg, seed, ks);
    while run.advance(progress) {}
    run.finish()
}

/// The counters of a pre-training run, kept in its checkpoint beside the arrays.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Epochs completed.
    pub epochs_run: usize,
    /// The best (4-decimal) valid Recall@20 so far; `None` before a usable evaluation.
    pub best_recall: Option<f64>,
    pub best_epoch: usize,
    /// Evaluations since the best one.
    pub since_best: usize,
    /// Set once early stopping, the epoch cap or a non-finite loss ended training.
    pub done: bool,
    /// Training seconds of the earlier processes of this run (a resumed run adds its own).
    pub seconds_before: f64,
    pub evaluations: Vec<Evaluation>,
}

/// A checkpoint's contents: the counters, the ego embeddings, Adam's state and the best
/// evaluation's final embeddings (`n_nodes × dim` each, row-major). Read back as owned arrays
/// (`V = Vec<f32>`); [`Pretraining::snapshot`] lends its own (`V = &[f32]`), so writing a
/// checkpoint copies the arrays once, into the file's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<V = Vec<f32>> {
    pub counters: Counters,
    pub adam_step: i32,
    pub ego: V,
    pub adam_m: V,
    pub adam_v: V,
    pub best: Option<V>,
}

/// LightGCN pre-training in progress. [`Self::advance`] runs to the next evaluation, after which
/// [`Self::snapshot`] is a point to resume from: the epochs' BPR triples are drawn from the seed
/// and the epoch number alone, so a run restored from a snapshot continues exactly as the
/// uninterrupted run would have.
pub struct Pretraining<'a> {
    data: &'a SplitMatrices,
    cfg: &'a LightGcnConfig,
    seed: u64,
    ks: Vec<usize>,
    graph: NormalizedGraph,
    model: LightGcn,
    opt: Adam,
    counters: Counters,
    best_fin: Option<Vec<f32>>,
    started: Instant,
}

impl<'a> Pretraining<'a> {
    /// A fresh run: the graph built and the embeddings drawn from `seed`.
    pub fn new(data: &'a SplitMatrices, cfg: &'a LightGcnConfig, seed: u64, ks: &[usize]) -> Self {
        let started = Instant::now();
        let graph = NormalizedGraph::from_train(&data.train);
        let mut rng = StdRng::seed_from_u64(seed);
        let model = LightGcn::new(graph.n_nodes(), cfg.dim, cfg.layers, &mut rng);
        let opt = Adam::new(model.ego.len(), cfg.lr as f32);
        tracing::info!(
            nodes = graph.n_nodes(),
            edges = graph.nnz() / 2,
            dim = cfg.dim,
            layers = cfg.layers,
            "lightgcn: graph built"
        );
        Pretraining {
            data,
            cfg,
            seed,
            ks: with_20(ks),
            graph,
            model,
            opt,
            counters: Counters {
                epochs_run: 0,
                best_recall: None,
                best_epoch: 0,
                since_best: 0,
                done: false,
                seconds_before: 0.0,
                evaluations: Vec::new(),
            },
            best_fin: None,
            started,
        }
    }

    /// Epochs completed so far.
    pub fn epochs_run(&self) -> usize {
        self.counters.epochs_run
    }

    /// Continues from `snap` (of a run with the same data, settings and seed); refuses one
    /// whose arrays do not fit this graph and `dim`, or whose counters cannot come from a run
    /// of these settings. Nothing changes when it refuses.
    pub fn restore(&mut self, snap: Snapshot) -> Result<(), ClusterError> {
        let bad = |message: String| ClusterError::Corrupt {
            key: crate::checkpoint::KEY.to_owned(),
            message,
        };
        let n = self.model.ego.len();
        let lens = [snap.ego.len(), snap.adam_m.len(), snap.adam_v.len()];
        if lens.iter().any(|&l| l != n) || snap.best.as_ref().is_some_and(|b| b.len() != n) {
            return Err(bad(format!(
                "arrays of {lens:?} values, but this graph and cluster.lightgcn.dim need {n}"
            )));
        }
        if snap.best.is_some() != snap.counters.best_recall.is_some() {
            return Err(bad(
                "the best embeddings and the best recall disagree".into()
            ));
        }
        if snap.adam_step < 0 || snap.counters.epochs_run > self.cfg.epochs {
            return Err(bad(format!(
                "Adam step {} after epoch {} of at most {}",
                snap.adam_step, snap.counters.epochs_run, self.cfg.epochs
            )));
        }
        self.model.ego = snap.ego;
        self.opt.restore(snap.adam_step, &snap.adam_m, &snap.adam_v);
        self.best_fin = snap.best;
        self.counters = snap.counters;
        Ok(())
    }

    /// The state after the last completed epoch, for a checkpoint (borrowing the arrays).
    pub fn snapshot(&self) -> Snapshot<&[f32]> {
        let (adam_step, adam_m, adam_v) = self.opt.state();
        let mut counters = self.counters.clone();
        counters.seconds_before = self.seconds();
        Snapshot {
            counters,
            adam_step,
            ego: &self.model.ego,
            adam_m,
            adam_v,
            best: self.best_fin.as_deref(),
        }
    }

    fn seconds(&self) -> f64 {
        self.counters.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// Trains up to and including the next evaluation. Returns `false` once training is over
    /// (then only [`Self::finish`] is left).
    pub fn advance(&mut self, progress: &mut dyn FnMut(Progress)) -> bool {
        let cfg = self.cfg;
        while !self.counters.done && self.counters.epochs_run < cfg.epochs {
            let epoch = self.counters.epochs_run + 1;
            let epoch_start = Instant::now();
            // A fresh stream per epoch: the triples of epoch e do not depend on earlier epochs.
            let mut erng = StdRng::seed_from_u64(
                self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let triples = bpr::epoch_triples(&self.data.train, &mut erng);
            let batches = triples.len().div_ceil(cfg.batch_size);
            progress(Progress::EpochStart { epoch, batches });
            let mut loss_sum = 0.0;
            for batch in triples.chunks(cfg.batch_size) {
                let (loss, grad) = self.model.loss_grad(&self.graph, batch, cfg.reg as f32);
                self.opt.step(&mut self.model.ego, &grad);
                loss_sum += loss.bpr + cfg.reg * loss.l2;
                progress(Progress::Batch);
            }
            self.counters.epochs_run = epoch;
            let epoch_seconds = epoch_start.elapsed().as_secs_f64();
            let loss = loss_sum / batches.max(1) as f64;
            if !loss.is_finite() {
                tracing::warn!(
                    epoch,
                    "lightgcn: the loss is not finite; stopping (lower cluster.lightgcn.lr)"
                );
                self.counters.done = true;
                break;
            }
            if epoch % cfg.eval_every != 0 && epoch != cfg.epochs {
                continue;
            }
            self.evaluate(epoch, loss, epoch_seconds, progress);
            self.counters.done |= epoch >= cfg.epochs;
            return !self.counters.done;
        }
        self.counters.done = true;
        false
    }

    fn evaluate(
        &mut self,
        epoch: usize,
        loss: f64,
        epoch_seconds: f64,
        progress: &mut dyn FnMut(Progress),
    ) {
        let eval_start = Instant::now();
        let fin = self.model.embed(&self.graph);
        let (valid, test) = evaluate(&fin, self.cfg.dim, self.data, &self.ks);
        let eval_seconds = eval_start.elapsed().as_secs_f64();
        let recall = round4(valid["recall@20"]);
        let c = &mut self.counters;
        if c.best_recall.is_none_or(|b| recall > b) && fin.iter().all(|x| x.is_finite()) {
            c.best_recall = Some(recall);
            c.best_epoch = epoch;
            self.best_fin = Some(fin);
            c.since_best = 0;
        } else {
            c.since_best += 1;
        }
        progress(Progress::Evaluated {
            epoch,
            loss,
            valid_recall20: valid["recall@20"],
            valid_ndcg20: valid["ndcg@20"],
            test_recall20: test["recall@20"],
            test_ndcg20: test["ndcg@20"],
            best_epoch: c.best_epoch,
        });
        tracing::debug!(
            epoch,
            loss,
            valid_recall20 = valid["recall@20"],
            "lightgcn: evaluated"
        );
        c.evaluations.push(Evaluation {
            epoch,
            loss,
            epoch_seconds,
            eval_seconds,
            valid,
            test,
        });
        if c.since_best >= self.cfg.patience {
            c.done = true;
            progress(Progress::Stopped {
                epoch,
                best_epoch: c.best_epoch,
            });
        }
    }

    /// The best evaluation's embeddings and the history.
    pub fn finish(self) -> Result<Pretrained, ClusterError> {
        let train_seconds = self.seconds();
        let c = self.counters;
        let Some(fin) = self.best_fin else {
            return Err(ClusterError::Diverged(format!(
                "LightGCN produced no usable embeddings after {} epoch(s) (the loss became \
                 non-finite before the first evaluation); lower cluster.lightgcn.lr or evaluate \
                 earlier with cluster.lightgcn.eval_every",
                c.epochs_run
            )));
        };
        let split = self.data.n_users * self.cfg.dim;
        Ok(Pretrained {
            dim: self.cfg.dim,
            users: fin[..split].to_vec(),
            items: fin[split..].to_vec(),
            best_epoch: c.best_epoch,
            epochs_run: c.epochs_run,
            evaluations: c.evaluations,
            train_seconds,
        })
    }
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
    fn dot_all_is_every_users_dot_product_with_every_item() {
        // Sizes that fill no kernel tile exactly; one user (a last block of one: gemm's
        // matrix-vector path) and widths 1 and 2 (its outer-product path).
        for (m, n, dim) in [(5, 301, 7), (1, 301, 7), (5, 301, 1), (3, 40, 2)] {
            let value = |i: usize| ((i * 7919) % 23) as f32 / 11.0 - 1.0;
            let rows: Vec<f32> = (0..m * dim).map(value).collect();
            let items: Vec<f32> = (0..n * dim).map(|i| value(i + 5)).collect();
            let mut out = vec![f32::NAN; m * n];
            dot_all(&rows, &items, dim, &mut out);
            for r in 0..m {
                for i in 0..n {
                    let want: f64 = (0..dim)
                        .map(|k| rows[r * dim + k] as f64 * items[i * dim + k] as f64)
                        .sum();
                    let got = out[r * n + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{m}×{n}×{dim} ({r}, {i}): {got} vs {want}"
                    );
                }
            }
        }
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
