//! Task ids drawn from the pass's seed: `<job>.<slot>.<12 lowercase hex>`.
//!
//! The hex part comes from splitmix64 over the seed, so a pass is deterministic
//! for a given seed. Ids already in the state are skipped, because a caller may
//! reuse a seed (tests do) and a repeated id would make apply drop the task.

use baton_state::{Slot, State, TaskId};

/// Draws task ids from a seed.
#[derive(Debug)]
pub(crate) struct IdGen {
    state: u64,
}

impl IdGen {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> IdGen {
        IdGen { state: seed }
    }

    /// splitmix64 (Steele, Lea, Flood 2014): a bijective mix of a Weyl sequence,
    /// so distinct draws of one pass never repeat before 2^64 draws.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A fresh id for a task of `job` in `slot`, not present in `state`.
    pub(crate) fn task_id(&mut self, state: &State, job: &str, slot: &Slot) -> TaskId {
        loop {
            // 48 bits: 12 hex digits. Collisions within one job and slot are
            // what matters, and a slot has a handful of tasks.
            let id = TaskId(format!("{job}.{slot}.{:012x}", self.next_u64() >> 16));
            if state.task(&id).is_none() {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_per_seed_and_well_formed() {
        let state = State::default();
        let mut a = IdGen::new(7);
        let mut b = IdGen::new(7);
        let id_a = a.task_id(&state, "web", &Slot::Index(3));
        assert_eq!(id_a, b.task_id(&state, "web", &Slot::Index(3)));
        let hex = id_a.0.strip_prefix("web.3.").expect("prefix");
        assert_eq!(hex.len(), 12);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(id_a, a.task_id(&state, "web", &Slot::Index(3)));
    }
}
