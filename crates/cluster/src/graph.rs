//! The LightGCN propagation graph: the user–item bipartite graph of the training interactions as
//! one symmetric CSR matrix over `n_users + n_items` nodes (users first), with the normalised
//! weights `1/sqrt(deg(u)·deg(i))` computed once. Propagation is a sparse×dense product
//! parallelised over rows with rayon. The matrix is symmetric, so the backward pass of a
//! propagation is the same propagation.

use diffrec_data::CsrMatrix;
use rayon::prelude::*;

/// Rows per rayon task: small rows are cheap, so hand out several at a time.
const ROWS_PER_TASK: usize = 64;

/// Â = D^-1/2 A D^-1/2 of the bipartite graph, in CSR.
#[derive(Debug, Clone)]
pub struct NormalizedGraph {
    pub n_users: usize,
    pub n_items: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    weights: Vec<f32>,
}

impl NormalizedGraph {
    /// Builds the graph from the training matrix (every stored entry is an edge; its value,
    /// e.g. a temporal weight, is ignored: LightGCN's graph is binary).
    pub fn from_train(train: &CsrMatrix) -> Self {
        let (n_users, n_items) = (train.n_rows, train.n_cols);
        let n = n_users + n_items;
        let mut deg = vec![0usize; n];
        for u in 0..n_users {
            let items = train.row(u).0;
            deg[u] = items.len();
            for &i in items {
                deg[n_users + i as usize] += 1;
            }
        }
        let mut indptr = Vec::with_capacity(n + 1);
        indptr.push(0);
        for d in &deg {
            indptr.push(indptr.last().unwrap() + d);
        }
        let nnz = indptr[n];
        let mut indices = vec![0u32; nnz];
        let mut weights = vec![0f32; nnz];
        let mut fill = indptr[..n].to_vec();
        let inv_sqrt = |d: usize| 1.0 / (d as f64).sqrt();
        // Users in ascending order, so every item row also ends up sorted by user.
        for u in 0..n_users {
            for &i in train.row(u).0 {
                let it = n_users + i as usize;
                let w = (inv_sqrt(deg[u]) * inv_sqrt(deg[it])) as f32;
                indices[fill[u]] = it as u32;
                weights[fill[u]] = w;
                fill[u] += 1;
                indices[fill[it]] = u as u32;
                weights[fill[it]] = w;
                fill[it] += 1;
            }
        }
        NormalizedGraph {
            n_users,
            n_items,
            indptr,
            indices,
            weights,
        }
    }

    /// Number of nodes (users then items).
    pub fn n_nodes(&self) -> usize {
        self.n_users + self.n_items
    }

