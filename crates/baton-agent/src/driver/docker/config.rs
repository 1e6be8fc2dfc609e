//! The container a task becomes, and how the engine's answers read back:
//! pure functions from a [`TaskRun`] to a `ContainerCreateBody`, and from
//! the engine's state and statistics to [`ExitInfo`] and [`Usage`].
//!
//! The isolation settings and why each is chosen are in the parent module's
//! documentation.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use baton_state::ExitInfo;
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, HostConfig, HostConfigLogConfig, Mount, MountType,
    PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};

use super::Usage;
use crate::driver::TaskRun;
use crate::driver::files::FileBind;
use crate::driver::ports::port_env;
use crate::driver::raw::task_env;
use crate::error::AgentError;

/// Label naming the task a container runs.
pub(super) const LABEL_TASK: &str = "baton.task";
/// Label naming the job of a container or network.
pub(super) const LABEL_JOB: &str = "baton.job";
/// Label naming the node whose agent made a container.
pub(super) const LABEL_NODE: &str = "baton.node";

/// Who a task runs as when its spec does not say: `nobody:nogroup`, never the
/// image's own `USER` (often root).
const DEFAULT_USER: &str = "65534:65534";

/// Group of a numeric uid given without one. Docker would give such a uid
/// group 0 (root) when the image's passwd does not list it.
const FALLBACK_GID: u32 = 65534;

/// The task's working directory when its spec names none: the one writable
/// place of a read-only root.
const DEFAULT_WORKDIR: &str = "/tmp";

/// `HOME` of every task (writable, as the root file system is not).
const HOME: &str = "/tmp";

/// Docker's lowest `CpuShares` (the kernel's minimum of `cpu.shares`).
const MIN_CPU_SHARES: i64 = 2;

/// The engine's own copy of a task's output (`docker logs`), kept small: the
/// agent's `task.log` is the copy of record, and the engine's default
/// `json-file` grows without bound.
const ENGINE_LOG_MAX_SIZE: &str = "1m";

/// A port of the task: the number the cluster gave it, which the container
/// listens on inside as well, and the host address it is published on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PublishedPort {
    /// On the host: `127.0.0.1:<port>` for a port that is not published,
    /// `<node ip or 0.0.0.0>:<port>` for one that is.
    pub host: SocketAddr,
}

impl PublishedPort {
    /// Docker's key for the container side, `<port>/tcp`.
    fn container_key(self) -> String {
        format!("{}/tcp", self.host.port())
    }
}

/// The task's ports, by upper-case port name, as `ports.rs` resolves them.
///
/// `port_env` is the one place that decides a port's number and address
/// (assignment, static fallback, loopback unless published); its
/// `BATON_ADDR_<NAME>` values are exactly the host side of each binding, so
/// they are read back from it rather than decided twice.
pub(super) fn published_ports(run: &TaskRun) -> Vec<(String, PublishedPort)> {
    port_env(&run.spec.ports, &run.ports, run.advertise_ip)
        .into_iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix("BATON_ADDR_")?;
            let host = value.parse::<SocketAddr>().ok()?;
            Some((name.to_owned(), PublishedPort { host }))
        })
        .collect()
}

