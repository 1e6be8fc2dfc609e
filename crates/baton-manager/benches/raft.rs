//! Raft commit throughput and failover, on this machine's disk, over the
//! real cluster port (gRPC, mutual TLS, loopback).
//!
//! `cargo bench -p baton-manager --bench raft` prints, for one member (a
//! lone manager) and for three:
//! - job submissions committed per second from one client (each waits for
//!   its commit), with p50/p99 latency;
//! - the same from 1,000 concurrent clients (openraft batches them: one
//!   fsync per batch on each member);
//! - failover on three: leader stopped -> first successful write.
//!
//! Every commit is fsynced (redb's default durability) on a majority.

#[path = "../tests/common/raft_member.rs"]
mod raft_member;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_pki::ClusterCa;
use baton_state::Command;
use baton_store::Store;
use baton_store::raft::RaftStore;
use raft_member::{Manager, manager, now};

const ONE_CLIENT: usize = 1_000;
const CLIENTS: usize = 1_000;
const PER_CLIENT: usize = 20;

fn job(name: String) -> Command {
    baton_testkit::put_service(&name, 3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn cluster(ca: &ClusterCa, dir: &std::path::Path, n: u64) -> Vec<Manager> {
    std::fs::create_dir_all(dir).expect("dir");
    let mut members = Vec::new();
    for i in 0..n {
        members.push(manager(ca, 0xa0 + i, dir).await);
    }
    members[0].store.initialize_alone().await.expect("init");
    for m in &members[1..] {
        members[0]
            .store
            .add_member(m.store.id(), &m.addr)
            .await
            .expect("add");
    }
    members
}

async fn leader(members: &[Manager]) -> Arc<RaftStore> {
    loop {
        for m in members {
            let status = m.store.status();
            if status.leader == Some(status.id) {
                return m.store.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn throughput(label: &str, store: Arc<RaftStore>) {
    // One client, one write at a time.
    let mut latencies = Vec::with_capacity(ONE_CLIENT);
    let started = Instant::now();
    for i in 0..ONE_CLIENT {
        let t = Instant::now();
        store
            .propose(job(format!("{label}-one-{i}")))
            .await
            .expect("commit");
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    println!(
        "{label}: 1 client: {:.0} commits/s, p50 {:.2} ms, p99 {:.2} ms",
        ONE_CLIENT as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );

    // Many clients at once.
    let started = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let store = store.clone();
        let label = label.to_owned();
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(PER_CLIENT);
            for i in 0..PER_CLIENT {
                let t = Instant::now();
                store
                    .propose(job(format!("{label}-c{c}-{i}")))
                    .await
                    .expect("commit");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(CLIENTS * PER_CLIENT);
    for client in clients {
        latencies.extend(client.await.expect("client"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    println!(
        "{label}: {CLIENTS} clients: {:.0} commits/s, p50 {:.2} ms, p99 {:.2} ms",
        (CLIENTS * PER_CLIENT) as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

async fn failover(members: &[Manager]) -> Duration {
    let old = leader(members).await;
    let survivor = members
        .iter()
        .find(|m| m.store.id() != old.id())
        .expect("a follower")
        .store
        .clone();
    let gone = members
        .iter()
        .find(|m| m.store.id() == old.id())
        .expect("the leader");
    // The leader's cluster port closes and its Raft stops (in the
    // background, as a killed process would not wait for anything).
    let started = Instant::now();
    gone.stop.cancel();
    let stopping = tokio::spawn(async move { old.shutdown().await });
    let mut n = 0;
    let took = loop {
        n += 1;
        if survivor.propose(job(format!("failover-{n}"))).await.is_ok() {
            break started.elapsed();
        }
    };
    let _ = stopping.await;
    took
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca =
        ClusterCa::generate(raft_member::CLUSTER, now(), Duration::from_secs(86_400)).expect("ca");

    let one = cluster(&ca, &dir.path().join("one"), 1).await;
    throughput("1 manager", leader(&one).await).await;
    for m in &one {
        m.store.shutdown().await;
        m.stop.cancel();
    }

    let three = cluster(&ca, &dir.path().join("three"), 3).await;
    throughput("3 managers", leader(&three).await).await;
    let took = failover(&three).await;
    println!(
        "3 managers: failover (leader stopped -> first committed write): {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    for m in &three {
        m.store.shutdown().await;
        m.stop.cancel();
    }
}
