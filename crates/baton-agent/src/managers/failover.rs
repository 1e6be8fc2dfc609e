//! [`FailoverDispatcher`]: the agent's [`Dispatcher`] over every manager it
//! knows (the rules are in the parent module's doc).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_rpc::client::GrpcDispatcher;
use baton_rpc::tls::ClientTls;
use baton_rpc::{Dispatcher, LogEvent, NodeDescription, RpcError, Session};
use baton_state::{NodeId, TaskReport};

use super::ManagerList;

/// Most `NotLeader(Some(leader))` redirects followed in one `open_session`
/// call: one is the normal case (a follower names the leader); more means
/// managers disagree about who leads, which an election settles better than
/// the agent chasing them.
pub const MAX_REDIRECTS: u32 = 3;

/// Longest wait for one manager to open a session before it counts as
/// unreachable and the next is tried. The dial alone may take up to
/// `baton_rpc::transport::CONNECT_TIMEOUT` (10 s) on a host that drops
/// packets; a manager that accepted the connection answers in milliseconds.
pub const OPEN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a [`Dispatcher`] for a manager's cluster address, or says why it
/// cannot (a malformed address). Called once per address; the result is
/// kept.
pub type Connector = Arc<dyn Fn(&str) -> Result<Arc<dyn Dispatcher>, String> + Send + Sync>;

/// A [`Connector`] over gRPC with `tls`: a lazily dialled channel per manager
/// (the first call dials; a dropped connection is dialled again, presenting
/// the certificate in use then).
pub fn grpc_connector(tls: ClientTls) -> Connector {
    Arc::new(move |addr: &str| {
        let channel = baton_rpc::transport::connect_lazy(addr, &tls).map_err(|e| e.to_string())?;
        Ok(Arc::new(GrpcDispatcher::new(channel)) as Arc<dyn Dispatcher>)
    })
}

/// A [`Dispatcher`] that opens the session with the leading manager, found
/// through a [`ManagerList`], and sends everything else to the manager that
/// holds the session.
pub struct FailoverDispatcher {
    managers: ManagerList,
    connect: Connector,
    /// One dispatcher per listed manager, made on first use.
    dispatchers: Mutex<BTreeMap<String, Arc<dyn Dispatcher>>>,
    /// The manager holding the current session.
    session: Mutex<Option<SessionManager>>,
}

/// The manager that opened the current session.
#[derive(Clone)]
struct SessionManager {
    addr: String,
    dispatcher: Arc<dyn Dispatcher>,
}

impl fmt::Debug for FailoverDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverDispatcher")
            .field("managers", &self.managers)
            .field("session_manager", &self.session_manager())
            .finish_non_exhaustive()
    }
}

impl FailoverDispatcher {
    /// A dispatcher over `managers`, reaching each through `connect`.
    pub fn new(managers: ManagerList, connect: Connector) -> FailoverDispatcher {
        FailoverDispatcher {
            managers,
            connect,
            dispatchers: Mutex::new(BTreeMap::new()),
            session: Mutex::new(None),
        }
    }

    /// The cluster address of the manager holding the current session.
    pub fn session_manager(&self) -> Option<String> {
        lock(&self.session).as_ref().map(|s| s.addr.clone())
    }

    /// The dispatcher of the manager at `addr`, made on first use. Making one
    /// forgets those of managers no longer listed.
    fn dispatcher_for(&self, addr: &str) -> Result<Arc<dyn Dispatcher>, RpcError> {
        let listed = self.managers.addrs();
        let mut dispatchers = lock(&self.dispatchers);
        if let Some(dispatcher) = dispatchers.get(addr) {
            return Ok(dispatcher.clone());
        }
        let dispatcher = (self.connect)(addr)
            .map_err(|e| RpcError::Unavailable(format!("cannot reach manager {addr}: {e}")))?;
        dispatchers.retain(|known, _| listed.contains(known));
        dispatchers.insert(addr.to_owned(), dispatcher.clone());
        Ok(dispatcher)
    }

