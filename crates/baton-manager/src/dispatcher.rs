//! The dispatcher: one session per agent.
//!
//! For each session a pusher task watches store snapshots, computes the node's
//! full assignment set ([`assignments_for`], pure) and pushes it whenever it
//! differs from the last one pushed. Reports are proposed as commands carrying
//! the session's node id; the state machine checks each reported task belongs
//! to that node. Log streams are brokered: the API asks for a log through the
//! owning node's session and the agent answers with [`Dispatcher::send_logs`].
//! A node removed while connected loses its session as soon as the
//! revocation is applied, and a revoked node cannot open one (nor be
//! registered again).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baton_rpc::{
    Assignment, AssignmentSet, Dispatcher, LogEvent, LogRequest, NodeDescription, RpcError,
    Session, SessionMessage,
};
use baton_state::{Command, Node, NodeAvailability, NodeId, NodeState, State, TaskId, TaskReport};
use baton_store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::now;

/// Default time a node may be without a session before it is marked down and
/// its tasks are rescheduled: long enough for an agent restart or a brief
/// network blip, short enough that services come back within a minute.
pub const NODE_DOWN_GRACE: Duration = Duration::from_secs(30);

struct SessionEntry {
    generation: u64,
    tx: mpsc::Sender<SessionMessage>,
    cancel: CancellationToken,
}

struct LogStream {
    node: NodeId,
    tx: mpsc::Sender<LogEvent>,
}

/// Why a log stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogStreamError {
    /// No such task.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// The task never had a node.
    #[error("task {0} was never placed on a node, so it has no log")]
    NotPlaced(TaskId),
    /// Its node has no session.
    #[error("node {0} is not connected")]
    NodeNotConnected(NodeId),
}

/// The dispatcher service.
pub struct DispatcherService {
    store: Arc<dyn Store>,
    sessions: Mutex<HashMap<NodeId, SessionEntry>>,
    logs: Mutex<HashMap<u64, LogStream>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    node_down_grace: Duration,
    this: Weak<DispatcherService>,
}

impl std::fmt::Debug for DispatcherService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherService").finish_non_exhaustive()
    }
}

/// The full assignment set of a node: its tasks that are not finished.
pub fn assignments_for(state: &State, node: &NodeId) -> Vec<Assignment> {
    state
        .tasks_of_node(node)
        .filter(|task| task.is_active())
        .filter_map(|task| {
            let job = state.job(&task.job)?;
            Some(Assignment {
                task: task.id.clone(),
                job: task.job.clone(),
                job_version: task.job_version,
                slot: task.slot.to_string(),
                // Jobs keep only their current spec: an older-version task gets it
                // too, which the agent only reads to stop the task (kill_timeout),
                // as it never starts a task past `assigned` twice.
                spec: job.spec.task.clone(),
                desired: task.desired,
                state: task.status.state,
            })
        })
        .collect()
}

impl DispatcherService {
    /// A dispatcher over a store; its sessions end when `shutdown` is cancelled.
    /// A node without a session for `node_down_grace` is marked down.
    pub fn new(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        node_down_grace: Duration,
    ) -> Arc<DispatcherService> {
        Arc::new_cyclic(|this| DispatcherService {
            store,
            sessions: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            node_down_grace,
            this: this.clone(),
        })
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_logs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LogStream>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives every node the state calls ready, but that has no session with
    /// this dispatcher (it was recorded by an earlier manager run), the same
    /// grace as a node whose session closed: if it does not connect in time, it
    /// is marked down and its tasks are replaced.
    pub fn watch_unconnected_nodes(&self) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let snapshot = self.store.snapshot();
        for node in snapshot.state.nodes() {
            if node.state == NodeState::Ready {
                tokio::spawn(this.clone().mark_down_after_grace(node.id.clone()));
            }
        }
    }

