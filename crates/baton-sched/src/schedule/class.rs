//! Placement classes: the tasks of a pass grouped by everything that decides
//! which nodes may take them, each class with ordered indexes of its nodes.
//!
//! A class is keyed by driver, constraints, affinities, spread attribute and
//! port needs, plus the job itself when the job has `max_per_node` (its count
//! per node changes eligibility during the pass). Jobs that only differ in
//! priority, strategy, spread targets or size share a class, so a pass over a
//! hundred similar jobs keeps a handful of indexes, not a hundred.
//!
//! A class's eligible nodes are split into buckets, one per (spread value,
//! affinity score), each a tree of the [`Forest`] ordered by free resources. A
//! node sits in one bucket per class; a placement re-files it in every class
//! that holds it, O(log n) each, and drops it from a class for good once it
//! cannot take the class's smallest request, its ports or its cap (all of
//! which only shrink during a pass).

use std::collections::{BTreeMap, BTreeSet};

use baton_spec::{Attribute, DriverKind, Resources, Strategy};
use baton_state::State;

use super::index::Forest;
use super::jobs::JobRules;
use super::nodes::Nodes;
use super::spread::SpreadCounts;

/// What places two jobs' tasks in the same class.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ClassKey<'a> {
    driver: DriverKind,
    /// Constraint texts, sorted.
    constraints: Vec<&'a str>,
    /// Affinity texts and weights, sorted.
    affinities: Vec<(&'a str, i32)>,
    spread: Option<&'a Attribute>,
    static_ports: Vec<u16>,
    n_dynamic: u32,
    /// The job, when its `max_per_node` makes the class its own.
    capped: Option<usize>,
}

impl<'a> ClassKey<'a> {
    /// The class of job `job`'s tasks (texts, not `Constraint`s, as keys: a
    /// `Constraint` holds a regex cache).
    pub(super) fn of(job: usize, rules: &JobRules<'a>) -> ClassKey<'a> {
        let mut constraints: Vec<&'a str> = rules
            .spec
            .map(|s| s.placement.constraints.iter().map(|c| c.as_str()).collect())
            .unwrap_or_default();
        constraints.sort_unstable();
        constraints.dedup();
        let mut affinities: Vec<(&'a str, i32)> = rules
            .affinities()
            .iter()
            .map(|a| (a.expr.as_str(), a.weight))
            .collect();
        affinities.sort_unstable();
        let mut static_ports = rules.static_ports.clone();
        static_ports.sort_unstable();
        ClassKey {
            driver: rules.driver,
            constraints,
            affinities,
            spread: rules.spread_spec().map(|s| &s.attribute),
            static_ports,
            n_dynamic: rules.n_dynamic,
            capped: rules.max_per_node.map(|_| job),
        }
    }
}

/// No spread value: a node without the attribute (or not in a class with a spread).
pub(super) const NO_VALUE: u32 = u32::MAX;

/// One placement class.
#[derive(Debug)]
pub(super) struct Class {
    /// The job whose spec gives the class its rules (every job of the class
    /// has the same ones).
    pub(super) job: usize,
    /// Whether the class enforces that job's `max_per_node`.
    capped: bool,
    /// Component-wise least request of the class's tasks in this pass: a node
    /// that cannot hold it leaves the class.
    smallest: Resources,
    /// Request shapes that fit nowhere in the class: anything at least as
    /// large fails at once.
    failed: Vec<Resources>,
    built: bool,
    /// Nodes that take the class's tasks before resources, ports and caps.
    pub(super) eligible: Vec<usize>,
    /// Spread values present on eligible nodes, sorted.
    pub(super) values: Vec<String>,
    /// Each node's spread value (index into `values`), [`NO_VALUE`] if none.
    node_value: Vec<u32>,
    /// Buckets per value (the last group: nodes without a value), each
    /// `(affinity score, tree)`, highest score first.
    groups: Vec<Vec<(i64, u32)>>,
}

impl Class {
    /// The spread value of a node, if it has one the class knows.
    pub(super) fn value_of(&self, idx: usize) -> Option<usize> {
        self.node_value
            .get(idx)
            .filter(|&&v| v != NO_VALUE)
            .map(|&v| v as usize)
    }
}

/// Every class of a pass, with the indexes of their nodes.
#[derive(Debug, Default)]
pub(super) struct Classes<'a> {
    list: Vec<Class>,
    keys: BTreeMap<ClassKey<'a>, usize>,
    forest: Forest,
    /// Per node: the classes holding it, with its entry in their index.
    members: Vec<Vec<(u32, u32)>>,
}

/// Whether a node eligible for a class can take its tasks now: holds the
/// smallest request, has the ports and is below the cap.
fn admits(nodes: &Nodes<'_>, jobs: &[JobRules<'_>], class: &Class, idx: usize) -> bool {
    let rules = &jobs[class.job];
    class.smallest.fits_in(&nodes.free[idx])
        && (!class.capped || rules.below_cap(idx))
        && nodes.ports_fit(idx, &rules.static_ports, rules.n_dynamic)
}

