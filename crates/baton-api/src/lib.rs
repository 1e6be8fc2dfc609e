//! The HTTP API (`/v1`): its request and response types, the client
//! configuration file, and a typed client for the CLI.
//!
//! These are wire types, converted by hand from the state at the manager's
//! edge; internal types never go on the wire directly.
//!
//! Architecture invariant: the client only speaks HTTPS, verifying the server
//! against the CA in its configuration, and always sends its bearer token.

mod client;
mod config;
mod types;

pub use client::{ApiClient, ApiError};
pub use config::{ClientConfig, ConfigError};
pub use types::*;
