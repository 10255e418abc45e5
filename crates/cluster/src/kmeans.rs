//! k-means over item embeddings with `linfa-clustering` (k-means++ init, `n_runs` restarts,
//! seeded), plus the guards the authors' code lacks: a cluster with fewer than two items is
//! re-seeded, then merged into its nearest neighbour, and said so in the log.
//!
//! linfa 0.8 is built on ndarray 0.16 and rand 0.8; this module is the only place that touches
//! them: embeddings come in and labels go out as plain slices.

use linfa::DatasetBase;
use linfa::prelude::{Fit, Predict};
use linfa_clustering::KMeans;
use ndarray16::Array2;
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;

use crate::error::{ClusterError, Result};

/// Re-seeded attempts before small clusters are merged.
const ATTEMPTS: u64 = 3;
/// A cluster needs at least this many items (a one-item cluster breaks L-DiffRec's encoders).
pub const MIN_CLUSTER: usize = 2;

/// The result: cluster per item, distance to its centroid, and what the guards did.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Clusters in the result (may be below the requested k after merging).
    pub k: usize,
    /// Cluster of each item. Cluster ids are ordered by their lowest item index.
    pub labels: Vec<u32>,
    /// Euclidean distance of each item to its cluster's centroid (mean of its members).
    pub distances: Vec<f32>,
    pub sizes: Vec<usize>,
    /// Σ squared distances / items.
    pub inertia: f64,
    /// What the guards did (also logged), for the stage's report and manifest.
    pub notes: Vec<String>,
}

/// Clusters the `n × dim` row-major `embeddings` into `k` clusters.
pub fn cluster(
    embeddings: &[f32],
    dim: usize,
    k: usize,
    n_runs: usize,
    seed: u64,
) -> Result<Clustering> {
    if dim == 0 || embeddings.len() % dim != 0 {
        return Err(ClusterError::KMeans(format!(
            "{} values do not form rows of width {dim}",
            embeddings.len()
        )));
    }
    if let Some(p) = embeddings.iter().position(|x| !x.is_finite()) {
        return Err(ClusterError::KMeans(format!(
            "embedding of item {} has a non-finite value in column {}",
            p / dim,
            p % dim
        )));
    }
    let n = embeddings.len() / dim;
    check_k(k, n)?;
    let data = Array2::from_shape_vec((n, dim), embeddings.iter().map(|&x| x as f64).collect())
        .map_err(|e| ClusterError::KMeans(e.to_string()))?;
    let mut notes = Vec::new();
    let mut labels = if k == 1 {
        vec![0u32; n]
    } else {
        let mut labels = Vec::new();
        for attempt in 0..ATTEMPTS {
            let s = seed.wrapping_add(attempt);
            labels = fit(&data, k, n_runs, s)?;
            let sizes = sizes_of(&labels, k);
            match sizes.iter().position(|&c| c < MIN_CLUSTER) {
                None => break,
                Some(c) => {
                    let note = format!(
                        "k-means with seed {s}: cluster {c} has {} item(s); {}",
                        sizes[c],
                        if attempt + 1 < ATTEMPTS {
                            "re-seeding"
                        } else {
                            "merging small clusters"
                        }
                    );
                    tracing::warn!("{note}");
                    notes.push(note);
                }
            }
        }
        labels
    };
    merge_small(&data, &mut labels, &mut notes);
    let (labels, k_out) = relabel_by_first_item(&labels);
    if k_out < k {
        let clusters = if k_out == 1 { "cluster" } else { "clusters" };
        let note = format!("using {k_out} {clusters} instead of cluster.k = {k}");
        tracing::warn!("{note}");
        notes.push(note);
    }
    let k = k_out;
    let centroids = centroids_of(&data, &labels, k);
    let distances: Vec<f32> = (0..n)
        .map(|i| {
            sq_dist(
                data.row(i).as_slice().unwrap(),
                &centroids[labels[i] as usize],
            )
            .sqrt() as f32
        })
        .collect();
    let inertia = distances.iter().map(|&d| (d as f64).powi(2)).sum::<f64>() / n.max(1) as f64;
    Ok(Clustering {
        k,
        sizes: sizes_of(&labels, k),
        labels,
        distances,
        inertia,
        notes,
    })
}

