//! The managers this agent knows, and reaching the leading one.
//!
//! Managers run Raft; only the leader holds agent sessions. The agent keeps a
//! [`ManagerList`]: the cluster addresses of every manager it has heard of and
//! which one is current. [`FailoverDispatcher`] is the agent's
//! [`Dispatcher`](baton_rpc::Dispatcher) over that list.
//!
//! # The list
//!
//! - It starts as `data_dir/managers.json` ([`MANAGERS_FILE`]) if there is
//!   one, plus the `--join` address, which is always listed: a restarted
//!   agent whose join manager is gone still finds the others.
//! - The leader pushes the whole list ([`baton_rpc::SessionMessage::Managers`])
//!   when a session opens and whenever the managers change;
//!   [`ManagerList::update`] replaces the list with it, keeps the join
//!   address, and keeps the current manager if it is still listed (else the
//!   first pushed one becomes current).
//! - The file is written atomically when the list or the manager holding the
//!   session changes, never on a failed attempt: the next start goes first to
//!   the manager that last held the session. It is a cache: a missing or
//!   unreadable file costs a warning, never the start.
//!
//! # Failover rules
//!
//! [`open_session`](baton_rpc::Dispatcher::open_session) goes to the current
//! manager. Then:
//!
//! - `NotLeader(Some(leader))`: the leader becomes current (listed if new)
//!   and is tried at once, at most [`MAX_REDIRECTS`] times per call.
//! - `NotLeader(None)` (an election is running), `Unavailable` (unreachable,
//!   refused, or no answer within [`OPEN_ATTEMPT_TIMEOUT`]), or a redirect to
//!   a manager already tried in this call: the next manager in the list
//!   becomes current and is tried at once.
//! - Each call tries each manager at most once. When a whole round fails it
//!   returns the error (a `NotLeader` if any manager gave one), and the
//!   agent's own backoff decides when to try again: the agent never spins.
//! - Any other error (`PermissionDenied`) is final for the call and passed
//!   through unchanged.
//!
//! `report`, `send_logs` and `heartbeat` go to the manager that opened the
//! current session, wherever the list's current manager has moved since;
//! without a session they answer `NoSession`, which makes the agent open one.
//! A heartbeat answered `NotLeader` (the session's manager lost the
//! leadership) ends the session as `NoSession` does, and the agent opens a
//! new one, which finds the new leader.
//! Certificate renewal ([`crate::identity::renew_loop`]) uses the same list:
//! any manager can renew, and an unreachable one is skipped.

mod failover;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

pub use failover::{
    Connector, FailoverDispatcher, MAX_REDIRECTS, OPEN_ATTEMPT_TIMEOUT, grpc_connector,
};

/// The list's file in the agent's data directory.
pub const MANAGERS_FILE: &str = "managers.json";

/// Most managers kept from a push: Raft clusters have 1, 3 or 5 voters; the
/// cap only bounds what a confused manager can make the agent store.
const MAX_MANAGERS: usize = 64;

/// Current version of [`ManagersFile`].
const FILE_VERSION: u32 = 1;

/// The managers this agent knows and which one is current. Clones share one
/// list.
#[derive(Clone, Debug)]
pub struct ManagerList {
    inner: Arc<Mutex<ListState>>,
}

/// The shared state behind a [`ManagerList`].
#[derive(Debug)]
struct ListState {
    /// Every known manager, in the order pushed; never empty (the join
    /// address is always in it).
    addrs: Vec<String>,
    /// Index into `addrs` of the current manager.
    current: usize,
    /// The `--join` address.
    join: String,
    /// Where the list is persisted.
    path: PathBuf,
    /// The manager that last held a session, as persisted.
    session: Option<String>,
    /// What the file holds now, to write only on a change.
    saved: Option<ManagersFile>,
}

/// `managers.json`: a persisted record, read back strictly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagersFile {
    /// Record format; 1.
    version: u32,
    /// Cluster addresses (`host:port`) of every known manager.
    managers: Vec<String>,
    /// The manager that last held the agent's session.
    session: Option<String>,
}

impl ManagerList {
    /// The list persisted in `data_dir` (if any) plus `join`, which is always
    /// listed. Starts at the manager that last held the session if it is
    /// listed, else at `join`. A missing file is a first start; an unreadable
    /// one is logged and ignored.
    pub fn load(data_dir: &Path, join: &str) -> ManagerList {
        let path = data_dir.join(MANAGERS_FILE);
        let join = join.trim().to_owned();
        let saved = read_file(&path);
        let (mut addrs, session) = match &saved {
            Some(file) => (clean(file.managers.clone()), file.session.clone()),
            None => (Vec::new(), None),
        };
        if !addrs.contains(&join) {
            addrs.push(join.clone());
        }
        let start = session.as_ref().unwrap_or(&join);
        let current = addrs.iter().position(|a| a == start).unwrap_or(0);
        ManagerList {
            inner: Arc::new(Mutex::new(ListState {
                addrs,
                current,
                join,
                path,
                session,
                saved,
            })),
        }
    }