    /// One attempt at the manager at `addr`.
    async fn open_at(
        &self,
        addr: &str,
        node: NodeDescription,
    ) -> Result<(Session, Arc<dyn Dispatcher>), RpcError> {
        let dispatcher = self.dispatcher_for(addr)?;
        let session = tokio::time::timeout(OPEN_ATTEMPT_TIMEOUT, dispatcher.open_session(node))
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::Unavailable(format!(
                    "manager {addr} did not answer within {} s",
                    OPEN_ATTEMPT_TIMEOUT.as_secs()
                )))
            })?;
        Ok((session, dispatcher))
    }

    /// The session's dispatcher, or `NoSession` (open one first).
    fn session_dispatcher(&self, node: &NodeId) -> Result<Arc<dyn Dispatcher>, RpcError> {
        lock(&self.session)
            .as_ref()
            .map(|s| s.dispatcher.clone())
            .ok_or_else(|| RpcError::NoSession(node.clone()))
    }
}

#[async_trait::async_trait]
impl Dispatcher for FailoverDispatcher {
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError> {
        // The session being replaced is gone whatever happens next.
        let previous = lock(&self.session).take().map(|s| s.addr);
        let mut tried = BTreeSet::new();
        let mut redirects = 0;
        // A manager that answered "not the leader" says the cluster is up
        // and electing: a better thing to tell the agent than "unreachable".
        let mut not_leader = None;
        loop {
            let addr = self.managers.current();
            tried.insert(addr.clone());
            let err = match self.open_at(&addr, node.clone()).await {
                Ok((session, dispatcher)) => {
                    if previous.as_deref() != Some(addr.as_str()) {
                        tracing::info!(manager = %addr, "session with a new manager");
                    }
                    self.managers.opened(&addr);
                    *lock(&self.session) = Some(SessionManager { addr, dispatcher });
                    return Ok(session);
                }
                Err(err) => err,
            };
            match &err {
                RpcError::NotLeader(Some(leader))
                    if redirects < MAX_REDIRECTS && !tried.contains(leader) =>
                {
                    tracing::debug!(manager = %addr, leader = %leader, "not the leader; redirected");
                    redirects += 1;
                    self.managers.redirect(leader);
                    not_leader = Some(err.clone());
                    continue;
                }
                RpcError::NotLeader(_) => {
                    tracing::debug!(manager = %addr, error = %err, "not the leader; trying the next manager");
                    not_leader = Some(err.clone());
                }
                RpcError::Unavailable(_) => {
                    tracing::debug!(manager = %addr, error = %err, "manager unavailable; trying the next");
                }
                // Final (permission denied): the caller decides.
                _ => return Err(err),
            }
            self.managers.skip(&addr);
            if tried.contains(&self.managers.current()) {
                // A whole round failed: the agent's backoff takes over.
                return Err(not_leader.unwrap_or(err));
            }
        }
    }

    async fn report(&self, node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError> {
        self.session_dispatcher(node)?.report(node, reports).await
    }

    async fn send_logs(
        &self,
        node: &NodeId,
        request: u64,
        event: LogEvent,
    ) -> Result<(), RpcError> {
        self.session_dispatcher(node)?
            .send_logs(node, request, event)
            .await
    }

    async fn exec(
        &self,
        node: &NodeId,
        request: u64,
        events: tokio::sync::mpsc::Receiver<baton_rpc::ExecEvent>,
    ) -> Result<tokio::sync::mpsc::Receiver<baton_rpc::ExecInput>, RpcError> {
        self.session_dispatcher(node)?
            .exec(node, request, events)
            .await
    }

    async fn report_usage(
        &self,
        node: &NodeId,
        usage: Vec<baton_rpc::TaskUsage>,
    ) -> Result<(), RpcError> {
        self.session_dispatcher(node)?
            .report_usage(node, usage)
            .await
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Duration, RpcError> {
        self.session_dispatcher(node)?.heartbeat(node).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is valid after each statement: a panic elsewhere
    // leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
