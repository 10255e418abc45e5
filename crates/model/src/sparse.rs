//! Sparse interaction rows for the encoders' first layers: which entries of a batch are nonzero
//! ([`RowNonzeros`]), and a linear layer that reads only those ([`sparse_linear`]).
//!
//! A user's row holds a few dozen items out of thousands or hundreds of thousands, so the
//! product of a batch with an encoder's first weight matrix is mostly multiplication by zero.
//! Here it is a gather of the weight rows that the batch's items name, each scaled by its value
//! and summed into its row: O(nonzeros × width) instead of O(rows × items × width). The
//! weight's gradient is that gather's backward, a scatter-add into a zero matrix.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use rayon::prelude::*;

/// The entries of a batch of rows that may be nonzero (every nonzero among them; one listed
/// with the value 0 adds nothing), row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowNonzeros {
    rows: usize,
    cols: usize,
    /// Row of each entry.
    row: Vec<u32>,
    /// Column of each entry.
    col: Vec<u32>,
}

impl RowNonzeros {
    /// The nonzero entries of `values`, row-major `[values.len() / cols, cols]`.
    pub fn of_dense(values: &[f32], cols: usize) -> Self {
        let rows = values.len().checked_div(cols).unwrap_or(0);
        assert_eq!(rows * cols, values.len(), "values is [rows, cols]");
        // One list per row, built in parallel (a batch of a large catalogue is 80 M values).
        let per_row: Vec<Vec<u32>> = values
            .par_chunks(cols.max(1))
            .map(|line| {
                line.iter()
                    .enumerate()
                    .filter(|&(_, &v)| v != 0.0)
                    .map(|(c, _)| c as u32)
                    .collect()
            })
            .collect();
        Self::from_rows(cols, per_row.iter().map(Vec::as_slice))
    }

    /// The entries of rows given by their columns (a sparse matrix's rows), `cols` wide.
    pub fn from_rows<'a>(cols: usize, rows: impl Iterator<Item = &'a [u32]>) -> Self {
        let (mut row, mut col) = (Vec::new(), Vec::new());
        let mut n = 0;
        for (r, cs) in rows.enumerate() {
            row.resize(row.len() + cs.len(), r as u32);
            col.extend_from_slice(cs);
            n = r + 1;
        }
        RowNonzeros {
            rows: n,
            cols,
            row,
            col,
        }
    }

    /// The entries of rows `start..start + n`, numbered from 0: a shard of a batch.
    pub fn rows_range(&self, start: usize, n: usize) -> Self {
        assert!(
            start + n <= self.rows,
            "rows {start}..{} of a batch of {}",
            start + n,
            self.rows
        );
        // Entries go row by row, so each end is one binary search.
        let lo = self.row.partition_point(|&r| (r as usize) < start);
        let hi = self.row.partition_point(|&r| (r as usize) < start + n);
        RowNonzeros {
            rows: n,
            cols: self.cols,
            row: self.row[lo..hi].iter().map(|&r| r - start as u32).collect(),
            col: self.col[lo..hi].to_vec(),
        }
    }

    /// The nonzero entries of a 2-D tensor (read back to the host).
    pub fn of_tensor<B: Backend>(x: &Tensor<B, 2>) -> Self {
        let [_, cols] = x.dims();
        let values = x
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("an f32 tensor reads back as f32");
        Self::of_dense(&values, cols)
    }

    /// `[rows, cols]` of the batch.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Number of nonzero entries.
    pub fn len(&self) -> usize {
        self.row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row.is_empty()
    }

    /// `(row, column)` of every entry, in order.
    pub fn entries(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.row
            .iter()
            .zip(&self.col)
            .map(|(&r, &c)| (r as usize, c as usize))
    }
}

