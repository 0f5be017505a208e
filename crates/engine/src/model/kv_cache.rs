//! Keys and values kept in host memory, and the attention that reads them:
//! - a generating wave's caches, one per sequence and layer: a decode step runs one new token per
//!   sequence through a layer and attends to that sequence's cache instead of recomputing its
//!   prompt ([`keep`], [`attend_new_tokens`]);
//! - a shared prefix's keys and values for the layer that is running: the sequences that continue
//!   it attend to them after their own rotary embedding at the positions past it
//!   ([`attend_after_past`]; see `executor::prefix`).
//!
//! Keys are stored after the rotary embedding, `[len, kv_heads * head_dim]` row-major, so a step
//! only rotates its own query and key. They are kept in f32, or in f16/bf16 ([`KvDtype`]) to halve
//! the cache (values are rounded when stored and widened when read; attention still sums in f32).
//! Attention of a single query row runs on the host for every backend: it is a few dot products
//! per cached token, and the cache never leaves host memory.

use std::str::FromStr;

use half::{bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use burn::prelude::Backend;

use super::fused::{Heads, add_alibi, exp, max, sum};
use super::kernels::{self, Continued, KernelLevel};
use super::position::Positions;

/// How the cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
}

impl FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "bf16" => Ok(KvDtype::Bf16),
            other => Err(format!("unknown KV cache type `{other}`; allowed: f32, f16, bf16")),
        }
    }
}

/// Cached rows in one of the [`KvDtype`]s.
#[derive(Debug, Clone, PartialEq)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Rows {
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => Rows::F32(Vec::new()),
            KvDtype::F16 => Rows::F16(Vec::new()),
            KvDtype::Bf16 => Rows::Bf16(Vec::new()),
        }
    }

    fn extend(&mut self, values: &[f32]) {
        match self {
            Rows::F32(v) => v.extend_from_slice(values),
            Rows::F16(v) => v.extend(values.iter().map(|&x| f16::from_f32(x))),
            Rows::Bf16(v) => v.extend(values.iter().map(|&x| bf16::from_f32(x))),
        }
    }

    /// Appends `other`'s rows, converted to this one's type.
    fn extend_from(&mut self, other: &Rows) {
        match (self, other) {
            (Rows::F32(v), Rows::F32(o)) => v.extend_from_slice(o),
            (this, other) => {
                let mut values = vec![0f32; other.len()];
                other.read(0, &mut values);
                this.extend(&values);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
            Rows::Bf16(v) => v.len(),
        }
    }

    /// Bytes of the values held (a reservation not yet written is not resident memory).
    fn bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.len() * 4,
            Rows::F16(v) => v.len() * 2,
            Rows::Bf16(v) => v.len() * 2,
        }
    }

    fn reserve_exact(&mut self, values: usize) {
        match self {
            Rows::F32(v) => v.reserve_exact(values),
            Rows::F16(v) => v.reserve_exact(values),
            Rows::Bf16(v) => v.reserve_exact(values),
        }
    }

    /// `out.len()` values from `start`, as f32.
    fn read(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            Rows::F32(v) => out.copy_from_slice(&v[start..start + n]),
            Rows::F16(v) => out.iter_mut().zip(&v[start..start + n]).for_each(|(o, x)| *o = x.to_f32()),
            Rows::Bf16(v) => out.iter_mut().zip(&v[start..start + n]).for_each(|(o, x)| *o = x.to_f32()),
        }
    }
}

/// One sequence's keys (rotated) and values in one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceKv {
    keys: Rows,
    values: Rows,
    /// The prompt's length: some rotary scalings keep the prompt's angles for generated tokens.
    prompt: usize,
}

impl Default for SequenceKv {
    fn default() -> Self {
        Self::new(KvDtype::F32)
    }
}

impl SequenceKv {
    pub fn new(dtype: KvDtype) -> Self {
        Self { keys: Rows::new(dtype), values: Rows::new(dtype), prompt: 0 }
    }

