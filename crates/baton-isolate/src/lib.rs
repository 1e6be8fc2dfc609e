//! Task isolation for the `exec` driver.
//!
//! The agent never calls the container runtime itself: youki's
//! `libcontainer` `clone()`s its caller and keeps running Rust in the child,
//! which is undefined behaviour in a multi-threaded (tokio) process. So the
//! agent re-executes its own binary as `baton shim` (dispatched in `main()`
//! before any runtime or thread exists), and only that single-threaded process
//! links the runtime in: [`shim::main`]. The agent and the shim talk over a
//! socket on the shim's stdin with the frames of [`protocol`].
//!
//! What a task gets is decided here, purely, in [`bundle::oci_spec`] (the OCI
//! runtime spec) and [`seccomp::profile`] (the syscall filter), so it is
//! tested without running anything. [`cgroup`] reads a task's usage and OOM
//! count and probes whether this host can isolate tasks at all.
//!
//! Invariant: no `unsafe` here either. The runtime's own unsafe code runs only
//! in the shim process.

pub mod bundle;
pub mod cgroup;
pub mod protocol;
pub mod seccomp;
pub mod shim;

pub use bundle::{HostLayout, IsolatedTask, oci_spec};
pub use protocol::{Request, Response};
