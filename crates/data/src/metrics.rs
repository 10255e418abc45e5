//! Ranking metrics exactly as the DiffRec authors compute them (spec §6): masked items scored
//! −∞, top-K kept in a bounded heap (never a sort or a copy of a row), Recall@K = hits/|G| (not
//! min(|G|, K)), Precision@K, NDCG@K, MRR@K, summed over users with a non-empty ground truth and
//! divided by the number of all users.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use arrow_array::{Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use rayon::prelude::*;

use crate::csr::CsrMatrix;

/// Metric sums for one split, over every cut-off.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSums {
    pub ks: Vec<usize>,
    /// Per k (same order as `ks`): recall, precision, ndcg, mrr sums.
    recall: Vec<f64>,
    precision: Vec<f64>,
    ndcg: Vec<f64>,
    mrr: Vec<f64>,
}

impl MetricSums {
    pub fn new(ks: &[usize]) -> Self {
        let n = ks.len();
        MetricSums {
            ks: ks.to_vec(),
            recall: vec![0.0; n],
            precision: vec![0.0; n],
            ndcg: vec![0.0; n],
            mrr: vec![0.0; n],
        }
    }

    /// Adds one user: `ranked` is the top-max(K) list, best first; `truth` the sorted relevant items.
    pub fn add_user(&mut self, ranked: &[u32], truth: &[u32]) {
        if truth.is_empty() {
            return;
        }
        for (j, &k) in self.ks.iter().enumerate() {
            let mut hits = 0usize;
            let mut dcg = 0.0;
            let mut first_hit: Option<usize> = None;
            for (pos, item) in ranked.iter().take(k).enumerate() {
                if truth.binary_search(item).is_ok() {
                    hits += 1;
                    dcg += 1.0 / ((pos + 2) as f64).log2();
                    first_hit.get_or_insert(pos);
                }
            }
            let idcg: f64 = (0..truth.len().min(k))
                .map(|p| 1.0 / ((p + 2) as f64).log2())
                .sum();
            self.recall[j] += hits as f64 / truth.len() as f64;
            self.precision[j] += hits as f64 / k as f64;
            self.ndcg[j] += dcg / idcg;
            self.mrr[j] += first_hit.map_or(0.0, |p| 1.0 / (p + 1) as f64);
        }
    }

    /// Averages over `n_users` (all users, as the reference does): `"recall@20" → value`.
    pub fn finish(&self, n_users: usize) -> BTreeMap<String, f64> {
        let n = n_users.max(1) as f64;
        let mut out = BTreeMap::new();
        for (j, k) in self.ks.iter().enumerate() {
            out.insert(format!("recall@{k}"), self.recall[j] / n);
            out.insert(format!("precision@{k}"), self.precision[j] / n);
            out.insert(format!("ndcg@{k}"), self.ndcg[j] / n);
            out.insert(format!("mrr@{k}"), self.mrr[j] / n);
        }
        out
    }
}

/// The `k` best items of `scores`, best first, skipping the sorted indices `masked`. "Better"
/// is a total order: the higher score by `f32::total_cmp`, then the lower index, so the result
/// is the same as sorting the unmasked items and taking the first `k`. One pass keeps the `k`
/// best so far in a heap whose root is the worst of them; most items lose to that root at one
/// comparison (never a sort of the row, nor a copy of it).
pub fn top_k(scores: &[f32], masked: &[u32], k: usize) -> Vec<u32> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut kept: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k);
    let mut m = masked.iter().peekable();
    for (i, &s) in scores.iter().enumerate() {
        if m.peek().is_some_and(|&&x| x as usize == i) {
            m.next();
            continue;
        }
        let e = Ranked(s, i as u32);
        if kept.len() < k {
            kept.push(e);
        } else if let Some(mut worst) = kept.peek_mut()
            && e < *worst
        {
            *worst = e;
        }
    }
    // Ascending in `Ranked`'s order is best first.
    kept.into_sorted_vec().into_iter().map(|e| e.1).collect()
}

/// A scored item ordered worst-last: `a < b` when `a` ranks above `b` (higher score by
/// `total_cmp`, or the same score and a lower index). A max-heap of them has the worst on top.
#[derive(Clone, Copy)]
struct Ranked(f32, u32);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// Most users × items in one block of scores: each `[users, items]` f32 buffer a ranking stage
/// holds per block then stays within 256 MiB however large the catalogue.
pub const BLOCK_CELLS: usize = 1 << 26;

/// Users per block of scores for a catalogue of `n_items` items: at most `most`, and at most
/// [`BLOCK_CELLS`] users × items (at least one user).
pub fn users_per_block(n_items: usize, most: usize) -> usize {
    (BLOCK_CELLS / n_items.max(1)).clamp(1, most.max(1))
}

