//! A row's log-softmax terms gathered as the packed matmul's tiles finish, so that a head's
//! `[rows, vocab]` logits need never be written and read again
//! (`gemm::PackedWeight::softmax_terms`).
//!
//! Each row keeps, per lane of 16, the largest value seen, the sum of `exp(value - largest)`
//! (rescaled when the largest grows, as online softmax does) and the first column holding the
//! largest. A tile's sums fold in lane by lane, in column order, branch-free so the loop
//! vectorizes; lanes, then panel groups, merge at the end. A NaN anywhere makes the sum NaN.

use super::super::fused::exp;

/// Lanes of a row's running terms: the widest level's vector.
const LANES: usize = 16;

/// The log-softmax terms of values: the largest, the sum of `exp(value - largest)`, and the first
/// column holding the largest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftmaxTerms {
    pub largest: f32,
    pub sum: f32,
    pub first: u32,
}

impl SoftmaxTerms {
    /// The terms of no values.
    pub const EMPTY: Self = Self { largest: f32::NEG_INFINITY, sum: 0.0, first: u32::MAX };

    /// The terms of both sets of values together.
    pub fn merge(self, other: Self) -> Self {
        if other.is_empty() {
            return self;
        }
        if self.is_empty() {
            return other;
        }
        let largest = if other.largest > self.largest { other.largest } else { self.largest };
        let sum = self.sum * exp(self.largest - largest) + other.sum * exp(other.largest - largest);
        let first = match (self.largest == largest, other.largest == largest) {
            (true, true) => self.first.min(other.first),
            (true, false) => self.first,
            (false, _) => other.first,
        };
        Self { largest, sum, first }
    }

    /// Whether no value came in: any value adds at least `exp(0)` (a NaN, NaN) to the sum.
    fn is_empty(&self) -> bool {
        self.sum == 0.0
    }

    /// `ln Σ exp(value - largest)`: a value's log-probability is `(value - largest) - log_sum`.
    pub fn log_sum(&self) -> f32 {
        self.sum.ln()
    }

    /// The first column holding the largest value, as `first_argmax` picks it; `columns` where a
    /// NaN left no largest value.
    pub fn first_largest(&self, columns: usize) -> usize {
        if self.sum.is_nan() { columns } else { self.first as usize }
    }
}

/// One row's running terms, lane by lane: lane `l` sees the columns `l` modulo [`LANES`].
#[derive(Clone, Copy)]
pub(super) struct TermLanes {
    largest: [f32; LANES],
    sum: [f32; LANES],
    first: [u32; LANES],
}

impl TermLanes {
    pub(super) const EMPTY: Self =
        Self { largest: [f32::NEG_INFINITY; LANES], sum: [0.0; LANES], first: [u32::MAX; LANES] };

    /// Folds in `values`, the row's columns from `column` on (a tile's, in order).
    #[inline(always)]
    pub(super) fn fold(&mut self, values: &[f32], column: u32) {
        match values.len() {
            32 => self.fold_pair(values[..16].try_into().unwrap(), values[16..].try_into().unwrap(), column),
            16 => self.fold_one(values.try_into().unwrap(), column),
            _ => {
                for (i, &value) in values.iter().enumerate() {
                    self.fold_value(i % LANES, value, column + i as u32);
                }
            }
        }
    }

    #[inline(always)]
    fn fold_one(&mut self, values: &[f32; LANES], column: u32) {
        for (lane, &value) in values.iter().enumerate() {
            self.fold_value(lane, value, column + lane as u32);
        }
    }

    #[inline(always)]
    fn fold_value(&mut self, lane: usize, value: f32, column: u32) {
        let old = self.largest[lane];
        let grows = value > old;
        let largest = if grows { value } else { old };
        self.sum[lane] = self.sum[lane] * exp(old - largest) + exp(value - largest);
        self.first[lane] = if grows { column } else { self.first[lane] };
        self.largest[lane] = largest;
    }

