//! Packs requests into engine sequences and waves.
//!
//! The model input of a request is its context plus all but the last continuation token (left
//! truncated to the model's context, as lm-eval does). Requests with the same input share one
//! sequence: MMLU's four one-token continuations of a question become ONE sequence with four
//! targets at its last position, and a question repeated in the dataset costs nothing extra.
//! Multi-token continuations have inputs of their own and so become their own sequences.
//! Sequences are sorted by their tokens, so that those sharing a prefix (few-shot examples, a
//! context before each of its continuations) sit together and land in one wave, where the engine
//! runs the prefix once; then they are cut into waves by the activation budget. (Padding is the
//! engine's business: it batches each wave's sequences by length.)

use std::collections::HashMap;

use airllm_engine::ModelSpec;
use airllm_engine::executor::{ScoreRequest, ScoreTarget, TargetScore, plan_waves};

use crate::task::{Request, Response};

/// One engine sequence and the requests it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub request: ScoreRequest,
    /// `(request index, indices into request.targets)`: a request's log-likelihood is the sum of
    /// its targets' log-probabilities.
    pub parts: Vec<(usize, Vec<usize>)>,
}

/// Builds deduplicated sequences, sorted by their tokens.
pub fn sequences(requests: &[Request], max_len: usize) -> Vec<Sequence> {
    let mut by_input: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut out: Vec<Sequence> = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        let (tokens, targets) = model_input(request, max_len);
        let slot = *by_input.entry(tokens.clone()).or_insert_with(|| {
            out.push(Sequence { request: ScoreRequest { tokens, targets: Vec::new() }, parts: Vec::new() });
            out.len() - 1
        });
        let sequence = &mut out[slot];
        let indices = targets.into_iter().map(|t| target_index(&mut sequence.request.targets, t)).collect();
        sequence.parts.push((index, indices));
    }
    // By tokens, so that sequences sharing a prefix sit together and fall in one wave, where the
    // prefix runs once (the engine's `executor::prefix`). Inputs are distinct: the order is total.
    out.sort_by(|a, b| a.request.tokens.cmp(&b.request.tokens));
    out
}

/// lm-eval's `(context + continuation)[-(max_len + 1):][:-1]`, and the positions that predict
/// each continuation token.
fn model_input(request: &Request, max_len: usize) -> (Vec<u32>, Vec<ScoreTarget>) {
    let mut whole: Vec<u32> = request.context.iter().chain(&request.continuation).copied().collect();
    let excess = whole.len().saturating_sub(max_len + 1);
    whole.drain(..excess);
    whole.pop();
    let first = whole.len() + 1 - request.continuation.len();
    let targets = request
        .continuation
        .iter()
        .enumerate()
        .map(|(j, &token)| ScoreTarget { position: first + j - 1, token })
        .collect();
    (whole, targets)
}

fn target_index(targets: &mut Vec<ScoreTarget>, target: ScoreTarget) -> usize {
    targets.iter().position(|t| *t == target).unwrap_or_else(|| {
        targets.push(target);
        targets.len() - 1
    })
}

/// Waves of sequence indices whose hidden states fit the activation budget.
pub fn waves(spec: &ModelSpec, sequences: &[Sequence], budget_bytes: u64) -> Vec<Vec<usize>> {
    let lengths: Vec<usize> = sequences.iter().map(|s| s.request.tokens.len()).collect();
    plan_waves(spec, &lengths, budget_bytes)
}

/// One target's score as a response.
pub fn response(score: &TargetScore) -> Response {
    Response { loglikelihood: score.logprob as f64, is_greedy: score.greedy }
}

/// Responses added up: log-likelihoods summed (in f64, so a long text's windows lose nothing),
/// greedy only if every part is.
pub fn combine(parts: impl IntoIterator<Item = Response>) -> Response {
    parts.into_iter().fold(Response { loglikelihood: 0.0, is_greedy: true }, |sum, r| Response {
        loglikelihood: sum.loglikelihood + r.loglikelihood,
        is_greedy: sum.is_greedy && r.is_greedy,
    })
}

/// Spreads a wave's scores back onto requests: `out[request]` = its targets combined.
pub fn request_responses(sequence: &Sequence, scores: &[TargetScore], out: &mut [Option<Response>]) {
    for (request, targets) in &sequence.parts {
        out[*request] = Some(combine(targets.iter().map(|&t| response(&scores[t]))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(doc: usize, part: usize, context: &[u32], continuation: &[u32]) -> Request {
        Request { doc, part, context: context.to_vec(), continuation: continuation.to_vec() }
    }

    #[test]
    fn one_token_continuations_share_a_sequence() {
        let requests: Vec<Request> = (0..4).map(|c| request(0, c, &[5, 6, 7], &[10 + c as u32])).collect();
        let seqs = sequences(&requests, 100);
        assert_eq!(seqs.len(), 1);
        assert_eq!(seqs[0].request.tokens, vec![5, 6, 7]);
        let positions: Vec<_> = seqs[0].request.targets.iter().map(|t| (t.position, t.token)).collect();
        assert_eq!(positions, vec![(2, 10), (2, 11), (2, 12), (2, 13)]);
        assert_eq!(seqs[0].parts, (0..4).map(|c| (c, vec![c])).collect::<Vec<_>>());
    }

    #[test]
    fn multi_token_continuations_get_their_own_sequences() {
        let requests = vec![request(0, 0, &[5, 6], &[1, 2]), request(0, 1, &[5, 6], &[3, 4])];
        let seqs = sequences(&requests, 100);
        assert_eq!(seqs.len(), 2);
        assert_eq!(seqs[0].request.tokens, vec![5, 6, 1]);
        let targets: Vec<_> = seqs[0].request.targets.iter().map(|t| (t.position, t.token)).collect();
        assert_eq!(targets, vec![(1, 1), (2, 2)]);
        let mut scores = vec![None; 2];
        let targets = [TargetScore { logprob: -1.0, greedy: true }, TargetScore { logprob: -2.0, greedy: false }];
        request_responses(&seqs[0], &targets, &mut scores);
        assert_eq!(scores[0], Some(Response { loglikelihood: -3.0, is_greedy: false }));
    }

    #[test]
    fn duplicate_questions_share_and_sequences_sort_by_tokens() {
        let requests = vec![
            request(0, 0, &[4], &[9]),
            request(1, 0, &[1, 2, 3], &[9]),
            request(2, 0, &[4], &[9]),
            request(3, 0, &[1, 2, 5], &[9]),
        ];
        let seqs = sequences(&requests, 100);
        let tokens: Vec<&[u32]> = seqs.iter().map(|s| s.request.tokens.as_slice()).collect();
        assert_eq!(tokens, [&[1, 2, 3][..], &[1, 2, 5], &[4]]);
        assert_eq!(seqs[2].parts, vec![(0, vec![0]), (2, vec![0])]);
    }

    #[test]
    fn long_inputs_are_left_truncated() {
        let seqs = sequences(&[request(0, 0, &[1, 2, 3, 4, 5], &[6])], 3);
        assert_eq!(seqs[0].request.tokens, vec![3, 4, 5]);
        assert_eq!(seqs[0].request.targets, vec![ScoreTarget { position: 2, token: 6 }]);
    }
}
