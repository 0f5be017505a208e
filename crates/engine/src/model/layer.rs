//! One decoder layer, the same for every family: pre-norm attention with grouped-query heads
//! (positions as [`Positions`] says: rotary, logn, ALiBi), then a pre-norm SwiGLU MLP, each with
//! a residual connection. What differs between families is in the spec's switches (biases, the
//! sliding window of this layer) and in how the families map their checkpoints' tensors.

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::kv_cache::{self, SequenceKv};
use super::{Compute, DEVICE_TENSOR_BYTES, KernelLevel, Linear, Positions, fused, rms_norm, to_device};
use crate::error::{EngineError, Result};
use crate::source::LayerTensor;
use crate::spec::ModelSpec;
use crate::store::LayerHost;

/// A right-padded micro-batch's sequences: the true length of each; for a prefill, the caches
/// their keys and values go to; for sequences that continue a shared prefix already run, that
/// prefix's keys and values at this layer (host backends only).
pub struct Sequences<'a> {
    pub lengths: &'a [usize],
    pub keep: Option<&'a mut [SequenceKv]>,
    pub past: Option<&'a [Option<&'a SequenceKv>]>,
}

/// The q, k and v projections are stacked into one weight, and gate and up into another: one
/// wide matmul keeps both cores busy where three narrow ones (k and v have only
/// `kv_heads * head_dim` outputs) would not.
pub struct DecoderLayer<B: Backend> {
    attn_norm: Tensor<B, 1>,
    /// `[q + 2 kv, hidden]`: q rows, then k rows, then v rows (and their biases, for qwen2).
    qkv_proj: Linear<B>,
    o_proj: Linear<B>,
    ffn_norm: Tensor<B, 1>,
    /// `[2 intermediate, hidden]`: gate rows, then up rows.
    gate_up_proj: Linear<B>,
    down_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    eps: f64,
    sliding_window: Option<usize>,
    /// The host kernel level of attention and the element-wise loops.
    kernels: KernelLevel,
}

impl<B: Backend> DecoderLayer<B> {
    /// Moves a layer's host tensors onto `device`, checking their shapes against the spec; the
    /// layer computes as `compute` says.
    pub fn from_host(spec: &ModelSpec, mut host: LayerHost, compute: Compute, device: &B::Device) -> Result<Self> {
        let h = spec.hidden_size;
        let q = spec.num_heads * spec.head_dim;
        let kv = spec.num_kv_heads * spec.head_dim;
        let ffn = spec.intermediate_size;
        let mut take = |tensor: LayerTensor, expected: &[usize]| -> Result<Vec<f32>> {
            let (shape, values) = host.tensors.remove(&tensor).ok_or_else(|| {
                EngineError::Other(format!("layer {}: tensor {} is missing", host.index, tensor.store_name()))
            })?;
            if shape != expected {
                return Err(EngineError::Other(format!(
                    "layer {}: tensor {} has shape {shape:?}, the spec implies {expected:?}",
                    host.index,
                    tensor.store_name()
                )));
            }
            Ok(values)
        };
        // Concatenates tensors, each checked against its expected shape.
        let mut concat = |parts: &[(LayerTensor, &[usize])]| -> Result<Vec<f32>> {
            let mut values = Vec::new();
            for &(tensor, shape) in parts {
                values.extend(take(tensor, shape)?);
            }
            Ok(values)
        };
        use LayerTensor::*;
        let qkv = concat(&[(QProj, &[q, h]), (KProj, &[kv, h]), (VProj, &[kv, h])])?;
        let qkv_bias =
            if spec.qkv_bias { Some(concat(&[(QBias, &[q]), (KBias, &[kv]), (VBias, &[kv])])?) } else { None };
        let o = concat(&[(OProj, &[h, q])])?;
        let o_bias = if spec.o_bias { Some(concat(&[(OBias, &[h])])?) } else { None };
        let gate_up = concat(&[(GateProj, &[ffn, h]), (UpProj, &[ffn, h])])?;
        let down = concat(&[(DownProj, &[h, ffn])])?;
        let attn_norm = concat(&[(AttnNorm, &[h])])?;
        let ffn_norm = concat(&[(FfnNorm, &[h])])?;
        let linear = |shape, weight, bias| Linear::new(shape, weight, bias, compute, device);
        Ok(Self {
            attn_norm: to_device(&[h], attn_norm, device),
            qkv_proj: linear([q + 2 * kv, h], qkv, qkv_bias),
            o_proj: linear([h, q], o, o_bias),
            ffn_norm: to_device(&[h], ffn_norm, device),
            gate_up_proj: linear([2 * ffn, h], gate_up, None),
            down_proj: linear([h, ffn], down, None),
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            eps: spec.rms_norm_eps,
            sliding_window: spec.layer_window(host.index),
            kernels: compute.kernels,
        })
    }