    /// The current manager's cluster address.
    pub fn current(&self) -> String {
        let known = self.lock();
        known.addrs[known.current].clone()
    }

    /// Every known manager, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.lock().addrs.clone()
    }

    /// The `--join` address.
    pub fn join_addr(&self) -> String {
        self.lock().join.clone()
    }

    /// Replaces the list with the one a manager pushed (plus the join
    /// address), keeping the current manager if it is still listed, and
    /// persists it if it changed. An empty push is ignored: no cluster has
    /// no managers.
    pub fn update(&self, pushed: Vec<String>) {
        let mut addrs = clean(pushed);
        if addrs.is_empty() {
            tracing::warn!("ignoring an empty list of managers");
            return;
        }
        let mut known = self.lock();
        if !addrs.contains(&known.join) {
            addrs.push(known.join.clone());
        }
        let current = known.addrs[known.current].clone();
        known.current = addrs.iter().position(|a| *a == current).unwrap_or(0);
        if known.addrs != addrs {
            tracing::info!(managers = ?addrs, "managers updated");
            known.addrs = addrs;
        }
        known.save();
    }

    /// Makes `leader` current, listing it if it is new (a manager said it
    /// leads). Not persisted until a session opens there.
    pub fn redirect(&self, leader: &str) {
        let mut known = self.lock();
        known.current = match known.addrs.iter().position(|a| a == leader) {
            Some(idx) => idx,
            None => {
                known.addrs.push(leader.to_owned());
                known.addrs.len() - 1
            }
        };
    }

    /// Moves past `failed` to the next manager in the list, if `failed` is
    /// still current (someone else may have moved on already).
    pub fn skip(&self, failed: &str) {
        let mut known = self.lock();
        if known.addrs[known.current] == failed {
            known.current = (known.current + 1) % known.addrs.len();
        }
    }

    /// Records that `addr` holds the session now: it becomes current and, if
    /// it changed, is persisted as the first manager to try on the next start.
    pub(crate) fn opened(&self, addr: &str) {
        let mut known = self.lock();
        if let Some(idx) = known.addrs.iter().position(|a| a == addr) {
            known.current = idx;
        }
        known.session = Some(addr.to_owned());
        known.save();
    }

    fn lock(&self) -> MutexGuard<'_, ListState> {
        // The state is valid after every statement: a panic elsewhere leaves
        // nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ListState {
    /// Writes the file if what it should hold changed. Called with the lock
    /// held, which also keeps two writers off the one temporary file.
    fn save(&mut self) {
        let file = ManagersFile {
            version: FILE_VERSION,
            managers: self.addrs.clone(),
            session: self.session.clone(),
        };
        if self.saved.as_ref() == Some(&file) {
            return;
        }
        let res = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| baton_files::write_atomic(&self.path, &bytes, 0o600));
        match res {
            Ok(()) => self.saved = Some(file),
            // The list in memory is right; the next start may know fewer
            // managers.
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot save the list of managers");
            }
        }
    }
}

/// Reads `managers.json`; `None` if it is missing or unusable.
fn read_file(path: &Path) -> Option<ManagersFile> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the list of managers; using the join address");
            return None;
        }
    };
    match serde_json::from_slice::<ManagersFile>(&bytes) {
        Ok(file) if file.version == FILE_VERSION => Some(file),
        Ok(file) => {
            tracing::warn!(path = %path.display(), version = file.version, "unknown version of the list of managers; using the join address");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "invalid list of managers; using the join address");
            None
        }
    }
}

/// Trims, drops empty entries and duplicates (keeping the first), and keeps at
/// most [`MAX_MANAGERS`].
fn clean(addrs: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(addrs.len().min(MAX_MANAGERS));
    for addr in addrs {
        let addr = addr.trim();
        if addr.is_empty() || out.iter().any(|a| a == addr) {
            continue;
        }
        if out.len() == MAX_MANAGERS {
            tracing::warn!(
                max = MAX_MANAGERS,
                "too many managers pushed; keeping the first"
            );
            break;
        }
        out.push(addr.to_owned());
    }
    out
}

#[cfg(test)]
mod tests;
