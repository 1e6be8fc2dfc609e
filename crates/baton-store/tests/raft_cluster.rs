//! Several Raft members in one test process, on real redb files, over an
//! in-process transport whose links can be cut (the seam the cluster port's
//! gRPC transport also plugs into). Every message goes through JSON, as it
//! does on the wire.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_state::Command;
use baton_store::raft::{
    MembershipChange, RaftRequest, RaftResponse, RaftStore, RaftStoreConfig, RaftTransport,
    Unreached, node_id,
};
use baton_store::seal::SealKey;
use baton_store::{Store, StoreError};
use openraft::rt::WatchReceiver;

/// Who can reach whom.
#[derive(Default)]
struct Net {
    members: Mutex<HashMap<u64, Arc<RaftStore>>>,
    /// Members cut off from everyone (both directions).
    isolated: Mutex<HashSet<u64>>,
}

impl Net {
    fn lock_members(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<RaftStore>>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cut(&self, id: u64) -> bool {
        self.isolated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&id)
    }

    fn isolate(&self, id: u64, isolated: bool) {
        let mut set = self.isolated.lock().unwrap_or_else(PoisonError::into_inner);
        if isolated {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }
}

struct MemTransport {
    me: u64,
    net: Arc<Net>,
}

#[async_trait::async_trait]
impl RaftTransport for MemTransport {
    async fn call(
        &self,
        target: u64,
        _addr: &str,
        request: RaftRequest,
    ) -> Result<RaftResponse, Unreached> {
        let unreached = |reason: &str| Unreached {
            target: node_id(target),
            reason: reason.to_owned(),
        };
        if self.net.cut(self.me) || self.net.cut(target) {
            return Err(unreached("partitioned"));
        }
        let store = self
            .net
            .lock_members()
            .get(&target)
            .cloned()
            .ok_or_else(|| unreached("down"))?;
        // Through JSON both ways, as on the wire.
        let request: RaftRequest =
            serde_json::from_slice(&serde_json::to_vec(&request).expect("encode")).expect("decode");
        let response = store.handle(request).await;
        if self.net.cut(self.me) || self.net.cut(target) {
            return Err(unreached("partitioned"));
        }
        Ok(
            serde_json::from_slice(&serde_json::to_vec(&response).expect("encode"))
                .expect("decode"),
        )
    }
}

struct Cluster {
    net: Arc<Net>,
    dir: tempfile::TempDir,
    ids: Vec<u64>,
    snapshot_every: u64,
}

fn job(name: &str) -> Command {
    baton_testkit::put_service(name, 1)
}

/// Member `id`'s data key: each member has its own, as managers do (a
/// snapshot travels in the clear and is sealed again by its receiver).
fn data_key(id: u64) -> SealKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&id.to_be_bytes());
    SealKey::from_bytes(bytes)
}

