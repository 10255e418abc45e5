//! BPR (Rendle et al., 2009) as LightGCN trains it: triples (user, positive, negative), the loss
//! `mean softplus(ŷ_uj − ŷ_ui)` over a batch, and the L2 term on the batch's ego embeddings.

use diffrec_data::CsrMatrix;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt};

/// One training triple: `user` interacted with item `pos`, not with item `neg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triple {
    pub user: u32,
    pub pos: u32,
    pub neg: u32,
}

/// One epoch of triples: every training interaction once, in a random order, each with one
/// negative drawn uniformly from the items the user has not interacted with in training. Users
/// who interacted with every item have no negative and are left out.
pub fn epoch_triples<R: Rng>(train: &CsrMatrix, rng: &mut R) -> Vec<Triple> {
    let n_items = train.n_cols as u32;
    let mut out = Vec::with_capacity(train.nnz());
    let mut unseen = Vec::new();
    for u in 0..train.n_rows {
        let items = train.row(u).0;
        if items.len() >= n_items as usize {
            continue;
        }
        // Rejection sampling needs n/(n − |items|) draws on average: for users who saw most
        // items, draw from the explicit list of unseen items instead.
        let dense = items.len() > n_items as usize / 2;
        if dense {
            unseen.clear();
            unseen.extend((0..n_items).filter(|j| items.binary_search(j).is_err()));
        }
        for &pos in items {
            let neg = if dense {
                unseen[rng.random_range(0..unseen.len())]
            } else {
                loop {
                    let j = rng.random_range(0..n_items);
                    if items.binary_search(&j).is_err() {
                        break j;
                    }
                }
            };
            out.push(Triple {
                user: u as u32,
                pos,
                neg,
            });
        }
    }
    out.shuffle(rng);
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `log(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// BPR loss of `batch` over the final embeddings `fin` (`n_nodes × dim`, users first, items
/// at `n_users + i`); adds `∂loss/∂fin` into `grad_fin`. Returns the batch mean.
pub fn loss_grad(
    batch: &[Triple],
    n_users: usize,
    fin: &[f32],
    dim: usize,
    grad_fin: &mut [f32],
) -> f64 {
    let inv_b = 1.0 / batch.len().max(1) as f64;
    let mut total = 0.0;
    let row = |r: usize| r * dim..(r + 1) * dim;
    for t in batch {
        let (u, i, j) = (
            t.user as usize,
            n_users + t.pos as usize,
            n_users + t.neg as usize,
        );
        let (eu, ei, ej) = (&fin[row(u)], &fin[row(i)], &fin[row(j)]);
        let diff = (dot(eu, ei) - dot(eu, ej)) as f64;
        total += softplus(-diff);
        // d softplus(−x)/dx = −σ(−x).
        let g = (-(1.0 / (1.0 + diff.exp())) * inv_b) as f32;
        for k in 0..dim {
            let (u_k, i_k, j_k) = (eu[k], ei[k], ej[k]);
            grad_fin[u * dim + k] += g * (i_k - j_k);
            grad_fin[i * dim + k] += g * u_k;
            grad_fin[j * dim + k] -= g * u_k;
        }
    }
    total * inv_b
}

/// LightGCN's regulariser `½(‖e_u‖² + ‖e_i‖² + ‖e_j‖²)/|B|` on the **ego** (layer-0)
/// embeddings of the batch; adds `reg · ∂/∂ego` into `grad_ego`. Returns the unweighted value.
pub fn reg_grad(
    batch: &[Triple],
    n_users: usize,
    ego: &[f32],
    dim: usize,
    reg: f32,
    grad_ego: &mut [f32],
) -> f64 {
    let inv_b = 1.0 / batch.len().max(1) as f32;
    let mut total = 0.0f64;
    for t in batch {
        for r in [
            t.user as usize,
            n_users + t.pos as usize,
            n_users + t.neg as usize,
        ] {
            let e = &ego[r * dim..(r + 1) * dim];
            total += 0.5 * dot(e, e) as f64;
            for (g, &x) in grad_ego[r * dim..(r + 1) * dim].iter_mut().zip(e) {
                *g += reg * inv_b * x;
            }
        }
    }
    total * inv_b as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn triples_cover_every_interaction_with_true_negatives() {
        let t = vec![
            (0, 0, 1.0),
            (0, 2, 1.0),
            (1, 1, 1.0),
            (2, 0, 1.0),
            (2, 1, 1.0),
            (2, 2, 1.0),
        ];
        // User 2 has every item: no negative exists, so it is left out.
        let train = CsrMatrix::from_triplets(3, 3, t);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let mut got = epoch_triples(&train, &mut rng);
            for tr in &got {
                let items = train.row(tr.user as usize).0;
                assert!(items.binary_search(&tr.pos).is_ok());
                assert!(items.binary_search(&tr.neg).is_err());
            }
            got.sort_by_key(|t| (t.user, t.pos));
            let pairs: Vec<_> = got.iter().map(|t| (t.user, t.pos)).collect();
            assert_eq!(pairs, vec![(0, 0), (0, 2), (1, 1)]);
            // User 0's only negative is item 1.
            assert!(got.iter().filter(|t| t.user == 0).all(|t| t.neg == 1));
        }
    }

    #[test]
    fn loss_matches_hand_computation() {
        // One user (node 0), items at nodes 1 and 2; dim 2.
        let fin = [1.0f32, 2.0, 0.5, 0.5, -1.0, 1.0];
        let mut g = [0f32; 6];
        let b = [Triple {
            user: 0,
            pos: 0,
            neg: 1,
        }];
        let loss = loss_grad(&b, 1, &fin, 2, &mut g);
        // ŷ_ui = 1.5, ŷ_uj = 1.0 → softplus(−0.5).
        let want = (1.0f64 + (-0.5f64).exp()).ln();
        assert!((loss - want).abs() < 1e-6);
        let s = -1.0 / (1.0 + 0.5f32.exp());
        let expect = [s * 1.5, s * -0.5, s * 1.0, s * 2.0, -s * 1.0, -s * 2.0];
        for (a, e) in g.iter().zip(expect) {
            assert!((a - e).abs() < 1e-6, "{g:?} vs {expect:?}");
        }
        assert!((softplus(800.0) - 800.0).abs() < 1e-9 && softplus(-800.0) >= 0.0);
    }
}
