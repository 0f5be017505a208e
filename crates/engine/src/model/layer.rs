//! One decoder layer, the same for every family: pre-norm attention with grouped-query heads
//! (positions as [`Positions`] says: rotary, logn, ALiBi), then a pre-norm SwiGLU MLP, each with
//! a residual connection. What differs between families is in the spec's switches (biases, the
//! sliding window of this layer) and in how the families map their checkpoints' tensors.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::kv_cache::{self, SequenceKv};
use super::{
    Compute, DEVICE_TENSOR_BYTES, KernelLevel, Linear, Positions, TokenRows, fused, matmul, rms_norm, to_device,
};
use crate::error::{EngineError, Result};
use crate::source::LayerTensor;
use crate::spec::ModelSpec;
use crate::store::{LayerHost, StoredTensor};

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
    /// `[2 intermediate, hidden]`: gate rows, then up rows (paired, when packed: see
    /// [`Linear::new_gated`]).
    gate_up_proj: Linear<B>,
    down_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    eps: f64,
    sliding_window: Option<usize>,
    /// The host kernel level of attention and the element-wise loops.
    kernels: KernelLevel,
    uploaded_bytes: u64,
}

impl<B: Backend> DecoderLayer<B> {
    /// Moves a layer's host tensors onto `device` (matrices in their stored form where the
    /// backend holds it, see [`Linear::new`]), checking their shapes against the spec; the layer
    /// computes as `compute` says.
    pub fn from_host(spec: &ModelSpec, mut host: LayerHost, compute: Compute, device: &B::Device) -> Result<Self> {
        let h = spec.hidden_size;
        let q = spec.num_heads * spec.head_dim;
        let kv = spec.num_kv_heads * spec.head_dim;
        let ffn = spec.intermediate_size;
        let index = host.index;
        let mut take = |tensor: LayerTensor, expected: &[usize]| -> Result<StoredTensor> {
            let stored = host.tensors.remove(&tensor).ok_or_else(|| {
                EngineError::Other(format!("layer {index}: tensor {} is missing", tensor.store_name()))
            })?;
            if stored.shape() != expected {
                return Err(EngineError::Other(format!(
                    "layer {index}: tensor {} has shape {:?}, the spec implies {expected:?}",
                    tensor.store_name(),
                    stored.shape()
                )));
            }
            Ok(stored)
        };
        use LayerTensor::*;
        let qkv = vec![take(QProj, &[q, h])?, take(KProj, &[kv, h])?, take(VProj, &[kv, h])?];
        let qkv_bias = match spec.qkv_bias {
            true => Some(
                [take(QBias, &[q])?, take(KBias, &[kv])?, take(VBias, &[kv])?]
                    .iter()
                    .flat_map(|t| t.to_f32())
                    .collect(),
            ),
            false => None,
        };
        let o = vec![take(OProj, &[h, q])?];
        let o_bias = if spec.o_bias { Some(take(OBias, &[h])?.to_f32()) } else { None };
        let (gate, up) = (take(GateProj, &[ffn, h])?, take(UpProj, &[ffn, h])?);
        let down = vec![take(DownProj, &[h, ffn])?];
        let attn_norm = take(AttnNorm, &[h])?.to_f32();
        let ffn_norm = take(FfnNorm, &[h])?.to_f32();
        let mut uploaded_bytes = (2 * h * 4) as u64;
        let mut linear = |parts, bias| {
            let (linear, bytes) = Linear::new(parts, bias, compute, device);
            uploaded_bytes += bytes;
            linear
        };
        let (qkv_proj, o_proj) = (linear(qkv, qkv_bias), linear(o, o_bias));
        let down_proj = linear(down, None);
        let (gate_up_proj, gate_up_bytes) = Linear::new_gated(gate, up, compute, device);
        uploaded_bytes += gate_up_bytes;
        Ok(Self {
            attn_norm: to_device(&[h], attn_norm, device),
            qkv_proj,
            o_proj,
            ffn_norm: to_device(&[h], ffn_norm, device),
            gate_up_proj,
            down_proj,
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            eps: spec.rms_norm_eps,
            sliding_window: spec.layer_window(index),
            kernels: compute.kernels,
            uploaded_bytes,
        })
    }