    /// Two values a lane (columns `column + lane` and `column + 16 + lane`) with one rescale:
    /// three exponentials for two values instead of four.
    #[inline(always)]
    fn fold_pair(&mut self, low: &[f32; LANES], high: &[f32; LANES], column: u32) {
        for lane in 0..LANES {
            let (a, b, old) = (low[lane], high[lane], self.largest[lane]);
            // Ties go to the earlier column; a NaN in `b` is skipped here and poisons the sum.
            let later = b > a;
            let top = if later { b } else { a };
            let grows = top > old;
            let largest = if grows { top } else { old };
            self.sum[lane] = self.sum[lane] * exp(old - largest) + exp(a - largest) + exp(b - largest);
            let at = column + lane as u32 + if later { LANES as u32 } else { 0 };
            self.first[lane] = if grows { at } else { self.first[lane] };
            self.largest[lane] = largest;
        }
    }

    /// The lanes merged, in one branch-free pass over them (a fold of [`SoftmaxTerms::merge`]
    /// per lane took a fifth of a head's time).
    pub(super) fn total(&self) -> SoftmaxTerms {
        let largest = self.largest.iter().fold(f32::NEG_INFINITY, |top, &v| if v > top { v } else { top });
        let mut sum = 0.0;
        let mut first = u32::MAX;
        for lane in 0..LANES {
            // An empty lane (sum 0) adds nothing, whatever its largest value's distance.
            let part = self.sum[lane] * exp(self.largest[lane] - largest);
            sum += if self.sum[lane] == 0.0 { 0.0 } else { part };
            let holds = self.largest[lane] == largest && self.sum[lane] != 0.0;
            first = first.min(if holds { self.first[lane] } else { u32::MAX });
        }
        SoftmaxTerms { largest, sum, first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms_of(values: &[f32], chunk: usize) -> SoftmaxTerms {
        let mut lanes = TermLanes::EMPTY;
        for (i, part) in values.chunks(chunk).enumerate() {
            lanes.fold(part, (i * chunk) as u32);
        }
        lanes.total()
    }

    /// Folded 32, 16 or a few columns at a time, the terms are those of the whole row: the
    /// first of tied maxima, and the sum to float rounding.
    #[test]
    fn folded_terms_match_the_whole_row() {
        let mut row: Vec<f32> = (0..203).map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0).collect();
        row[150] = 9.5;
        row[40] = 9.5;
        row[41] = 9.5;
        let largest = 9.5;
        let sum: f64 = row.iter().map(|&v| ((v - largest) as f64).exp()).sum();
        for chunk in [32, 16, 7, 1] {
            let terms = terms_of(&row, chunk);
            assert_eq!((terms.largest, terms.first), (largest, 40), "chunks of {chunk}");
            assert!((terms.sum as f64 - sum).abs() < 1e-5 * sum, "chunks of {chunk}: {} vs {sum}", terms.sum);
        }
    }

    #[test]
    fn a_nan_leaves_no_largest_value() {
        for at in [0, 17, 31, 40] {
            let mut row = vec![1.0f32; 45];
            row[at] = f32::NAN;
            for chunk in [32, 16, 5] {
                let terms = terms_of(&row, chunk);
                assert!(terms.sum.is_nan(), "NaN at {at}, chunks of {chunk}");
                assert_eq!(terms.first_largest(45), 45);
            }
        }
    }

    #[test]
    fn empty_terms_merge_away() {
        let some = SoftmaxTerms { largest: 2.0, sum: 3.0, first: 7 };
        assert_eq!(SoftmaxTerms::EMPTY.merge(some), some);
        assert_eq!(some.merge(SoftmaxTerms::EMPTY), some);
        assert_eq!(SoftmaxTerms::EMPTY.merge(SoftmaxTerms::EMPTY), SoftmaxTerms::EMPTY);
    }
}
