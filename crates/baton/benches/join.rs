//! Join benchmark: 100 agents join one manager (in-process, each over its own
//! mutual-TLS connection on loopback) and open their sessions; time until the
//! manager sees all of them ready. Also: CSR signing rate of the cluster CA.
//!
//! `cargo bench -p baton --bench join`. Prints figures; asserts nothing timed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_manager::identity::DEFAULT_CERT_VALIDITY;
use baton_manager::runtime::{self, ManagerConfig};
use baton_rpc::{Dispatcher, NodeDescription};
use baton_spec::{DriverKind, Resources};
use baton_state::NodeState;

const AGENTS: usize = 100;
const SIGNS: usize = 500;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");

        // CSR signing rate of the CA alone.
        let ca = baton_pki::ClusterCa::generate("bench", 1_800_000_000, Duration::from_secs(86_400))
            .expect("ca");
        let (_key, csr) = baton_pki::generate_csr().expect("csr");
        let started = Instant::now();
        for i in 0..SIGNS {
            ca.issue(&csr, &format!("n{i}"), baton_pki::Role::Worker, 1_800_000_000, Duration::from_secs(3600))
                .expect("issue");
        }
        let per_sec = SIGNS as f64 / started.elapsed().as_secs_f64();
        println!("csr signing: {per_sec:.0} certificates/s ({SIGNS} signatures, ECDSA P-256)");

        let manager = runtime::start(ManagerConfig {
            data_dir: tmp.path().join("manager"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            cert_validity: DEFAULT_CERT_VALIDITY,
            node_down_grace: Duration::from_secs(30),
            external_ca: None,
            join: None,
            force_new_cluster: false,
        })
        .await
        .expect("manager");
        // Created now: the tokens are the creation's.
        let token = manager.created.clone().expect("tokens").worker;
        let addr = manager.cluster_addr.to_string();

        let started = Instant::now();
        let mut joins = Vec::new();
        for i in 0..AGENTS {
            let dir = tmp.path().join(format!("agent-{i}"));
            let addr = addr.clone();
            let token = token.clone();
            joins.push(tokio::spawn(async move {
                std::fs::create_dir_all(&dir).expect("dir");
                let identity = baton_agent::load_or_join(&dir, &addr, Some(&token))
                    .await
                    .expect("join");
                let tls = identity.client_tls().expect("tls");
                let channel = baton_rpc::transport::connect_lazy(&addr, &tls).expect("channel");
                let dispatcher = baton_rpc::client::GrpcDispatcher::new(channel);
                let session = dispatcher
                    .open_session(NodeDescription { labels: Default::default(),
                        node_id: identity.node_id.clone(),
                        hostname: format!("bench-{i}"),
                        capacity: Resources { disk_bytes: 0,
                            cpu_millis: 1000,
                            memory_bytes: 1 << 30,
                        },
                        drivers: BTreeSet::from([DriverKind::Raw]),
                        version: "bench".to_owned(),
                        address: None,
                    })
                    .await
                    .expect("session");
                (dispatcher, session)
            }));
        }
        let mut sessions = Vec::new();
        for join in joins {
            sessions.push(join.await.expect("join task"));
        }
        let mut changes = manager.store.subscribe();
        changes
            .wait_for(|snap| {
                snap.state.nodes().filter(|n| n.state == NodeState::Ready).count() == AGENTS
            })
            .await
            .expect("store");
        let ready = started.elapsed();
        println!(
            "join: {AGENTS} agents joined (token check, CSR signed, admitted) and ready in {:.0} ms ({:.1} joins/s)",
            ready.as_secs_f64() * 1e3,
            AGENTS as f64 / ready.as_secs_f64()
        );
        drop(changes);
        drop(sessions);
        manager.stop().await;
    });
}
