//! Ordered indexes of nodes by free resources: an arena of treaps, one tree
//! per bucket of a placement class, answering "the fullest node that holds
//! this request" (best fit) and "the emptiest node that holds it" in
//! O(log n) expected, whatever the mix of request shapes.
//!
//! A tree orders its entries by `(free memory, free CPU, node index)` (node
//! indexes follow node ids). Every subtree also carries the largest free CPU
//! and free disk found in it, so a search skips a whole subtree that is short
//! of CPU or disk instead of walking past its nodes one by one: a cluster
//! where many nodes have memory left but no CPU (tasks of mixed shapes fill
//! nodes unevenly) costs a few subtree skips, not a scan.
//!
//! Treap priorities are a hash of the entry number, so the shape of a tree,
//! like everything else in a pass, depends only on its inputs.

/// What a tree is ordered by: free memory, free CPU, node index.
pub(super) type FreeKey = (u64, u64, u32);

/// No entry.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FreeKey,
    disk: u64,
    priority: u64,
    left: u32,
    right: u32,
    /// Largest free CPU in the subtree rooted here.
    max_cpu: u64,
    /// Largest free disk in the subtree rooted here.
    max_disk: u64,
    /// The tree it belongs to.
    tree: u32,
    /// Whether it is in its tree now.
    linked: bool,
}

/// Every tree of a pass, in one arena.
#[derive(Debug, Default)]
pub(super) struct Forest {
    entries: Vec<Entry>,
    roots: Vec<u32>,
}

/// splitmix64: treap priorities from entry numbers.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("fewer than 2^32 index entries")
}

impl Forest {
    /// A new, empty tree.
    pub(super) fn tree(&mut self) -> u32 {
        self.roots.push(NIL);
        to_u32(self.roots.len() - 1)
    }

    /// Adds an entry to `tree` and returns its number.
    pub(super) fn add(&mut self, tree: u32, key: FreeKey, disk: u64) -> u32 {
        let id = to_u32(self.entries.len());
        self.entries.push(Entry {
            key,
            disk,
            priority: mix(u64::from(id)),
            left: NIL,
            right: NIL,
            max_cpu: key.1,
            max_disk: disk,
            tree,
            linked: true,
        });
        let root = self.roots[tree as usize];
        self.roots[tree as usize] = self.insert(root, id);
        id
    }

    /// Re-files an entry under a new key, or takes it out of its tree for good
    /// when `keep` is false.
    pub(super) fn update(&mut self, id: u32, key: FreeKey, disk: u64, keep: bool) {
        let entry = self.entries[id as usize];
        if !entry.linked {
            return;
        }
        if keep && entry.key == key && entry.disk == disk {
            return;
        }
        let tree = entry.tree as usize;
        self.roots[tree] = self.remove(self.roots[tree], entry.key);
        let slot = &mut self.entries[id as usize];
        slot.left = NIL;
        slot.right = NIL;
        slot.linked = keep;
        if keep {
            slot.key = key;
            slot.disk = disk;
            slot.max_cpu = key.1;
            slot.max_disk = disk;
            self.roots[tree] = self.insert(self.roots[tree], id);
        }
    }

    /// Whether `tree` has no entry.
    pub(super) fn is_empty(&self, tree: u32) -> bool {
        self.roots[tree as usize] == NIL
    }

    /// The smallest key at or after `from` whose CPU and disk are at least
    /// `cpu` and `disk`.
    pub(super) fn first_fit(
        &self,
        tree: u32,
        from: FreeKey,
        cpu: u64,
        disk: u64,
    ) -> Option<FreeKey> {
        self.first(self.roots[tree as usize], from, cpu, disk)
    }

    /// The largest key with at least `memory`, `cpu` and `disk`.
    pub(super) fn last_fit(&self, tree: u32, memory: u64, cpu: u64, disk: u64) -> Option<FreeKey> {
        self.last(self.roots[tree as usize], memory, cpu, disk)
    }

    fn first(&self, t: u32, from: FreeKey, cpu: u64, disk: u64) -> Option<FreeKey> {
        if t == NIL {
            return None;
        }
        let e = &self.entries[t as usize];
        if e.max_cpu < cpu || e.max_disk < disk {
            return None;
        }
        if e.key < from {
            return self.first(e.right, from, cpu, disk);
        }
        if let Some(found) = self.first(e.left, from, cpu, disk) {
            return Some(found);
        }
        if e.key.1 >= cpu && e.disk >= disk {
            return Some(e.key);
        }
        self.first(e.right, from, cpu, disk)
    }

    fn last(&self, t: u32, memory: u64, cpu: u64, disk: u64) -> Option<FreeKey> {
        if t == NIL {
            return None;
        }
        let e = &self.entries[t as usize];
        if e.max_cpu < cpu || e.max_disk < disk {
            return None;
        }
        if let Some(found) = self.last(e.right, memory, cpu, disk) {
            return Some(found);
        }
        if e.key.0 < memory {
            // Everything to the left has even less memory.
            return None;
        }
        if e.key.1 >= cpu && e.disk >= disk {
            return Some(e.key);
        }
        self.last(e.left, memory, cpu, disk)
    }