/// Valid and test metric sums from one block of scores (rows `users`), computed once: valid
/// masks train items, test masks train ∪ valid items (spec §6).
pub struct SplitEvaluator<'a> {
    pub train: &'a CsrMatrix,
    pub valid: &'a CsrMatrix,
    pub test: &'a CsrMatrix,
    pub valid_sums: MetricSums,
    pub test_sums: MetricSums,
    max_k: usize,
}

impl<'a> SplitEvaluator<'a> {
    pub fn new(
        train: &'a CsrMatrix,
        valid: &'a CsrMatrix,
        test: &'a CsrMatrix,
        ks: &[usize],
    ) -> Self {
        SplitEvaluator {
            train,
            valid,
            test,
            valid_sums: MetricSums::new(ks),
            test_sums: MetricSums::new(ks),
            max_k: ks.iter().copied().max().unwrap_or(0),
        }
    }

    /// Scores of `users` (row-major, `users.len() × n_items`).
    ///
    /// One pass per user ranks the items outside train, `max_k` plus the user's validation
    /// items deep: its first `max_k` are the valid ranking, and the same list without the
    /// validation items is the test ranking (train ∪ valid masked), since removing items from
    /// a ranking leaves the others in order. Users are ranked in parallel and added to the sums
    /// in their order, so the sums do not depend on the thread count.
    pub fn add_block(&mut self, users: &[usize], scores: &[f32]) {
        let n_items = self.train.n_cols;
        assert_eq!(
            scores.len(),
            users.len() * n_items,
            "one row of scores per user"
        );
        let max_k = self.max_k;
        let (train, valid) = (self.train, self.valid);
        let ranked: Vec<(Vec<u32>, Vec<u32>)> = users
            .par_iter()
            .zip(scores.par_chunks(n_items.max(1)))
            .map(|(&u, s)| {
                let in_valid = valid.row(u).0;
                let mut ranked = top_k(s, train.row(u).0, max_k + in_valid.len());
                let for_test = ranked
                    .iter()
                    .copied()
                    .filter(|i| in_valid.binary_search(i).is_err())
                    .take(max_k)
                    .collect();
                ranked.truncate(max_k);
                (ranked, for_test)
            })
            .collect();
        for (&u, (for_valid, for_test)) in users.iter().zip(&ranked) {
            self.valid_sums.add_user(for_valid, self.valid.row(u).0);
            self.test_sums.add_user(for_test, self.test.row(u).0);
        }
    }
}

/// One evaluation during training (the trainer's and LightGCN's): metrics of both splits after
/// `epoch` epochs, with that epoch's loss and timings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Epochs completed.
    pub epoch: usize,
    /// The epoch's training loss (the trainer: sum of batch losses; LightGCN: batch mean).
    pub loss: f64,
    /// Seconds of that epoch's training.
    pub epoch_seconds: f64,
    pub eval_seconds: f64,
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The rows of a `metrics.parquet` table, one per (evaluation, split, metric, k): columns
/// `epoch` u32, `split` utf8, `metric` utf8 (`recall`, `ndcg`, …), `k` u32, `value` f64, and the
/// evaluation's `loss` f64 and `seconds` f64 repeated on each of its rows (long format, so
/// DuckDB/Polars can pivot it however they like).
#[derive(Debug, Default)]
pub struct MetricsTable {
    epoch: Vec<u32>,
    split: Vec<String>,
    metric: Vec<String>,
    k: Vec<u32>,
    value: Vec<f64>,
    loss: Vec<f64>,
    seconds: Vec<f64>,
}

impl MetricsTable {
    /// Adds one split of one evaluation: `values` maps `"recall@20"`-style keys to values.
    pub fn push(
        &mut self,
        epoch: usize,
        split: &str,
        values: &BTreeMap<String, f64>,
        loss: f64,
        seconds: f64,
    ) {
        // By metric, then k as a number (the keys sort as text: @10, @100, @20).
        let mut rows: Vec<(&str, u32, f64)> = values
            .iter()
            .map(|(key, v)| {
                let (m, k) = key.split_once('@').unwrap_or((key, "0"));
                (m, k.parse::<u32>().unwrap_or(0), *v)
            })
            .collect();
        rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (m, k, v) in rows {
            self.epoch.push(epoch as u32);
            self.split.push(split.to_owned());
            self.metric.push(m.to_owned());
            self.k.push(k);
            self.value.push(v);
            self.loss.push(loss);
            self.seconds.push(seconds);
        }
    }

