//! The model's head: final norm and lm_head, applied only to the rows that are scored.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rayon::prelude::*;

use super::fused::{Simd, on_host, softmax_terms};
use super::{Compute, KernelLevel, Linear, Precision, TokenRows, rms_norm, to_device};
use crate::error::Result;
use crate::store::{HEAD, LayerStore};

#[derive(Clone)]
pub struct Head<B: Backend> {
    norm: Tensor<B, 1>,
    /// `[vocab, hidden]`, always multiplied in f32; packed for the host kernel where the kernel
    /// level allows (burn's matmul of the transposed weight copied it for every chunk of rows).
    lm_head: Arc<Linear<B>>,
    eps: f64,
    /// SIMD of the host norm and softmax loops.
    simd: Simd,
}

impl<B: Backend> Head<B> {
    /// Reads the head; on host backends its norm and softmax run at `kernels`' SIMD.
    pub fn load(store: &LayerStore, device: &B::Device, kernels: KernelLevel) -> Result<Self> {
        let mut tensors = store.read_stored(HEAD, &["norm", "lm_head"])?.into_iter();
        let norm = tensors.next().expect("two tensors asked");
        let lm_head = tensors.next().expect("two tensors asked");
        let compute = Compute { precision: Precision::F32, kernels };
        let (lm_head, _) = Linear::new(vec![lm_head], None, compute, device);
        Ok(Self {
            norm: to_device(norm.shape(), norm.to_f32(), device),
            lm_head: Arc::new(lm_head),
            eps: store.manifest().spec.rms_norm_eps,
            simd: kernels.simd(),
        })
    }

    /// Logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, width] = hidden.dims();
        let (_, normed) = rms_norm(hidden, &self.norm, self.eps, self.simd);
        let normed = normed.reshape([1, rows, width]);
        let logits = self.lm_head.forward(normed, TokenRows::All);
        let vocab = logits.dims()[2];
        logits.reshape([rows, vocab])
    }

    /// Log-probabilities `[rows, vocab]`.
    pub fn log_probs(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = self.logits(hidden);
        if !on_host::<B>() {
            return log_softmax(logits, 1);
        }
        let (shape, device) = (logits.dims(), logits.device());
        let HostLogits { mut values, vocab, largest, log_sum } = HostLogits::read(logits, self.simd);
        values.par_chunks_mut(vocab).zip(largest.par_iter().zip(&log_sum)).for_each(|(row, (top, sum))| {
            row.iter_mut().for_each(|v| *v = (*v - top) - sum);
        });
        to_device(&shape, values, &device)
    }

    /// The log-probability of each target `(row, token)` after the hidden states `[rows,
    /// hidden]` (a row may have several targets), and each row's [`first_argmax`]. Both are taken
    /// where the logits are, so a few numbers a row leave the device instead of the vocabulary. On
    /// host backends the packed kernel folds them as it multiplies ([`score_folded`]); where
    /// burn's matmul runs the head, in one parallel pass over each row of logits (burn's ops made
    /// several, one thread each).
    ///
    /// [`score_folded`]: Self::score_folded
    pub fn score(&self, hidden: Tensor<B, 2>, targets: &[(usize, u32)]) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(weight) = self.lm_head.packed() {
            return self.score_folded(weight, hidden, targets);
        }
        let logits = self.logits(hidden);
        let ([rows, _], device) = (logits.dims(), logits.device());
        let count = targets.len();
        if !on_host::<B>() {
            let log_probs = log_softmax(logits, 1);
            let ints = |values: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(values, [count]), &device);
            let target_rows = ints(targets.iter().map(|&(row, _)| row as i64).collect());
            let tokens = ints(targets.iter().map(|&(_, token)| token as i64).collect()).reshape([count, 1]);
            let picked = log_probs.clone().select(0, target_rows).gather(1, tokens).reshape([count]);
            return (picked, first_argmax(log_probs));
        }
        let host = HostLogits::read(logits, self.simd);
        let picked: Vec<f32> = targets.par_iter().map(|&(row, token)| host.log_prob(row, token as usize)).collect();
        let best: Vec<i64> = (0..rows).into_par_iter().map(|i| host.first_largest(i)).collect();
        (to_device(&[count], picked, &device), Tensor::from_data(TensorData::new(best, [rows]), &device))
    }

    /// [`score`](Self::score) where the packed kernel multiplies the head: each row's softmax
    /// terms are folded as the product's tiles finish, and each target's logit is its own column
    /// product (equal to the product's value bit for bit), so no `[rows, vocab]` logits are
    /// written.
    #[cfg(target_arch = "x86_64")]
    fn score_folded(
        &self,
        weight: &super::gemm::PackedWeight,
        hidden: Tensor<B, 2>,
        targets: &[(usize, u32)],
    ) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
        let ([rows, width], device) = (hidden.dims(), hidden.device());
        let (_, normed) = rms_norm(hidden, &self.norm, self.eps, self.simd);
        let normed: Vec<f32> = normed.into_data().convert::<f32>().into_vec().expect("f32 data");
        let terms = weight.softmax_terms(&normed);
        let picked: Vec<f32> = (targets.par_iter())
            .map(|&(row, token)| {
                let logit = weight.column_product(&normed[row * width..][..width], token as usize);
                (logit - terms[row].largest) - terms[row].log_sum()
            })
            .collect();
        let vocab = weight.out_features();
        let best: Vec<i64> = terms.iter().map(|t| t.first_largest(vocab) as i64).collect();
        (to_device(&[targets.len()], picked, &device), Tensor::from_data(TensorData::new(best, [rows]), &device))
    }

    /// Whether [`score`](Self::score) writes no logits (the packed kernel folds them), so that
    /// its rows need not be chunked to keep the logits in cache.
    pub fn scores_without_logits(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.lm_head.packed().is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The greedy next token of each row of `hidden` `[rows, hidden]`: the [`first_argmax`] of
    /// its logits.
    pub fn greedy(&self, hidden: Tensor<B, 2>) -> Tensor<B, 1, Int> {
        #[cfg(target_arch = "x86_64")]
        if self.lm_head.packed().is_some() {
            return self.score(hidden, &[]).1;
        }
        let logits = self.logits(hidden);
        if !on_host::<B>() {
            return first_argmax(logits);
        }
        let ([rows, _], device) = (logits.dims(), logits.device());
        let host = HostLogits::read(logits, self.simd);
        let best: Vec<i64> = (0..rows).into_par_iter().map(|i| host.first_largest(i)).collect();
        Tensor::from_data(TensorData::new(best, [rows]), &device)
    }
}

