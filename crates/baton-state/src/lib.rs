//! The cluster state as a deterministic state machine.
//!
//! [`State::apply`] takes a [`Command`] and returns the [`Event`]s it caused.
//! Everything that varies between runs (the clock, random ids) rides inside
//! the command, so replaying the same log always yields the same state.
//!
//! Architecture invariant: no I/O, no clock, no randomness in this crate.
//! `State` is built on persistent maps (`imbl`), so a snapshot for a reader
//! is an O(1) clone.

mod command;
mod ids;
mod objects;
mod restart;
mod secret;
mod state;

pub use command::{Command, Event, Plan, PlanPlacement, PlanStop, PlanUnplaced, TaskReport};
pub use ids::{NodeId, TaskId, Timestamp};
pub use objects::{
    Cluster, ConfigEntry, ExitInfo, ExternalCa, Job, JobDesired, JobPhase, JobSummary, Member,
    Node, NodeAvailability, NodeRole, NodeState, NodeView, RootRotation, SecretEntry, Slot,
    SlotFailure, Task, TaskDesired, TaskState, TaskStatus,
};
pub use restart::{RestartDecision, restart_decision};
pub use secret::{Secret, SecretBytes, base64_bytes};
pub use state::{ApplyError, ChangeMark, MIN_CERT_VALIDITY, State};