/// `layer` applied to a batch of `rows` rows given by their nonzero entries: entry j is in row
/// `row[j]`, names the weight's row `col[j]` (an input feature) and has the value `values[j]`.
/// Equal, up to float rounding, to `layer.forward(dense)` with `dense[row[j], col[j]] =
/// values[j]` and zeros elsewhere. At least one entry (a zero value will do), so that the
/// weight has a gradient as it would in the dense product.
pub fn sparse_linear<B: Backend>(
    layer: &Linear<B>,
    rows: usize,
    row: Tensor<B, 1, Int>,
    col: Tensor<B, 1, Int>,
    values: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let weight = layer.weight.val();
    let [_, width] = weight.dims();
    let [n] = values.dims();
    assert!(n > 0, "sparse_linear needs an entry");
    let device = weight.device();
    let picked = weight.select(0, col) * values.reshape([n, 1]);
    let out = Tensor::<B, 2>::zeros([rows, width], &device).select_assign(
        0,
        row,
        picked,
        IndexingUpdateOp::Add,
    );
    match &layer.bias {
        Some(bias) => out + bias.val().unsqueeze_dim(0),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::nn::LinearConfig;

    type B = burn_flex::Flex;
    type AB = Autodiff<B>;

    #[test]
    fn nonzeros_are_listed_row_by_row() {
        let x = [
            0.0, 2.0, 0.0, 1.0, /* row 1 */ 0.0, 0.0, 0.0, 0.0, /* row 2 */ 5.0, 0.0,
            0.0, -1.0,
        ];
        let nz = RowNonzeros::of_dense(&x, 4);
        assert_eq!(nz.dims(), [3, 4]);
        assert_eq!(
            nz.entries().collect::<Vec<_>>(),
            vec![(0, 1), (0, 3), (2, 0), (2, 3)]
        );
        let listed: [&[u32]; 3] = [&[1, 3], &[], &[0, 3]];
        assert_eq!(RowNonzeros::from_rows(4, listed.into_iter()), nz);
        assert!(RowNonzeros::of_dense(&[0.0; 6], 3).is_empty());
        // A shard of rows is the scan of those rows alone, renumbered from 0.
        assert_eq!(nz.rows_range(1, 2), RowNonzeros::of_dense(&x[4..], 4));
        assert_eq!(nz.rows_range(0, 1), RowNonzeros::of_dense(&x[..4], 4));
        assert_eq!(nz.rows_range(1, 1).dims(), [1, 4]);
        assert!(nz.rows_range(1, 1).is_empty());
        assert_eq!(nz.rows_range(3, 0).dims(), [0, 4]);
        assert_eq!(RowNonzeros::of_dense(&[], 0).dims(), [0, 0]);
    }

    /// Forward and the weight's and bias's gradients against a hand-computed product: W is
    /// 3 × 2 with rows (1, 2), (3, 4), (5, 6), bias (0.5, −0.5); the batch is
    /// [[0, 2, 1], [0, 0, 0]] (the second row empty: bias only).
    #[test]
    fn sparse_linear_is_the_dense_product() {
        let dev = Default::default();
        let mut layer: Linear<AB> = LinearConfig::new(3, 2).init(&dev);
        layer.weight = layer.weight.map(|_| {
            Tensor::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev).require_grad()
        });
        layer.bias = layer
            .bias
            .map(|b| b.map(|_| Tensor::from_floats([0.5, -0.5], &dev).require_grad()));
        let nz = RowNonzeros::of_dense(&[0.0, 2.0, 1.0, 0.0, 0.0, 0.0], 3);
        let (row, col): (Vec<i64>, Vec<i64>) =
            nz.entries().map(|(r, c)| (r as i64, c as i64)).unzip();
        let idx = |v: Vec<i64>| Tensor::<AB, 1, Int>::from_data(TensorData::new(v, [2]), &dev);
        let out = sparse_linear(
            &layer,
            2,
            idx(row),
            idx(col),
            Tensor::from_floats([2.0, 1.0], &dev),
        );
        // Row 0: 2·(3, 4) + 1·(5, 6) + bias = (11.5, 13.5); row 1: the bias.
        let got = out.clone().into_data().to_vec::<f32>().unwrap();
        assert_eq!(got, vec![11.5, 13.5, 0.5, -0.5]);
        // d(sum of out)/dW[i, k] = Σ_rows x[r, i]: (0, 2, 1) in both columns; d/db = rows = 2.
        let grads = out.sum().backward();
        let gw = layer
            .weight
            .grad(&grads)
            .unwrap()
            .to_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(gw, vec![0.0, 0.0, 2.0, 2.0, 1.0, 1.0]);
        let gb = layer.bias.as_ref().unwrap().grad(&grads).unwrap();
        assert_eq!(gb.to_data().to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
    }
}