fn fit(data: &Array2<f64>, k: usize, n_runs: usize, seed: u64) -> Result<Vec<u32>> {
    let rng = Xoshiro256Plus::seed_from_u64(seed);
    let dataset = DatasetBase::from(data.clone());
    let model = KMeans::params_with_rng(k, rng)
        .n_runs(n_runs)
        .fit(&dataset)
        .map_err(|e| ClusterError::KMeans(e.to_string()))?;
    let labels = model.predict(data);
    Ok(labels.iter().map(|&c| c as u32).collect())
}

fn sizes_of(labels: &[u32], k: usize) -> Vec<usize> {
    let mut sizes = vec![0; k];
    for &c in labels {
        sizes[c as usize] += 1;
    }
    sizes
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn centroids_of(data: &Array2<f64>, labels: &[u32], k: usize) -> Vec<Vec<f64>> {
    let dim = data.ncols();
    let mut sums = vec![vec![0.0; dim]; k];
    let mut counts = vec![0usize; k];
    for (i, &c) in labels.iter().enumerate() {
        counts[c as usize] += 1;
        for (s, &x) in sums[c as usize].iter_mut().zip(data.row(i)) {
            *s += x;
        }
    }
    for (s, &c) in sums.iter_mut().zip(&counts) {
        s.iter_mut().for_each(|x| *x /= c.max(1) as f64);
    }
    sums
}

/// Refuses a `cluster.k` above 1 that cannot give every cluster [`MIN_CLUSTER`] of the
/// `n_items` items: k-means would re-seed and merge its way down, for minutes on a large catalogue,
/// to fewer clusters than asked anyway.
pub fn check_k(k: usize, n_items: usize) -> Result<()> {
    if k > 1 && k.saturating_mul(MIN_CLUSTER) > n_items {
        return Err(ClusterError::TooManyClusters { k, n_items });
    }
    Ok(())
}

/// Moves the members of clusters smaller than [`MIN_CLUSTER`] to the nearest centroid of the
/// remaining clusters, smallest cluster first, until none is left (or one cluster remains).
/// One note says how many were merged (there may be hundreds with a large `cluster.k`).
fn merge_small(data: &Array2<f64>, labels: &mut [u32], notes: &mut Vec<String>) {
    let mut merged = Vec::new();
    let mut remain = 0;
    loop {
        let k = labels.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
        let sizes = sizes_of(labels, k);
        let alive: Vec<usize> = (0..k).filter(|&c| sizes[c] > 0).collect();
        let Some(&small) = alive
            .iter()
            .filter(|&&c| sizes[c] < MIN_CLUSTER)
            .min_by_key(|&&c| sizes[c])
        else {
            break;
        };
        if alive.len() <= 1 {
            break;
        }
        let centroids = centroids_of(data, labels, k);
        for i in 0..labels.len() {
            if labels[i] as usize == small {
                let row = data.row(i);
                let to = alive
                    .iter()
                    .filter(|&&c| c != small)
                    .min_by(|&&a, &&b| {
                        sq_dist(row.as_slice().unwrap(), &centroids[a])
                            .total_cmp(&sq_dist(row.as_slice().unwrap(), &centroids[b]))
                    })
                    .copied()
                    .expect("another cluster is alive");
                labels[i] = to as u32;
            }
        }
        merged.push(sizes[small]);
        remain = alive.len() - 1;
    }
    if merged.is_empty() {
        return;
    }
    let items: usize = merged.iter().sum();
    let remain = match remain {
        1 => "1 cluster remains".to_owned(),
        n => format!("{n} clusters remain"),
    };
    let note = match (merged.len(), items) {
        (1, 1) => format!(
            "merged a cluster of 1 item (fewer than {MIN_CLUSTER}) into its nearest neighbour; \
             {remain}"
        ),
        (1, items) => format!(
            "merged a cluster of {items} items (fewer than {MIN_CLUSTER}) into its nearest \
             neighbour; {remain}"
        ),
        (n, items) => format!(
            "merged {n} clusters of fewer than {MIN_CLUSTER} items ({items} items in all) into \
             their nearest neighbours; {remain}"
        ),
    };
    tracing::warn!("{note}");
    notes.push(note);
}

/// Renumbers clusters 0..k in the order of their lowest item index (drops empty ids).
fn relabel_by_first_item(labels: &[u32]) -> (Vec<u32>, usize) {
    let mut map = std::collections::HashMap::new();
    let out = labels
        .iter()
        .map(|&c| {
            let next = map.len() as u32;
            *map.entry(c).or_insert(next)
        })
        .collect();
    (out, map.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated blobs in 2-D, interleaved in item order.
    fn blobs() -> (Vec<f32>, Vec<u32>) {
        let centres = [(0.0f32, 0.0f32), (10.0, 0.0), (0.0, 10.0)];
        let mut x = Vec::new();
        let mut truth = Vec::new();
        for i in 0..60 {
            let c = i % 3;
            let jitter = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
            x.extend([centres[c].0 + jitter, centres[c].1 - jitter]);
            truth.push(c as u32);
        }
        (x, truth)
    }

    #[test]
    fn recovers_separated_blobs_with_ids_in_item_order() {
        let (x, truth) = blobs();
        let c = cluster(&x, 2, 3, 4, 1).unwrap();
        assert_eq!(c.k, 3);
        // Items 0, 1, 2 are in blobs 0, 1, 2, so ordering by first item reproduces the truth.
        assert_eq!(c.labels, truth);
        assert_eq!(c.sizes, vec![20, 20, 20]);
        assert!(c.notes.is_empty());
        assert!(c.distances.iter().all(|&d| d < 1.0));
    }

    /// k up to half the items is tried; beyond, no partition gives every cluster 2 items, and
    /// the error says the largest k that does.
    #[test]
    fn k_beyond_half_the_items_is_a_clear_error() {
        let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert!(cluster(&x, 1, 5, 1, 1).is_ok());
        assert!(
            cluster(&[0.5], 1, 1, 1, 1).is_ok(),
            "one cluster of one item"
        );
        for k in [6, 11] {
            let e = cluster(&x, 1, k, 1, 1).unwrap_err().to_string();
            assert!(
                e.contains(&format!("cluster.k = {k} is too large for 10 items"))
                    && e.contains("k ≤ 5"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_lonely_item_is_merged_not_left_alone() {
        // 2 tight groups and one far outlier: k = 3 isolates the outlier on every seed.
        let mut x = vec![];
        for i in 0..10 {
            x.extend([(i % 2) as f32 * 5.0, 0.0]);
        }
        x.extend([1000.0, 1000.0]);
        let c = cluster(&x, 2, 3, 2, 1).unwrap();
        assert!(c.sizes.iter().all(|&s| s >= MIN_CLUSTER), "{:?}", c.sizes);
        assert_eq!(c.sizes.iter().sum::<usize>(), 11);
        assert!(c.k < 3);
        let merged = "merged a cluster of 1 item (fewer than 2) into its nearest neighbour; 2 \
                      clusters remain";
        assert!(c.notes.iter().any(|n| n == merged), "{:?}", c.notes);
    }

    #[test]
    fn relabel_orders_by_first_item() {
        assert_eq!(
            relabel_by_first_item(&[4, 4, 1, 4, 7, 1]),
            (vec![0, 0, 1, 0, 2, 1], 3)
        );
    }
}
