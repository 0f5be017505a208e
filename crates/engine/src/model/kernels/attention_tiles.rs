//! Causal attention on the host in tiles of query rows, generic over the SIMD level's
//! [`Vector`].
//!
//! The row-at-a-time kernel in `fused` reloads every key and value once per query row and head,
//! which made attention about a sixth of a wave's time for 2% of its FLOPs. Here one task takes a
//! sequence and one key/value head, and walks the query heads that share it in tiles of
//! [`QUERY_TILE`] rows: scores for the tile against two vectors of keys at a time, a masked
//! softmax over each row, then the weighted values `DIMS` vectors of dimensions at a time, every
//! multiply-add accumulated in registers (6 x 2 accumulators for the scores; 6 x 4 for the values
//! with AVX-512's 32 registers, 6 x 2 with AVX2's 16). A tile only looks at keys up to its last
//! query, so the causal half is all that runs (to within a tile).

use rayon::prelude::*;

use super::super::fused::{Heads, KEY_PADDING, exp, max, sum};
use super::vector::Vector;
use super::{Continued, SharedOut};

/// Query rows per tile.
const QUERY_TILE: usize = 6;
/// Most keys scored per step: two vectors of 16 (AVX-512).
const MAX_KEY_STEP: usize = 32;
const _: () = assert!(KEY_PADDING >= MAX_KEY_STEP, "a tile reads whole steps of keys");

/// A level's entry point: runs [`Group::run`] compiled for its instructions.
pub(super) type GroupKernel = unsafe fn(&Group, *mut f32, usize);

/// Attention of every query row: `qkv` is `[batch * seq, width]` after the rotary embedding,
/// `keys_t` is `[batch, kv_heads, head_dim, seq + KEY_PADDING]`; returns `[batch * seq, heads *
/// head_dim]`. Callers check the level's `tiled_attention` for this head size first.
pub(super) fn attend(
    kernel: GroupKernel,
    qkv: &[f32],
    keys_t: &[f32],
    batch: usize,
    seq: usize,
    shape: Heads,
) -> Vec<f32> {
    let out_width = shape.heads * shape.head_dim;
    let mut out = Vec::with_capacity(batch * seq * out_width);
    let target = SharedOut(out.as_mut_ptr());
    let width = qkv.len() / (batch * seq);
    let block = shape.head_dim * (seq + KEY_PADDING);
    (0..batch * shape.kv_heads).into_par_iter().for_each(|task| {
        let (sequence, kv_head) = (task / shape.kv_heads, task % shape.kv_heads);
        let rows = &qkv[sequence * seq * width..][..seq * width];
        let keys_t = &keys_t[task * block..][..block];
        let group = Group { rows, width, keys_t, seq, first_query: 0, shape, kv_head };
        // SAFETY: the level's `tiled_attention` was checked by the caller; `out` has room for
        // every row, and this task writes only its own sequence's rows and its own heads' columns.
        unsafe { kernel(&group, target.at(sequence * seq * out_width), out_width) };
    });
    // SAFETY: the tasks wrote every column (all heads) of every row.
    unsafe { out.set_len(batch * seq * out_width) };
    out
}

/// Attention of the query rows `first_query..seq` of each sequence, to every key up to them:
/// returns `[sequences, rows, heads * head_dim]` with `rows` = the most query rows of any
/// sequence (a sequence's other rows are zero). Callers check the level's `tiled_attention`.
pub(super) fn attend_continued(kernel: GroupKernel, sequences: &[Continued], width: usize, shape: Heads) -> Vec<f32> {
    let out_width = shape.heads * shape.head_dim;
    let rows = sequences.iter().map(|s| s.seq - s.first_query).max().unwrap_or(0);
    let len = sequences.len() * rows * out_width;
    // No zero fill of the whole output first (it ran on the calling thread alone): each
    // sequence's first task zeroes the rows past its own.
    let mut out = Vec::with_capacity(len);
    let target = SharedOut(out.as_mut_ptr());
    (0..sequences.len() * shape.kv_heads).into_par_iter().for_each(|task| {
        let (index, kv_head) = (task / shape.kv_heads, task % shape.kv_heads);
        let Continued { rows: values, keys_t, seq, first_query } = sequences[index];
        let block = shape.head_dim * (seq + KEY_PADDING);
        let keys_t = &keys_t[kv_head * block..][..block];
        let group = Group { rows: values, width, keys_t, seq, first_query, shape, kv_head };
        let own = seq - first_query;
        // SAFETY: the level's `tiled_attention` was checked by the caller; `out` has `rows` rows
        // for each sequence, and this task writes only its own sequence's rows: its heads'
        // columns of the first `own`, or (the first task) every column of the others.
        unsafe {
            kernel(&group, target.at(index * rows * out_width), out_width);
            if kv_head == 0 {
                std::ptr::write_bytes(target.at((index * rows + own) * out_width), 0, (rows - own) * out_width);
            }
        }
    });
    // SAFETY: each sequence's tasks wrote every column of its first `own` rows and zeroed the rest.
    unsafe { out.set_len(len) };
    out
}

