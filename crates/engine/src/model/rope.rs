//! Rotary position embeddings as Hugging Face computes them (`rotate_half` layout), with llama3
//! and linear frequency scaling.

use std::f64::consts::PI;

use burn::prelude::*;

use super::fused;
use crate::spec::{ModelSpec, RopeScaling};

/// cos/sin tables `[positions, head_dim]` on the device.
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// The same tables in host memory: for the fused host path, and for decode steps, which
    /// rotate on the host on every backend.
    host: (Vec<f32>, Vec<f32>),
    on_host: bool,
}

impl<B: Backend> Rope<B> {
    pub fn new(spec: &ModelSpec, max_positions: usize, device: &B::Device) -> Self {
        let inv_freq = inverse_frequencies(spec);
        let dim = spec.head_dim;
        let mut cos = Vec::with_capacity(max_positions * dim);
        let mut sin = Vec::with_capacity(max_positions * dim);
        for position in 0..max_positions {
            // f32 products as in transformers, so angles round the same way.
            let angles: Vec<f32> = inv_freq.iter().map(|f| position as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [max_positions, dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos.clone(), shape), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), shape), device),
            host: (cos, sin),
            on_host: fused::on_host::<B>(),
        }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The cos/sin tables in host memory, where the backend keeps tensors there.
    pub fn host_tables(&self) -> Option<(&[f32], &[f32])> {
        self.on_host.then(|| self.tables())
    }

    /// The cos/sin tables `[positions, head_dim]` in host memory, on every backend.
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.host.0, &self.host.1)
    }

    /// Rotates `x` `[batch, seq, heads * head_dim]` by the angles of positions `0..seq`.
    pub fn apply(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
        let [batch, seq, width] = x.dims();
        let dim = width / heads;
        let x = x.reshape([batch, seq, heads, dim]);
        let cos = self.cos.clone().slice_dim(0, 0..seq).reshape([1, seq, 1, dim]);
        let sin = self.sin.clone().slice_dim(0, 0..seq).reshape([1, seq, 1, dim]);
        let half = dim / 2;
        let first = x.clone().slice_dim(3, 0..half);
        let second = x.clone().slice_dim(3, half..dim);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        (x * cos + rotated * sin).reshape([batch, seq, width])
    }
}

/// Per-pair inverse frequencies, scaled as the spec says, rounded to f32 like transformers.
fn inverse_frequencies(spec: &ModelSpec) -> Vec<f32> {
    let dim = spec.head_dim;
    let base: Vec<f64> =
        (0..dim / 2).map(|i| f64::from((spec.rope_theta.powf((2 * i) as f64 / dim as f64) as f32).recip())).collect();
    let scaled: Vec<f64> = match &spec.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let old_context = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}
