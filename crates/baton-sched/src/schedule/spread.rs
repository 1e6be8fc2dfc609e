//! Spreading one job's tasks over the values of a node attribute.
//!
//! Each value present on a node eligible for the job has a wanted share: its
//! target percent, the rest split evenly among the values not named, or an
//! even share of everything when there are no targets. A task goes to the
//! value furthest below its share of the job's tasks counted with that task
//! (`share * (n + 1) - count`), so with even shares the counts never differ
//! by more than one while every value has room, and with targets they follow
//! the percentages as closely as whole tasks allow. The job's tasks counted
//! are those that stay (see `JobRules::spread_per_node`), so a rolling update
//! or a drain does not push new tasks away from the values they leave.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use baton_spec::Spread;

/// One job's tasks per attribute value of its placement class.
#[derive(Debug)]
pub(super) struct SpreadCounts {
    /// The sum of the values' weights (a value's wanted share is its tier's
    /// weight over this).
    total: u64,
    /// The job's tasks per value (state and this pass; see
    /// `JobRules::spread_per_node` for which tasks of the state count).
    counts: Vec<u64>,
    /// Their sum.
    n: u64,
    /// The values still offered, grouped by weight (one tier per distinct
    /// weight, in first-seen order), each tier by `(count, value)`: within a
    /// tier the deficit falls as the count grows, so merging the tiers yields
    /// the values furthest below their share first without sorting every
    /// value for every task (a spread over `node.id` has a value per node).
    tiers: Vec<(u64, BTreeSet<(u64, usize)>)>,
    /// Each value's tier.
    tier_of: Vec<usize>,
    /// Values no longer offered (see [`SpreadCounts::retire`]).
    retired: Vec<bool>,
}

impl SpreadCounts {
    /// Shares of `values` (sorted, as the class lists them) under `spread`.
    pub(super) fn new(spread: &Spread, values: &[String]) -> SpreadCounts {
        let weights: Vec<u64> = if spread.targets.is_empty() {
            vec![1; values.len()]
        } else {
            let named = |value: &str| {
                spread
                    .targets
                    .iter()
                    .find(|t| t.value == value)
                    .map(|t| u64::from(t.percent))
            };
            let unnamed = values.iter().filter(|v| named(v).is_none()).count() as u64;
            let rest =
                100u64.saturating_sub(spread.targets.iter().map(|t| u64::from(t.percent)).sum());
            // Scaled by the number of unnamed values so every share is whole:
            // a named value wants `percent`, each unnamed one `rest / unnamed`.
            values
                .iter()
                .map(|v| named(v).map_or(rest, |percent| percent.saturating_mul(unnamed.max(1))))
                .collect()
        };
        let mut tiers: Vec<(u64, BTreeSet<(u64, usize)>)> = Vec::new();
        let mut tier_of = Vec::with_capacity(weights.len());
        for (v, &weight) in weights.iter().enumerate() {
            let tier = match tiers.iter().position(|(w, _)| *w == weight) {
                Some(tier) => tier,
                None => {
                    tiers.push((weight, BTreeSet::new()));
                    tiers.len() - 1
                }
            };
            tiers[tier].1.insert((0, v));
            tier_of.push(tier);
        }
        SpreadCounts {
            total: weights.iter().fold(0u64, |sum, &w| sum.saturating_add(w)),
            counts: vec![0; weights.len()],
            retired: vec![false; weights.len()],
            n: 0,
            tiers,
            tier_of,
        }
    }

    /// Counts one task on a node whose value is `value` (none: a node without
    /// the attribute, which no share covers).
    pub(super) fn add(&mut self, value: Option<usize>) {
        let Some(v) = value.filter(|&v| v < self.counts.len()) else {
            return;
        };
        let count = self.counts[v];
        if !self.retired[v] {
            let set = &mut self.tiers[self.tier_of[v]].1;
            set.remove(&(count, v));
            set.insert((count + 1, v));
        }
        self.counts[v] = count + 1;
        self.n += 1;
    }

    /// Stops offering a value (its nodes in the class have all left it, for
    /// good); it keeps its count.
    pub(super) fn retire(&mut self, v: usize) {
        if let Some(retired) = self.retired.get_mut(v)
            && !*retired
        {
            *retired = true;
            self.tiers[self.tier_of[v]].1.remove(&(self.counts[v], v));
        }
    }