/// One sequence's rows and one key/value head with the query heads that share it; queries are
/// the rows from `first_query` on, written to `out` from its first row.
pub(super) struct Group<'a> {
    rows: &'a [f32],
    width: usize,
    keys_t: &'a [f32],
    seq: usize,
    first_query: usize,
    shape: Heads,
    kv_head: usize,
}

impl Group<'_> {
    /// Every query head of this group, tile by tile, summing values `DIMS` vectors at a time.
    ///
    /// # Safety
    /// The CPU has `V`'s instructions (the caller is a `#[target_feature]` entry point), the head
    /// size is a multiple of `DIMS * V::LANES`, and `out` holds this sequence's rows of
    /// `out_width`.
    #[inline(always)]
    pub(super) unsafe fn run<V: Vector, const DIMS: usize>(&self, out: *mut f32, out_width: usize) {
        let Heads { heads, kv_heads, .. } = self.shape;
        let group = heads / kv_heads;
        let stride = self.seq + KEY_PADDING;
        let mut scores = vec![0f32; QUERY_TILE * stride];
        for head in self.kv_head * group..(self.kv_head + 1) * group {
            for first in (self.first_query..self.seq).step_by(QUERY_TILE) {
                let tile = QUERY_TILE.min(self.seq - first);
                // SAFETY: (for all three) rows `first..first + tile` lie in the sequence, `scores`
                // holds QUERY_TILE rows of `stride`, and `out` rows belong to this sequence.
                unsafe { self.score::<V>(head, first, tile, &mut scores) };
                let inverse_sums = self.softmax(first, tile, &mut scores);
                unsafe { self.weigh_values::<V, DIMS>(head, first, tile, &scores, &inverse_sums, out, out_width) };
            }
        }
    }

    /// `scores[i][key]` = q·k / sqrt(head_dim) for the tile's rows and keys `0..=last query`,
    /// rounded up to whole steps of `2 V::LANES` keys (the excess is masked by `softmax`).
    #[inline(always)]
    unsafe fn score<V: Vector>(&self, head: usize, first: usize, tile: usize, scores: &mut [f32]) {
        let head_dim = self.shape.head_dim;
        let stride = self.seq + KEY_PADDING;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // Rows past the tile repeat its last row, so the loop has no branches.
        let queries: [&[f32]; QUERY_TILE] =
            std::array::from_fn(|i| &self.rows[(first + i.min(tile - 1)) * self.width + head * head_dim..][..head_dim]);
        for key in (0..first + tile).step_by(2 * V::LANES) {
            // SAFETY: (all) the caller has V's instructions.
            let mut acc = [[unsafe { V::zero() }; 2]; QUERY_TILE];
            for d in 0..head_dim {
                // SAFETY: `key + 2 V::LANES <= seq + KEY_PADDING`, the row length of K^T.
                let (k0, k1) = unsafe {
                    let at = self.keys_t.as_ptr().add(d * stride + key);
                    (V::load(at), V::load(at.add(V::LANES)))
                };
                for (acc, query) in acc.iter_mut().zip(&queries) {
                    unsafe {
                        let q = V::splat(query[d] * scale);
                        acc[0] = q.mul_add(k0, acc[0]);
                        acc[1] = q.mul_add(k1, acc[1]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(tile) {
                // SAFETY: `i * stride + key + 2 V::LANES <= QUERY_TILE * stride`.
                unsafe {
                    let at = scores.as_mut_ptr().add(i * stride + key);
                    acc[0].store(at);
                    acc[1].store(at.add(V::LANES));
                }
            }
        }
    }

    /// Turns each row's scores into unnormalized weights (zero outside the keys it may see) and
    /// returns 1 / their sum per row.
    #[inline(always)]
    fn softmax(&self, first: usize, tile: usize, scores: &mut [f32]) -> [f32; QUERY_TILE] {
        let stride = self.seq + KEY_PADDING;
        let mut inverse_sums = [0f32; QUERY_TILE];
        for (i, inverse) in inverse_sums.iter_mut().enumerate().take(tile) {
            let query = first + i;
            let seen = self.shape.window.map_or(0, |w| (query + 1).saturating_sub(w));
            let row = &mut scores[i * stride..][..first + tile];
            row[..seen].fill(0.0);
            row[query + 1..].fill(0.0);
            let visible = &mut row[seen..=query];
            let largest = max(visible);
            // Separate passes: a running total in the exp loop would keep it scalar.
            for score in visible.iter_mut() {
                *score = exp(*score - largest);
            }
            *inverse = 1.0 / sum(visible);
        }
        inverse_sums
    }

    /// `out[row][head]` = Σ_key weight · v[key] / sum, for the tile's rows.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn weigh_values<V: Vector, const DIMS: usize>(
        &self,
        head: usize,
        first: usize,
        tile: usize,
        scores: &[f32],
        inverse_sums: &[f32; QUERY_TILE],
        out: *mut f32,
        out_width: usize,
    ) {
        let Heads { heads, kv_heads, head_dim, .. } = self.shape;
        let stride = self.seq + KEY_PADDING;
        let v_at = (heads + kv_heads + self.kv_head) * head_dim;
        for dims in (0..head_dim).step_by(DIMS * V::LANES) {
            // SAFETY: (all) the caller has V's instructions.
            let mut acc = [[unsafe { V::zero() }; DIMS]; QUERY_TILE];
            // Rows past the tile reuse its last row's weights: computed, never stored.
            let weight_rows: [usize; QUERY_TILE] = std::array::from_fn(|i| i.min(tile - 1) * stride);
            for key in 0..first + tile {
                // SAFETY: `key < seq`, and `v_at + dims + DIMS * V::LANES <= width`.
                let v: [V; DIMS] = std::array::from_fn(|c| unsafe {
                    V::load(self.rows.as_ptr().add(key * self.width + v_at + dims + c * V::LANES))
                });
                for (acc, &row) in acc.iter_mut().zip(&weight_rows) {
                    let weight = unsafe { V::splat(scores[row + key]) };
                    for (acc, v) in acc.iter_mut().zip(&v) {
                        *acc = unsafe { weight.mul_add(*v, *acc) };
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(tile) {
                let scale = unsafe { V::splat(inverse_sums[i]) };
                for (c, acc) in acc.iter().enumerate() {
                    // SAFETY: row `first + i` of this sequence, columns inside this head.
                    unsafe {
                        let row = first + i - self.first_query;
                        let at = out.add(row * out_width + head * head_dim + dims + c * V::LANES);
                        acc.mul(scale).store(at);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::KernelLevel;
    use super::*;

    /// Softmax attention written out plainly: keys `seen..=query`, scaled dot products.
    fn reference(qkv: &[f32], batch: usize, seq: usize, shape: Heads) -> Vec<f32> {
        let Heads { heads, kv_heads, head_dim, window } = shape;
        let width = (heads + 2 * kv_heads) * head_dim;
        let mut out = vec![0f32; batch * seq * heads * head_dim];
        for row in 0..batch * seq {
            let (sequence, query) = (row / seq, row % seq);
            let seen = window.map_or(0, |w| (query + 1).saturating_sub(w));
            for head in 0..heads {
                let kv = head / (heads / kv_heads);
                let q = &qkv[row * width + head * head_dim..][..head_dim];
                let at = |key: usize, slot: usize| &qkv[(sequence * seq + key) * width + slot * head_dim..][..head_dim];
                let scores: Vec<f32> = (seen..=query)
                    .map(|key| {
                        q.iter().zip(at(key, heads + kv)).map(|(a, b)| a * b).sum::<f32>() / (head_dim as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                for (key, weight) in (seen..=query).zip(&weights) {
                    for (o, v) in out[(row * heads + head) * head_dim..][..head_dim]
                        .iter_mut()
                        .zip(at(key, heads + kv_heads + kv))
                    {
                        *o += weight / total * v;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn tiles_match_plain_attention_at_every_level() {
        let mut ran = Vec::new();
        for (heads, kv_heads, head_dim, seq, window) in [
            (9, 3, 64, 37, None),
            (4, 4, 128, 13, None),
            (2, 1, 64, 40, Some(7)),
            (3, 1, 48, 21, None),
            (2, 2, 16, 9, Some(4)),
        ] {
            for level in [KernelLevel::Avx512, KernelLevel::Avx2] {
                if !level.tiled_attention(head_dim) {
                    eprintln!("skipping {level} at head size {head_dim}: no tiled kernel there, or not on this CPU");
                    continue;
                }
                ran.push(format!("{level}/{head_dim}"));
                let shape = Heads { heads, kv_heads, head_dim, window };
                let batch = 2;
                let width = (heads + 2 * kv_heads) * head_dim;
                let qkv: Vec<f32> =
                    (0..batch * seq * width).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.0).collect();
                let keys_t = super::super::super::fused::transposed_keys(&qkv, batch, seq, width, shape);
                let got = super::super::attend_tiled(level, &qkv, &keys_t, batch, seq, shape).expect("tiled");
                let want = reference(&qkv, batch, seq, shape);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst < 1e-5, "{level} heads {heads}/{kv_heads} dim {head_dim} seq {seq}: max error {worst}");
            }
        }
        eprintln!("tiled attention checked at: {}", ran.join(", "));
    }
}
