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
/// `None` when every parameter has the same path and shape. Parameters present on one side
/// only (another number of layers or clusters) are named first; otherwise the first parameter
/// whose shape differs.
pub fn shape_mismatch(expected: &[ParamShape], found: &[ParamShape]) -> Option<String> {
    let only_in = |side: &[ParamShape], other: &[ParamShape]| -> Vec<String> {
        side.iter()
            .filter(|(p, _)| !other.iter().any(|(q, _)| q == p))
            .map(|(p, _)| format!("`{p}`"))
            .collect()
    };
    let (in_found, in_expected) = (only_in(found, expected), only_in(expected, found));
    if !in_found.is_empty() || !in_expected.is_empty() {
        let list = |v: &[String]| match v.len() {
            0 => "none".to_owned(),
            1..=4 => v.join(", "),
            n => format!("{}, … ({n} in all)", v[..4].join(", ")),
        };
        return Some(format!(
            "other layers: only in the checkpoint {}; only in the configured model {}",
            list(&in_found),
            list(&in_expected)
        ));
    }
    let ((path, want), (_, got)) = expected.iter().zip(found).find(|(e, f)| e != f)?;
    Some(format!(
        "`{path}` is {got:?} in the checkpoint but {want:?} in the configured model (weights \
         are [in, out])"
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

    /// Every parameter is listed: the shapes account for every trainable value, for each
    /// model and decoder kind (a field added to a module without its `ParamShapes` would
    /// fail here).
    #[test]
    fn shapes_cover_every_parameter() {
        use crate::autoencoder::{ClusteredAutoEncoder, ItemClusters};
        use crate::config::{AutoEncoderConfig, DecoderKind, ModelConfig, Variant};
        use crate::latent::LatentDiffRec;
        let count = |s: Vec<ParamShape>| -> usize {
            s.iter().map(|(_, d)| d.iter().product::<usize>()).sum()
        };
        let dev = Default::default();
        let d = Denoiser::<B>::new(12, &DenoiserConfig::default(), InitScheme::DiffRec, &dev);
        assert_eq!(count(d.clone().into_record().shapes()), d.num_params());
        let clusters = ItemClusters::by_items(&[0, 1, 2, 1, 0, 2, 2, 1, 0, 0]);
        for decoder in [DecoderKind::Shared, DecoderKind::PerCluster] {
            let ae_cfg = AutoEncoderConfig {
                dims: vec![8, 6],
                decoder,
                ..AutoEncoderConfig::default()
            };
            let ae = ClusteredAutoEncoder::<B>::new(&clusters, &ae_cfg, &dev);
            assert_eq!(count(ae.clone().into_record().shapes()), ae.num_params());
            let cfg = ModelConfig {
                variant: Variant::LDiffrec,
                autoencoder: ae_cfg,
                ..ModelConfig::default()
            };
            let m = LatentDiffRec::<B>::new(&clusters, &cfg, &dev);
            let shapes = m.clone().into_record().shapes();
            assert!(shapes.iter().any(|(p, _)| p.starts_with("denoiser.")));
            assert_eq!(count(shapes), m.num_params());
        }
    }

    #[test]
    fn names_what_differs() {
        let five = denoiser(vec![5]);
        assert_eq!(shape_mismatch(&five, &five), None);
        assert_eq!(
            shape_mismatch(&five, &denoiser(vec![6])).unwrap(),
            "`in_layers.0.weight` is [16, 6] in the checkpoint but [16, 5] in the configured \
             model (weights are [in, out])"
        );
        // Another number of layers: [5, 5] has in_layers.1 and out_layers.1, [5] has not.
        assert_eq!(
            shape_mismatch(&five, &denoiser(vec![5, 5])).unwrap(),
            "other layers: only in the checkpoint `in_layers.1.weight`, `in_layers.1.bias`, \
             `out_layers.1.weight`, `out_layers.1.bias`; only in the configured model none"
        );
        assert_eq!(
            shape_mismatch(&denoiser(vec![5, 5, 5]), &five).unwrap(),
            "other layers: only in the checkpoint none; only in the configured model \
             `in_layers.1.weight`, `in_layers.1.bias`, `in_layers.2.weight`, \
             `in_layers.2.bias`, … (8 in all)"
        );
    }
}