impl<'a> Classes<'a> {
    /// The class for `key` (created on first use), grown to hold `need`.
    pub(super) fn join(&mut self, key: ClassKey<'a>, job: usize, need: &Resources) -> usize {
        let capped = key.capped.is_some();
        let n = self.list.len();
        let c = *self.keys.entry(key).or_insert(n);
        if c == n {
            self.list.push(Class {
                job,
                capped,
                smallest: *need,
                failed: Vec::new(),
                built: false,
                eligible: Vec::new(),
                values: Vec::new(),
                node_value: Vec::new(),
                groups: Vec::new(),
            });
        }
        let class = &mut self.list[c];
        // `Resources::min` is component-wise; `Ord::min` would pick one.
        class.smallest = Resources::min(&class.smallest, need);
        c
    }

    /// Grows class `c` to hold `need` too.
    pub(super) fn grow(&mut self, c: usize, need: &Resources) -> usize {
        let class = &mut self.list[c];
        // `Resources::min` is component-wise; `Ord::min` would pick one.
        class.smallest = Resources::min(&class.smallest, need);
        c
    }

    /// Lends out class `c`'s eligible nodes (see [`Classes::put_eligible`]).
    pub(super) fn take_eligible(&mut self, c: usize) -> Vec<usize> {
        std::mem::take(&mut self.list[c].eligible)
    }

    /// Gives back what [`Classes::take_eligible`] lent.
    pub(super) fn put_eligible(&mut self, c: usize, eligible: Vec<usize>) {
        self.list[c].eligible = eligible;
    }

    /// Class `c`.
    pub(super) fn get(&self, c: usize) -> &Class {
        &self.list[c]
    }

