//! Fixtures shared by Baton's tests and benches. Only ever a
//! dev-dependency: nothing shipped depends on it.

pub mod drivers;
pub mod files;

use std::collections::BTreeMap;
use std::time::Duration;

use baton_spec::{
    DriverKind, JobKind, JobSpec, Resources, RestartCondition, RestartPolicy, SpecFormat, TaskSpec,
};
use baton_state::{Command, Timestamp};

/// A raw-driver service `name` with `replicas` replicas of `/bin/true`
/// (100m cpu, 1 MiB), restarted always.
pub fn service(name: &str, replicas: u32) -> JobSpec {
    JobSpec {
        placement: Default::default(),
        name: name.to_owned(),
        kind: JobKind::Service { replicas },
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec!["/bin/true".to_owned()],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 100,
                memory_bytes: 1 << 20,
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

/// Submitting [`service`] `name` with `replicas`, as YAML source `name: NAME`.
pub fn put_service(name: &str, replicas: u32) -> Command {
    Command::PutJob {
        spec: service(name, replicas),
        format: SpecFormat::Yaml,
        source: format!("name: {name}\n"),
        now: Timestamp(1),
    }
}