    /// The values still offered, furthest below their share first (ties:
    /// value order), lazily: O(tiers) per value taken.
    pub(super) fn ordered(&self) -> impl Iterator<Item = usize> + '_ {
        let n = i128::from(self.n) + 1;
        let total = i128::from(self.total);
        let mut heads: Vec<_> = self
            .tiers
            .iter()
            .map(|(weight, set)| (i128::from(*weight), set.iter().peekable()))
            .collect();
        std::iter::from_fn(move || {
            let mut best: Option<(Reverse<i128>, usize, usize)> = None;
            for (t, (weight, head)) in heads.iter_mut().enumerate() {
                if let Some(&&(count, v)) = head.peek() {
                    let key = (Reverse(*weight * n - total * i128::from(count)), v, t);
                    if best.is_none_or(|b| key < b) {
                        best = Some(key);
                    }
                }
            }
            let (_, v, t) = best?;
            heads[t].1.next();
            Some(v)
        })
    }

    /// [`SpreadCounts::ordered`], collected.
    #[cfg(test)]
    pub(super) fn order(&self) -> Vec<usize> {
        self.ordered().collect()
    }
}

#[cfg(test)]
mod tests {
    use baton_spec::{Attribute, SpreadTarget};

    use super::*;

    fn spread(targets: &[(&str, u32)]) -> Spread {
        Spread {
            attribute: Attribute::Label("zone".to_owned()),
            targets: targets
                .iter()
                .map(|(value, percent)| SpreadTarget {
                    value: (*value).to_owned(),
                    percent: *percent,
                })
                .collect(),
        }
    }

    fn values(names: &[&str]) -> Vec<String> {
        names.iter().map(|v| (*v).to_owned()).collect()
    }

    /// The values chosen for `n` tasks in a row, by name.
    fn picks(counts: &mut SpreadCounts, names: &[&str], n: usize) -> String {
        (0..n)
            .map(|_| {
                let v = counts.order()[0];
                counts.add(Some(v));
                names[v]
            })
            .collect::<Vec<_>>()
            .join("")
    }

    #[test]
    fn even_shares_round_robin() {
        let names = ["a", "b", "c"];
        let mut counts = SpreadCounts::new(&spread(&[]), &values(&names));
        counts.add(Some(0));
        counts.add(Some(0));
        assert_eq!(picks(&mut counts, &names, 7), "bcbcabc");
    }

    #[test]
    fn targets_are_followed_and_the_rest_is_shared() {
        let names = ["a", "b", "c"];
        // a: 50%, b and c share the other 50%.
        let mut counts = SpreadCounts::new(&spread(&[("a", 50)]), &values(&names));
        let got = picks(&mut counts, &names, 8);
        assert_eq!(got.matches('a').count(), 4, "{got}");
        assert_eq!(got.matches('b').count(), 2, "{got}");
        assert_eq!(got.matches('c').count(), 2, "{got}");
        let mut counts = SpreadCounts::new(&spread(&[("a", 70), ("b", 30)]), &values(&names[..2]));
        let got = picks(&mut counts, &names, 10);
        assert_eq!(got.matches('a').count(), 7, "{got}");
    }

    #[test]
    fn nodes_without_the_value_are_not_counted() {
        let mut counts = SpreadCounts::new(&spread(&[]), &values(&["a", "b"]));
        counts.add(None);
        counts.add(Some(1));
        assert_eq!(counts.order(), vec![0, 1]);
    }

    /// The lazy merge of tiers gives the order a full sort would, through
    /// adds and retirements, with and without targets.
    #[test]
    fn ordered_agrees_with_a_sort() {
        let names: Vec<String> = (0..40).map(|i| format!("v{i:02}")).collect();
        for targets in [vec![], vec![("v03", 20), ("v07", 5), ("v11", 20)]] {
            let spread = spread(&targets);
            let mut counts = SpreadCounts::new(&spread, &names);
            let mut retired = vec![false; names.len()];
            let mut seed: u64 = 11;
            for step in 0..600u64 {
                let n = i128::from(counts.n) + 1;
                let total = i128::from(counts.total);
                let mut want: Vec<usize> = (0..names.len()).filter(|&v| !retired[v]).collect();
                want.sort_by_key(|&v| {
                    (
                        Reverse(
                            i128::from(counts.tiers[counts.tier_of[v]].0) * n
                                - total * i128::from(counts.counts[v]),
                        ),
                        v,
                    )
                });
                assert_eq!(counts.order(), want, "step {step}");
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let v = usize::try_from((seed >> 33) % 40).expect("small");
                if step % 50 == 49 {
                    counts.retire(v);
                    retired[v] = true;
                } else {
                    counts.add(Some(v));
                }
            }
        }
    }
}
