//! The model's head: final norm and lm_head, applied only to the rows that are scored.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::fused::Simd;
use super::{KernelLevel, rms_norm, to_device};
use crate::error::Result;
use crate::store::{HEAD, LayerStore};

#[derive(Clone)]
pub struct Head<B: Backend> {
    norm: Tensor<B, 1>,
    /// `[vocab, hidden]`
    lm_head: Tensor<B, 2>,
    eps: f64,
    /// SIMD of the host norm loop.
    simd: Simd,
}

impl<B: Backend> Head<B> {
    /// Reads the head; on host backends its norm runs at `kernels`' SIMD.
    pub fn load(store: &LayerStore, device: &B::Device, kernels: KernelLevel) -> Result<Self> {
        let mut tensors = store.read_tensors(HEAD, &["norm", "lm_head"])?.into_iter();
        let (norm_shape, norm) = tensors.next().expect("two tensors asked");
        let (head_shape, lm_head) = tensors.next().expect("two tensors asked");
        Ok(Self {
            norm: to_device(&norm_shape, norm, device),
            lm_head: to_device(&head_shape, lm_head, device),
            eps: store.manifest().spec.rms_norm_eps,
            simd: kernels.simd(),
        })
    }

    /// Logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        rms_norm(hidden, &self.norm, self.eps, self.simd).matmul(self.lm_head.clone().transpose())
    }

    /// Log-probabilities `[rows, vocab]`.
    pub fn log_probs(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        log_softmax(self.logits(hidden), 1)
    }
}