impl Cluster {
    fn path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("m{id}.redb"))
    }

    async fn open(net: &Arc<Net>, path: &Path, id: u64, snapshot_every: u64) -> Arc<RaftStore> {
        let mut config = RaftStoreConfig::new(path, id, format!("m{id}"), data_key(id));
        config.snapshot_every = snapshot_every;
        let transport = Arc::new(MemTransport {
            me: id,
            net: net.clone(),
        });
        let store = Arc::new(RaftStore::open(config, transport).await.expect("open"));
        net.lock_members().insert(id, store.clone());
        store
    }

    /// `n` members: the first initialises the cluster, the others join it.
    async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let net = Arc::new(Net::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<u64> = (1..=n).collect();
        let cluster = Cluster {
            net,
            dir,
            ids,
            snapshot_every,
        };
        let first = Cluster::open(&cluster.net, &cluster.path(1), 1, snapshot_every).await;
        first.initialize_alone().await.expect("init");
        for id in 2..=n {
            Cluster::open(&cluster.net, &cluster.path(id), id, snapshot_every).await;
            first.add_member(id, &format!("m{id}")).await.expect("add");
        }
        cluster
    }

    fn member(&self, id: u64) -> Option<Arc<RaftStore>> {
        self.net.lock_members().get(&id).cloned()
    }

    /// The leader every live, connected member agrees on.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let live: Vec<Arc<RaftStore>> = self
                .ids
                .iter()
                .filter(|id| !self.net.cut(**id))
                .filter_map(|id| self.member(*id))
                .collect();
            let leaders: BTreeSet<Option<u64>> = live.iter().map(|m| m.status().leader).collect();
            if let [Some(leader)] = leaders.iter().copied().collect::<Vec<_>>().as_slice()
                && live.iter().any(|m| m.id() == *leader)
            {
                return *leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops a member (as a crash would, but letting the file close).
    async fn stop(&self, id: u64) {
        let store = self.net.lock_members().remove(&id);
        if let Some(store) = store {
            store.shutdown().await;
        }
    }

    async fn restart(&self, id: u64) -> Arc<RaftStore> {
        Cluster::open(&self.net, &self.path(id), id, self.snapshot_every).await
    }

    /// Waits until every live member has applied at least `index`.
    async fn converge(&self, index: u64) {
        for id in &self.ids {
            if let Some(store) = self.member(*id) {
                store
                    .raft()
                    .wait(Some(Duration::from_secs(30)))
                    .applied_index_at_least(Some(index), "converged")
                    .await
                    .expect("caught up");
            }
        }
    }

    async fn shutdown(self) {
        for id in self.ids.clone() {
            self.stop(id).await;
        }
    }
}