/// The container's environment, as `KEY=value` (values may be secrets: never
/// log the result).
///
/// The raw driver's rules (the spec's variables, then the `BATON_*` ones a
/// spec cannot forge), with three differences: `HOME` is `/tmp`; `PATH` is
/// the image's own unless the spec sets one (the raw driver's host `PATH`
/// means nothing in an image); and `BATON_ADDR_<NAME>` is `0.0.0.0:<port>`,
/// because inside its network namespace the task must listen on its
/// container address for the published port to reach it.
pub(super) fn container_env(
    run: &TaskRun,
    ports: &[(String, PublishedPort)],
) -> Result<Vec<String>, AgentError> {
    let mut env = task_env(run, HOME)?;
    if !run.spec.env.contains_key("PATH") {
        env.remove("PATH");
    }
    for (name, port) in ports {
        let inside = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port.host.port());
        env.insert(format!("BATON_ADDR_{name}"), inside.to_string());
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The container's `User`: the spec's user, or `nobody` by default.
///
/// A name is resolved in the image's `/etc/passwd` (with its group); a
/// numeric uid without a group gets `nogroup` rather than Docker's root
/// group. `root`/`0` is allowed when the spec says so: the capability set is
/// still empty and `no-new-privileges` still holds.
pub(super) fn container_user(user: Option<&str>) -> String {
    match user {
        None => DEFAULT_USER.to_owned(),
        Some("0") => "0:0".to_owned(),
        Some(uid) if uid.parse::<u32>().is_ok() => format!("{uid}:{FALLBACK_GID}"),
        Some(name) => name.to_owned(),
    }
}

/// `CpuShares` for a reservation of `cpu_millis` (1024 shares = one core).
pub(super) fn cpu_shares(cpu_millis: u64) -> i64 {
    let shares = i64::try_from(cpu_millis.saturating_mul(1024) / 1000).unwrap_or(i64::MAX);
    shares.max(MIN_CPU_SHARES)
}

/// Who owns a task's secret and config files: the user the container runs
/// as. A user name is looked up on this host (the image's passwd is not
/// known before the container exists).
pub(super) fn file_owner(user: Option<&str>) -> Result<(u32, u32), AgentError> {
    let user = container_user(user);
    if let Some((uid, gid)) = user.split_once(':')
        && let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse())
    {
        return Ok((uid, gid));
    }
    match nix::unistd::User::from_name(&user).ok().flatten() {
        Some(entry) => Ok((entry.uid.as_raw(), entry.gid.as_raw())),
        None => Err(AgentError::StartFailed {
            what: format!("user {user}"),
            reason: "its secret and config files need an owner known on this host: \
                     give a numeric user, or a uid on each file"
                .to_owned(),
        }),
    }
}

/// Everything the engine needs to create the task's container; `files` are
/// mounted read-only at their targets. Fails only for an environment
/// variable whose secret cannot be one.
pub(super) fn container_body(
    run: &TaskRun,
    image: &str,
    network: &str,
    files: &[FileBind],
) -> Result<ContainerCreateBody, AgentError> {
    let ports = published_ports(run);
    let memory = i64::try_from(run.spec.resources.memory_bytes).unwrap_or(i64::MAX);
    let mut port_bindings = PortMap::new();
    for (_, port) in &ports {
        port_bindings
            .entry(port.container_key())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(port.host.ip().to_string()),
                host_port: Some(port.host.port().to_string()),
            });
    }
    let host_config = HostConfig {
        readonly_rootfs: Some(true),
        mounts: (!files.is_empty()).then(|| {
            files
                .iter()
                .map(|file| Mount {
                    target: Some(file.target.clone()),
                    source: Some(file.source.to_string_lossy().into_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Mount::default()
                })
                .collect()
        }),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={memory}"),
        )])),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: Some(run.spec.capabilities.clone()),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        privileged: Some(false),
        ipc_mode: Some("private".to_owned()),
        init: Some(true),
        memory: Some(memory),
        memory_swap: Some(memory),
        cpu_shares: Some(cpu_shares(run.spec.resources.cpu_millis)),
        pids_limit: Some(i64::from(run.spec.pids_limit)),
        network_mode: Some(network.to_owned()),
        port_bindings: Some(port_bindings),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), ENGINE_LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), "1".to_owned()),
            ])),
        }),
        ..HostConfig::default()
    };
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        // `[""]` resets the image's ENTRYPOINT: the spec's argv runs as
        // written, never wrapped by a script of the image.
        entrypoint: Some(vec![String::new()]),
        cmd: Some(run.spec.command.clone()),
        env: Some(container_env(run, &ports)?),
        user: Some(container_user(run.spec.user.as_deref())),
        working_dir: Some(
            run.spec
                .workdir
                .clone()
                .unwrap_or_else(|| DEFAULT_WORKDIR.to_owned()),
        ),
        hostname: Some(run.job.clone()),
        labels: Some(HashMap::from([
            (LABEL_TASK.to_owned(), run.task.0.clone()),
            (LABEL_JOB.to_owned(), run.job.clone()),
            (LABEL_NODE.to_owned(), run.node.0.clone()),
        ])),
        exposed_ports: Some(ports.iter().map(|(_, p)| p.container_key()).collect()),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    })
}

