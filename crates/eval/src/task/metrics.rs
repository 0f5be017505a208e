//! Metrics: a value per document, then one aggregate per task and per group, as lm-eval 0.4.13
//! computes them (`lm_eval/api/metrics.py`, `lm_eval/api/group.py`).
//!
//! - `acc`: the argmax of the choices' log-likelihoods is the gold one (first maximum on ties);
//! - `acc_norm`: the same on log-likelihoods divided by each choice's length in characters;
//! - `acc` of truthfulqa_mc2 ([`Metric::Mc2`]): probability mass of the true choices, normalised
//!   over all choices;
//! - `word_perplexity`, `byte_perplexity`, `bits_per_byte`: ratios of sums over the documents
//!   (lm-eval's `weighted_perplexity` and `bits_per_byte` aggregations), without standard error.
//!
//! Means carry lm-eval's standard error `sample_stddev / sqrt(n)` (none below two documents).
//! A group's value is the size-weighted mean of its tasks' values, and its error the pooled
//! sample error, over every task in it.

use serde::{Deserialize, Serialize};

use super::{Doc, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Acc,
    AccNorm,
    /// truthfulqa_mc2's `acc`.
    Mc2,
    WordPerplexity,
    BytePerplexity,
    BitsPerByte,
    /// `exact_match` of the `strict-match` filter's answer (generation tasks).
    ExactMatchStrict,
    /// `exact_match` of the `flexible-extract` filter's answer.
    ExactMatchFlexible,
}

/// The metrics a custom task may ask for, by name.
pub const CHOICE_METRICS: [Metric; 2] = [Metric::Acc, Metric::AccNorm];
pub const ROLLING_METRICS: [Metric; 3] = [Metric::WordPerplexity, Metric::BytePerplexity, Metric::BitsPerByte];

/// One document's contribution to a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// Averaged over documents.
    Value(f64),
    /// Summed over documents: `loglikelihood` over `weight` (words or bytes).
    Ratio { loglikelihood: f64, weight: f64 },
}

/// A metric over a set of documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    pub n: usize,
    pub value: f64,
    pub stderr: Option<f64>,
}

impl Metric {
    /// The name lm-eval reports it under: the metric, with its filter where it has one
    /// (`exact_match,strict-match`), as the keys of lm-eval's results say it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc | Metric::Mc2 => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::WordPerplexity => "word_perplexity",
            Metric::BytePerplexity => "byte_perplexity",
            Metric::BitsPerByte => "bits_per_byte",
            Metric::ExactMatchStrict => "exact_match,strict-match",
            Metric::ExactMatchFlexible => "exact_match,flexible-extract",
        }
    }

    /// lm-eval's results keys: `acc,none` and `acc_stderr,none`, or `exact_match,strict-match`
    /// and `exact_match_stderr,strict-match`.
    pub fn result_keys(self) -> (String, String) {
        let (metric, filter) = self.name().split_once(',').unwrap_or((self.name(), "none"));
        (format!("{metric},{filter}"), format!("{metric}_stderr,{filter}"))
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::WordPerplexity | Metric::BytePerplexity | Metric::BitsPerByte)
    }

    /// What one document gives this metric, from its responses (one per choice, or one for a
    /// rolling document) or its completion (a generated document).
    pub fn sample(self, doc: &Doc, responses: &[Response], completion: Option<&str>) -> Sample {
        let lls: Vec<f64> = responses.iter().map(|r| r.loglikelihood).collect();
        match (self, doc) {
            (Metric::ExactMatchStrict | Metric::ExactMatchFlexible, Doc::Generate(g)) => {
                let completion = completion.unwrap_or_default();
                let answer = if self == Metric::ExactMatchStrict {
                    super::gsm8k::strict_match(completion)
                } else {
                    super::gsm8k::flexible_extract(completion)
                };
                Sample::Value(super::gsm8k::exact_match(&answer, &g.target) as u8 as f64)
            }
            (Metric::Acc, Doc::Choice(c)) => Sample::Value((first_argmax(&lls) == c.gold) as u8 as f64),
            (Metric::AccNorm, Doc::Choice(c)) => {
                let normed: Vec<f64> =
                    lls.iter().zip(&c.choices).map(|(ll, choice)| ll / choice.chars().count() as f64).collect();
                Sample::Value((first_argmax(&normed) == c.gold) as u8 as f64)
            }
            (Metric::Mc2, Doc::Choice(c)) => Sample::Value(true_mass(&lls, &c.labels)),
            (Metric::WordPerplexity, Doc::Rolling(r)) => {
                Sample::Ratio { loglikelihood: lls[0], weight: r.words as f64 }
            }
            (Metric::BytePerplexity | Metric::BitsPerByte, Doc::Rolling(r)) => {
                Sample::Ratio { loglikelihood: lls[0], weight: r.bytes as f64 }
            }
            (metric, _) => unreachable!("metric {metric:?} on the wrong kind of document (checked at load)"),
        }
    }

    /// The value shown for one document: the aggregate of that document alone.
    pub fn doc_value(self, sample: Sample) -> f64 {
        self.aggregate(&[sample]).value
    }

    pub fn aggregate(self, samples: &[Sample]) -> Aggregate {
        let n = samples.len();
        let (mut values, mut ll, mut weight) = (Vec::with_capacity(n), 0.0, 0.0);
        for sample in samples {
            match *sample {
                Sample::Value(v) => values.push(v),
                Sample::Ratio { loglikelihood, weight: w } => {
                    ll += loglikelihood;
                    weight += w;
                }
            }
        }
        match self {
            Metric::Acc | Metric::AccNorm | Metric::Mc2 | Metric::ExactMatchStrict | Metric::ExactMatchFlexible => {
                let (value, stderr) = mean_and_stderr(&values);
                Aggregate { n, value, stderr }
            }
            Metric::WordPerplexity | Metric::BytePerplexity => {
                Aggregate { n, value: (-ll / weight).exp(), stderr: None }
            }
            Metric::BitsPerByte => Aggregate { n, value: -ll / weight / std::f64::consts::LN_2, stderr: None },
        }
    }

    /// Whether a group can pool this metric over its tasks (lm-eval pools means only).
    pub fn is_mean(self) -> bool {
        self.higher_is_better()
    }
}