fn job_names(store: &RaftStore) -> BTreeSet<String> {
    store
        .snapshot()
        .state
        .jobs()
        .map(|j| j.spec.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_a_follower_forwards_writes() {
    let cluster = Cluster::start(3, 10_000).await;
    let leader = cluster.leader().await;
    let follower = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let store = cluster.member(follower).expect("follower");
    let applied = store.propose(job("via-follower")).await.expect("forwarded");
    assert_eq!(
        store
            .snapshot()
            .state
            .job("via-follower")
            .map(|j| j.version),
        Some(1),
        "the follower reads its own forwarded write"
    );
    cluster.converge(applied.index).await;
    for id in &cluster.ids {
        let member = cluster.member(*id).expect("member");
        assert!(job_names(&member).contains("via-follower"));
        let status = member.status();
        assert_eq!(status.leader, Some(leader));
        assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_20_times_loses_no_acknowledged_write() {
    let cluster = Cluster::start(3, 10_000).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util_stop();
    // A client that keeps submitting through whichever member answers.
    let client = {
        let (net, acked, stop) = (cluster.net.clone(), acked.clone(), stop.clone());
        let ids = cluster.ids.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("job-{n}");
                n += 1;
                for id in &ids {
                    let Some(store) = net.lock_members().get(id).cloned() else {
                        continue;
                    };
                    match store.propose(job(&name)).await {
                        Ok(_) => {
                            acked
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(name.clone());
                            break;
                        }
                        Err(StoreError::Unavailable(_)) => continue,
                        Err(other) => panic!("{name}: {other}"),
                    }
                }
            }
        })
    };
    let mut leaders = Vec::new();
    for _ in 0..20 {
        let leader = cluster.leader().await;
        let before = acked.lock().unwrap_or_else(PoisonError::into_inner).len();
        // Let some writes through this leader.
        while acked.lock().unwrap_or_else(PoisonError::into_inner).len() < before + 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster.stop(leader).await;
        let next = cluster.leader().await;
        assert_ne!(next, leader, "a new leader is elected");
        leaders.push((leader, next));
        cluster.restart(leader).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.await.expect("client");
    let acked = acked.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let leader = cluster.leader().await;
    let last = cluster
        .member(leader)
        .expect("leader")
        .propose(job("final"))
        .await
        .expect("final write")
        .index;
    cluster.converge(last).await;
    for id in &cluster.ids {
        let names = job_names(&cluster.member(*id).expect("member"));
        for name in &acked {
            assert!(names.contains(name), "member {id} lost acknowledged {name}");
        }
    }
    let versions: Vec<u64> = cluster
        .member(leader)
        .expect("leader")
        .snapshot()
        .state
        .jobs()
        .filter(|j| acked.contains(&j.spec.name))
        .map(|j| j.version)
        .collect();
    assert!(
        versions.iter().all(|v| *v == 1),
        "no acknowledged job was applied twice"
    );
    assert_eq!(leaders.len(), 20);
    cluster.shutdown().await;
}

fn tokio_util_stop() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_accepts_no_write_and_catches_up_after_healing() {
    let cluster = Cluster::start(3, 10_000).await;
    let leader = cluster.leader().await;
    let minority = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("follower");
    cluster.net.isolate(minority, true);
    let cut_off = cluster.member(minority).expect("minority");
    let refused = tokio::time::timeout(Duration::from_secs(10), cut_off.propose(job("lost")))
        .await
        .map_or(true, |r| r.is_err());
    assert!(refused, "the minority accepted a write");
    let majority = cluster.member(leader).expect("leader");
    let mut last = 0;
    for i in 0..50 {
        last = majority
            .propose(job(&format!("majority-{i}")))
            .await
            .expect("the majority goes on")
            .index;
    }
    assert!(!job_names(&cut_off).contains("majority-0"));
    cluster.net.isolate(minority, false);
    cluster.converge(last).await;
    let names = job_names(&cut_off);
    assert!(names.contains("majority-49"), "caught up after healing");
    assert!(!names.contains("lost"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_away_for_10_000_commits_catches_up_from_a_snapshot() {
    let cluster = Cluster::start(3, 2_000).await;
    let leader = cluster.leader().await;
    let away = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("follower");
    cluster.stop(away).await;
    let store = cluster.member(leader).expect("leader");
    // 10,000 commits from 50 concurrent clients.
    let mut clients = Vec::new();
    for c in 0..50 {
        let store = store.clone();
        clients.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..200 {
                last = store
                    .propose(job(&format!("c{c}-{i}")))
                    .await
                    .expect("commit")
                    .index;
            }
            last
        }));
    }
    let mut last = 0;
    for client in clients {
        last = last.max(client.await.expect("client"));
    }
    store
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index() > 1_000),
            "log purged",
        )
        .await
        .expect("purged past where the member left");
    let back = cluster.restart(away).await;
    back.raft()
        .wait(Some(Duration::from_secs(60)))
        .applied_index_at_least(Some(last), "caught up")
        .await
        .expect("caught up");
    assert!(
        back.raft().metrics().borrow_watched().snapshot.is_some(),
        "it installed a snapshot"
    );
    assert_eq!(back.snapshot().state.jobs().count(), 10_000);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_stopped_and_started_again_keep_the_state() {
    let cluster = Cluster::start(3, 10_000).await;
    let leader = cluster.leader().await;
    let store = cluster.member(leader).expect("leader");
    for i in 0..30 {
        store.propose(job(&format!("j{i}"))).await.expect("write");
    }
    drop(store);
    for id in cluster.ids.clone() {
        cluster.stop(id).await;
    }
    for id in cluster.ids.clone() {
        cluster.restart(id).await;
    }
    let leader = cluster.leader().await;
    let last = cluster
        .member(leader)
        .expect("leader")
        .propose(job("after"))
        .await
        .expect("write after the restart")
        .index;
    cluster.converge(last).await;
    for id in &cluster.ids {
        assert_eq!(job_names(&cluster.member(*id).expect("member")).len(), 31);
    }
    cluster.shutdown().await;
}

/// Disaster recovery: two of the three managers are gone for good (stopped,
/// their files deleted); the survivor, alone, is no majority and takes no
/// write. `force_new_cluster` on its file makes it a cluster of one that
/// keeps every entry of its log, hence every acknowledged write, leads alone
/// (across restarts), takes writes, and lets a new manager join and catch
/// up.
async fn a_survivor_forces_a_new_cluster(snapshot_every: u64, survivor_leads: bool) {
    let mut cluster = Cluster::start(3, snapshot_every).await;
    let leader = cluster.leader().await;
    let store = cluster.member(leader).expect("leader");
    let mut acked = Vec::new();
    let mut last = 0;
    for i in 0..45 {
        let name = format!("before-{i}");
        last = store.propose(job(&name)).await.expect("write").index;
        acked.push(name);
    }
    drop(store);
    let survivor = if survivor_leads {
        leader
    } else {
        cluster
            .ids
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("a follower")
    };
    // Each acknowledged write is on a majority; let the survivor be one of
    // it for all of them (a member that never got a write cannot give it
    // back), and know they are committed.
    cluster.converge(last).await;
    let alone = cluster.member(survivor).expect("survivor");
    if snapshot_every < 45 {
        alone
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index() >= snapshot_every),
                "a snapshot on the survivor",
            )
            .await
            .expect("snapshot");
    }
    let old_term = alone.status().term;
    let mut gone: Vec<u64> = cluster
        .ids
        .iter()
        .copied()
        .filter(|id| *id != survivor)
        .collect();
    for id in &gone {
        cluster.stop(*id).await;
        std::fs::remove_file(cluster.path(*id)).expect("destroyed");
    }
    let refused = tokio::time::timeout(Duration::from_secs(10), alone.propose(job("lost")))
        .await
        .map_or(true, |r| r.is_err());
    assert!(refused, "a survivor without a quorum accepted a write");
    drop(alone);
    cluster.stop(survivor).await;

    let mut config = RaftStoreConfig::new(
        cluster.path(survivor),
        survivor,
        format!("m{survivor}"),
        data_key(survivor),
    );
    config.snapshot_every = snapshot_every;
    let forced = RaftStore::force_new_cluster(config).await.expect("forced");
    // A leader appended the refused write to its log before finding no
    // majority: not committed, yet kept and applied, as every entry of the
    // survivor's log is (as etcd does). A follower forwarded it to a leader
    // that was gone: it never reached its log.
    if survivor_leads {
        assert!(forced.last_applied > last, "{forced:?}");
        assert!(forced.beyond_commit >= 1, "{forced:?}");
    } else {
        assert!(forced.last_applied >= last, "{forced:?}");
    }
    gone.sort_unstable();
    assert_eq!(forced.dropped, gone);
    assert!(forced.was_voter);
    assert!(forced.old_term >= old_term);

    let store = cluster.restart(survivor).await;
    store.initialize_alone().await.expect("leads alone");
    let status = store.status();
    assert_eq!(status.leader, Some(survivor));
    assert!(status.term > forced.old_term, "{status:?}");
    assert_eq!(
        status.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![survivor]
    );
    let names = job_names(&store);
    for name in &acked {
        assert!(names.contains(name), "lost acknowledged {name}");
    }
    // The write the lone leader refused (its client got an error) is there
    // after the force: the accepted, etcd-like cost of keeping every entry
    // that reached the survivor's disk, so that none the lost majority
    // committed and acknowledged is lost.
    assert_eq!(
        names.contains("lost"),
        survivor_leads,
        "the refused write is kept exactly when it reached the survivor's log"
    );
    let kept = acked.len() + usize::from(survivor_leads);
    assert_eq!(names.len(), kept);
    store.propose(job("after-force")).await.expect("write");
    drop(store);

    // Restarted as any manager is: still alone, still the leader.
    cluster.stop(survivor).await;
    let store = cluster.restart(survivor).await;
    store.initialize_alone().await.expect("leads alone again");
    assert_eq!(store.status().leader, Some(survivor));
    let names = job_names(&store);
    assert_eq!(names.len(), kept + 1);
    assert!(names.contains("after-force"));

    // A new manager joins the new cluster and catches up.
    let fresh = 4;
    cluster.ids.push(fresh);
    let joined = Cluster::open(&cluster.net, &cluster.path(fresh), fresh, snapshot_every).await;
    store.add_member(fresh, "m4").await.expect("added");
    let last = store.propose(job("after-join")).await.expect("write").index;
    joined
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .applied_index_at_least(Some(last), "caught up")
        .await
        .expect("caught up");
    assert_eq!(job_names(&joined), job_names(&store));
    let voters: Vec<u64> = store
        .status()
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, vec![survivor, fresh]);
    joined
        .propose(job("via-the-new-member"))
        .await
        .expect("the new member forwards");
    drop((store, joined));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_left_alone_forces_a_new_cluster_keeping_every_acknowledged_write() {
    a_survivor_forces_a_new_cluster(10_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_left_alone_forces_a_new_cluster_after_a_snapshot() {
    a_survivor_forces_a_new_cluster(10, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_asked_of_a_follower_keep_a_majority() {
    let cluster = Cluster::start(3, 10_000).await;
    let leader = cluster.leader().await;
    let follower_id = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let follower = cluster.member(follower_id).expect("follower");
    // Demote the other follower from this one: forwarded to the leader.
    let other = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader && *id != follower_id)
        .expect("another follower");
    follower
        .change_membership(MembershipChange::Demote { id: other })
        .await
        .expect("demote, forwarded");
    let voters = |store: &RaftStore| {
        store
            .status()
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect::<BTreeSet<u64>>()
    };
    let leader_store = cluster.member(leader).expect("leader");
    assert_eq!(voters(&leader_store), BTreeSet::from([leader, follower_id]));
    // Two voters left: one may go (the other is a majority of itself)...
    // ...but with three voters and one cut off, demoting a reachable one
    // would leave two voters of which only one answers: refused.
    follower
        .change_membership(MembershipChange::Promote { id: other })
        .await
        .expect("promote");
    cluster.net.isolate(other, true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leader_store
        .status()
        .members
        .iter()
        .any(|m| m.id == other && m.reachable)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never saw the cut member as unreachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = follower
        .change_membership(MembershipChange::Demote { id: follower_id })
        .await
        .expect_err("demoting a voter that the majority needs is refused");
    assert!(refused.to_string().contains("quorum"), "{refused}");
    assert_eq!(voters(&leader_store).len(), 3, "nothing changed");
    cluster.net.isolate(other, false);
    follower
        .change_membership(MembershipChange::Demote { id: other })
        .await
        .expect("demote again");
    // The standby still gets every write.
    let applied = follower.propose(job("after-demote")).await.expect("write");
    cluster.converge(applied.index).await;
    assert!(job_names(&cluster.member(other).expect("standby")).contains("after-demote"));
    // Promote it back: three voters again, and a removal is now allowed.
    follower
        .change_membership(MembershipChange::Promote { id: other })
        .await
        .expect("promote");
    assert_eq!(voters(&leader_store).len(), 3);
    follower
        .change_membership(MembershipChange::Remove { id: other })
        .await
        .expect("remove one of three");
    assert_eq!(voters(&leader_store), BTreeSet::from([leader, follower_id]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_on_a_follower_sees_every_acknowledged_write() {
    let cluster = Cluster::start(3, 10_000).await;
    let leader = cluster.leader().await;
    let leader_store = cluster.member(leader).expect("leader");
    let follower = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .and_then(|id| cluster.member(id))
        .expect("a follower");
    for i in 0..50 {
        leader_store
            .propose(job(&format!("j{i}")))
            .await
            .expect("write on the leader");
        follower.linearizable_read().await.expect("read index");
        assert!(
            job_names(&follower).contains(&format!("j{i}")),
            "write {i} acknowledged by the leader is visible on the follower"
        );
    }
    // The leader's view of the cluster, asked from a follower, knows who answers.
    let status = follower.leader_status().await;
    assert_eq!(status.leader, Some(leader));
    assert!(status.members.iter().all(|m| m.reachable), "{status:?}");
    // Cut off from the others, a member cannot serve a linearizable read.
    cluster.net.isolate(follower.id(), true);
    assert!(follower.linearizable_read().await.is_err());
    cluster.net.isolate(follower.id(), false);
    cluster.shutdown().await;
}
