//! Layer-major greedy generation with a per-layer KV cache.
//!
//! A wave of prompts is prefilled layer-major as a scoring wave is, keeping every layer's keys and
//! values of every sequence (in host memory, [`SequenceKv`]). Prompts that share a prefix (a
//! task's few-shot examples) run it once, as scoring does (`executor::prefix`): each one's cache
//! starts with a copy of the prefix's keys and values. Then each decode step runs the
//! wave's newest tokens through layer 0..L-1, one pass over the store per step (none when the
//! layers are resident), each layer attending to its cache and appending to it. Sequences that
//! finish (the caller says stop, or their token budget is spent) leave the wave and free their
//! cache, so later steps get cheaper. Lengths, positions and masks are per sequence: nothing
//! relies on padding.

use std::sync::Arc;

use burn::prelude::*;

use super::{Engine, Prefill, WaveObserver, read_ints};
use crate::error::{EngineError, Result};
use crate::model::kv_cache::{KvDtype, SequenceKv};
use crate::model::{Positions, to_device};

/// What a generating wave did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Decode steps after the prefill (each one pass over the layers).
    pub steps: usize,
    /// Tokens generated, over all sequences.
    pub tokens: u64,
    /// The most bytes of keys and values the KV caches held at once.
    pub peak_kv_bytes: u64,
}

/// Bytes of KV cache one token takes: layers x (keys + values) x kv heads x head dim x the
/// cache's element size.
pub fn kv_bytes_per_token(spec: &crate::ModelSpec, dtype: KvDtype) -> u64 {
    (spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * dtype.bytes()) as u64
}

impl<B: Backend> Engine<B> {
    /// Greedy generation for a wave of prompts. `on_token(i, token)` receives each new token of
    /// sequence `i` in order and returns whether the sequence goes on; a sequence also stops
    /// after `max_new[i]` tokens.
    pub fn generate_wave(
        &mut self,
        prompts: &[Vec<u32>],
        max_new: &[usize],
        observer: &dyn WaveObserver,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<GenerationStats> {
        if let Some(i) = max_new.iter().position(|&m| m == 0) {
            return Err(EngineError::Other(format!("sequence {i}: at least one new token must be asked for")));
        }
        let sequences: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let last_rows: Vec<Vec<usize>> = prompts.iter().map(|p| vec![p.len().saturating_sub(1)]).collect();
        self.validate(&sequences, &last_rows)?;
        let spec = self.spec().clone();
        let longest = prompts.iter().zip(max_new).map(|(p, m)| p.len() + m).max().unwrap_or(1);
        let positions = Positions::<B>::new(&spec, longest, &self.device);
        let kv_width = spec.num_kv_heads * spec.head_dim;
        let mut caches: Vec<Vec<SequenceKv>> = (0..spec.num_layers)
            .map(|_| {
                let room = prompts.iter().zip(max_new).map(|(p, m)| p.len() + m);
                room.map(|positions| SequenceKv::with_capacity(self.options.kv_dtype, positions, kv_width)).collect()
            })
            .collect();
        let mut last = self.prefill(&sequences, &last_rows, &positions, &mut caches, observer)?;
        let mut stats = GenerationStats { peak_kv_bytes: kv_bytes(&caches), ..Default::default() };
        let mut produced = vec![0usize; prompts.len()];
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        loop {
            active.retain(|&i| {
                produced[i] += 1;
                stats.tokens += 1;
                let go_on = on_token(i, last[i]) && produced[i] < max_new[i];
                if !go_on {
                    caches.iter_mut().for_each(|layer| layer[i] = SequenceKv::default());
                }
                go_on
            });
            if active.is_empty() {
                return Ok(stats);
            }
            let next = self.decode_step(&active, &last, &positions, &mut caches, observer)?;
            for (&i, token) in active.iter().zip(next) {
                last[i] = token;
            }
            stats.steps += 1;
            stats.peak_kv_bytes = stats.peak_kv_bytes.max(kv_bytes(&caches));
        }
    }

    /// Runs the prompts through every layer, keeping keys and values; returns each one's first
    /// new token.
    fn prefill(
        &mut self,
        sequences: &[&[u32]],
        last_rows: &[Vec<usize>],
        positions: &Positions<B>,
        caches: &mut [Vec<SequenceKv>],
        observer: &dyn WaveObserver,
    ) -> Result<Vec<u32>> {
        let table = self.embed_table()?;
        let mut batches = self.embed_sharing_prefixes(&table, sequences, last_rows);
        drop(table);
        let spec = self.spec().clone();
        self.run_layers(&spec, &mut batches, positions, observer, Some(Prefill { caches }))?;
        let head = self.head()?;
        let mut next = vec![0u32; sequences.len()];
        let chunk_rows = super::scoring_chunk_rows(&head, self.spec().vocab_size);
        self.for_each_head_chunk(batches, chunk_rows, &mut |chunk, owners| {
            for (owners, token) in owners.iter().zip(self.greedy_tokens(head.greedy(chunk))?) {
                owners.iter().for_each(|&(sequence, _)| next[sequence] = token);
            }
            Ok(())
        })?;
        self.tokens += sequences.iter().map(|s| s.len() as u64).sum::<u64>();
        self.waves += 1;
        Ok(next)
    }

    /// The newest token of each active sequence through every layer; returns the next tokens.
    fn decode_step(
        &mut self,
        active: &[usize],
        last: &[u32],
        positions: &Positions<B>,
        caches: &mut [Vec<SequenceKv>],
        observer: &dyn WaveObserver,
    ) -> Result<Vec<u32>> {
        let hidden = self.spec().hidden_size;
        let table: Arc<Vec<f32>> = self.embed_table()?;
        let mut values = Vec::with_capacity(active.len() * hidden);
        for &i in active {
            values.extend_from_slice(&table[last[i] as usize * hidden..][..hidden]);
        }
        drop(table);
        let mut x: Tensor<B, 3> = to_device(&[active.len(), 1, hidden], values, &self.device);
        self.for_each_layer(observer, &mut |layer, index| {
            let mut kv: Vec<SequenceKv> = active.iter().map(|&i| std::mem::take(&mut caches[index][i])).collect();
            x = layer.decode_step(x.clone(), positions, &mut kv);
            for (&i, kv) in active.iter().zip(kv) {
                caches[index][i] = kv;
            }
            Ok(())
        })?;
        let picks = self.head()?.greedy(x.reshape([active.len(), hidden]));
        let next = self.greedy_tokens(picks)?;
        self.tokens += active.len() as u64;
        Ok(next)
    }

    /// The head's greedy picks, read back; a row whose logits have no largest value (NaN) is an
    /// error, not a token.
    fn greedy_tokens(&self, picks: Tensor<B, 1, Int>) -> Result<Vec<u32>> {
        let vocab = self.spec().vocab_size;
        read_ints(picks)?
            .into_iter()
            .map(|token| {
                u32::try_from(token).ok().filter(|&t| (t as usize) < vocab).ok_or_else(|| {
                    EngineError::Other(
                        "the head's logits have no largest value (NaN): the model's weights or numerics are broken"
                            .into(),
                    )
                })
            })
            .collect()
    }
}

fn kv_bytes(caches: &[Vec<SequenceKv>]) -> u64 {
    caches.iter().flatten().map(|kv| kv.bytes() as u64).sum()
}