    /// Files the class's nodes in its indexes, with their free resources as
    /// they are now. Done when its first task comes up, once.
    pub(super) fn build(
        &mut self,
        c: usize,
        state: &State,
        nodes: &Nodes<'_>,
        jobs: &[JobRules<'_>],
    ) {
        if self.list[c].built {
            return;
        }
        if self.members.is_empty() {
            self.members = vec![Vec::new(); nodes.len()];
        }
        let rules = &jobs[self.list[c].job];
        let attribute = rules.spread_spec().map(|s| &s.attribute);
        let eligible: Vec<bool> = nodes
            .list
            .iter()
            .map(|node| rules.takes_new(state, node))
            .collect();
        let mut values = BTreeSet::new();
        let mut node_value = Vec::new();
        if let Some(attribute) = attribute {
            for (idx, node) in nodes.list.iter().enumerate() {
                let view = state.node_view(node);
                if eligible[idx]
                    && let Some(value) = attribute.value(&view)
                    && !values.contains(value)
                {
                    values.insert(value.to_owned());
                }
            }
            let values: Vec<&String> = values.iter().collect();
            node_value = nodes
                .list
                .iter()
                .map(|node| {
                    let view = state.node_view(node);
                    attribute
                        .value(&view)
                        .and_then(|v| values.binary_search_by(|x| x.as_str().cmp(v)).ok())
                        .map_or(NO_VALUE, |v| {
                            u32::try_from(v).expect("fewer than 2^32 values")
                        })
                })
                .collect();
        }
        let values: Vec<String> = values.into_iter().collect();
        let mut groups: Vec<Vec<(i64, u32)>> = vec![Vec::new(); values.len() + 1];
        let class = &self.list[c];
        let affinities = rules.affinities();
        let mut eligible_nodes = Vec::new();
        for (idx, node) in nodes.list.iter().enumerate() {
            if !eligible[idx] {
                continue;
            }
            eligible_nodes.push(idx);
            if !admits(nodes, jobs, class, idx) {
                continue;
            }
            let score: i64 = if affinities.is_empty() {
                0
            } else {
                let view = state.node_view(node);
                affinities
                    .iter()
                    .filter(|a| a.expr.matches(&view))
                    .map(|a| i64::from(a.weight))
                    .sum()
            };
            let group = match node_value.get(idx) {
                Some(&v) if v != NO_VALUE => v as usize,
                _ => values.len(),
            };
            let tiers = &mut groups[group];
            let tree = match tiers.binary_search_by(|(s, _)| score.cmp(s)) {
                Ok(at) => tiers[at].1,
                Err(at) => {
                    let tree = self.forest.tree();
                    tiers.insert(at, (score, tree));
                    tree
                }
            };
            let (key, disk) = nodes.key(idx);
            let entry = self.forest.add(tree, key, disk);
            let class_id = u32::try_from(c).expect("fewer than 2^32 classes");
            self.members[idx].push((class_id, entry));
        }
        let class = &mut self.list[c];
        class.eligible = eligible_nodes;
        class.values = values;
        class.node_value = node_value;
        class.groups = groups;
        class.built = true;
    }

    /// The node for a request in class `c` (built) of a job with `spread`
    /// counts and `strategy`, ranked by spread value, then affinity score,
    /// then the strategy, then node id; `None` if no node of the class holds
    /// it.
    pub(super) fn find(
        &mut self,
        c: usize,
        spread: Option<&mut SpreadCounts>,
        strategy: Strategy,
        need: &Resources,
    ) -> Option<usize> {
        let class = &mut self.list[c];
        if class.failed.iter().any(|shape| shape.fits_in(need)) {
            return None;
        }
        let no_value = class.values.len();
        let forest = &self.forest;
        let search = |group: usize| -> Option<usize> {
            class.groups[group].iter().find_map(|&(_, tree)| {
                let found = match strategy {
                    Strategy::Binpack => forest.first_fit(
                        tree,
                        (need.memory_bytes, 0, 0),
                        need.cpu_millis,
                        need.disk_bytes,
                    ),
                    Strategy::Spread => forest
                        .last_fit(tree, need.memory_bytes, need.cpu_millis, need.disk_bytes)
                        // The emptiest (memory, CPU); among equals, the lowest id.
                        .and_then(|(memory, cpu, _)| {
                            forest.first_fit(
                                tree,
                                (memory, cpu, 0),
                                need.cpu_millis,
                                need.disk_bytes,
                            )
                        }),
                };
                found.map(|(_, _, idx)| idx as usize)
            })
        };
        let found = match spread {
            Some(counts) => {
                // Values whose nodes have all left the class are not offered
                // again: a spread over `node.id` would otherwise walk every
                // full node for every task.
                let mut gone = Vec::new();
                let mut found = None;
                for group in counts.ordered() {
                    if class.groups[group]
                        .iter()
                        .all(|&(_, tree)| forest.is_empty(tree))
                    {
                        gone.push(group);
                        continue;
                    }
                    found = search(group);
                    if found.is_some() {
                        break;
                    }
                }
                for group in gone {
                    counts.retire(group);
                }
                found.or_else(|| search(no_value))
            }
            None => (0..class.groups.len()).find_map(search),
        };
        if found.is_some() {
            return found;
        }
        // Free resources only shrink during a pass, so anything at least this
        // large fails too; keep only the minimal failed shapes.
        class.failed.retain(|shape| !need.fits_in(shape));
        class.failed.push(*need);
        None
    }

    /// Re-files a node whose free resources, ports or counts changed in every
    /// class holding it, dropping it from those it no longer fits.
    pub(super) fn refresh(&mut self, idx: usize, nodes: &Nodes<'_>, jobs: &[JobRules<'_>]) {
        let Some(members) = self.members.get_mut(idx) else {
            return;
        };
        let (key, disk) = nodes.key(idx);
        members.retain(|&(c, entry)| {
            let keep = admits(nodes, jobs, &self.list[c as usize], idx);
            self.forest.update(entry, key, disk, keep);
            keep
        });
    }
}