    /// Adds both splits of every evaluation.
    pub fn from_evaluations(evaluations: &[Evaluation]) -> Self {
        let mut t = MetricsTable::default();
        for e in evaluations {
            t.push(e.epoch, "valid", &e.valid, e.loss, e.epoch_seconds);
            t.push(e.epoch, "test", &e.test, e.loss, e.epoch_seconds);
        }
        t
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.epoch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.epoch.is_empty()
    }

    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("epoch", DataType::UInt32, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("k", DataType::UInt32, false),
            Field::new("value", DataType::Float64, false),
            Field::new("loss", DataType::Float64, false),
            Field::new("seconds", DataType::Float64, false),
        ]))
    }

    pub fn into_batch(self) -> std::result::Result<RecordBatch, ArrowError> {
        RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(UInt32Array::from(self.epoch)),
                Arc::new(StringArray::from(self.split)),
                Arc::new(StringArray::from(self.metric)),
                Arc::new(UInt32Array::from(self.k)),
                Arc::new(Float64Array::from(self.value)),
                Arc::new(Float64Array::from(self.loss)),
                Arc::new(Float64Array::from(self.seconds)),
            ],
        )
    }
}

/// Rounds to 4 decimals, as the reference does before comparing models.
pub fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_at_most_2_to_the_26_cells() {
        // LightGCN's 256 users a block: unchanged up to 262,144 items, then fewer.
        assert_eq!(users_per_block(262_144, 256), 256);
        assert_eq!(users_per_block(262_145, 256), 255);
        assert_eq!(users_per_block(1_000_000, 256), 67);
        // At least one user, whatever is asked.
        assert_eq!(users_per_block(usize::MAX, 256), 1);
        assert_eq!(users_per_block(10, 0), 1);
        assert_eq!(users_per_block(0, 2048), 2048);
    }

    #[test]
    fn top_k_skips_masked_and_breaks_ties_by_index() {
        let s = [0.5, 0.9, 0.9, 0.1, 0.7];
        assert_eq!(top_k(&s, &[], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&s, &[1, 4], 2), vec![2, 0]);
        assert_eq!(top_k(&s, &[0, 1, 2, 3], 10), vec![4]);
        assert_eq!(top_k(&s, &[], 0), Vec::<u32>::new());
    }

    #[test]
    fn table_rows_sort_k_as_a_number() {
        let values: BTreeMap<String, f64> = [("recall@100", 3.0), ("recall@20", 2.0)]
            .into_iter()
            .chain([("ndcg@50", 5.0), ("ndcg@5", 4.0), ("recall@10", 1.0)])
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let mut t = MetricsTable::default();
        t.push(1, "test", &values, 0.0, 0.0);
        assert_eq!(t.metric, ["ndcg", "ndcg", "recall", "recall", "recall"]);
        assert_eq!(t.k, [5, 50, 10, 20, 100]);
        assert_eq!(t.value, [4.0, 5.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        // Ranking [7, 3, 9, 1, 5], truth {3, 5, 8}: hits at positions 1 and 4.
        let mut m = MetricSums::new(&[2, 5, 10]);
        m.add_user(&[7, 3, 9, 1, 5], &[3, 5, 8]);
        // A user with one relevant item at rank 1, and an empty-truth user (counts as 0).
        m.add_user(&[4, 2], &[4]);
        m.add_user(&[1], &[]);
        let r = m.finish(3);
        let l2 = |p: f64| 1.0 / (p + 2.0).log2();
        // k = 2: user 1 recall 1/3 (|G| = 3, not min(3, 2)), user 2 recall 1.
        assert!((r["recall@2"] - (1.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r["precision@2"] - (0.5 + 0.5) / 3.0).abs() < 1e-12);
        let ndcg1_k2 = l2(1.0) / (l2(0.0) + l2(1.0));
        assert!((r["ndcg@2"] - (ndcg1_k2 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r["mrr@2"] - (0.5 + 1.0) / 3.0).abs() < 1e-12);
        // k = 5: user 1 hits 2 of 3; IDCG over min(|G|, K) = 3 positions.
        let ndcg1_k5 = (l2(1.0) + l2(4.0)) / (l2(0.0) + l2(1.0) + l2(2.0));
        assert!((r["recall@5"] - (2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r["ndcg@5"] - (ndcg1_k5 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r["precision@10"] - (0.2 + 0.1) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn split_evaluator_masks_train_for_valid_and_train_valid_for_test() {
        // One user, 5 items; train {0}, valid {1}, test {2}. Scores favour 0 > 1 > 2 > 3 > 4.
        let train = CsrMatrix::from_triplets(1, 5, vec![(0, 0, 1.0)]);
        let valid = CsrMatrix::from_triplets(1, 5, vec![(0, 1, 1.0)]);
        let test = CsrMatrix::from_triplets(1, 5, vec![(0, 2, 1.0)]);
        let mut ev = SplitEvaluator::new(&train, &valid, &test, &[1]);
        ev.add_block(&[0], &[0.9, 0.8, 0.7, 0.6, 0.5]);
        assert_eq!(
            ev.valid_sums.finish(1)["recall@1"],
            1.0,
            "item 0 masked → item 1 first"
        );
        assert_eq!(
            ev.test_sums.finish(1)["recall@1"],
            1.0,
            "items 0, 1 masked → item 2 first"
        );
        assert_eq!(round4(0.123456), 0.1235);
    }

    /// The definition `top_k` and `add_block` must agree with: sort every unmasked item by
    /// score (descending, `total_cmp`), then index, and take the first `k`.
    fn sorted_top_k(scores: &[f32], masked: &[u32], k: usize) -> Vec<u32> {
        let mut items: Vec<u32> = (0..scores.len() as u32)
            .filter(|i| !masked.contains(i))
            .collect();
        items.sort_by(|&a, &b| {
            let (sa, sb) = (scores[a as usize], scores[b as usize]);
            sb.total_cmp(&sa).then(a.cmp(&b))
        });
        items.truncate(k);
        items
    }

    /// Three disjoint sorted index sets of one user (train, valid, test) from per-item draws.
    fn splits_of(draws: &[u8]) -> [Vec<u32>; 3] {
        let mut out: [Vec<u32>; 3] = Default::default();
        for (i, &d) in draws.iter().enumerate() {
            if let Some(set) = out.get_mut(usize::from(d % 5)) {
                set.push(i as u32);
            }
        }
        out
    }

    proptest::proptest! {
        /// Scores from a few values (many ties, ±0, infinities and NaN), random masks, every k
        /// up to past the row's length.
        #[test]
        fn top_k_is_the_sorted_definition(
            picks in proptest::collection::vec(0usize..8, 0..60),
            mask_draws in proptest::collection::vec(0u8..4, 60),
            k in 0usize..70,
        ) {
            let values = [0.5, -0.0, 0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.5];
            let scores: Vec<f32> = picks.iter().map(|&p| values[p]).collect();
            let masked: Vec<u32> =
                (0..scores.len() as u32).filter(|&i| mask_draws[i as usize] == 0).collect();
            proptest::prop_assert_eq!(top_k(&scores, &masked, k), sorted_top_k(&scores, &masked, k));
        }

        /// `add_block` (one pass per user, users in parallel) gives the sums of ranking valid
        /// with train masked and test with train ∪ valid masked, user by user in order.
        #[test]
        fn split_evaluator_is_two_masked_rankings(
            rows in proptest::collection::vec(
                (proptest::collection::vec(0u8..6, 30), proptest::collection::vec(0u8..10, 30)),
                1..12,
            ),
        ) {
            let (n_items, ks) = (30, [1, 3, 10]);
            let mut sets: [Vec<(u32, u32, f32)>; 3] = Default::default();
            let mut scores = Vec::new();
            for (u, (draws, levels)) in rows.iter().enumerate() {
                for (which, items) in splits_of(draws).into_iter().enumerate() {
                    sets[which].extend(items.into_iter().map(|i| (u as u32, i, 1.0)));
                }
                scores.extend(levels.iter().map(|&l| f32::from(l) / 4.0));
            }
            let n_users = rows.len();
            let [train, valid, test] =
                sets.map(|t| CsrMatrix::from_triplets(n_users, n_items, t));
            let users: Vec<usize> = (0..n_users).collect();
            let mut ev = SplitEvaluator::new(&train, &valid, &test, &ks);
            ev.add_block(&users, &scores);

            let (mut want_valid, mut want_test) = (MetricSums::new(&ks), MetricSums::new(&ks));
            for u in 0..n_users {
                let s = &scores[u * n_items..(u + 1) * n_items];
                let (tr, va) = (train.row(u).0, valid.row(u).0);
                let both: Vec<u32> = (0..n_items as u32)
                    .filter(|i| tr.contains(i) || va.contains(i))
                    .collect();
                want_valid.add_user(&sorted_top_k(s, tr, 10), va);
                want_test.add_user(&sorted_top_k(s, &both, 10), test.row(u).0);
            }
            proptest::prop_assert_eq!(&ev.valid_sums, &want_valid);
            proptest::prop_assert_eq!(&ev.test_sums, &want_test);
        }
    }
}
