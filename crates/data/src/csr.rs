//! [`CsrMatrix`]: the sparse user × item matrix training reads. Rows stay sparse until a batch
//! is densified ([`CsrMatrix::densify_rows`]).

/// Compressed sparse rows with `f32` values; each row's column indices are sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    pub n_rows: usize,
    pub n_cols: usize,
    /// `indptr[r]..indptr[r+1]` is row r's slice of `indices`/`values`.
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl CsrMatrix {
    /// Builds from (row, col, value) triplets; duplicates are summed, like SciPy's CSR.
    pub fn from_triplets(n_rows: usize, n_cols: usize, mut t: Vec<(u32, u32, f32)>) -> Self {
        t.sort_unstable_by_key(|&(r, c, _)| (r, c));
        let mut indptr = vec![0usize; n_rows + 1];
        let mut indices = Vec::with_capacity(t.len());
        let mut values: Vec<f32> = Vec::with_capacity(t.len());
        let mut last: Option<(u32, u32)> = None;
        for (r, c, v) in t {
            if last == Some((r, c)) {
                *values.last_mut().expect("a previous entry exists") += v;
                continue;
            }
            last = Some((r, c));
            indptr[r as usize + 1] += 1;
            indices.push(c);
            values.push(v);
        }
        for r in 0..n_rows {
            indptr[r + 1] += indptr[r];
        }
        CsrMatrix {
            n_rows,
            n_cols,
            indptr,
            indices,
            values,
        }
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Rows with at least one stored entry (with users as rows: the users the split holds).
    pub fn non_empty_rows(&self) -> usize {
        self.indptr.windows(2).filter(|w| w[1] > w[0]).count()
    }

    /// Stored entries per column (with users as rows: each item's interactions).
    pub fn col_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.n_cols];
        for &c in &self.indices {
            counts[c as usize] += 1;
        }
        counts
    }

    /// Column indices and values of row `r`.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// Writes the given rows densely into `out` (`rows.len() × n_cols`, row-major, zeroed first).
    pub fn densify_rows(&self, rows: &[usize], out: &mut [f32]) {
        assert_eq!(
            out.len(),
            rows.len() * self.n_cols,
            "output buffer has the wrong size"
        );
        out.fill(0.0);
        for (k, &r) in rows.iter().enumerate() {
            let dst = &mut out[k * self.n_cols..(k + 1) * self.n_cols];
            let (idx, val) = self.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                dst[c as usize] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sorted_rows_and_sums_duplicates() {
        let m = CsrMatrix::from_triplets(
            3,
            4,
            vec![(2, 3, 1.0), (0, 2, 0.5), (0, 1, 1.0), (2, 3, 2.0)],
        );
        assert_eq!(m.indptr, vec![0, 2, 2, 3]);
        assert_eq!(m.row(0), (&[1u32, 2][..], &[1.0f32, 0.5][..]));
        assert_eq!(m.row(2), (&[3u32][..], &[3.0f32][..]));
        let mut out = vec![9.0; 8];
        m.densify_rows(&[2, 0], &mut out);
        assert_eq!(out, vec![0., 0., 0., 3., 0., 1., 0.5, 0.]);
        // Entries, not values: the duplicate (2, 3) is one entry.
        assert_eq!(m.col_counts(), vec![0, 1, 1, 1]);
    }
}
