//! The manager list and failover against in-process fake managers.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_rpc::{
    AssignmentSet, Dispatcher, LogEvent, NodeDescription, RpcError, Session, SessionMessage,
};
use baton_state::{NodeId, TaskReport};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{Agent, AgentConfig, ClusterUpdate};

const DEADLINE: Duration = Duration::from_secs(10);

/// A manager: answers `open_session` as told and counts the calls it gets.
struct FakeManager {
    answer: Mutex<Result<(), RpcError>>,
    opens: AtomicUsize,
    reports: AtomicUsize,
    heartbeats: AtomicUsize,
    /// Senders of the sessions it opened, to push and to close them.
    sessions: Mutex<Vec<mpsc::Sender<SessionMessage>>>,
}

impl FakeManager {
    fn answering(answer: Result<(), RpcError>) -> Arc<FakeManager> {
        Arc::new(FakeManager {
            answer: Mutex::new(answer),
            opens: AtomicUsize::new(0),
            reports: AtomicUsize::new(0),
            heartbeats: AtomicUsize::new(0),
            sessions: Mutex::new(Vec::new()),
        })
    }

    fn leader() -> Arc<FakeManager> {
        FakeManager::answering(Ok(()))
    }

    fn follower(leader: Option<&str>) -> Arc<FakeManager> {
        FakeManager::answering(Err(RpcError::NotLeader(leader.map(str::to_owned))))
    }

    fn gone() -> Arc<FakeManager> {
        FakeManager::answering(Err(RpcError::Unavailable("connection refused".into())))
    }

    fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }

    /// Makes it answer `answer` from now on and closes its sessions.
    fn become_(&self, answer: Result<(), RpcError>) {
        *self.answer.lock().expect("lock") = answer;
        self.sessions.lock().expect("lock").clear();
    }
}

#[async_trait::async_trait]
impl Dispatcher for FakeManager {
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.answer.lock().expect("lock").clone()?;
        let (tx, rx) = mpsc::channel(16);
        // What a leader pushes when a session opens.
        tx.try_send(SessionMessage::Assignments(AssignmentSet::default()))
            .expect("room");
        self.sessions.lock().expect("lock").push(tx);
        Ok(Session {
            node_id: node.node_id,
            messages: rx,
        })
    }

    async fn report(&self, _node: &NodeId, _reports: Vec<TaskReport>) -> Result<(), RpcError> {
        self.reports.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn send_logs(
        &self,
        _node: &NodeId,
        _request: u64,
        _event: LogEvent,
    ) -> Result<(), RpcError> {
        Ok(())
    }

    async fn heartbeat(&self, _node: &NodeId) -> Result<Duration, RpcError> {
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        Ok(Duration::from_secs(1))
    }
}

/// Fake managers by address; an address not in it cannot be connected to.
struct Fakes {
    managers: BTreeMap<String, Arc<FakeManager>>,
    connects: Arc<AtomicUsize>,
}