/// Signals the agent sent a container, so that an exit code of `128 + n` can
/// be read as "killed by signal n" only when that is known to be so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SignalsSent {
    /// SIGTERM was delivered (a stop began).
    pub term: bool,
    /// SIGKILL was delivered (the stop's grace ran out).
    pub kill: bool,
}

/// How the container ended, from the engine's `State.ExitCode` and
/// `State.OOMKilled`.
///
/// Docker reports only an exit code; `docker-init` (pid 1) exits with
/// `128 + n` when its child dies of signal n, and the engine reports 137 when
/// pid 1 itself was killed. Such a code is reported as a signal only when the
/// cause is known: the kernel's OOM killer (SIGKILL), or a signal this agent
/// sent. Otherwise it stays an exit code (a task may `exit 143` itself).
pub(super) fn exit_info(code: i64, oom_killed: bool, sent: SignalsSent) -> ExitInfo {
    const SIGKILL: i64 = 9;
    const SIGTERM: i64 = 15;
    let signal = match code - 128 {
        SIGKILL if oom_killed || sent.kill => Some(SIGKILL),
        SIGTERM if sent.term => Some(SIGTERM),
        _ => None,
    };
    match signal {
        Some(signal) => ExitInfo {
            code: None,
            signal: i32::try_from(signal).ok(),
            oom_killed,
        },
        None => ExitInfo {
            code: Some(i32::try_from(code).unwrap_or(i32::MAX)),
            signal: None,
            oom_killed,
        },
    }
}

/// A usage sample from one `stats` answer; `None` when the answer has no CPU
/// figures (the container is not running).
///
/// Memory is the cgroup's usage less its inactive file cache, as `docker
/// stats` computes it: `total_inactive_file` under cgroup v1,
/// `inactive_file` under v2.
pub(super) fn usage(stats: &ContainerStatsResponse) -> Option<Usage> {
    let cpu_ns = stats.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage?;
    let memory_bytes = stats.memory_stats.as_ref().map_or(0, |memory| {
        let inactive = memory.stats.as_ref().and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
                .copied()
        });
        memory
            .usage
            .unwrap_or(0)
            .saturating_sub(inactive.unwrap_or(0))
    });
    let pids = stats
        .pids_stats
        .as_ref()
        .and_then(|p| p.current)
        .unwrap_or(0);
    Some(Usage {
        cpu_ns,
        memory_bytes,
        pids,
    })
}

/// What makes an engine unfit to run tasks, from its `SecurityOptions`
/// (entries like `name=seccomp,profile=default`): it must filter system calls
/// with seccomp, and not with an `unconfined` default profile.
pub(super) fn seccomp_problem(security_options: &[String]) -> Option<&'static str> {
    let has = |option: &String, pair: &str| option.split(',').any(|kv| kv == pair);
    match security_options.iter().find(|o| has(o, "name=seccomp")) {
        None => Some("runs containers without seccomp (no name=seccomp in its security options)"),
        Some(option) if has(option, "profile=unconfined") => {
            Some("runs containers with seccomp profile=unconfined by default")
        }
        Some(_) => None,
    }
}

/// The tag to pull with `image`: `latest` for a reference that names neither
/// a tag nor a digest, since the engine pulls *every* tag of a repository
/// when asked for none.
pub(super) fn pull_tag(image: &str) -> Option<&'static str> {
    let last = image.rsplit('/').next().unwrap_or(image);
    (!image.contains('@') && !last.contains(':')).then_some("latest")
}

