//! Shared prefixes: sequences of a wave that begin with the same tokens (a task's few-shot
//! examples, a question repeated before each of its answers) run those tokens once.
//!
//! The wave's sequences are sorted by their tokens, so that sequences sharing a prefix sit side by
//! side, and cut into groups whose common prefix is at least [`MIN_PREFIX`] tokens. A group's
//! prefix runs through each layer as a sequence of its own, keeping its keys and values for that
//! layer; the members then run only their remaining tokens, at the positions after the prefix,
//! attending to the prefix's keys and values (`model::kv_cache::attend_after_past`). Layer-major
//! order means a prefix's keys and values are needed only while its layer runs; a generation's
//! prefill copies them into the cache of each member (`model::kv_cache::keep_after_past`), whose
//! decode steps attend to the whole prompt.
//!
//! A prefix leaves every sequence at least one token of its own. Rows inside a prefix whose head
//! output is asked for (the last token of a context, before each of its endings) are computed in
//! the prefix, once for all its members. Every scored row is thus computed from the same tokens as
//! before: the log-likelihoods change only by float rounding (the tests hold them to 1e-4 of the
//! unshared path).

/// Common prefixes shorter than this are not worth a sequence of their own. (At 16, a fifth of
/// HellaSwag's contexts, 9 to 15 tokens long, ran again for each of their four endings.)
pub const MIN_PREFIX: usize = 8;

/// Which sequences continue which prefix.
#[derive(Debug, Default, PartialEq)]
pub struct PrefixPlan {
    /// Each prefix as (a sequence that starts with it, its length).
    pub prefixes: Vec<(usize, usize)>,
    /// For each sequence, the prefix it continues, if any.
    pub of: Vec<Option<usize>>,
}

impl PrefixPlan {
    /// `count` sequences, none continuing a prefix.
    pub fn unshared(count: usize) -> Self {
        Self { prefixes: Vec::new(), of: vec![None; count] }
    }

    /// The number of leading tokens sequence `i` shares with its prefix.
    pub fn offset(&self, i: usize) -> usize {
        self.of[i].map_or(0, |p| self.prefixes[p].1)
    }
}

/// Groups `sequences` by shared prefixes.
pub fn plan(sequences: &[&[u32]]) -> PrefixPlan {
    let limit = |i: usize| sequences[i].len().saturating_sub(1);
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by(|&a, &b| sequences[a].cmp(sequences[b]));
    let mut plan = PrefixPlan { prefixes: Vec::new(), of: vec![None; sequences.len()] };
    let mut group: Vec<usize> = Vec::new();
    let mut shared = 0;
    for i in order {
        let extended = match group.last() {
            Some(&last) => common_len(sequences[last], sequences[i]).min(shared).min(limit(i)),
            None => 0,
        };
        // Join where the group keeps a useful prefix and saves at least the tokens it saved
        // (g members sharing p save (g - 1) p): MMLU's subjects share the first dozen tokens of
        // their headers, and a subject's whole header must not shrink to those.
        let joins = extended >= MIN_PREFIX && group.len() * extended >= (group.len() - 1) * shared;
        if joins {
            group.push(i);
            shared = extended;
        } else {
            close(&mut plan, &group, shared);
            group = vec![i];
            shared = limit(i);
        }
    }
    close(&mut plan, &group, shared);
    plan
}

fn close(plan: &mut PrefixPlan, group: &[usize], shared: usize) {
    if group.len() < 2 || shared < MIN_PREFIX {
        return;
    }
    let id = plan.prefixes.len();
    plan.prefixes.push((group[0], shared));
    for &member in group {
        plan.of[member] = Some(id);
    }
}

fn common_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(prefix: u32, len: usize, tail: &[u32]) -> Vec<u32> {
        (0..len as u32).map(|t| prefix * 1000 + t).chain(tail.iter().copied()).collect()
    }

    #[test]
    fn groups_by_shared_prefix() {
        let few_shot_a = [seq(1, 40, &[7, 8]), seq(1, 40, &[9]), seq(1, 40, &[5, 5, 5])];
        let alone = seq(2, 30, &[1]);
        let short_common = [seq(3, 6, &[1]), seq(3, 6, &[2])];
        let all: Vec<&[u32]> = few_shot_a.iter().chain([&alone]).chain(&short_common).map(Vec::as_slice).collect();
        let plan = plan(&all);
        assert_eq!(plan.prefixes.len(), 1);
        assert_eq!(plan.prefixes[0].1, 40);
        assert_eq!(&plan.of[..3], &[Some(0); 3]);
        assert_eq!(&plan.of[3..], &[None; 3]);
        assert_eq!(plan.offset(1), 40);
    }

    /// Two subjects of 0-shot MMLU: headers that share their first 12 tokens, then 8 of their
    /// own, before each question. Each subject keeps its whole header (a group had once shrunk
    /// to any prefix at least half as long).
    #[test]
    fn groups_do_not_shrink_to_what_other_groups_share() {
        let header = |subject: u32| (0..20).map(|t| if t < 12 { t } else { subject * 1000 + t }).collect::<Vec<u32>>();
        let question = |subject: u32, q: u32| header(subject).into_iter().chain([50_000 + q, 7]).collect::<Vec<u32>>();
        let all: Vec<Vec<u32>> = (0..2).flat_map(|s| (0..5).map(move |q| question(s + 1, q))).collect();
        let sequences: Vec<&[u32]> = all.iter().map(Vec::as_slice).collect();
        let plan = plan(&sequences);
        assert_eq!(plan.prefixes.iter().map(|p| p.1).collect::<Vec<_>>(), [20, 20]);
    }

    #[test]
    fn a_sequence_keeps_a_token_of_its_own() {
        let a = seq(1, 20, &[]);
        let b = seq(1, 20, &[3]);
        let plan = plan(&[&a, &b]);
        assert_eq!(plan.prefixes, vec![(0, 19)]);
    }
}