/// Logits `[rows, vocab]` read into host memory, with each row's log-softmax terms
/// ([`softmax_terms`]): what the host paths of [`Head`] compute from.
struct HostLogits {
    values: Vec<f32>,
    vocab: usize,
    largest: Vec<f32>,
    log_sum: Vec<f32>,
}

impl HostLogits {
    fn read<B: Backend>(logits: Tensor<B, 2>, simd: Simd) -> Self {
        let vocab = logits.dims()[1];
        let values: Vec<f32> = logits.into_data().convert::<f32>().into_vec().expect("f32 data");
        let (largest, log_sum) = softmax_terms(&values, vocab, simd);
        Self { values, vocab, largest, log_sum }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The log-probability of `token` in row `i`.
    fn log_prob(&self, i: usize, token: usize) -> f32 {
        (self.row(i)[token] - self.largest[i]) - self.log_sum[i]
    }

    /// [`first_argmax`] of row `i` (a row holding a NaN has a NaN log-sum: then, as there, the
    /// vocabulary size).
    fn first_largest(&self, i: usize) -> i64 {
        let row = self.row(i);
        if self.log_sum[i].is_nan() {
            return row.len() as i64;
        }
        row.iter().position(|&v| v == self.largest[i]).unwrap_or(row.len()) as i64
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
    use crate::store::StoredTensor;
    use crate::tensor::HostTensor;

    #[test]
    fn first_argmax_takes_the_first_of_tied_maxima() {
        let values = vec![1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0, 0.0, -1.0, -2.0, 0.0, -3.0, -2.0, -1.0, -1.0];
        let values = to_device::<DefaultBackend, 2>(&[4, 4], values, &Default::default());
        let picks: Vec<i64> = first_argmax(values).into_data().convert::<i64>().into_vec().unwrap();
        assert_eq!(picks, [1, 0, 0, 2]);
    }

    fn floats<const D: usize>(values: Tensor<DefaultBackend, D>) -> Vec<f32> {
        values.into_data().convert::<f32>().into_vec().unwrap()
    }

    fn ints(values: Tensor<DefaultBackend, 1, Int>) -> Vec<i64> {
        values.into_data().convert::<i64>().into_vec().unwrap()
    }

    /// A head of random weights whose rows 5 and 9 are equal (tied logits in every row), at
    /// `kernels` (the packed matmul at the SIMD levels, burn's at `off`); and a hidden state whose
    /// largest logits are those two.
    fn random_head(kernels: KernelLevel, vocab: usize, width: usize) -> (Head<DefaultBackend>, Vec<f32>) {
        let device = Default::default();
        let mut state = 0x2545_f491_u64;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        let mut weight: Vec<f32> = (0..vocab * width).map(|_| next()).collect();
        weight.copy_within(5 * width..6 * width, 9 * width);
        let stored = StoredTensor::Float(HostTensor::from_f32(vec![vocab, width], &weight));
        let compute = Compute { precision: Precision::F32, kernels };
        let norm: Vec<f32> = (0..width).map(|_| 1.0 + next() / 8.0).collect();
        let tied = weight[5 * width..6 * width].iter().zip(&norm).map(|(w, n)| w / n).collect();
        let head = Head {
            norm: to_device(&[width], norm, &device),
            lm_head: Arc::new(Linear::new(vec![stored], None, compute, &device).0),
            eps: 1e-5,
            simd: kernels.simd(),
        };
        (head, tied)
    }

    /// The host scoring (one pass per row) against burn's log_softmax, gather and
    /// [`first_argmax`] on the same logits, at every kernel level this CPU runs; the vocabulary
    /// is not a multiple of the SIMD width, and tied maxima must give the first index.
    #[test]
    fn host_scores_match_burn_ops_at_every_level() {
        let (vocab, width, rows) = (1003, 64, 37);
        for kernels in KernelLevel::ALL.into_iter().filter(|&k| k.capped() == k) {
            let (head, tied) = random_head(kernels, vocab, width);
            let mut hidden: Vec<f32> = (0..rows * width).map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0).collect();
            for row in [3, 20] {
                hidden[row * width..(row + 1) * width].copy_from_slice(&tied);
            }
            let hidden = to_device::<DefaultBackend, 2>(&[rows, width], hidden, &Default::default());
            // Rows with one target, rows with three (as MMLU's answers after one question), and
            // every fifth row with none.
            let targets: Vec<(usize, u32)> = (0..rows)
                .filter(|row| row % 5 != 4)
                .flat_map(|row| (0..1 + 2 * (row % 2)).map(move |k| (row, ((row * 97 + k * 31) % vocab) as u32)))
                .collect();

            let logits = head.logits(hidden.clone());
            let expected = floats(log_softmax(logits.clone(), 1));
            let expected_best = ints(first_argmax(logits));
            let (picked, best) = head.score(hidden.clone(), &targets);
            assert_eq!(ints(best), expected_best, "{kernels}");
            assert_eq!((expected_best[3], expected_best[20]), (5, 5), "{kernels}: the tie goes to the first");
            let picked = floats(picked);
            assert_eq!(picked.len(), targets.len());
            for (a, &(row, token)) in picked.iter().zip(&targets) {
                let b = expected[row * vocab + token as usize];
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{kernels}: {a} against {b}");
            }
            let log_probs = floats(head.log_probs(hidden.clone()));
            for (a, &b) in log_probs.iter().zip(&expected) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{kernels}: {a} against {b}");
            }
            assert_eq!(ints(head.greedy(hidden)), expected_best, "{kernels}");
        }
    }

    #[test]
    fn a_row_with_a_nan_has_no_largest_value() {
        let host = |row: &[f32]| {
            let logits = to_device::<DefaultBackend, 2>(&[1, row.len()], row.to_vec(), &Default::default());
            HostLogits::read(logits, Simd::Portable)
        };
        let nan = host(&[1.0, f32::NAN, 3.0]);
        assert!(nan.log_sum[0].is_nan());
        assert_eq!(nan.first_largest(0), 3);
        let tied = host(&[1.0, 3.0, 3.0, f32::NEG_INFINITY]);
        assert_eq!((tied.largest[0], tied.first_largest(0)), (3.0, 1));
        assert!((tied.log_sum[0] - (2.0 + (-2f32).exp()).ln()).abs() < 1e-6);
    }
}
