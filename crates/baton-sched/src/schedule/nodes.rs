//! Every node as one pass sees it: free resources and host ports, both the
//! state's and what this pass already took.
//!
//! Free resources and ports only ever shrink during a pass (stops take effect
//! when nodes report them, in a later pass), which is what lets the placement
//! classes drop a node for good once it cannot take their tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use baton_spec::{DYNAMIC_PORT_MAX, DYNAMIC_PORT_MIN, PortSpec, Resources};
use baton_state::{Node, NodeId, State};

use super::index::FreeKey;

/// Number of ports in the dynamic range.
const DYNAMIC_SPAN: u32 = (DYNAMIC_PORT_MAX - DYNAMIC_PORT_MIN) as u32 + 1;

/// The nodes of the state, by id, with what is free on each.
#[derive(Debug)]
pub(super) struct Nodes<'a> {
    /// Every node, ordered by id: a node's index is its rank by id.
    pub(super) list: Vec<&'a Node>,
    /// Node indexes by id (lookups only; nothing iterates it).
    by_id: HashMap<&'a str, usize>,
    /// Free resources: capacity, minus what unfinished tasks reserve, minus
    /// what this pass placed (or set aside for a preempting task).
    pub(super) free: Vec<Resources>,
    /// Ports held by the node's unfinished tasks in the state, sorted.
    held: Vec<Vec<u16>>,
    /// Ports this pass handed out (or set aside).
    taken: Vec<BTreeSet<u16>>,
    /// Below this, every dynamic port of the node is in use (ports are only
    /// taken during a pass, so it only moves up).
    next_dynamic: Vec<u16>,
    /// Dynamic-range ports still free.
    dynamic_free: Vec<u32>,
}

impl<'a> Nodes<'a> {
    pub(super) fn new(state: &'a State) -> Nodes<'a> {
        let list: Vec<&'a Node> = state.nodes().collect();
        let free = list.iter().map(|node| state.free(node)).collect();
        let held: Vec<Vec<u16>> = list
            .iter()
            .map(|node| {
                state
                    .ports_in_use(&node.id)
                    .map(|ports| ports.iter().copied().collect())
                    .unwrap_or_default()
            })
            .collect();
        let dynamic_free = held
            .iter()
            .map(|ports: &Vec<u16>| {
                let lo = ports.partition_point(|&p| p < DYNAMIC_PORT_MIN);
                let hi = ports.partition_point(|&p| p <= DYNAMIC_PORT_MAX);
                DYNAMIC_SPAN - u32::try_from(hi - lo).expect("at most 65536 ports")
            })
            .collect();
        Nodes {
            by_id: list
                .iter()
                .enumerate()
                .map(|(idx, n)| (n.id.0.as_str(), idx))
                .collect(),
            free,
            taken: vec![BTreeSet::new(); list.len()],
            next_dynamic: vec![DYNAMIC_PORT_MIN; list.len()],
            dynamic_free,
            held,
            list,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The index of a node, by id.
    pub(super) fn position(&self, id: &NodeId) -> Option<usize> {
        self.by_id.get(id.0.as_str()).copied()
    }

    /// The key a node is filed under in the free-resource indexes, and its
    /// free disk.
    pub(super) fn key(&self, idx: usize) -> (FreeKey, u64) {
        let free = &self.free[idx];
        let rank = u32::try_from(idx).expect("fewer than 2^32 nodes");
        ((free.memory_bytes, free.cpu_millis, rank), free.disk_bytes)
    }

    /// Whether a host port is held on the node (by the state or this pass).
    pub(super) fn in_use(&self, idx: usize, port: u16) -> bool {
        self.held[idx].binary_search(&port).is_ok() || self.taken[idx].contains(&port)
    }

    /// Whether this pass handed `port` out on the node.
    pub(super) fn taken_by_pass(&self, idx: usize, port: u16) -> bool {
        self.taken[idx].contains(&port)
    }

    /// The first of `ports` in use on the node.
    pub(super) fn first_in_use(&self, idx: usize, ports: &[u16]) -> Option<u16> {
        ports.iter().copied().find(|&p| self.in_use(idx, p))
    }

    /// Dynamic ports left for a task whose static ports are `statics` (those
    /// in the dynamic range are taken first).
    pub(super) fn dynamic_room(&self, idx: usize, statics: &[u16]) -> u32 {
        let own = statics
            .iter()
            .filter(|&&p| {
                (DYNAMIC_PORT_MIN..=DYNAMIC_PORT_MAX).contains(&p) && !self.in_use(idx, p)
            })
            .count();
        self.dynamic_free[idx].saturating_sub(u32::try_from(own).expect("few ports"))
    }

    /// Whether the task's ports are all to be had on the node.
    pub(super) fn ports_fit(&self, idx: usize, statics: &[u16], n_dynamic: u32) -> bool {
        if statics.is_empty() && n_dynamic == 0 {
            return true;
        }
        self.first_in_use(idx, statics).is_none() && self.dynamic_room(idx, statics) >= n_dynamic
    }

    /// Takes resources from the node.
    pub(super) fn take(&mut self, idx: usize, need: &Resources) {
        self.free[idx] = self.free[idx].saturating_sub(need);
    }

    /// Marks a port taken on the node.
    pub(super) fn hold(&mut self, idx: usize, port: u16) {
        if self.in_use(idx, port) {
            return;
        }
        self.taken[idx].insert(port);
        if (DYNAMIC_PORT_MIN..=DYNAMIC_PORT_MAX).contains(&port) {
            self.dynamic_free[idx] = self.dynamic_free[idx].saturating_sub(1);
        }
    }

    /// Hands out a task's ports on the node: its static ports, then the lowest
    /// free dynamic port for each dynamic one. The caller checked
    /// [`Nodes::ports_fit`].
    pub(super) fn take_ports(&mut self, idx: usize, specs: &[PortSpec]) -> BTreeMap<String, u16> {
        let mut ports = BTreeMap::new();
        for spec in specs {
            if let Some(port) = spec.static_port {
                self.hold(idx, port);
                ports.insert(spec.name.clone(), port);
            }
        }
        for spec in specs.iter().filter(|s| s.static_port.is_none()) {
            let mut port = self.next_dynamic[idx];
            while port <= DYNAMIC_PORT_MAX && self.in_use(idx, port) {
                port += 1;
            }
            if port > DYNAMIC_PORT_MAX {
                // Unreachable after `ports_fit`; leave the port out rather than
                // hand out one in use (apply would refuse the placement).
                break;
            }
            self.hold(idx, port);
            self.next_dynamic[idx] = port + 1;
            ports.insert(spec.name.clone(), port);
        }
        ports
    }
}