impl Fakes {
    fn new(managers: &[(&str, Arc<FakeManager>)]) -> Fakes {
        Fakes {
            managers: managers
                .iter()
                .map(|(addr, fake)| ((*addr).to_owned(), fake.clone()))
                .collect(),
            connects: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn connector(&self) -> Connector {
        let managers = self.managers.clone();
        let connects = self.connects.clone();
        Arc::new(move |addr: &str| {
            connects.fetch_add(1, Ordering::SeqCst);
            match managers.get(addr) {
                Some(fake) => Ok(fake.clone() as Arc<dyn Dispatcher>),
                None => Err(format!("no route to {addr}")),
            }
        })
    }

    fn get(&self, addr: &str) -> &FakeManager {
        &self.managers[addr]
    }
}

fn node() -> NodeDescription {
    NodeDescription {
        labels: Default::default(),
        node_id: NodeId("n1".into()),
        hostname: "host".into(),
        capacity: baton_spec::Resources::default(),
        drivers: BTreeSet::new(),
        version: "test".into(),
        address: None,
    }
}

fn strings(addrs: &[&str]) -> Vec<String> {
    addrs.iter().map(|a| (*a).to_owned()).collect()
}

/// A list that joined at `join` and was then pushed `pushed`.
fn list(dir: &Path, join: &str, pushed: &[&str]) -> ManagerList {
    let managers = ManagerList::load(dir, join);
    if !pushed.is_empty() {
        managers.update(strings(pushed));
    }
    managers
}

/// Polls `check` every 10 ms until it holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- the list ----

#[test]
fn a_pushed_list_replaces_the_old_one_keeps_the_join_address_and_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let managers = list(dir.path(), "j:1", &["a:1", "b:1"]);
    managers.update(strings(&["b:1", "c:1"]));
    assert_eq!(managers.addrs(), strings(&["b:1", "c:1", "j:1"]));
    assert_eq!(managers.current(), "j:1");

    let path = dir.path().join(MANAGERS_FILE);
    let mode = std::fs::metadata(&path).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let reloaded = ManagerList::load(dir.path(), "j:1");
    assert_eq!(reloaded.addrs(), strings(&["b:1", "c:1", "j:1"]));
    assert_eq!(reloaded.join_addr(), "j:1");
}

#[test]
fn a_restart_with_another_join_address_keeps_the_saved_managers() {
    let dir = tempfile::tempdir().expect("tempdir");
    list(dir.path(), "j:1", &["a:1", "b:1"]);
    let reloaded = ManagerList::load(dir.path(), "k:1");
    assert_eq!(reloaded.addrs(), strings(&["a:1", "b:1", "j:1", "k:1"]));
    assert_eq!(reloaded.current(), "k:1");
}

#[test]
fn the_current_manager_is_kept_while_listed_else_the_first_pushed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let managers = list(dir.path(), "j:1", &["a:1", "b:1", "c:1"]);
    managers.redirect("b:1");
    managers.update(strings(&["c:1", "b:1"]));
    assert_eq!(managers.current(), "b:1");
    managers.update(strings(&["c:1"]));
    assert_eq!(managers.current(), "c:1");
}

#[test]
fn empty_pushes_are_ignored_and_duplicates_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let managers = list(dir.path(), "j:1", &["a:1", " a:1 ", "", "b:1", "j:1"]);
    assert_eq!(managers.addrs(), strings(&["a:1", "b:1", "j:1"]));
    managers.update(vec![]);
    managers.update(strings(&["  "]));
    assert_eq!(managers.addrs(), strings(&["a:1", "b:1", "j:1"]));
}

#[test]
fn skip_wraps_around_and_ignores_a_manager_no_longer_current() {
    let dir = tempfile::tempdir().expect("tempdir");
    let managers = list(dir.path(), "a:1", &["a:1", "b:1"]);
    managers.skip("a:1");
    assert_eq!(managers.current(), "b:1");
    // Someone else already moved past a:1.
    managers.skip("a:1");
    assert_eq!(managers.current(), "b:1");
    managers.skip("b:1");
    assert_eq!(managers.current(), "a:1");
}

#[test]
fn an_unusable_file_falls_back_to_the_join_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(MANAGERS_FILE);
    std::fs::write(&path, b"{not json").expect("write");
    assert_eq!(
        ManagerList::load(dir.path(), "j:1").addrs(),
        strings(&["j:1"])
    );
    std::fs::write(
        &path,
        br#"{"version": 2, "managers": ["a:1"], "session": null}"#,
    )
    .expect("write");
    assert_eq!(
        ManagerList::load(dir.path(), "j:1").addrs(),
        strings(&["j:1"])
    );
}

// ---- failover ----

