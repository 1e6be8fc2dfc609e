//! The manager: it owns the cluster's desired state and drives it.
//!
//! - [`api`]: the HTTPS API (`/v1`), every route behind admin client
//!   certificate authentication, and its OpenAPI description.
//! - [`control`]: the control loop: on every state change (or restart backoff
//!   expiry) it runs the pure reconciler + scheduler over a snapshot and
//!   proposes the resulting plan.
//! - [`ca`]: admits joining nodes (join tokens) and renews certificates.
//! - [`renew`]: renews the manager's own node certificate in the background;
//!   [`serving_cert`] holds it for both listeners.
//! - [`keystore`]: the data key that seals the store and the secret files,
//!   wrapped by a key-encryption key or the operator's unlock key.
//! - [`runtime`]: starts and stops all of it (`baton manager`, `baton dev`).
//! - [`dispatcher`]: one session per agent; pushes each node its own full
//!   assignment set, records its reports, brokers log streams.
//! - [`raft`]: Raft between managers over the cluster port; a new manager
//!   asks to be added through it.
//! - [`leadership`]: runs the control loop and the dispatcher's sessions on
//!   the leading manager only.
//!
//! Architecture invariant: every write goes through [`baton_store::Store::propose`];
//! nothing here mutates state directly, and reads come from store snapshots.

pub mod api;
pub mod ca;
pub mod control;
pub mod dispatcher;
pub mod external_ca;
pub mod identity;
pub mod keystore;
pub mod leadership;
pub mod raft;
pub mod renew;
pub mod runtime;
pub mod serving_cert;
pub mod signer;
pub mod trust;
pub mod unlock;

use std::time::{SystemTime, UNIX_EPOCH};

use baton_state::Timestamp;

/// The wall clock, read only at the edge and carried into commands.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}