    /// Bytes of weights that travelled to the device for this layer (host backends: the f32
    /// values copied or packed).
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded_bytes
    }

    /// Runs `x` `[batch, seq, hidden]` (right-padded, so every row starts at position 0).
    pub fn forward(&self, x: Tensor<B, 3>, positions: &Positions<B>, sequences: Sequences) -> Tensor<B, 3> {
        let tokens = token_rows(&x, sequences.lengths);
        let (x, heads) = self.normed_attention(x, tokens, positions, sequences);
        self.mlp(self.o_proj.forward_plus(heads, tokens, x), tokens)
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
        let tokens = token_rows(&x, sequences.lengths);
        let (x, heads) = self.normed_attention(x, tokens, positions, sequences);
        let pick = |t: Tensor<B, 3>| {
            let width = t.dims()[2];
            t.reshape([batch * seq, width]).select(0, rows.clone()).unsqueeze::<3>()
        };
        self.mlp(self.o_proj.forward_plus(pick(heads), TokenRows::All, pick(x)), TokenRows::All)
    }

    /// Only the keys and values of `x` (right-padded, `lengths` long), into `caches`: what the
    /// last layer does for a shared prefix, whose output nothing reads (its sequences' scored
    /// rows come after it).
    pub fn keep_kv(&self, x: Tensor<B, 3>, positions: &Positions<B>, lengths: &[usize], caches: &mut [SequenceKv]) {
        let tokens = token_rows(&x, lengths);
        let (_, normed) = rms_norm(x, &self.attn_norm, self.eps, self.kernels.simd());
        self.keep_keys_values(self.qkv_proj.forward(normed, tokens), positions, lengths, caches);
    }

    /// The residual SwiGLU block, its matmuls at the `tokens` rows.
    fn mlp(&self, x: Tensor<B, 3>, tokens: TokenRows) -> Tensor<B, 3> {
        let (x, normed) = rms_norm(x, &self.ffn_norm, self.eps, self.kernels.simd());
        let gated = self.gate_up_proj.forward_swiglu(normed, tokens, self.kernels.simd());
        self.down_proj.forward_plus(gated, tokens, x)
    }

    /// One decode step: `x` `[n, 1, hidden]` holds the newest token of each sequence, `caches[i]`
    /// sequence `i`'s keys and values so far (the token's own are appended).
    pub fn decode_step(&self, x: Tensor<B, 3>, positions: &Positions<B>, caches: &mut [SequenceKv]) -> Tensor<B, 3> {
        let [n, _, _] = x.dims();
        let (x, normed) = rms_norm(x, &self.attn_norm, self.eps, self.kernels.simd());
        let qkv = self.qkv_proj.forward(normed, TokenRows::All);
        let device = qkv.device();
        let qkv = qkv.into_data().convert::<f32>();
        let out =
            kv_cache::attend_new_tokens(qkv.as_slice::<f32>().expect("f32 data"), self.heads(), positions, caches);
        let heads = to_device(&[n, 1, self.num_heads * self.head_dim], out, &device);
        self.mlp(self.o_proj.forward_plus(heads, TokenRows::All, x), TokenRows::All)
    }

    fn heads(&self) -> fused::Heads {
        fused::Heads {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            window: self.sliding_window,
        }
    }

    /// `x` itself (the residual) and the attention of its normed rows, as `forward` and
    /// `forward_rows` begin.
    fn normed_attention(
        &self,
        x: Tensor<B, 3>,
        tokens: TokenRows,
        positions: &Positions<B>,
        sequences: Sequences,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (x, normed) = rms_norm(x, &self.attn_norm, self.eps, self.kernels.simd());
        (x, self.attention(normed, tokens, positions, sequences))
    }

    /// Positions and attention of every head: `[batch, seq, hidden]` -> `[batch, seq, heads *
    /// head_dim]`, before the output projection (which runs at the `tokens` rows).
    fn attention(
        &self,
        x: Tensor<B, 3>,
        tokens: TokenRows,
        positions: &Positions<B>,
        sequences: Sequences,
    ) -> Tensor<B, 3> {
        let qkv = self.qkv_proj.forward(x, tokens);
        let Sequences { lengths, keep, past } = sequences;
        if let Some(past) = past {
            let [batch, seq, _] = qkv.dims();
            let device = qkv.device();
            let mut values = qkv.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
            let out =
                kv_cache::attend_after_past(&mut values, seq, lengths, past, self.heads(), positions, self.kernels);
            if let Some(caches) = keep {
                kv_cache::keep_after_past(&values, seq, lengths, past, self.heads(), caches);
            }
            return to_device(&[batch, seq, self.num_heads * self.head_dim], out, &device);
        }
        let qkv = match keep {
            Some(caches) => self.keep_keys_values(qkv, positions, lengths, caches),
            None => qkv,
        };
        if fused::on_host::<B>() {
            fused::attention_host(qkv, self.heads(), positions, lengths, self.kernels)
        } else {
            self.attention_ops(qkv, positions, lengths)
        }
    }

    /// Keeps the keys (rotated) and values of the stacked projection `qkv` of a prefill in
    /// `caches`; returns `qkv`.
    fn keep_keys_values(
        &self,
        qkv: Tensor<B, 3>,
        positions: &Positions<B>,
        lengths: &[usize],
        caches: &mut [SequenceKv],
    ) -> Tensor<B, 3> {
        let seq = qkv.dims()[1];
        fused::read_values(qkv, |values| kv_cache::keep(values, seq, lengths, self.heads(), positions, caches))
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
    /// key is read). Written out as products and a softmax rather than burn's fused attention,
    /// whose cuda kernels multiply f32 in TF32: [`matmul`] keeps every product f32.
    fn attend_rows_ops(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        start: usize,
        positions: &Positions<B>,
    ) -> Tensor<B, 4> {
        let [batch, heads, rows, dim] = q.dims();
        let queries = start..start + rows;
        let window = self.sliding_window.filter(|&w| w < queries.end);
        let scores = matmul(q, k.swap_dims(2, 3)) / (dim as f64).sqrt();
        let scores = match positions.alibi_bias_ops(batch, queries.clone()) {
            Some(bias) => scores + bias,
            None => scores,
        };
        let mask = causal_mask::<B>(batch, heads, queries, window, &scores.device());
        matmul(softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3), v)
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

/// The rows of a right-padded micro-batch `x` `[batch, seq, _]` that hold its sequences'
/// tokens.
fn token_rows<'a, B: Backend>(x: &Tensor<B, 3>, lengths: &'a [usize]) -> TokenRows<'a> {
    TokenRows::Padded { seq: x.dims()[1], lengths }
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
