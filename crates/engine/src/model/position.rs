//! Where each token is, as attention sees it: rotary embeddings of q and k, Qwen's logn scaling
//! of queries, or ALiBi's per-head distance penalty.
//!
//! Rotary embeddings turn the first `dims` dimensions of each head (all of them, or half for
//! ChatGLM), pairing `(x[i], x[i + dims/2])` as Hugging Face's `rotate_half` does or `(x[2i],
//! x[2i+1])` (interleaved, GPT-J style). Angles are `position * inv_freq` in f32 as transformers
//! computes them; `inv_freq` follows the spec's scaling. Two scalings depend on the length of the
//! context being run (dynamic NTK, Hugging Face's and Qwen's): a sequence's angles then come from
//! tables of a raised base, made on first use and shared by the sequences that need the same.
//!
//! The host path rotates rows in place ([`Positions::prepare_qk`]); device backends get the same
//! angles as tensors ([`Positions::rotate_qk_ops`]).

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::{Arc, Mutex};

use burn::prelude::*;

use crate::spec::{ModelSpec, PositionEncoding, RopeScaling};

/// cos and sin of every rotated pair's angle, `[positions, dims / 2]` each.
pub struct AngleTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    pairs: usize,
}

impl AngleTables {
    fn new(inv_freq: &[f32], positions: usize) -> Self {
        let mut cos = Vec::with_capacity(positions * inv_freq.len());
        let mut sin = Vec::with_capacity(positions * inv_freq.len());
        for position in 0..positions {
            for f in inv_freq {
                // f32 products as in transformers, so angles round the same way.
                let angle = position as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self { cos, sin, pairs: inv_freq.len() }
    }

    fn positions(&self) -> usize {
        self.cos.len() / self.pairs
    }

    fn at(&self, position: usize) -> (&[f32], &[f32]) {
        let at = position * self.pairs;
        (&self.cos[at..at + self.pairs], &self.sin[at..at + self.pairs])
    }
}

/// The rotary embedding of a spec.
struct Rotary {
    dims: usize,
    interleaved: bool,
    theta: f64,
    scaling: Option<RopeScaling>,
    /// Angles for contexts that leave the base as it is.
    plain: Arc<AngleTables>,
    /// Angles of raised bases (dynamic scalings), by the base's bits.
    raised: Mutex<HashMap<u64, Arc<AngleTables>>>,
}

impl Rotary {
    /// The base a forward over `context` tokens rotates with.
    fn base(&self, context: usize) -> f64 {
        let exponent = self.dims as f64 / (self.dims as f64 - 2.0);
        match self.scaling {
            Some(RopeScaling::Dynamic { factor, original_max_position_embeddings: original }) if context > original => {
                self.theta * (factor * context as f64 / original as f64 - (factor - 1.0)).powf(exponent)
            }
            Some(RopeScaling::QwenNtk { seq_length }) => {
                let alpha = (2f64.powf(((context as f64 / seq_length as f64).log2() + 1.0).ceil()) - 1.0).max(1.0);
                self.theta * alpha.powf(exponent)
            }
            _ => self.theta,
        }
    }

    /// Angle tables for a forward over `context` tokens, covering at least `positions`.
    fn tables(&self, context: usize, positions: usize) -> Arc<AngleTables> {
        let base = self.base(context);
        if base == self.theta && self.plain.positions() >= positions {
            return self.plain.clone();
        }
        let mut raised = self.raised.lock().expect("rope table cache");
        let entry = raised.entry(base.to_bits()).or_insert_with(|| Arc::new(AngleTables::new(&[], 0)));
        if entry.pairs == 0 || entry.positions() < positions {
            // At least the wave's positions, so that decode steps do not remake it token by token.
            let positions = positions.max(self.plain.positions());
            *entry = Arc::new(AngleTables::new(&self.inverse_frequencies(base), positions));
        }
        entry.clone()
    }

    /// Per-pair inverse frequencies for `base`, scaled as the spec says, rounded to f32 like
    /// transformers.
    fn inverse_frequencies(&self, base: f64) -> Vec<f32> {
        let dims = self.dims;
        let plain = (0..dims / 2).map(|i| f64::from((base.powf((2 * i) as f64 / dims as f64) as f32).recip()));
        let scaled: Vec<f64> = match self.scaling {
            Some(RopeScaling::Linear { factor }) => plain.map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old_context = original_max_position_embeddings as f64;
                let (low_freq_wavelen, high_freq_wavelen) =
                    (old_context / low_freq_factor, old_context / high_freq_factor);
                plain
                    .map(|f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth =
                                (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => plain.collect(),
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }

    /// Rotates the first `dims` dimensions of each `head_dim` slice of `values` by one
    /// position's angles.
    fn rotate(&self, values: &mut [f32], head_dim: usize, (cos, sin): (&[f32], &[f32])) {
        let half = self.dims / 2;
        let turn = |a: &mut f32, b: &mut f32, cos: f32, sin: f32| (*a, *b) = (*a * cos - *b * sin, *b * cos + *a * sin);
        for head in values.chunks_exact_mut(head_dim) {
            if self.interleaved {
                for ((pair, &cos), &sin) in head[..2 * half].chunks_exact_mut(2).zip(cos).zip(sin) {
                    let [a, b] = pair else { unreachable!("pairs of two") };
                    turn(a, b, cos, sin);
                }
            } else {
                // Halves as separate slices, so the loop vectorizes (it had been a fifth of a
                // percent of a HellaSwag wave one value at a time).
                let (first, second) = head[..2 * half].split_at_mut(half);
                for (((a, b), &cos), &sin) in first.iter_mut().zip(second).zip(cos).zip(sin) {
                    turn(a, b, cos, sin);
                }
            }
        }
    }
}

/// How a wave's attention knows positions (see the module doc); positions `0..max_positions`.
pub struct Positions<B: Backend> {
    rotary: Option<Rotary>,
    /// ALiBi's slope per head.
    alibi: Option<Vec<f32>>,
    logn_from: Option<usize>,
    head_dim: usize,
    max_positions: usize,
    device: B::Device,
}

impl<B: Backend> Positions<B> {
    pub fn new(spec: &ModelSpec, max_positions: usize, device: &B::Device) -> Self {
        let rotary = (spec.position_encoding == PositionEncoding::Rotary).then(|| {
            let mut rotary = Rotary {
                dims: spec.rotary_dims(),
                interleaved: spec.rope_layout.interleaved,
                theta: spec.rope_theta,
                scaling: spec.rope_scaling.clone(),
                plain: Arc::new(AngleTables::new(&[], 0)),
                raised: Mutex::default(),
            };
            rotary.plain = Arc::new(AngleTables::new(&rotary.inverse_frequencies(spec.rope_theta), max_positions));
            rotary
        });
        let alibi = (spec.position_encoding == PositionEncoding::Alibi).then(|| alibi_slopes(spec.num_heads));
        Self {
            rotary,
            alibi,
            logn_from: spec.logn_attention,
            head_dim: spec.head_dim,
            max_positions,
            device: device.clone(),
        }
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// ALiBi's slope per head, where the model uses it instead of rotary embeddings.
    pub fn alibi_slopes(&self) -> Option<&[f32]> {
        self.alibi.as_deref()
    }

    /// The angles of a forward over `context` tokens (a sequence's length), covering `positions`;
    /// `None` without rotary embeddings.
    pub fn angles(&self, context: usize, positions: usize) -> Option<Arc<AngleTables>> {
        self.rotary.as_ref().map(|rotary| rotary.tables(context, positions))
    }

    /// The context a decode step at `position` rotates with, for a sequence whose prompt had
    /// `prompt` tokens: Qwen keeps its prompt's scaling for the tokens it generates; Hugging
    /// Face's dynamic scaling takes the length so far.
    pub fn decode_context(&self, prompt: usize, position: usize) -> usize {
        match self.rotary.as_ref().and_then(|r| r.scaling.as_ref()) {
            Some(RopeScaling::QwenNtk { .. }) => prompt,
            _ => position + 1,
        }
    }

    /// Rotates one row's query heads and key heads (`qk` = `heads` query heads, then key heads)
    /// at `position`, and scales the queries (logn).
    pub fn prepare_qk(&self, angles: Option<&AngleTables>, qk: &mut [f32], heads: usize, position: usize) {
        if let (Some(rotary), Some(angles)) = (&self.rotary, angles) {
            rotary.rotate(qk, self.head_dim, angles.at(position));
        }
        let scale = self.query_scale(position);
        if scale != 1.0 {
            qk[..heads * self.head_dim].iter_mut().for_each(|q| *q *= scale);
        }
    }

    /// Rotates one row's key heads at `position`.
    pub fn rotate_keys(&self, angles: Option<&AngleTables>, keys: &mut [f32], position: usize) {
        if let (Some(rotary), Some(angles)) = (&self.rotary, angles) {
            rotary.rotate(keys, self.head_dim, angles.at(position));
        }
    }

    /// Qwen's logn factor of a query at (0-based) `position`: `ln(i) / ln(n)` for 1-based
    /// positions `i` past `n`, else 1.
    fn query_scale(&self, position: usize) -> f32 {
        match self.logn_from {
            Some(n) if position + 1 > n => ((position + 1) as f64).ln() as f32 / (n as f64).ln() as f32,
            _ => 1.0,
        }
    }

    /// [`prepare_qk`](Self::prepare_qk) as burn ops for device backends: `q` `[batch, seq, heads
    /// * head_dim]` and `k` `[batch, seq, kv_heads * head_dim]` of right-padded sequences of
    /// `lengths`, rotated with one set of angle tensors; the queries also get the logn scaling.
    pub fn rotate_qk_ops(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        heads: usize,
        kv_heads: usize,
        lengths: &[usize],
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [batch, seq, _] = q.dims();
        let angles = self.rotary.as_ref().map(|rotary| (rotary, self.angle_tensors(rotary, lengths, seq)));
        let turn = |x: Tensor<B, 3>, heads: usize| {
            let width = x.dims()[2];
            let x = x.reshape([batch, seq, heads, self.head_dim]);
            let x = match &angles {
                Some((rotary, (cos, sin))) => self.rotate_tensor(rotary, x, cos.clone(), sin.clone()),
                None => x,
            };
            x.reshape([batch, seq, width])
        };
        let (q, k) = (turn(q, heads), turn(k, kv_heads));
        if self.logn_from.is_none() {
            return (q, k);
        }
        let scales: Vec<f32> = (0..batch).flat_map(|_| (0..seq).map(|p| self.query_scale(p))).collect();
        let scales = Tensor::<B, 1>::from_data(TensorData::new(scales, [batch * seq]), &self.device);
        (q * scales.reshape([batch, seq, 1]), k)
    }

    /// cos and sin of each sequence's angles at positions `0..seq`, `[batch, seq, 1, dims / 2]`.
    fn angle_tensors(&self, rotary: &Rotary, lengths: &[usize], seq: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = rotary.dims / 2;
        let batch = lengths.len();
        let (mut cos, mut sin) = (Vec::with_capacity(batch * seq * half), Vec::with_capacity(batch * seq * half));
        for &length in lengths {
            let angles = rotary.tables(length, seq);
            for position in 0..seq {
                let (c, s) = angles.at(position);
                cos.extend_from_slice(c);
                sin.extend_from_slice(s);
            }
        }
        let table = |values| {
            Tensor::<B, 1>::from_data(TensorData::new(values, [batch * seq * half]), &self.device)
                .reshape([batch, seq, 1, half])
        };
        (table(cos), table(sin))
    }

    /// `x` `[batch, seq, heads, head_dim]` with its rotary dimensions turned by `cos`/`sin`
    /// ([`Self::angle_tensors`]).
    fn rotate_tensor(&self, rotary: &Rotary, x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, seq, heads, head_dim] = x.dims();
        let half = rotary.dims / 2;
        let rotated = x.clone().slice_dim(3, 0..rotary.dims);
        let (a, b) = if rotary.interleaved {
            let pairs = rotated.reshape([batch, seq, heads, half, 2]);
            let a: Tensor<B, 4> = pairs.clone().slice_dim(4, 0..1).squeeze_dim(4);
            (a, pairs.slice_dim(4, 1..2).squeeze_dim(4))
        } else {
            (rotated.clone().slice_dim(3, 0..half), rotated.slice_dim(3, half..rotary.dims))
        };
        let (a_out, b_out) = (a.clone() * cos.clone() - b.clone() * sin.clone(), b * cos + a * sin);
        let turned = if rotary.interleaved {
            Tensor::stack::<5>(vec![a_out, b_out], 4).reshape([batch, seq, heads, rotary.dims])
        } else {
            Tensor::cat(vec![a_out, b_out], 3)
        };
        if rotary.dims == head_dim {
            return turned;
        }
        Tensor::cat(vec![turned, x.slice_dim(3, rotary.dims..head_dim)], 3)
    }

    /// ALiBi's additive scores `[batch, heads, rows, keys]` of the query rows `queries` over the
    /// keys `0..queries.end`, for device backends (`-slope * distance`; the causal mask hides
    /// later keys).
    pub fn alibi_bias_ops(&self, batch: usize, queries: std::ops::Range<usize>) -> Option<Tensor<B, 4>> {
        let slopes = self.alibi.as_ref()?;
        let (heads, rows, keys) = (slopes.len(), queries.len(), queries.end);
        let values: Vec<f32> = slopes
            .iter()
            .flat_map(|&slope| queries.clone().flat_map(move |q| (0..keys).map(move |k| alibi_score(slope, q, k))))
            .collect();
        let bias = Tensor::<B, 1>::from_data(TensorData::new(values, [heads * rows * keys]), &self.device);
        Some(bias.reshape([1, heads, rows, keys]).expand([batch, heads, rows, keys]))
    }
}

/// ALiBi's score offset of key `key` for query `query`: `-slope * (query - key)` (upstream adds
/// `slope * key`, which differs by a per-query constant that softmax cancels).
#[inline(always)]
pub fn alibi_score(slope: f32, query: usize, key: usize) -> f32 {
    -slope * (query as f32 - key as f32)
}

/// ALiBi slopes as Baichuan's `_get_interleave`: for a power of two `n`, `start^(i+1)` with
/// `start = 2^(-8/n)`; otherwise the slopes of the largest power of two `p < n`, then every other
/// slope of `2p`, up to `n`.
pub fn alibi_slopes(n: usize) -> Vec<f32> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powi(i as i32)).collect()
    }
    let p = if n.is_power_of_two() { n } else { 1 << n.ilog2() };
    let mut slopes = power_of_two(p);
    slopes.extend(power_of_two(2 * p).into_iter().step_by(2).take(n - p));
    slopes.into_iter().map(|s| s as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn alibi_slopes_follow_the_interleave_rule() {
        let eight: Vec<f32> = (1..=8).map(|i| 0.5f32.powi(i)).collect();
        assert_eq!(alibi_slopes(8), eight);
        // 6 heads: 4's slopes, then slopes 0 and 2 of 8's.
        let six = alibi_slopes(6);
        assert_eq!(&six[..4], &[0.25, 0.0625, 0.015625, 0.00390625]);
        assert_eq!(&six[4..], &[0.5, 0.125]);
    }
}
