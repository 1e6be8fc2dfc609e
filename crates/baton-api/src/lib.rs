//! The HTTP API (`/v1`): its request and response types, the client
//! configuration file, and a typed client for the CLI.
//!
//! These are wire types, converted by hand from the state at the manager's
//! edge; internal types never go on the wire directly.
//!
//! Architecture invariant: the client only speaks HTTPS (TLS 1.3). It accepts
//! a server only if its certificate chains to the cluster root in its
//! configuration and says `manager` ([`baton_pki::ManagerVerifier`]), and it
//! authenticates with the client certificate of its configuration; there are
//! no bearer tokens.

mod client;
mod config;
pub mod exec;
mod types;

pub use client::{ApiClient, ApiError, Unanswered};
pub use config::{ClientConfig, ConfigError, parse_api_addr};
pub use types::*;

/// Request header asking a manager for a linearizable read (value
/// `linearizable`): the answer reflects every write acknowledged before the
/// request, whichever manager serves it.
pub const READ_HEADER: &str = "baton-read";