    /// An empty cache with room for `positions` rows of `width` values: allocated once for a
    /// sequence's prompt and token budget, instead of growing by doubling (up to twice the
    /// memory `memory.kv_budget` planned for).
    pub fn with_capacity(dtype: KvDtype, positions: usize, width: usize) -> Self {
        let mut kv = Self::new(dtype);
        kv.keys.reserve_exact(positions * width);
        kv.values.reserve_exact(positions * width);
        kv
    }

    /// Cached positions, for rows of `width` values.
    pub fn len(&self, width: usize) -> usize {
        self.keys.len() / width
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.keys.bytes() + self.values.bytes()
    }
}

/// Appends positions `0..lengths[i]` of each sequence `i` of a right-padded stacked projection
/// `qkv` (`[batch * seq, (heads + 2 kv_heads) * head_dim]`, before the rotary embedding) to
/// `caches[i]`, rotating the keys as the prefill's attention does.
pub fn keep<B: Backend>(
    qkv: &[f32],
    seq: usize,
    lengths: &[usize],
    shape: Heads,
    positions: &Positions<B>,
    caches: &mut [SequenceKv],
) {
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    caches.par_iter_mut().zip(lengths).enumerate().for_each(|(sequence, (cache, &length))| {
        let angles = positions.angles(length, seq);
        cache.prompt = length;
        for position in 0..length {
            let row = &qkv[(sequence * seq + position) * width..][..width];
            let mut key = row[q_width..q_width + kv_width].to_vec();
            positions.rotate_keys(angles.as_deref(), &mut key, position);
            cache.keys.extend(&key);
            cache.values.extend(&row[q_width + kv_width..]);
        }
    });
}

/// One decode step's attention: row `i` of `qkv` (`[n, width]`) is the new token of sequence `i`,
/// at position `caches[i].len()`. Prepares its query and key, appends its key and value to the
/// cache, and returns the attention output `[n, heads * head_dim]`.
pub fn attend_new_tokens<B: Backend>(
    qkv: &[f32],
    shape: Heads,
    positions: &Positions<B>,
    caches: &mut [SequenceKv],
) -> Vec<f32> {
    let Heads { heads, kv_heads, head_dim, window } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    let mut out = vec![0f32; caches.len() * q_width];
    out.par_chunks_mut(q_width).zip(caches.par_iter_mut()).enumerate().for_each(|(i, (out, cache))| {
        let position = cache.len(kv_width);
        let angles = positions.angles(positions.decode_context(cache.prompt, position), position + 1);
        let mut row = qkv[i * width..(i + 1) * width].to_vec();
        positions.prepare_qk(angles.as_deref(), &mut row[..q_width + kv_width], heads, position);
        cache.keys.extend(&row[q_width..q_width + kv_width]);
        cache.values.extend(&row[q_width + kv_width..]);
        let first = window.map_or(0, |w| (position + 1).saturating_sub(w));
        let query = Query { values: &row[..q_width], position, first, alibi: positions.alibi_slopes() };
        let context = KeyValues { past: Some(cache), own_keys: &[], own_values: &[], width: kv_width };
        attend_one(query, &context, shape, out);
    });
    out
}

