//! Spreading one job's tasks over the values of a node attribute.
//!
//! Each value present on a node eligible for the job has a wanted share: its
//! target percent, the rest split evenly among the values not named, or an
//! even share of everything when there are no targets. A task goes to the
//! value furthest below its share of the job's tasks counted with that task
//! (`share * (n + 1) - count`), so with even shares the counts never differ
//! by more than one while every value has room, and with targets they follow
//! the percentages as closely as whole tasks allow.

use std::cmp::Reverse;

use baton_spec::Spread;

/// One job's tasks per attribute value of its placement class.
#[derive(Debug)]
pub(super) struct SpreadCounts {
    /// Wanted share of each value, as a weight (shares are `weight / total`).
    weights: Vec<u64>,
    total: u64,
    /// The job's unfinished tasks per value (state and this pass).
    counts: Vec<u64>,
    /// Their sum.
    n: u64,
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
                .map(|v| named(v).map_or(rest, |percent| percent * unnamed.max(1)))
                .collect()
        };
        SpreadCounts {
            total: weights.iter().sum(),
            counts: vec![0; weights.len()],
            weights,
            n: 0,
        }
    }

    /// Counts one task on a node whose value is `value` (none: a node without
    /// the attribute, which no share covers).
    pub(super) fn add(&mut self, value: Option<usize>) {
        if let Some(count) = value.and_then(|v| self.counts.get_mut(v)) {
            *count += 1;
            self.n += 1;
        }
    }

    /// The values, furthest below their share first (ties: value order).
    pub(super) fn order(&self) -> Vec<usize> {
        let n = i128::from(self.n) + 1;
        let total = i128::from(self.total);
        let deficit =
            |v: usize| i128::from(self.weights[v]) * n - total * i128::from(self.counts[v]);
        let mut order: Vec<usize> = (0..self.weights.len()).collect();
        order.sort_by_key(|&v| (Reverse(deficit(v)), v));
        order
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
}