    async fn mark_down_after_grace(self: Arc<Self>, node: NodeId) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(self.node_down_grace) => {
                if !self.lock_sessions().contains_key(&node) {
                    tracing::warn!(node_id = %node, grace = ?self.node_down_grace, "node down: no session");
                    let cmd = Command::NodeDown { id: node.clone(), now: now() };
                    if let Err(e) = self.store.propose(cmd).await {
                        tracing::error!(node_id = %node, error = %e, "marking node down failed");
                    }
                }
            }
        }
    }

    /// Opens a stream of a task's log from the node that runs (or ran) it.
    pub async fn request_logs(
        &self,
        task: &TaskId,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogEvent>, LogStreamError> {
        let snapshot = self.store.snapshot();
        let node = snapshot
            .state
            .task(task)
            .ok_or_else(|| LogStreamError::TaskNotFound(task.clone()))?
            .node
            .clone()
            .ok_or_else(|| LogStreamError::NotPlaced(task.clone()))?;
        let session_tx = self
            .lock_sessions()
            .get(&node)
            .map(|s| s.tx.clone())
            .ok_or_else(|| LogStreamError::NodeNotConnected(node.clone()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        self.lock_logs().insert(
            id,
            LogStream {
                node: node.clone(),
                tx,
            },
        );
        let request = SessionMessage::Logs(LogRequest {
            id,
            task: task.clone(),
            follow,
        });
        if session_tx.send(request).await.is_err() {
            self.lock_logs().remove(&id);
            return Err(LogStreamError::NodeNotConnected(node));
        }
        Ok(rx)
    }

    /// Pushes a node's assignment set whenever it changes, until the session ends.
    async fn push_assignments(
        self: Arc<Self>,
        node: NodeId,
        generation: u64,
        tx: mpsc::Sender<SessionMessage>,
        cancel: CancellationToken,
    ) {
        let mut changes = self.store.subscribe();
        let mut last: Option<Vec<Assignment>> = None;
        let mut seq = 0;
        loop {
            let snapshot = changes.borrow_and_update().clone();
            if snapshot.state.is_revoked(&node) {
                // Removed while connected: the session stream was authorised
                // before the revocation, so end it here; the agent's next
                // session is refused at the transport (revoked id).
                tracing::warn!(node_id = %node, "node revoked: ending its session");
                let mut sessions = self.lock_sessions();
                if sessions
                    .get(&node)
                    .is_some_and(|s| s.generation == generation)
                {
                    sessions.remove(&node);
                }
                return;
            }
            let tasks = assignments_for(&snapshot.state, &node);
            if last.as_ref() != Some(&tasks) {
                seq += 1;
                let set = AssignmentSet {
                    seq,
                    tasks: tasks.clone(),
                };
                if tx.send(SessionMessage::Assignments(set)).await.is_err() {
                    break;
                }
                last = Some(tasks);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tx.closed() => break,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
        // The agent went away. Unless it comes back in time, its node is down.
        let still_current = {
            let mut sessions = self.lock_sessions();
            let current = sessions
                .get(&node)
                .is_some_and(|s| s.generation == generation);
            if current {
                sessions.remove(&node);
            }
            current
        };
        if !still_current {
            return;
        }
        tracing::info!(node_id = %node, "agent session closed");
        self.mark_down_after_grace(node).await;
    }
}

fn unavailable(e: StoreError) -> RpcError {
    RpcError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl Dispatcher for DispatcherService {
    async fn open_session(&self, desc: NodeDescription) -> Result<Session, RpcError> {
        if self.shutdown.is_cancelled() {
            return Err(RpcError::Unavailable("manager is shutting down".to_owned()));
        }
        // The transport refuses revoked certificates too, from a copy of the
        // revocation set kept in step asynchronously; the state is the
        // authority, and a removed node must not be registered again.
        if self.store.snapshot().state.is_revoked(&desc.node_id) {
            tracing::warn!(node_id = %desc.node_id, "session refused: node revoked");
            return Err(RpcError::PermissionDenied(format!(
                "node {} was removed from the cluster: certificate revoked",
                desc.node_id
            )));
        }
        let now = now();
        let node = Node {
            id: desc.node_id.clone(),
            hostname: desc.hostname,
            capacity: desc.capacity,
            drivers: desc.drivers.into_iter().collect::<BTreeSet<_>>(),
            state: NodeState::Ready,
            availability: NodeAvailability::Active,
            registered_at: now,
            state_since: now,
            address: desc.address,
            version: desc.version,
        };
        let node_id = desc.node_id.clone();
        self.store
            .propose(Command::RegisterNode { node, now })
            .await
            .map_err(|e| match e {
                // The state machine has the last word, in log order: a removal
                // that raced this session wins.
                StoreError::Rejected(rejected) => {
                    tracing::warn!(node_id = %node_id, reason = %rejected, "session refused");
                    RpcError::PermissionDenied(format!(
                        "node {node_id} is not a member of the cluster (removed or revoked)"
                    ))
                }
                other => unavailable(other),
            })?;
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.shutdown.child_token();
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = self.lock_sessions().insert(
            desc.node_id.clone(),
            SessionEntry {
                generation,
                tx: tx.clone(),
                cancel: cancel.clone(),
            },
        );
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        tracing::info!(node_id = %desc.node_id, "agent session opened");
        let this = self
            .this
            .upgrade()
            .ok_or_else(|| RpcError::Unavailable("dispatcher is gone".to_owned()))?;
        tokio::spawn(this.push_assignments(desc.node_id.clone(), generation, tx, cancel));
        Ok(Session {
            node_id: desc.node_id,
            messages: rx,
        })
    }

    async fn report(&self, node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError> {
        if !self.lock_sessions().contains_key(node) {
            return Err(RpcError::NoSession(node.clone()));
        }
        if reports.is_empty() {
            return Ok(());
        }
        self.store
            .propose(Command::ReportTasks {
                node: node.clone(),
                reports,
                now: now(),
            })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn send_logs(
        &self,
        node: &NodeId,
        request: u64,
        event: LogEvent,
    ) -> Result<(), RpcError> {
        let tx = {
            let logs = self.lock_logs();
            match logs.get(&request) {
                Some(stream) if &stream.node == node => stream.tx.clone(),
                // Same answer whether the stream exists or belongs to another node.
                _ => return Err(RpcError::LogStreamClosed(request)),
            }
        };
        let last = matches!(event, LogEvent::End | LogEvent::Error(_));
        let sent = tx.send(event).await;
        if last || sent.is_err() {
            self.lock_logs().remove(&request);
        }
        sent.map_err(|_| RpcError::LogStreamClosed(request))
    }
}

#[cfg(test)]
mod tests {
    use baton_spec::Resources;
    use baton_state::{NodeRole, Timestamp};
    use baton_store::{LocalStore, LocalStoreConfig};

    use super::*;

    fn description(id: &str) -> NodeDescription {
        NodeDescription {
            node_id: NodeId(id.to_owned()),
            hostname: "host".to_owned(),
            capacity: Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            drivers: BTreeSet::new(),
            version: "test".to_owned(),
            address: None,
        }
    }

    #[tokio::test]
    async fn a_removed_node_loses_its_open_session_and_cannot_open_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            LocalStore::open(LocalStoreConfig::new(dir.path().join("state.redb"))).expect("store"),
        );
        crate::identity::load_or_create(dir.path(), store.as_ref(), Duration::from_secs(3600))
            .await
            .expect("cluster");
        store
            .propose(Command::AdmitNode {
                id: NodeId("w1".to_owned()),
                role: NodeRole::Worker,
                cert_not_after: Timestamp(u64::MAX),
                now: now(),
            })
            .await
            .expect("admit");
        let shutdown = CancellationToken::new();
        let dispatcher = DispatcherService::new(store.clone(), shutdown.clone(), NODE_DOWN_GRACE);
        let mut session = dispatcher
            .open_session(description("w1"))
            .await
            .expect("session");
        assert!(matches!(
            session.messages.recv().await,
            Some(SessionMessage::Assignments(_))
        ));

        store
            .propose(Command::RemoveNode {
                id: NodeId("w1".to_owned()),
                now: now(),
            })
            .await
            .expect("remove");
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while session.messages.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the open session ends");
        assert_eq!(
            dispatcher
                .report(&NodeId("w1".to_owned()), Vec::new())
                .await,
            Err(RpcError::NoSession(NodeId("w1".to_owned())))
        );
        let refused = dispatcher.open_session(description("w1")).await;
        assert!(
            matches!(&refused, Err(RpcError::PermissionDenied(m)) if m.contains("revoked")),
            "{:?}",
            refused.map(|s| s.node_id)
        );
        assert!(
            store
                .snapshot()
                .state
                .node(&NodeId("w1".to_owned()))
                .is_none(),
            "a revoked node is not registered again"
        );
        shutdown.cancel();
    }
}