/// Attention of sequences that continue a shared prefix already run: sequence `i` of the
/// right-padded stacked projection `prepared` (`[batch * seq, (heads + 2 kv_heads) * head_dim]`,
/// before the rotary embedding, which is applied to it in place) has `lengths[i]` rows at
/// positions after its prefix, whose keys and values at this layer are `past[i]` (none: positions
/// from 0). Each row attends to the
/// prefix and to its own sequence's rows up to itself. Returns `[batch * seq, heads * head_dim]`
/// (padding rows zero).
/// The tiled kernel of `kernels`' level runs where the CPU, head size and model (no ALiBi) suit it.
pub fn attend_after_past<B: Backend>(
    prepared: &mut [f32],
    seq: usize,
    lengths: &[usize],
    past: &[Option<&SequenceKv>],
    shape: Heads,
    positions: &Positions<B>,
    kernels: KernelLevel,
) -> Vec<f32> {
    let Heads { heads, kv_heads, head_dim, window } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    let offsets: Vec<usize> = past.iter().map(|p| p.map_or(0, |p| p.len(kv_width))).collect();
    prepared.par_chunks_mut(seq * width).enumerate().for_each(|(sequence, rows)| {
        let offset = offsets[sequence];
        let angles = positions.angles(offset + lengths[sequence], offset + seq);
        for (r, row) in rows.chunks_exact_mut(width).enumerate() {
            positions.prepare_qk(angles.as_deref(), &mut row[..q_width + kv_width], heads, offset + r);
        }
    });
    if positions.alibi_slopes().is_none()
        && let Some(out) = attend_after_past_tiled(kernels, prepared, seq, past, shape)
    {
        return out;
    }
    // Each sequence's own keys and values, contiguous.
    let own: Vec<(Vec<f32>, Vec<f32>)> = (0..lengths.len())
        .into_par_iter()
        .map(|sequence| {
            let rows = prepared[sequence * seq * width..][..lengths[sequence] * width].chunks_exact(width);
            let keys = rows.clone().flat_map(|row| &row[q_width..q_width + kv_width]).copied().collect();
            (keys, rows.flat_map(|row| &row[q_width + kv_width..]).copied().collect())
        })
        .collect();
    let mut out = vec![0f32; lengths.len() * seq * q_width];
    out.par_chunks_mut(q_width).enumerate().for_each(|(row, out)| {
        let (sequence, r) = (row / seq, row % seq);
        if r >= lengths[sequence] {
            return;
        }
        let position = offsets[sequence] + r;
        let (keys, values) = &own[sequence];
        let visible = (r + 1) * kv_width;
        let context = KeyValues {
            past: past[sequence],
            own_keys: &keys[..visible],
            own_values: &values[..visible],
            width: kv_width,
        };
        let first = window.map_or(0, |w| (position + 1).saturating_sub(w));
        let values = &prepared[row * width..][..q_width];
        attend_one(Query { values, position, first, alibi: positions.alibi_slopes() }, &context, shape, out);
    });
    out
}

/// A prefill's caches of sequences that continue shared prefixes: each gets its prefix's keys and
/// values (`past[i]`), then its own `lengths[i]` rows of `prepared`, as [`attend_after_past`] left
/// them (keys rotated). The caches then hold what [`keep`] would have kept of the whole prompt.
pub fn keep_after_past(
    prepared: &[f32],
    seq: usize,
    lengths: &[usize],
    past: &[Option<&SequenceKv>],
    shape: Heads,
    caches: &mut [SequenceKv],
) {
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    caches.par_iter_mut().enumerate().for_each(|(sequence, cache)| {
        let offset = past[sequence].map_or(0, |past| {
            cache.keys.extend_from(&past.keys);
            cache.values.extend_from(&past.values);
            past.len(kv_width)
        });
        cache.prompt = offset + lengths[sequence];
        for row in prepared[sequence * seq * width..][..lengths[sequence] * width].chunks_exact(width) {
            cache.keys.extend(&row[q_width..q_width + kv_width]);
            cache.values.extend(&row[q_width + kv_width..]);
        }
    });
}