    /// Stored entries (twice the number of edges).
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// The neighbours of node `r` and their normalised weights.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (s, e) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[s..e], &self.weights[s..e])
    }

    /// `out = Â x` for row-major `x`, `out` of shape `n_nodes × dim`.
    pub fn propagate(&self, x: &[f32], out: &mut [f32], dim: usize) {
        assert_eq!(x.len(), self.n_nodes() * dim);
        assert_eq!(out.len(), x.len());
        if dim == 0 {
            return;
        }
        out.par_chunks_mut(dim * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, block)| self.rows(c * ROWS_PER_TASK, block, x, dim));
    }

    /// Rows `first..` of `Â x` into `block`, with AVX2 when the CPU has it (checked at run time,
    /// so the binary needs no `target-cpu` flag; measured in docs/benchmarks.md).
    fn rows(&self, first: usize, block: &mut [f32], x: &[f32], dim: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { self.rows_avx2(first, block, x, dim) };
            return;
        }
        self.rows_generic(first, block, x, dim);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn rows_avx2(&self, first: usize, block: &mut [f32], x: &[f32], dim: usize) {
        self.rows_generic(first, block, x, dim);
    }

    #[inline(always)]
    fn rows_generic(&self, first: usize, block: &mut [f32], x: &[f32], dim: usize) {
        for (k, o) in block.chunks_exact_mut(dim).enumerate() {
            o.fill(0.0);
            let (cols, ws) = self.row(first + k);
            for (&j, &w) in cols.iter().zip(ws) {
                let xj = &x[j as usize * dim..(j as usize + 1) * dim];
                for (a, &b) in o.iter_mut().zip(xj) {
                    *a += w * b;
                }
            }
        }
    }

    /// LightGCN's layer combination `(x + Âx + … + Â^layers x) / (layers + 1)`.
    ///
    /// Â is symmetric, so this is also the gradient map: if `y = layer_mean(x)`, then
    /// `∂L/∂x = layer_mean(∂L/∂y)`.
    pub fn layer_mean(&self, x: &[f32], layers: usize, dim: usize) -> Vec<f32> {
        let mut acc = x.to_vec();
        let mut cur = x.to_vec();
        let mut next = vec![0f32; x.len()];
        for _ in 0..layers {
            self.propagate(&cur, &mut next, dim);
            acc.par_iter_mut()
                .zip(next.par_iter())
                .with_min_len(4096)
                .for_each(|(a, &b)| *a += b);
            std::mem::swap(&mut cur, &mut next);
        }
        let scale = 1.0 / (layers + 1) as f32;
        acc.par_iter_mut()
            .with_min_len(4096)
            .for_each(|a| *a *= scale);
        acc
    }

    /// The dense matrix Â (tests and debugging only; `n_nodes²` floats).
    pub fn to_dense(&self) -> Vec<f32> {
        let n = self.n_nodes();
        let mut d = vec![0f32; n * n];
        for r in 0..n {
            let (cols, ws) = self.row(r);
            for (&c, &w) in cols.iter().zip(ws) {
                d[r * n + c as usize] = w;
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 users × 4 items: u0 {0, 1}, u1 {1, 2, 3}, u2 {3}.
    fn small() -> NormalizedGraph {
        let t = vec![
            (0, 0, 1.0),
            (0, 1, 1.0),
            (1, 1, 0.3),
            (1, 2, 1.0),
            (1, 3, 1.0),
            (2, 3, 1.0),
        ];
        NormalizedGraph::from_train(&CsrMatrix::from_triplets(3, 4, t))
    }

    #[test]
    fn weights_are_symmetric_degree_normalised() {
        let g = small();
        assert_eq!(g.n_nodes(), 7);
        assert_eq!(g.nnz(), 12);
        let a = g.to_dense();
        let n = 7;
        // deg: u0 2, u1 3, u2 1; i0 1, i1 2, i2 1, i3 2. Node of item i is 3 + i.
        let expect = |u: usize, du: f32, i: usize, di: f32| {
            let w = 1.0 / (du * di).sqrt();
            assert!((a[u * n + 3 + i] - w).abs() < 1e-7, "({u},{i})");
            assert!((a[(3 + i) * n + u] - w).abs() < 1e-7, "({i},{u})");
        };
        expect(0, 2.0, 0, 1.0);
        expect(0, 2.0, 1, 2.0);
        expect(1, 3.0, 1, 2.0);
        expect(1, 3.0, 3, 2.0);
        expect(2, 1.0, 3, 2.0);
        assert_eq!(a[0], 0.0, "no self loops");
        assert_eq!(a[3 * n + 4], 0.0, "no item–item edges");
    }

    /// Dense reference of `layer_mean`: (Σ_l A^l x)/(L+1) by plain matrix products.
    fn dense_layer_mean(a: &[f32], x: &[f32], n: usize, dim: usize, layers: usize) -> Vec<f64> {
        let mut cur: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut acc = cur.clone();
        for _ in 0..layers {
            let mut next = vec![0f64; n * dim];
            for r in 0..n {
                for c in 0..n {
                    let w = a[r * n + c] as f64;
                    for k in 0..dim {
                        next[r * dim + k] += w * cur[c * dim + k];
                    }
                }
            }
            for (s, v) in acc.iter_mut().zip(&next) {
                *s += v;
            }
            cur = next;
        }
        acc.iter().map(|v| v / (layers + 1) as f64).collect()
    }

    #[test]
    fn sparse_propagation_matches_a_dense_reference() {
        let g = small();
        let (n, dim) = (g.n_nodes(), 5);
        let x: Vec<f32> = (0..n * dim)
            .map(|k| ((k * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let a = g.to_dense();
        for layers in [0, 1, 3] {
            let got = g.layer_mean(&x, layers, dim);
            let want = dense_layer_mean(&a, &x, n, dim, layers);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < 1e-5,
                    "layers {layers}, entry {k}: {g} vs {w}"
                );
            }
        }
    }
}