/// Whether `name` can follow `baton-` in a container or network name: Docker
/// accepts `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; 200 bytes keeps clear of its limits.
pub(super) fn valid_name_part(name: &str) -> bool {
    name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use baton_spec::{DriverKind, PortSpec, Resources, TaskSpec};
    use baton_state::{NodeId, TaskId};
    use bollard::models::{
        ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerPidsStats,
    };

    use super::*;
    use crate::log_file::LogWriter;

    async fn run(dir: &std::path::Path) -> TaskRun {
        TaskRun {
            task: TaskId("web.0.a1".to_owned()),
            job: "web".to_owned(),
            slot: "0".to_owned(),
            node: NodeId("n1".to_owned()),
            spec: TaskSpec {
                driver: DriverKind::Docker,
                command: vec!["/bin/app".to_owned(), "--flag".to_owned()],
                env: BTreeMap::from([
                    ("BATON_ADDR_HTTP".to_owned(), "forged".to_owned()),
                    ("APP".to_owned(), "x".to_owned()),
                ]),
                workdir: None,
                user: None,
                resources: Resources::new(250, 64 << 20),
                kill_timeout: Duration::from_secs(5),
                ports: vec![
                    PortSpec {
                        name: "http".to_owned(),
                        static_port: None,
                        publish: true,
                    },
                    PortSpec {
                        name: "debug".to_owned(),
                        static_port: None,
                        publish: false,
                    },
                ],
                image: Some("app:1".to_owned()),
                capabilities: vec!["NET_BIND_SERVICE".to_owned()],
                pids_limit: 128,
                secrets: Vec::new(),
                env_secrets: std::collections::BTreeMap::new(),
                configs: Vec::new(),
            },
            task_dir: dir.to_owned(),
            log: LogWriter::open(dir, 1 << 10).await.expect("log"),
            ports: BTreeMap::from([("http".to_owned(), 20_001), ("debug".to_owned(), 20_002)]),
            advertise_ip: Some("10.0.0.7".parse().expect("ip")),
            files: Default::default(),
            run_dir: dir.join("run"),
        }
    }

    #[tokio::test]
    async fn the_container_is_confined_and_told_its_ports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = container_body(&run(dir.path()).await, "app:1", "baton-web", &[]).expect("body");
        let host = body.host_config.clone().expect("host config");
        let expected_host = HostConfig {
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,size=67108864".to_owned(),
            )])),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(vec!["NET_BIND_SERVICE".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            privileged: Some(false),
            ipc_mode: Some("private".to_owned()),
            init: Some(true),
            memory: Some(64 << 20),
            memory_swap: Some(64 << 20),
            cpu_shares: Some(256),
            pids_limit: Some(128),
            network_mode: Some("baton-web".to_owned()),
            port_bindings: Some(HashMap::from([
                (
                    "20001/tcp".to_owned(),
                    Some(vec![PortBinding {
                        host_ip: Some("10.0.0.7".to_owned()),
                        host_port: Some("20001".to_owned()),
                    }]),
                ),
                (
                    "20002/tcp".to_owned(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some("20002".to_owned()),
                    }]),
                ),
            ])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            auto_remove: Some(false),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "1m".to_owned()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            ..HostConfig::default()
        };
        assert_eq!(host, expected_host);
        assert_eq!(body.entrypoint, Some(vec![String::new()]));
        assert_eq!(
            body.cmd,
            Some(vec!["/bin/app".to_owned(), "--flag".to_owned()])
        );
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(body.hostname.as_deref(), Some("web"));
        assert_eq!(
            body.env,
            Some(
                [
                    "APP=x",
                    "BATON_ADDR_DEBUG=0.0.0.0:20002",
                    "BATON_ADDR_HTTP=0.0.0.0:20001",
                    "BATON_JOB=web",
                    "BATON_NODE_ID=n1",
                    "BATON_PORT_DEBUG=20002",
                    "BATON_PORT_HTTP=20001",
                    "BATON_SLOT=0",
                    "BATON_TASK_ID=web.0.a1",
                    "HOME=/tmp",
                ]
                .map(str::to_owned)
                .to_vec()
            )
        );
        let mut exposed = body.exposed_ports.expect("exposed ports");
        exposed.sort();
        assert_eq!(exposed, ["20001/tcp", "20002/tcp"]);
    }

    #[tokio::test]
    async fn a_path_in_the_spec_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = run(dir.path()).await;
        run.spec
            .env
            .insert("PATH".to_owned(), "/opt/bin".to_owned());
        let env = container_env(&run, &[]).expect("env");
        assert!(env.contains(&"PATH=/opt/bin".to_owned()), "{env:?}");
    }

    #[test]
    fn the_user_is_nobody_unless_the_spec_says_and_never_the_root_group_by_accident() {
        assert_eq!(container_user(None), "65534:65534");
        assert_eq!(container_user(Some("1000")), "1000:65534");
        assert_eq!(container_user(Some("0")), "0:0");
        assert_eq!(container_user(Some("root")), "root");
        assert_eq!(container_user(Some("app")), "app");
    }

    #[test]
    fn cpu_shares_follow_the_reservation_with_dockers_floor() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(2500), 2560);
        assert_eq!(cpu_shares(u64::MAX), 18_446_744_073_709_551);
    }

    #[test]
    fn a_signal_is_reported_only_when_its_cause_is_known() {
        let none = SignalsSent::default();
        let term = SignalsSent {
            term: true,
            kill: false,
        };
        let kill = SignalsSent {
            term: true,
            kill: true,
        };
        let exited = |code| ExitInfo {
            code: Some(code),
            signal: None,
            oom_killed: false,
        };
        let killed = |signal, oom_killed| ExitInfo {
            code: None,
            signal: Some(signal),
            oom_killed,
        };
        assert_eq!(exit_info(0, false, none), exited(0));
        assert_eq!(exit_info(3, false, term), exited(3));
        assert_eq!(exit_info(143, false, none), exited(143));
        assert_eq!(exit_info(137, false, none), exited(137));
        assert_eq!(exit_info(143, false, term), killed(15, false));
        assert_eq!(exit_info(137, false, term), exited(137));
        assert_eq!(exit_info(137, false, kill), killed(9, false));
        assert_eq!(exit_info(143, false, kill), killed(15, false));
        assert_eq!(exit_info(137, true, none), killed(9, true));
        assert_eq!(
            exit_info(1, true, none),
            ExitInfo {
                code: Some(1),
                signal: None,
                oom_killed: true
            }
        );
    }

    #[test]
    fn usage_subtracts_the_inactive_file_cache() {
        let stats = |key: &str| ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(5_000),
                    ..ContainerCpuUsage::default()
                }),
                ..ContainerCpuStats::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(10_000),
                stats: Some(HashMap::from([(key.to_owned(), 4_000)])),
                ..ContainerMemoryStats::default()
            }),
            pids_stats: Some(ContainerPidsStats {
                current: Some(7),
                limit: Some(64),
            }),
            ..ContainerStatsResponse::default()
        };
        let expected = Some(Usage {
            cpu_ns: 5_000,
            memory_bytes: 6_000,
            pids: 7,
        });
        assert_eq!(usage(&stats("total_inactive_file")), expected);
        assert_eq!(usage(&stats("inactive_file")), expected);
        assert_eq!(usage(&ContainerStatsResponse::default()), None);
    }

    #[test]
    fn an_engine_without_seccomp_is_refused() {
        let options = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            seccomp_problem(&options(&["name=seccomp,profile=default"])),
            None
        );
        assert_eq!(
            seccomp_problem(&options(&["name=apparmor", "name=seccomp,profile=builtin"])),
            None
        );
        assert!(seccomp_problem(&options(&["name=seccomp,profile=unconfined"])).is_some());
        assert!(seccomp_problem(&options(&["name=apparmor"])).is_some());
        assert!(seccomp_problem(&[]).is_some());
    }

    #[test]
    fn an_untagged_image_is_pulled_as_latest_not_as_every_tag() {
        assert_eq!(pull_tag("busybox"), Some("latest"));
        assert_eq!(pull_tag("registry.local:5000/app"), Some("latest"));
        assert_eq!(pull_tag("busybox:1.36"), None);
        assert_eq!(pull_tag("registry.local:5000/app:1.2"), None);
        assert_eq!(pull_tag("app@sha256:ab12"), None);
    }

    #[test]
    fn only_docker_safe_names_are_accepted() {
        assert!(valid_name_part("web.0.a1-b_c"));
        assert!(!valid_name_part(""));
        assert!(!valid_name_part(".hidden"));
        assert!(!valid_name_part("a/b"));
        assert!(!valid_name_part("a b"));
        assert!(!valid_name_part(&"a".repeat(201)));
    }
}