    /// Runs `x` `[batch, seq, hidden]` (right-padded, so every row starts at position 0).
    pub fn forward(&self, x: Tensor<B, 3>, positions: &Positions<B>, sequences: Sequences) -> Tensor<B, 3> {
        let heads =
            self.attention(rms_norm(x.clone(), &self.attn_norm, self.eps, self.kernels.simd()), positions, sequences);
        self.mlp(x + self.o_proj.forward(heads))
    }

    /// [`forward`](Self::forward) for the last layer when only some rows are read: keys and
    /// values come from every row, but the output projection and the MLP run on `rows` (flat
    /// indices into `batch x seq`) alone. Returns `[1, rows, hidden]`.
    pub fn forward_rows(
        &self,
        x: Tensor<B, 3>,
        positions: &Positions<B>,
        rows: Tensor<B, 1, Int>,
        sequences: Sequences,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let heads =
            self.attention(rms_norm(x.clone(), &self.attn_norm, self.eps, self.kernels.simd()), positions, sequences);
        let pick = |t: Tensor<B, 3>| {
            let width = t.dims()[2];
            t.reshape([batch * seq, width]).select(0, rows.clone()).unsqueeze::<3>()
        };
        self.mlp(pick(x) + self.o_proj.forward(pick(heads)))
    }

    /// The residual SwiGLU block.
    fn mlp(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let normed = rms_norm(x.clone(), &self.ffn_norm, self.eps, self.kernels.simd());
        let gated = fused::silu_mul_halves(self.gate_up_proj.forward(normed), self.kernels.simd());
        x + self.down_proj.forward(gated)
    }

    /// One decode step: `x` `[n, 1, hidden]` holds the newest token of each sequence, `caches[i]`
    /// sequence `i`'s keys and values so far (the token's own are appended).
    pub fn decode_step(&self, x: Tensor<B, 3>, positions: &Positions<B>, caches: &mut [SequenceKv]) -> Tensor<B, 3> {
        let [n, _, _] = x.dims();
        let qkv = self.qkv_proj.forward(rms_norm(x.clone(), &self.attn_norm, self.eps, self.kernels.simd()));
        let device = qkv.device();
        let qkv = qkv.into_data().convert::<f32>();
        let out =
            kv_cache::attend_new_tokens(qkv.as_slice::<f32>().expect("f32 data"), self.heads(), positions, caches);
        let heads = to_device(&[n, 1, self.num_heads * self.head_dim], out, &device);
        self.mlp(x + self.o_proj.forward(heads))
    }

    fn heads(&self) -> fused::Heads {
        fused::Heads {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            window: self.sliding_window,
        }
    }

    /// Positions and attention of every head: `[batch, seq, hidden]` -> `[batch, seq, heads *
    /// head_dim]`, before the output projection.
    fn attention(&self, x: Tensor<B, 3>, positions: &Positions<B>, sequences: Sequences) -> Tensor<B, 3> {
        let qkv = self.qkv_proj.forward(x);
        let Sequences { lengths, keep, past } = sequences;
        if let Some(past) = past {
            let [batch, seq, _] = qkv.dims();
            let device = qkv.device();
            let values = qkv.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
            let out = kv_cache::attend_after_past(values, seq, lengths, past, self.heads(), positions, self.kernels);
            return to_device(&[batch, seq, self.num_heads * self.head_dim], out, &device);
        }
        if let Some(caches) = keep {
            let seq = qkv.dims()[1];
            let values = qkv.clone().into_data().convert::<f32>();
            let values = values.as_slice::<f32>().expect("f32 data");
            kv_cache::keep(values, seq, lengths, self.heads(), positions, caches);
        }
        if fused::on_host::<B>() {
            fused::attention_host(qkv, self.heads(), positions, lengths, self.kernels)
        } else {
            self.attention_ops(qkv, positions, lengths)
        }
    }

