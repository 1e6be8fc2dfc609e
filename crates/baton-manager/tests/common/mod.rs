//! Helpers shared by the manager's integration tests and benches.

pub mod raft_member;
