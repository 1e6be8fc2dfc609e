//! The example job files in the repository's `examples/` parse to the specs
//! their comments describe.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_spec::{
    DriverKind, JobKind, JobSpec, Resources, RestartCondition, RestartPolicy, SpecFormat, TaskSpec,
    parse_job,
};

fn parse_example(file: &str) -> JobSpec {
    let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
    parse_job(file, &bytes, SpecFormat::Yaml).unwrap_or_else(|errors| panic!("{errors}"))
}

#[test]
fn web_example_is_a_service_of_three() {
    let expected = JobSpec {
        placement: Default::default(),
        name: "web".to_owned(),
        kind: JobKind::Service { replicas: 3 },
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "while true; do echo \"web: alive at $(date +%T)\"; sleep 1; done".to_owned(),
            ],
            env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
            workdir: None,
            user: None,
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 100,
                memory_bytes: 32 << 20,
            },
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    };
    assert_eq!(parse_example("web.yaml"), expected);
}

#[test]
fn batch_example_needs_three_completions_two_at_a_time() {
    let expected = JobSpec {
        placement: Default::default(),
        name: "report".to_owned(),
        kind: JobKind::Batch {
            completions: 3,
            parallelism: 2,
        },
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "echo report part done; exit 0".to_owned(),
            ],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 50,
                memory_bytes: 16 << 20,
            },
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    };
    assert_eq!(parse_example("batch.yaml"), expected);
}

#[test]
fn global_example_runs_on_every_node() {
    let expected = JobSpec {
        placement: Default::default(),
        name: "node-probe".to_owned(),
        kind: JobKind::Global,
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "while true; do echo \"probe on $(hostname)\"; sleep 10; done".to_owned(),
            ],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 10,
                memory_bytes: 8 << 20,
            },
            kill_timeout: Duration::from_secs(2),
        },
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    };
    assert_eq!(parse_example("global.yaml"), expected);
}

#[test]
fn placement_example_spreads_over_zones_on_ssd_workers() {
    let spec = parse_example("placement.yaml");
    assert_eq!(spec.kind, JobKind::Service { replicas: 6 });
    let placement = &spec.placement;
    assert_eq!(placement.priority, 70);
    assert!(!placement.preempt);
    let rules: Vec<&str> = placement.constraints.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        rules,
        vec!["node.role != manager", "node.labels.disk == ssd"]
    );
    assert_eq!(placement.affinities.len(), 1);
    assert_eq!(placement.affinities[0].weight, 50);
    assert_eq!(
        placement.spread.as_ref().map(|s| s.attribute.to_string()),
        Some("node.labels.zone".to_owned())
    );
    assert_eq!(placement.max_per_node, Some(2));
    assert_eq!(spec.task.resources.disk_bytes, 100 << 20);
    assert_eq!(spec.task.ports.len(), 1);
    assert_eq!(spec.task.ports[0].name, "http");
    assert_eq!(spec.task.ports[0].static_port, None);
    assert!(spec.task.ports[0].publish);
}

/// The spec of the two isolation examples, which differ in driver, name,
/// image, command and environment only.
fn isolated_example(
    name: &str,
    driver: DriverKind,
    image: Option<&str>,
    script: &str,
    env: BTreeMap<String, String>,
) -> JobSpec {
    JobSpec {
        placement: Default::default(),
        name: name.to_owned(),
        kind: JobKind::Service { replicas: 1 },
        task: TaskSpec {
            ports: Default::default(),
            image: image.map(str::to_owned),
            capabilities: Vec::new(),
            pids_limit: 64,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver,
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
            env,
            workdir: None,
            user: None,
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 100,
                memory_bytes: 32 << 20,
            },
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    }
}

#[test]
fn isolated_example_runs_isolated_by_default() {
    let expected = isolated_example(
        "hello",
        DriverKind::Exec,
        None,
        "while true; do echo \"hello from $(id -un) in $PWD\"; date > /work/last-beat; sleep 5; done",
        BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
    );
    assert_eq!(parse_example("isolated.yaml"), expected);
}

#[test]
fn docker_example_uses_the_local_test_image() {
    let expected = isolated_example(
        "hello-docker",
        DriverKind::Docker,
        Some("baton-test/busybox:1"),
        "while true; do echo \"hello from uid $(id -u)\"; sleep 5; done",
        BTreeMap::new(),
    );
    assert_eq!(parse_example("docker.yaml"), expected);
}

#[test]
fn secrets_example_mounts_a_secret_a_variable_and_a_config() {
    let spec = parse_example("secrets.yaml");
    assert_eq!(spec.task.driver, DriverKind::Exec);
    assert_eq!(
        spec.task.secrets,
        [baton_spec::FileMount {
            name: "db-password".to_owned(),
            target: Some("/run/secrets/db-password".to_owned()),
            mode: 0o400,
            uid: None,
        }]
    );
    assert_eq!(
        spec.task.env_secrets,
        BTreeMap::from([("DB_PASSWORD".to_owned(), "db-password".to_owned())])
    );
    assert_eq!(
        spec.task.configs,
        [baton_spec::FileMount {
            name: "app.conf".to_owned(),
            target: Some("/run/configs/app.conf".to_owned()),
            mode: 0o444,
            uid: None,
        }]
    );
}