    fn pull(&mut self, t: u32) {
        let e = self.entries[t as usize];
        let mut max_cpu = e.key.1;
        let mut max_disk = e.disk;
        for child in [e.left, e.right] {
            if child != NIL {
                let c = &self.entries[child as usize];
                max_cpu = max_cpu.max(c.max_cpu);
                max_disk = max_disk.max(c.max_disk);
            }
        }
        let e = &mut self.entries[t as usize];
        e.max_cpu = max_cpu;
        e.max_disk = max_disk;
    }

    /// Splits `t` into the keys below `key` and the rest.
    fn split(&mut self, t: u32, key: FreeKey) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let e = self.entries[t as usize];
        if e.key < key {
            let (l, r) = self.split(e.right, key);
            self.entries[t as usize].right = l;
            self.pull(t);
            (t, r)
        } else {
            let (l, r) = self.split(e.left, key);
            self.entries[t as usize].left = r;
            self.pull(t);
            (l, t)
        }
    }

    /// Joins two trees, every key of `a` below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.entries[a as usize].priority > self.entries[b as usize].priority {
            let right = self.entries[a as usize].right;
            let merged = self.merge(right, b);
            self.entries[a as usize].right = merged;
            self.pull(a);
            a
        } else {
            let left = self.entries[b as usize].left;
            let merged = self.merge(a, left);
            self.entries[b as usize].left = merged;
            self.pull(b);
            b
        }
    }

    fn insert(&mut self, t: u32, id: u32) -> u32 {
        if t == NIL {
            return id;
        }
        let new = self.entries[id as usize];
        let e = self.entries[t as usize];
        if new.priority > e.priority {
            let (l, r) = self.split(t, new.key);
            let slot = &mut self.entries[id as usize];
            slot.left = l;
            slot.right = r;
            self.pull(id);
            return id;
        }
        if new.key < e.key {
            let left = self.insert(e.left, id);
            self.entries[t as usize].left = left;
        } else {
            let right = self.insert(e.right, id);
            self.entries[t as usize].right = right;
        }
        self.pull(t);
        t
    }

    fn remove(&mut self, t: u32, key: FreeKey) -> u32 {
        if t == NIL {
            return NIL;
        }
        let e = self.entries[t as usize];
        if e.key == key {
            return self.merge(e.left, e.right);
        }
        if key < e.key {
            let left = self.remove(e.left, key);
            self.entries[t as usize].left = left;
        } else {
            let right = self.remove(e.right, key);
            self.entries[t as usize].right = right;
        }
        self.pull(t);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers of a plain scan, to check the tree against.
    fn scan_first(keys: &[(FreeKey, u64)], from: FreeKey, cpu: u64, disk: u64) -> Option<FreeKey> {
        keys.iter()
            .filter(|(k, d)| *k >= from && k.1 >= cpu && *d >= disk)
            .map(|(k, _)| *k)
            .min()
    }

    fn scan_last(keys: &[(FreeKey, u64)], memory: u64, cpu: u64, disk: u64) -> Option<FreeKey> {
        keys.iter()
            .filter(|(k, d)| k.0 >= memory && k.1 >= cpu && *d >= disk)
            .map(|(k, _)| *k)
            .max()
    }

    #[test]
    fn searches_agree_with_a_scan_through_updates() {
        let mut forest = Forest::default();
        let tree = forest.tree();
        let other = forest.tree();
        let mut state: u64 = 7;
        let mut next = move |bound: u64| {
            state = mix(state);
            state % bound
        };
        let mut live: Vec<(u32, FreeKey, u64)> = Vec::new();
        for node in 0..300u32 {
            let key = (next(64), next(64), node);
            let disk = next(8);
            let id = forest.add(tree, key, disk);
            live.push((id, key, disk));
            // Entries of another tree never show up in this one.
            forest.add(other, (1000, 1000, node), 1000);
        }
        for round in 0..2000 {
            let keys: Vec<(FreeKey, u64)> = live.iter().map(|(_, k, d)| (*k, *d)).collect();
            let (memory, cpu, disk) = (next(70), next(70), next(9));
            assert_eq!(
                forest.first_fit(tree, (memory, 0, 0), cpu, disk),
                scan_first(&keys, (memory, 0, 0), cpu, disk),
                "round {round}"
            );
            assert_eq!(
                forest.last_fit(tree, memory, cpu, disk),
                scan_last(&keys, memory, cpu, disk),
                "round {round}"
            );
            if live.is_empty() {
                break;
            }
            // Free resources only shrink; some entries leave for good.
            let pick = usize::try_from(next(live.len() as u64)).expect("small");
            let (id, key, disk) = live[pick];
            let new_key = (
                key.0.saturating_sub(next(8)),
                key.1.saturating_sub(next(8)),
                key.2,
            );
            let new_disk = disk.saturating_sub(next(2));
            let keep = next(10) != 0;
            forest.update(id, new_key, new_disk, keep);
            if keep {
                live[pick] = (id, new_key, new_disk);
            } else {
                live.swap_remove(pick);
            }
        }
    }

    #[test]
    fn removed_entries_stay_out() {
        let mut forest = Forest::default();
        let tree = forest.tree();
        let a = forest.add(tree, (5, 5, 0), 5);
        forest.add(tree, (9, 9, 1), 9);
        forest.update(a, (5, 5, 0), 5, false);
        forest.update(a, (6, 6, 0), 6, true);
        assert_eq!(forest.first_fit(tree, (0, 0, 0), 0, 0), Some((9, 9, 1)));
    }
}