    /// Attention as burn ops, for device backends: `[batch, seq, q + 2 kv]` -> `[batch, seq, q]`.
    fn attention_ops(&self, qkv: Tensor<B, 3>, positions: &Positions<B>, lengths: &[usize]) -> Tensor<B, 3> {
        let [batch, seq, _] = qkv.dims();
        let (q_width, kv_width) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let (q, k) = positions.rotate_qk_ops(
            qkv.clone().narrow(2, 0, q_width),
            qkv.clone().narrow(2, q_width, kv_width),
            self.num_heads,
            self.num_kv_heads,
            lengths,
        );
        let (q, k) = (self.split_heads(q, self.num_heads), self.split_heads(k, self.num_kv_heads));
        let v = self.split_heads(qkv.narrow(2, q_width + kv_width, kv_width), self.num_kv_heads);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        // A few query rows at a time, so no score tensor outgrows what a device binds at once.
        let rows = (DEVICE_TENSOR_BYTES / (batch * self.num_heads * seq * 4)).clamp(1, seq);
        let parts: Vec<Tensor<B, 4>> = (0..seq)
            .step_by(rows)
            .map(|start| {
                let end = (start + rows).min(seq);
                let q = q.clone().narrow(2, start, end - start);
                self.attend_rows_ops(q, k.clone().narrow(2, 0, end), v.clone().narrow(2, 0, end), start, positions)
            })
            .collect();
        Tensor::cat(parts, 2).swap_dims(1, 2).reshape([batch, seq, q_width])
    }

    /// Attention of the query rows `start..start + rows` (`q`: `[batch, heads, rows, dim]`) to
    /// the keys and values before them (`[batch, heads, start + rows, dim]`: causal, so no later
    /// key is read).
    fn attend_rows_ops(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        start: usize,
        positions: &Positions<B>,
    ) -> Tensor<B, 4> {
        let [batch, heads, rows, _] = q.dims();
        let queries = start..start + rows;
        let window = self.sliding_window.filter(|&w| w < queries.end);
        // burn's own causal mask assumes the queries start at key 0.
        let mask = (start > 0 || window.is_some())
            .then(|| causal_mask::<B>(batch, heads, queries.clone(), window, &q.device()));
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: mask.is_none() };
        let bias = positions.alibi_bias_ops(batch, queries);
        attention(q, k, v, mask, bias, options)
    }

    /// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`
    fn split_heads(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, heads, self.head_dim]).swap_dims(1, 2)
    }

    /// Repeats each key/value head for the query heads that share it (grouped-query attention).
    fn repeat_kv(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let groups = self.num_heads / self.num_kv_heads;
        if groups == 1 {
            return x;
        }
        let [batch, kv_heads, seq, dim] = x.dims();
        x.unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, seq, dim]).reshape([
            batch,
            kv_heads * groups,
            seq,
            dim,
        ])
    }
}

/// Causal mask (`true` = masked) of the query rows `queries` over the keys `0..queries.end`,
/// limited to the last `window` positions where there is one (as Mistral uses).
fn causal_mask<B: Backend>(
    batch: usize,
    heads: usize,
    queries: std::ops::Range<usize>,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let (rows, keys) = (queries.len(), queries.end);
    let values: Vec<bool> = queries
        .flat_map(|query| (0..keys).map(move |key| key > query || window.is_some_and(|w| query - key >= w)))
        .collect();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(values, [rows, keys]), device);
    mask.unsqueeze::<4>().expand([batch, heads, rows, keys])
}
