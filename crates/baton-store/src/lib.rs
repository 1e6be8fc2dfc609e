//! The store: every write to the cluster state goes through it as a [`Command`],
//! is made durable in a log, then applied to the state machine.
//!
//! [`Store`] is the seam callers use. [`raft::RaftStore`] implements it: the
//! command log runs through Raft (openraft), with its log, vote and
//! snapshots in a redb file (fsync per append batch, so concurrent proposals
//! share a commit). A lone manager is a Raft cluster of one on the same code
//! path as three or five. Log entries and snapshots are sealed ([`seal`])
//! with the manager's data key before they reach the file.
//!
//! Architecture invariant: a proposal is acknowledged only after its log entry
//! is durable, so a crash (kill -9) at any moment loses no acknowledged write
//! and leaves a database that opens.

use std::sync::Arc;

use baton_state::{ApplyError, Command, Event, State};
use tokio::sync::watch;

pub mod raft;
pub mod seal;

/// The database file inside a manager's data dir.
pub fn default_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("state.redb")
}

/// The state as of one applied log index. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Index of the last applied command (0 = none).
    pub index: u64,
    /// The state after it.
    pub state: State,
}

/// The result of a committed proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its log index.
    pub index: u64,
    /// What it changed.
    pub events: Vec<Event>,
}

/// Store errors, in two tiers: the command was refused (the caller's problem,
/// nothing changed) or the store cannot serve (retry elsewhere or later).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state machine refused the command; it is in the log, but changed nothing.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// This member cannot accept writes now (shutting down; later: not the leader).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A change of the managers was refused (it would lose quorum, the node
    /// may not join): nothing changed, and asking again will not help.
    #[error("{0}")]
    Refused(String),
    /// The database failed; this member is broken.
    #[error("store failure: {0}")]
    Fatal(String),
}

/// The store as the manager uses it.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Proposes a command; returns once it is durable and applied.
    async fn propose(&self, cmd: Command) -> Result<Applied, StoreError>;

    /// The latest applied state.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// A receiver that sees every newly applied snapshot.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;
}
