//! Round trips and refusals of the wire conversions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

fn spec() -> TaskSpec {
    TaskSpec {
        ports: Default::default(),
        image: None,
        capabilities: Vec::new(),
        pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
        secrets: Vec::new(),
        env_secrets: std::collections::BTreeMap::new(),
        configs: Vec::new(),
        driver: DriverKind::Raw,
        command: vec!["/bin/true".into()],
        env: BTreeMap::from([("K".into(), "v".into())]),
        workdir: Some("/tmp".into()),
        user: None,
        resources: Resources {
            disk_bytes: 0,
            cpu_millis: 100,
            memory_bytes: 1 << 20,
        },
        kill_timeout: Duration::from_secs(5),
    }
}

#[test]
fn session_messages_round_trip() {
    let msgs = [
        SessionMessage::Assignments(AssignmentSet {
            seq: 7,
            tasks: vec![Assignment {
                ports: Default::default(),
                task: TaskId("web.1.abc".into()),
                job: "web".into(),
                job_version: 3,
                slot: "1".into(),
                spec: spec(),
                desired: TaskDesired::Shutdown,
                state: TaskState::Running,
            }],
            secrets: BTreeMap::from([(
                "db".to_owned(),
                baton_state::SecretBytes::new(b"hunter2".to_vec()),
            )]),
            configs: BTreeMap::from([("app".to_owned(), b"port: 80".to_vec())]),
        }),
        SessionMessage::Logs(LogRequest {
            id: 9,
            task: TaskId("web.1.abc".into()),
            follow: true,
        }),
        SessionMessage::Trust(TrustUpdate {
            roots_pem: "-----BEGIN CERTIFICATE-----".into(),
            renew_now: true,
        }),
        SessionMessage::Managers(vec!["10.0.0.1:7451".into(), "10.0.0.2:7451".into()]),
    ];
    for msg in msgs {
        let wire = session_message_to_wire(&msg).expect("to wire");
        assert_eq!(session_message_from_wire(wire), Ok(msg));
    }
}

#[test]
fn reports_and_log_events_round_trip() {
    let report = TaskReport {
        task: TaskId("t".into()),
        state: TaskState::Failed,
        message: "exit 3".into(),
        exit: Some(ExitInfo {
            code: Some(3),
            signal: None,
            oom_killed: false,
        }),
        pid: Some(42),
    };
    assert_eq!(report_from_wire(report_to_wire(&report)), Ok(report));
    for event in [
        LogEvent::Data(b"x".to_vec()),
        LogEvent::End,
        LogEvent::Error("gone".into()),
    ] {
        assert_eq!(
            log_event_from_wire(Some(log_event_to_wire(event.clone()))),
            Ok(event)
        );
    }
}

#[test]
fn node_description_takes_the_given_id_and_skips_unknown_drivers() {
    let wire = pb::NodeDescription {
        labels: Default::default(),
        hostname: "h".into(),
        capacity: Some(pb::Resources {
            disk_bytes: 0,
            cpu_millis: 2000,
            memory_bytes: 5,
        }),
        drivers: vec!["raw".into(), "warp-drive".into()],
        version: "9.9.9".into(),
    };
    let desc = node_description_from_wire(
        NodeId("from-cert".into()),
        Some("10.0.0.5:4000".into()),
        wire,
    );
    assert_eq!(desc.node_id, NodeId("from-cert".into()));
    assert_eq!(desc.address.as_deref(), Some("10.0.0.5:4000"));
    assert_eq!(desc.version, "9.9.9");
    assert_eq!(desc.drivers, BTreeSet::from([DriverKind::Raw]));
    assert_eq!(desc.capacity.cpu_millis, 2000);
}

#[test]
fn unknown_or_unspecified_states_are_refused() {
    let mut wire = report_to_wire(&TaskReport {
        task: TaskId("t".into()),
        state: TaskState::Running,
        message: String::new(),
        exit: None,
        pid: None,
    });
    wire.state = 0;
    assert_eq!(
        report_from_wire(wire.clone()),
        Err(ConvertError::UnknownEnum {
            field: "TaskReport.state",
            value: 0
        })
    );
    wire.state = 99;
    assert!(report_from_wire(wire).is_err());
}

#[test]
fn statuses_map_back_to_rpc_errors() {
    let node = NodeId("n".into());
    let cases = [
        RpcError::Unavailable("x".into()),
        RpcError::NoSession(node.clone()),
        RpcError::PermissionDenied("no".into()),
        RpcError::LogStreamClosed(4),
        RpcError::NotLeader(None),
    ];
    for e in cases {
        let back = status_to_rpc_error(&rpc_error_to_status(&e), &node, 4);
        assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&e));
    }
    // A follower's refusal names the leader, so the agent goes straight there.
    let named = RpcError::NotLeader(Some("10.0.0.2:7451".into()));
    assert_eq!(
        status_to_rpc_error(&rpc_error_to_status(&named), &node, 0),
        named
    );
    assert!(matches!(
        status_to_rpc_error(&Status::internal("boom"), &node, 0),
        RpcError::Unavailable(_)
    ));
}
