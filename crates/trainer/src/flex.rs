//! Raw access to burn-flex buffers from backend-generic code: the CPU fast paths of the
//! optimiser (`optim.rs`) and the parameter average (`ema.rs`) check at run time that the
//! backend's float tensors are [`FlexTensor`] and otherwise take their tensor-op paths. Nothing
//! here names a backend in the models.

use std::any::Any;

use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;

/// `Some` when `B`'s float tensors are burn-flex's.
pub(crate) fn to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => {
            let mut slot = Some(p);
            (&mut slot as &mut dyn Any)
                .downcast_mut::<Option<FlexTensor>>()
                .and_then(Option::take)
        }
        TensorPrimitive::QFloat(_) => None,
    }
}

pub(crate) fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let mut slot = Some(t);
    let p = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B::FloatTensorPrimitive>>()
        .and_then(Option::take)
        .expect("from_flex is only called when B's float tensors are FlexTensor");
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Contiguous f32 from offset 0 (what the fused loop reads and writes as a flat slice).
pub(crate) fn flat_f32(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
        && t.layout().contiguous_offsets() == Some((0, t.layout().num_elements()))
}
