//! The decoder's burn code, generic over `B: Backend`: rotary embeddings, one decoder layer, and
//! the head. Weights arrive per layer from the store; nothing here knows about files.

mod fused;
mod head;
mod layer;
mod rope;

pub use head::Head;
pub use layer::DecoderLayer;
pub use rope::Rope;

use burn::prelude::*;

/// `x · w` for activations `[batch, seq, in]` and a weight stored `[out, in]`.
pub(crate) fn linear<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Tensor<B, 3> {
    let [batch, seq, input] = x.dims();
    let out = x.reshape([batch * seq, input]).matmul(weight.clone().transpose());
    let out = match bias {
        Some(bias) => out + bias.clone().unsqueeze_dim(0),
        None => out,
    };
    let features = out.dims()[1];
    out.reshape([batch, seq, features])
}

pub(crate) use fused::rms_norm;

/// Builds a device tensor from host values.
pub(crate) fn to_device<B: Backend, const D: usize>(
    shape: &[usize],
    values: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape.to_vec()), device)
}