#[tokio::test]
async fn a_follower_redirects_to_the_leader_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::follower(Some("b:1"))),
        ("b:1", FakeManager::leader()),
        ("c:1", FakeManager::leader()),
    ]);
    let managers = list(dir.path(), "a:1", &["a:1", "b:1", "c:1"]);
    let dispatcher = FailoverDispatcher::new(managers.clone(), fakes.connector());

    dispatcher.open_session(node()).await.expect("session");
    assert_eq!(
        [
            fakes.get("a:1").opens(),
            fakes.get("b:1").opens(),
            fakes.get("c:1").opens()
        ],
        [1, 1, 0]
    );
    assert_eq!(managers.current(), "b:1");
    assert_eq!(dispatcher.session_manager().as_deref(), Some("b:1"));

    // Everything else goes to the session's manager.
    let id = node().node_id;
    dispatcher.report(&id, vec![]).await.expect("report");
    dispatcher.heartbeat(&id).await.expect("heartbeat");
    assert_eq!(fakes.get("b:1").reports.load(Ordering::SeqCst), 1);
    assert_eq!(fakes.get("b:1").heartbeats.load(Ordering::SeqCst), 1);
    assert_eq!(fakes.get("a:1").reports.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_leader_not_yet_listed_is_added_and_tried_first_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::follower(Some("d:1"))),
        ("d:1", FakeManager::leader()),
    ]);
    let managers = list(dir.path(), "a:1", &[]);
    let dispatcher = FailoverDispatcher::new(managers.clone(), fakes.connector());
    dispatcher.open_session(node()).await.expect("session");
    assert_eq!(managers.addrs(), strings(&["a:1", "d:1"]));

    let reloaded = ManagerList::load(dir.path(), "a:1");
    assert_eq!(reloaded.addrs(), strings(&["a:1", "d:1"]));
    assert_eq!(reloaded.current(), "d:1");
}

#[tokio::test]
async fn an_unreachable_manager_is_skipped_for_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[("a:1", FakeManager::gone()), ("c:1", FakeManager::leader())]);
    // b:1 cannot even be connected to.
    let managers = list(dir.path(), "a:1", &["a:1", "b:1", "c:1"]);
    let dispatcher = FailoverDispatcher::new(managers.clone(), fakes.connector());
    dispatcher.open_session(node()).await.expect("session");
    assert_eq!(managers.current(), "c:1");
    assert_eq!(dispatcher.session_manager().as_deref(), Some("c:1"));

    // Dispatchers are made once per manager.
    let connects = fakes.connects.load(Ordering::SeqCst);
    dispatcher.open_session(node()).await.expect("again");
    assert_eq!(fakes.connects.load(Ordering::SeqCst), connects);
    assert_eq!(fakes.get("c:1").opens(), 2);
    assert_eq!(fakes.get("a:1").opens(), 1);
}

#[tokio::test]
async fn a_round_without_a_leader_tries_each_manager_once_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::follower(None)),
        ("b:1", FakeManager::gone()),
        ("c:1", FakeManager::follower(None)),
    ]);
    let managers = list(dir.path(), "a:1", &["a:1", "b:1", "c:1"]);
    let dispatcher = FailoverDispatcher::new(managers.clone(), fakes.connector());
    let err = dispatcher
        .open_session(node())
        .await
        .expect_err("no leader");
    // "An election is running" says more than "unreachable".
    assert_eq!(err, RpcError::NotLeader(None));
    for addr in ["a:1", "b:1", "c:1"] {
        assert_eq!(fakes.get(addr).opens(), 1, "{addr}");
    }
    assert_eq!(dispatcher.session_manager(), None);
}

#[tokio::test]
async fn managers_naming_each_other_as_leader_do_not_make_a_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::follower(Some("b:1"))),
        ("b:1", FakeManager::follower(Some("a:1"))),
        ("c:1", FakeManager::gone()),
    ]);
    let managers = list(dir.path(), "a:1", &["a:1", "b:1", "c:1"]);
    let dispatcher = FailoverDispatcher::new(managers, fakes.connector());
    let err = dispatcher
        .open_session(node())
        .await
        .expect_err("no leader");
    assert!(matches!(err, RpcError::NotLeader(Some(_))), "{err:?}");
    for addr in ["a:1", "b:1", "c:1"] {
        assert_eq!(fakes.get(addr).opens(), 1, "{addr}");
    }
}