/// numpy's argmax: the first maximum.
pub fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// truthfulqa_mc2: `sum(exp(ll)[true]) / sum(exp(ll))`, computed from the largest log-likelihood
/// so that long answers do not underflow to 0/0 (the same value wherever numpy's does not).
fn true_mass(lls: &[f64], labels: &[bool]) -> f64 {
    let top = lls.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = lls.iter().map(|ll| (ll - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().zip(labels).filter(|(_, t)| **t).map(|(w, _)| w).sum::<f64>() / total
}

/// The mean and lm-eval's `mean_stderr` (sample standard deviation over sqrt(n)).
fn mean_and_stderr(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, None);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(variance.sqrt() / n.sqrt()))
}

/// A group's aggregate from its tasks' (lm-eval's `aggregate_subtask_metrics` weighted by size,
/// and `pooled_sample_stderr`, which needs every task's error).
pub fn pool(parts: &[Aggregate]) -> Aggregate {
    let n: usize = parts.iter().map(|p| p.n).sum();
    let value = parts.iter().map(|p| p.value * p.n as f64).sum::<f64>() / n as f64;
    let stderrs: Option<Vec<f64>> = parts.iter().map(|p| p.stderr).collect();
    let stderr = stderrs.filter(|_| n > parts.len()).map(|stderrs| {
        let pooled: f64 = parts.iter().zip(&stderrs).map(|(p, s)| (p.n as f64 - 1.0) * s * s * p.n as f64).sum();
        (pooled / (n - parts.len()) as f64 / n as f64).sqrt()
    });
    Aggregate { n, value, stderr }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{ChoiceDoc, RollingDoc};

    fn responses(lls: &[f64]) -> Vec<Response> {
        lls.iter().map(|&loglikelihood| Response { loglikelihood, is_greedy: false }).collect()
    }

    fn choice(choices: &[&str], gold: usize, labels: &[bool]) -> Doc {
        Doc::Choice(ChoiceDoc {
            context: String::new(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
            labels: labels.to_vec(),
        })
    }

    #[test]
    fn acc_and_acc_norm() {
        let doc = choice(&["a", "bbbb"], 1, &[]);
        let r = responses(&[-1.0, -2.0]);
        assert_eq!(Metric::Acc.sample(&doc, &r, None), Sample::Value(0.0));
        assert_eq!(Metric::AccNorm.sample(&doc, &r, None), Sample::Value(1.0), "-2/4 beats -1/1");
        assert_eq!(
            Metric::Acc.sample(&doc, &responses(&[-1.0, -1.0]), None),
            Sample::Value(0.0),
            "ties go to the first"
        );
    }

    #[test]
    fn mc2_is_the_normalised_true_mass_even_far_below_underflow() {
        let doc = choice(&["t", "f", "t"], 0, &[true, false, true]);
        let lls = [-1.0f64, -2.0, -3.0];
        let p: Vec<f64> = lls.iter().map(|l| l.exp()).collect();
        let want = (p[0] + p[2]) / p.iter().sum::<f64>();
        let Sample::Value(got) = Metric::Mc2.sample(&doc, &responses(&lls), None) else { panic!() };
        assert!((got - want).abs() < 1e-15);
        let Sample::Value(far) = Metric::Mc2.sample(&doc, &responses(&lls.map(|l| l - 2000.0)), None) else { panic!() };
        assert!((far - want).abs() < 1e-12);
    }

    #[test]
    fn perplexities_are_ratios_of_sums() {
        let doc = |words, bytes| Doc::Rolling(RollingDoc { text: String::new(), words, bytes });
        let samples = [
            Metric::WordPerplexity.sample(&doc(10, 40), &responses(&[-20.0]), None),
            Metric::WordPerplexity.sample(&doc(30, 100), &responses(&[-40.0]), None),
        ];
        let agg = Metric::WordPerplexity.aggregate(&samples);
        assert!((agg.value - (60.0f64 / 40.0).exp()).abs() < 1e-12);
        assert_eq!(agg.stderr, None);
        let bits = Metric::BitsPerByte.aggregate(&[Metric::BitsPerByte.sample(&doc(1, 8), &responses(&[-8.0]), None)]);
        assert!((bits.value - 1.0 / std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn mean_stderr_and_pooling_match_lm_eval() {
        let a = Metric::Acc.aggregate(&[1.0, 0.0, 1.0, 1.0].map(Sample::Value));
        assert_eq!(a.value, 0.75);
        assert!((a.stderr.unwrap() - 0.25).abs() < 1e-12, "sqrt(0.25/3)/2*... = 0.25");
        let b = Metric::Acc.aggregate(&[0.0, 0.0].map(Sample::Value));
        let pooled = pool(&[a, b]);
        assert!((pooled.value - 0.5).abs() < 1e-12);
        // (3*0.0625*4 + 1*0*2) / (6-2) / 6
        assert!((pooled.stderr.unwrap() - (0.75f64 / 4.0 / 6.0).sqrt()).abs() < 1e-12);
        let single = Metric::Acc.aggregate(&[Sample::Value(1.0)]);
        assert_eq!(pool(&[a, single]).stderr, None, "a task without an error leaves the group without one");
    }
}
