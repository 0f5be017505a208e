//! The keys and values of every sequence of a generating wave, one cache per layer, in host
//! memory next to the layer they belong to: a decode step runs one new token per sequence through
//! a layer and attends to that sequence's cache instead of recomputing its prompt.
//!
//! Keys are stored after the rotary embedding, `[len, kv_heads * head_dim]` row-major, so a step
//! only rotates its own query and key. Attention of a single query row runs on the host for every
//! backend: it is a few dot products per cached token, and the cache never leaves host memory.

use rayon::prelude::*;

use super::fused::{Heads, exp, max, rotate_heads, sum};

/// One sequence's keys (rotated) and values in one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceKv {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

impl SequenceKv {
    /// Cached positions, for rows of `width` values.
    pub fn len(&self, width: usize) -> usize {
        self.keys.len() / width
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * std::mem::size_of::<f32>()
    }
}

/// Appends positions `0..lengths[i]` of each sequence `i` of a right-padded stacked projection
/// `qkv` (`[batch * seq, (heads + 2 kv_heads) * head_dim]`, before the rotary embedding) to
/// `caches[i]`, rotating the keys with the per-position `cos`/`sin` rows.
pub fn keep(
    qkv: &[f32],
    seq: usize,
    lengths: &[usize],
    shape: Heads,
    tables: (&[f32], &[f32]),
    caches: &mut [SequenceKv],
) {
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    caches.par_iter_mut().zip(lengths).enumerate().for_each(|(sequence, (cache, &length))| {
        for position in 0..length {
            let row = &qkv[(sequence * seq + position) * width..][..width];
            let at = position * head_dim;
            let mut key = row[q_width..q_width + kv_width].to_vec();
            rotate_heads(&mut key, head_dim, &tables.0[at..at + head_dim], &tables.1[at..at + head_dim]);
            cache.keys.extend_from_slice(&key);
            cache.values.extend_from_slice(&row[q_width + kv_width..]);
        }
    });
}

/// One decode step's attention: row `i` of `qkv` (`[n, width]`) is the new token of sequence `i`,
/// at position `caches[i].len()`. Rotates its query and key, appends its key and value to the
/// cache, and returns the attention output `[n, heads * head_dim]`.
pub fn attend_new_tokens(qkv: &[f32], shape: Heads, tables: (&[f32], &[f32]), caches: &mut [SequenceKv]) -> Vec<f32> {
    let Heads { heads, kv_heads, head_dim, window } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    let mut out = vec![0f32; caches.len() * q_width];
    out.par_chunks_mut(q_width).zip(caches.par_iter_mut()).enumerate().for_each(|(i, (out, cache))| {
        let position = cache.len(kv_width);
        let at = position * head_dim;
        let (cos, sin) = (&tables.0[at..at + head_dim], &tables.1[at..at + head_dim]);
        let mut row = qkv[i * width..(i + 1) * width].to_vec();
        rotate_heads(&mut row[..q_width + kv_width], head_dim, cos, sin);
        cache.keys.extend_from_slice(&row[q_width..q_width + kv_width]);
        cache.values.extend_from_slice(&row[q_width + kv_width..]);
        let first = window.map_or(0, |w| (position + 1).saturating_sub(w));
        attend_one(&row[..q_width], cache, shape, first, out);
    });
    out
}

/// One query row (every head) against cached positions `first..`.
fn attend_one(query: &[f32], cache: &SequenceKv, shape: Heads, first: usize, out: &mut [f32]) {
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let kv_width = kv_heads * head_dim;
    let count = cache.len(kv_width) - first;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let group = heads / kv_heads;
    let mut scores = vec![0f32; count];
    for (head, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let q = &query[head * head_dim..][..head_dim];
        let column = (head / group) * head_dim;
        for (t, score) in scores.iter_mut().enumerate() {
            let key = &cache.keys[(first + t) * kv_width + column..][..head_dim];
            *score = q.iter().zip(key).map(|(a, b)| a * scale * b).sum();
        }
        let largest = max(&scores);
        for score in scores.iter_mut() {
            *score = exp(*score - largest);
        }
        let total = sum(&scores);
        for (t, &score) in scores.iter().enumerate() {
            let value = &cache.values[(first + t) * kv_width + column..][..head_dim];
            let weight = score / total;
            for (o, v) in out.iter_mut().zip(value) {
                *o += weight * v;
            }
        }
    }
}