#[tokio::test]
async fn permission_denied_is_final() {
    let dir = tempfile::tempdir().expect("tempdir");
    let denied = RpcError::PermissionDenied("revoked".into());
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::answering(Err(denied.clone()))),
        ("b:1", FakeManager::leader()),
    ]);
    let managers = list(dir.path(), "a:1", &["a:1", "b:1"]);
    let dispatcher = FailoverDispatcher::new(managers.clone(), fakes.connector());
    assert_eq!(
        dispatcher.open_session(node()).await.expect_err("denied"),
        denied
    );
    assert_eq!(fakes.get("b:1").opens(), 0);
    assert_eq!(managers.current(), "a:1");
}

#[tokio::test]
async fn calls_without_a_session_ask_for_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[("a:1", FakeManager::leader())]);
    let dispatcher = FailoverDispatcher::new(list(dir.path(), "a:1", &[]), fakes.connector());
    let id = node().node_id;
    assert_eq!(
        dispatcher.heartbeat(&id).await,
        Err(RpcError::NoSession(id.clone()))
    );
    assert_eq!(
        dispatcher.report(&id, vec![]).await,
        Err(RpcError::NoSession(id.clone()))
    );
}

#[tokio::test]
async fn calls_stay_with_the_session_manager_when_the_list_moves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::leader()),
        ("b:1", FakeManager::leader()),
    ]);
    let managers = list(dir.path(), "j:1", &["a:1", "b:1"]);
    managers.redirect("a:1");
    let dispatcher = FailoverDispatcher::new(managers.clone(), fakes.connector());
    dispatcher.open_session(node()).await.expect("session");
    managers.update(strings(&["b:1"]));
    assert_eq!(managers.current(), "b:1");
    dispatcher
        .report(&node().node_id, vec![])
        .await
        .expect("report");
    assert_eq!(fakes.get("a:1").reports.load(Ordering::SeqCst), 1);
    assert_eq!(fakes.get("b:1").reports.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_agent_whose_manager_goes_reopens_its_session_with_the_new_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = Fakes::new(&[
        ("a:1", FakeManager::leader()),
        ("b:1", FakeManager::follower(None)),
    ]);
    let managers = list(dir.path(), "a:1", &["a:1", "b:1"]);
    let dispatcher = Arc::new(FailoverDispatcher::new(managers.clone(), fakes.connector()));
    let (updates_tx, mut updates_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let config = AgentConfig::new(dir.path().join("agent"), "host".into(), false);
    let agent = tokio::spawn(Agent::run(
        config,
        dispatcher.clone(),
        Some(updates_tx),
        shutdown.clone(),
    ));
    eventually("a session with a:1", || fakes.get("a:1").opens() == 1).await;

    // The leader pushes the managers; the agent hands them on.
    let pushed = strings(&["a:1", "b:1", "c:1"]);
    let sender = fakes.get("a:1").sessions.lock().expect("lock")[0].clone();
    sender
        .send(SessionMessage::Managers(pushed.clone()))
        .await
        .expect("push");
    drop(sender);
    let update = tokio::time::timeout(DEADLINE, updates_rx.recv())
        .await
        .expect("in time");
    assert_eq!(update, Some(ClusterUpdate::Managers(pushed)));

    // a:1 goes away and b:1 wins the election.
    fakes.get("b:1").become_(Ok(()));
    fakes
        .get("a:1")
        .become_(Err(RpcError::Unavailable("gone".into())));
    let started = Instant::now();
    eventually("a session with b:1", || {
        dispatcher.session_manager().as_deref() == Some("b:1")
    })
    .await;
    // One attempt after ~100 ms: the backoff of the first session's start
    // does not carry over.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fakes.get("b:1").opens(), 1);

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("agent stops in time")
        .expect("agent task")
        .expect("agent");
}