/// [`attend_after_past`] with the tiled kernel: each sequence's prefix keys and values are laid
/// out before its own (prepared) rows, so that the kernel sees one sequence whose queries start
/// after the prefix.
/// `None` where the level has no tiled kernel for this head size.
fn attend_after_past_tiled(
    kernels: KernelLevel,
    prepared: &[f32],
    seq: usize,
    past: &[Option<&SequenceKv>],
    shape: Heads,
) -> Option<Vec<f32>> {
    if !kernels.tiled_attention(shape.head_dim) {
        return None;
    }
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let width = q_width + 2 * kv_width;
    let laid_out: Vec<(Vec<f32>, Vec<f32>, usize)> = past
        .par_iter()
        .enumerate()
        .map(|(sequence, past)| {
            let offset = past.map_or(0, |p| p.len(kv_width));
            // The past rows' query columns stay zero (no query reads them); the sequence's own
            // rows are appended, not zeroed first.
            let mut rows = Vec::with_capacity((offset + seq) * width);
            rows.resize(offset * width, 0f32);
            if let Some(past) = past {
                for (t, row) in rows.chunks_exact_mut(width).enumerate() {
                    past.keys.read(t * kv_width, &mut row[q_width..q_width + kv_width]);
                    past.values.read(t * kv_width, &mut row[q_width + kv_width..]);
                }
            }
            rows.extend_from_slice(&prepared[sequence * seq * width..][..seq * width]);
            let keys_t = super::fused::transposed_keys(&rows, 1, offset + seq, width, shape);
            (rows, keys_t, offset)
        })
        .collect();
    let sequences: Vec<Continued> = laid_out
        .iter()
        .map(|(rows, keys_t, offset)| Continued { rows, keys_t, seq: offset + seq, first_query: *offset })
        .collect();
    kernels::attend_tiled_continued(kernels, &sequences, width, shape)
}

/// A decode step's query row (every head): its position, the first cached position it sees, and
/// ALiBi's slopes where the model has them.
struct Query<'a> {
    values: &'a [f32],
    position: usize,
    first: usize,
    alibi: Option<&'a [f32]>,
}

/// The keys and values a query attends to: a sequence's cached positions (`past`), then rows of
/// its own not cached (`own_keys`/`own_values`, `[n, kv_heads * head_dim]`).
struct KeyValues<'a> {
    past: Option<&'a SequenceKv>,
    own_keys: &'a [f32],
    own_values: &'a [f32],
    width: usize,
}

impl KeyValues<'_> {
    fn past_len(&self) -> usize {
        self.past.map_or(0, |past| past.len(self.width))
    }

    fn len(&self) -> usize {
        self.past_len() + self.own_keys.len() / self.width
    }

    /// `out.len()` values of position `t`'s key (or value) from `column`.
    fn read(&self, values: bool, t: usize, column: usize, out: &mut [f32]) {
        let past_len = self.past_len();
        match self.past {
            Some(past) if t < past_len => {
                let rows = if values { &past.values } else { &past.keys };
                rows.read(t * self.width + column, out);
            }
            _ => {
                let own = if values { self.own_values } else { self.own_keys };
                out.copy_from_slice(&own[(t - past_len) * self.width + column..][..out.len()]);
            }
        }
    }
}

/// One query row (every head) against positions `first..` of `context`.
fn attend_one(query: Query, context: &KeyValues, shape: Heads, out: &mut [f32]) {
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let first = query.first;
    let count = context.len() - first;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let group = heads / kv_heads;
    let mut scores = vec![0f32; count];
    let mut row = vec![0f32; head_dim];
    for (head, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let q = &query.values[head * head_dim..][..head_dim];
        let column = (head / group) * head_dim;
        for (t, score) in scores.iter_mut().enumerate() {
            context.read(false, first + t, column, &mut row);
            *score = q.iter().zip(&row).map(|(a, b)| a * scale * b).sum();
        }
        if let Some(slopes) = query.alibi {
            add_alibi(&mut scores, slopes[head], query.position, first);
        }
        let largest = max(&scores);
        for score in scores.iter_mut() {
            *score = exp(*score - largest);
        }
        let total = sum(&scores);
        for (t, &score) in scores.iter().enumerate() {
            context.read(true, first + t, column, &mut row);
            let weight = score / total;
            for (o, v) in out.iter_mut().zip(&row) {
                *o += weight * v;
            }
        }
    }
}
