//! The model's head: final norm and lm_head, applied only to the rows that are scored.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::fused::Simd;
use super::{KernelLevel, matmul, rms_norm, to_device};
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
        matmul(rms_norm(hidden, &self.norm, self.eps, self.simd), self.lm_head.clone().transpose())
    }

    /// Log-probabilities `[rows, vocab]`.
    pub fn log_probs(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        log_softmax(self.logits(hidden), 1)
    }

    /// For each row of `hidden` `[rows, hidden]`: the log-probability of `targets[row]`, and the
    /// row's [`first_argmax`]. Both are taken where the log-probabilities are, so two numbers a
    /// row leave the device instead of the vocabulary.
    pub fn score(&self, hidden: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
        let log_probs = self.log_probs(hidden);
        let [rows, _] = log_probs.dims();
        let picked = log_probs.clone().gather(1, targets.reshape([rows, 1])).reshape([rows]);
        (picked, first_argmax(log_probs))
    }

    /// The greedy next token of each row of `hidden` `[rows, hidden]`: the [`first_argmax`] of
    /// its logits.
    pub fn greedy(&self, hidden: Tensor<B, 2>) -> Tensor<B, 1, Int> {
        first_argmax(self.logits(hidden))
    }
}

/// The index of the first largest value of each row of `values` `[rows, n]`, as `argmax` picks it
/// in torch (lm-eval's `is_greedy`); burn's own argmax names no index among ties. A row without a
/// largest value (NaN) gives `n`.
pub fn first_argmax<B: Backend>(values: Tensor<B, 2>) -> Tensor<B, 1, Int> {
    let [rows, n] = values.dims();
    let device = values.device();
    let is_max = values.clone().equal(values.max_dim(1).expand([rows, n]));
    let index = Tensor::<B, 1, Int>::arange(0..n as i64, &device).unsqueeze::<2>().expand([rows, n]);
    Tensor::<B, 2, Int>::full([rows, n], n as i64, &device).mask_where(is_max, index).min_dim(1).reshape([rows])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;

    #[test]
    fn first_argmax_takes_the_first_of_tied_maxima() {
        let values = vec![1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0, 0.0, -1.0, -2.0, 0.0, -3.0, -2.0, -1.0, -1.0];
        let values = to_device::<DefaultBackend, 2>(&[4, 4], values, &Default::default());
        let picks: Vec<i64> = first_argmax(values).into_data().convert::<i64>().into_vec().unwrap();
        assert_eq!(picks, [1, 0, 0, 2]);
    }
}
