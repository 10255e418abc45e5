//! Parameter shapes of the models' records, to check a checkpoint against the model a
//! configuration builds before loading it. burn 0.21 loads a record of any shape into a module
//! (the first matrix product then panics) and asserts on a list of layers of another length;
//! comparing shapes first turns both into an error that names the parameter.

use burn::module::Param;
use burn::nn::LinearRecord;
use burn::prelude::*;

/// One parameter: its path in the module (`in_layers.0.weight`) and its shape.
pub type ParamShape = (String, Vec<usize>);

/// A record's float parameters, in module order.
pub trait ParamShapes {
    /// Appends this record's parameters under `path` to `out`.
    fn param_shapes(&self, path: &str, out: &mut Vec<ParamShape>);

    /// This record's parameters.
    fn shapes(&self) -> Vec<ParamShape> {
        let mut out = Vec::new();
        self.param_shapes("", &mut out);
        out
    }
}

/// `path.name`, or `name` at the top.
pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn push<B: Backend, const D: usize>(
    p: &Param<Tensor<B, D>>,
    path: String,
    out: &mut Vec<ParamShape>,
) {
    out.push((path, p.val().dims().to_vec()));
}

impl<B: Backend> ParamShapes for LinearRecord<B> {
    fn param_shapes(&self, path: &str, out: &mut Vec<ParamShape>) {
        push(&self.weight, join(path, "weight"), out);
        if let Some(bias) = &self.bias {
            push(bias, join(path, "bias"), out);
        }
    }
}

impl<T: ParamShapes> ParamShapes for Vec<T> {
    fn param_shapes(&self, path: &str, out: &mut Vec<ParamShape>) {
        for (i, item) in self.iter().enumerate() {
            item.param_shapes(&join(path, &i.to_string()), out);
        }
    }
}

/// How `found` (a checkpoint's record) differs from `expected` (the configured model's), or
/// `None` when every parameter has the same path and shape.
pub fn shape_mismatch(expected: &[ParamShape], found: &[ParamShape]) -> Option<String> {
    let show = |p: Option<&ParamShape>| match p {
        Some((path, shape)) => format!("`{path}` {shape:?}"),
        None => "nothing".to_owned(),
    };
    let first = (0..expected.len().max(found.len())).find(|&i| expected.get(i) != found.get(i))?;
    Some(format!(
        "parameter {} is {} in the checkpoint but {} in the configured model \
         ({} parameter tensors against {})",
        first + 1,
        show(found.get(first)),
        show(expected.get(first)),
        found.len(),
        expected.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DenoiserConfig;
    use crate::denoiser::{Denoiser, InitScheme};
    use burn::module::Module;

    type B = burn_flex::Flex;

    fn denoiser(dims: Vec<usize>) -> Vec<ParamShape> {
        let cfg = DenoiserConfig {
            dims,
            time_emb: 4,
            ..DenoiserConfig::default()
        };
        Denoiser::<B>::new(12, &cfg, InitScheme::DiffRec, &Default::default())
            .into_record()
            .shapes()
    }

    #[test]
    fn lists_the_denoiser_layers_by_path() {
        // dims [5]: emb 4→4, in 12+4→5, out 5→12 (burn stores weights as [in, out]).
        let want: Vec<ParamShape> = [
            ("emb.weight", vec![4, 4]),
            ("emb.bias", vec![4]),
            ("in_layers.0.weight", vec![16, 5]),
            ("in_layers.0.bias", vec![5]),
            ("out_layers.0.weight", vec![5, 12]),
            ("out_layers.0.bias", vec![12]),
        ]
        .into_iter()
        .map(|(p, s)| (p.to_owned(), s))
        .collect();
        assert_eq!(denoiser(vec![5]), want);
    }

    #[test]
    fn names_the_first_parameter_that_differs() {
        let five = denoiser(vec![5]);
        assert_eq!(shape_mismatch(&five, &five), None);
        assert_eq!(
            shape_mismatch(&five, &denoiser(vec![6])).unwrap(),
            "parameter 3 is `in_layers.0.weight` [16, 6] in the checkpoint but \
             `in_layers.0.weight` [16, 5] in the configured model (6 parameter tensors against 6)"
        );
        // Another number of layers: [5, 5] has in_layers.1 where [5] has out_layers.0.
        assert_eq!(
            shape_mismatch(&five, &denoiser(vec![5, 5])).unwrap(),
            "parameter 5 is `in_layers.1.weight` [5, 5] in the checkpoint but \
             `out_layers.0.weight` [5, 12] in the configured model (10 parameter tensors against 6)"
        );
        // A prefix: everything present matches, one side has more.
        let mut short = five.clone();
        short.pop();
        assert_eq!(
            shape_mismatch(&five, &short).unwrap(),
            "parameter 6 is nothing in the checkpoint but `out_layers.0.bias` [12] in the \
             configured model (5 parameter tensors against 6)"
        );
    }
}
