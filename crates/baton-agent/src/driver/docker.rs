//! The `docker` driver: each task is a container of the node's Docker Engine,
//! driven through its API (bollard, negotiated down to the engine's version:
//! 20.10 speaks API 1.41, and every field used here exists there).
//!
//! # Isolation, and why
//!
//! The engine's defaults are a starting point, not the policy: a container
//! gets what it needs and no more.
//!
//! - **User** `65534:65534` (nobody) unless the spec names one, never the
//!   image's `USER`; a numeric uid without a group gets group 65534, never
//!   Docker's fallback group 0. `root` is allowed when the spec asks, still
//!   without capabilities.
//! - **Capabilities**: `CapDrop: ALL`, then only the spec's (validated against
//!   Docker's default set); **`no-new-privileges`**, so no setuid binary of the
//!   image can gain any; the engine's **default seccomp profile** stays on
//!   (never `seccomp=unconfined`), and [`DockerDriver::connect`] refuses an
//!   engine without it; never privileged, no host mounts, private IPC.
//! - **Files**: a read-only root; `/tmp` is a tmpfs (`nosuid,nodev`, as big as
//!   the memory limit, which its pages count against) and is the default
//!   working directory and `HOME` (another working directory is made by the
//!   engine, read-only like the rest). A working directory under `/proc`, `/sys`
//!   or `/dev` is refused before anything is created (a leaked descriptor
//!   named `/proc/self/fd/N` as cwd is runc's CVE-2024-21626).
//! - **Resources**: `Memory` = the reservation with `MemorySwap` equal (no
//!   swap), so going over is an OOM kill, reported as such;
//!   `CpuShares` = 1024 per core reserved (at least 2); `PidsLimit` from the
//!   spec (a fork bomb stays inside).
//! - **pid 1** is `docker-init` (`Init: true`): it reaps orphans and forwards
//!   SIGTERM to the task, which the kernel would otherwise drop for a
//!   namespace's init that installed no handler.
//! - **Network**: one bridge network per job, `baton-<job>`, with
//!   inter-container traffic off (`com.docker.network.bridge.enable_icc=false`):
//!   tasks, even of one job, reach each other only through published ports.
//!   Created on a job's first start on this node; removed, best effort, when
//!   its last container here is gone. A bridge per job uses one of the
//!   engine's address pools each: when they run out the start fails and says
//!   to widen the daemon's `default-address-pools`.
//! - **Ports**: each port the cluster gave the task is the same number inside
//!   and out: host `127.0.0.1:<port>` (or the node's address, `0.0.0.0` when
//!   unknown, for a published port) → container `<port>/tcp`. The task is
//!   told `BATON_PORT_<NAME>=<port>` and `BATON_ADDR_<NAME>=0.0.0.0:<port>`:
//!   inside its own network namespace it must listen on its container address,
//!   and the host side decides who can reach it.
//! - **Image**: used if present, never pulled then (a tag is not re-resolved
//!   behind the operator's back); otherwise pulled once, and a failure says
//!   that the image is not on this node and could not be pulled. `Entrypoint`
//!   is reset so the spec's argv runs as written.
//!
//! # Life of a task
//!
//! The container is named `baton-<task id>` and labelled `baton.task`,
//! `baton.job` and `baton.node`, so a restarted agent finds what a crashed one
//! left ([`DockerDriver::remove_orphans`]); a container of the same name is
//! removed before a start. The agent attaches to its stdout and stderr
//! *before* starting it, so no byte is lost, and copies both into the task's
//! log; the engine keeps only a small copy of its own. Stop is SIGTERM, the
//! task's grace, then SIGKILL, timed by the agent (so `forced` is exact and a
//! long grace does not hit the API client's request timeout). Once the
//! container has ended and its output is in the log, it is removed.
//!
//! Environment values may be secrets: they go to the engine and nowhere else
//! (no log, error or `Debug` output carries them).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use baton_rpc::{ExecEvent, ExecInput, Winsize};
use baton_spec::DriverKind;
use baton_state::{ExitInfo, NodeId, TaskId};
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::RwLock;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use super::files::RunDir;
use super::output::Output;
use super::{Driver, TaskHandle, TaskRun, Usage};
use crate::error::AgentError;

mod config;
#[cfg(test)]
mod tests;

use config::{LABEL_JOB, LABEL_NODE, LABEL_TASK, SignalsSent};

/// Where the engine listens unless `DOCKER_HOST` names another unix socket.
const DEFAULT_ENGINE: &str = "unix:///var/run/docker.sock";

/// Longest wait for an engine's response headers. Streams (attach, wait,
/// pull progress) are not bounded by it once their headers have arrived.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Longest [`DockerDriver::connect`] may take: it runs when the agent
/// fingerprints its node, which must not hang on a stuck engine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest pull of a missing image before its start fails.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// Driver option that turns off traffic between containers of one bridge.
const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// Runs tasks as containers of the local Docker Engine.
#[derive(Clone, Debug)]
pub struct DockerDriver {
    docker: Docker,
    /// Taken shared by a start from the network check until the container
    /// has started (and so holds an endpoint on it), and exclusively to
    /// remove a job's network: a network is never removed between another
    /// task's check and its start.
    networks: Arc<RwLock<()>>,
}

/// What can go wrong talking to the engine. Messages never carry the task's
/// environment.
#[derive(Debug, thiserror::Error)]
enum DockerError {
    #[error("image \"{image}\" is not on this node and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error(
        "network {network}: the engine has no address pool left for another network \
         (each job has its own bridge; widen the daemon option default-address-pools): {reason}"
    )]
    AddressPoolsExhausted { network: String, reason: String },
    #[error("{what} {name:?} cannot be part of a Docker name (expected letters, digits and . _ -)")]
    InvalidName { what: &'static str, name: String },
    #[error("{op} {object}: {reason}")]
    Engine {
        op: &'static str,
        object: String,
        reason: String,
    },
}

impl DockerError {
    fn engine(op: &'static str, object: &str, err: &EngineError) -> DockerError {
        DockerError::Engine {
            op,
            object: object.to_owned(),
            reason: describe(err),
        }
    }
}

impl From<DockerError> for AgentError {
    fn from(err: DockerError) -> AgentError {
        AgentError::StartFailed {
            what: "docker".to_owned(),
            reason: err.to_string(),
        }
    }
}

/// The engine's own words for an error (its message, without bollard's
/// `Docker responded with status code …` wrapper).
fn describe(err: &EngineError) -> String {
    match err {
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        other => other.to_string(),
    }
}

/// Whether the engine answered with `status`.
fn is_status(err: &EngineError, status: u16) -> bool {
    matches!(err, EngineError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

/// `baton-<id>`, if `id` is fit for a Docker name.
fn docker_name(what: &'static str, id: &str) -> Result<String, DockerError> {
    if config::valid_name_part(id) {
        Ok(format!("baton-{id}"))
    } else {
        Err(DockerError::InvalidName {
            what,
            name: id.to_owned(),
        })
    }
}

/// The engine's address: `DOCKER_HOST` when it names a unix socket (as the
/// docker CLI), the standard socket otherwise.
fn engine_address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|host| host.starts_with("unix://"))
        .unwrap_or_else(|| DEFAULT_ENGINE.to_owned())
}

impl DockerDriver {
    /// Connects to the local engine and checks it can isolate tasks: it
    /// answers, and it applies a seccomp profile that is not `unconfined`.
    ///
    /// The error says why Docker is unavailable on this node (the driver's
    /// fingerprint reason), e.g. `docker: cannot reach the engine at
    /// unix:///var/run/docker.sock: …`.
    pub async fn connect() -> Result<DockerDriver, String> {
        let address = engine_address();
        let unreachable =
            |reason: String| format!("docker: cannot reach the engine at {address}: {reason}");
        let connect = async {
            let docker = Docker::connect_with_unix(
                &address,
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(|e| unreachable(describe(&e)))?;
            let docker = docker
                .negotiate_version()
                .await
                .map_err(|e| unreachable(describe(&e)))?;
            docker.ping().await.map_err(|e| unreachable(describe(&e)))?;
            let info = docker.info().await.map_err(|e| unreachable(describe(&e)))?;
            let options = info.security_options.unwrap_or_default();
            if let Some(problem) = config::seccomp_problem(&options) {
                return Err(format!("docker: the engine at {address} {problem}"));
            }
            Ok(DockerDriver {
                docker,
                networks: Arc::new(RwLock::new(())),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            })
    }

    /// Force-removes every container this node's agent made
    /// (`baton.node=<node>`) whose task `keep` does not claim, and then the
    /// networks of their jobs if nothing else uses them. Returns the removed
    /// task ids. Best effort: what fails is logged and left for the next
    /// call.
    pub async fn remove_orphans(&self, node: &NodeId, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_NODE}={node}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = match self.docker.list_containers(Some(options)).await {
            Ok(containers) => containers,
            Err(e) => {
                tracing::warn!(node_id = %node, error = %describe(&e), "cannot list docker containers");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        let mut jobs = BTreeSet::new();
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            // A container without our task label is not ours to judge.
            let Some(task) = labels.get(LABEL_TASK) else {
                continue;
            };
            if keep(task) {
                continue;
            }
            let Some(id) = container.id else { continue };
            match self.remove_container(&id).await {
                Ok(()) => {
                    tracing::info!(task_id = %task, "removed orphaned container");
                    removed.push(task.clone());
                    jobs.extend(labels.get(LABEL_JOB).cloned());
                }
                Err(e) => {
                    tracing::warn!(task_id = %task, error = %e, "cannot remove orphaned container");
                }
            }
        }
        for job in jobs {
            if let Ok(network) = docker_name("job", &job) {
                self.remove_network_if_unused(&network).await;
            }
        }
        removed
    }

    /// The current usage of `task`'s container; `None` when the engine has
    /// no such container or no figures for it. One engine sample: it takes up
    /// to a second to answer (20.10 samples each container once a second),
    /// so sample many tasks concurrently.
    pub async fn container_usage(&self, task: &TaskId) -> Option<Usage> {
        let container = docker_name("task id", &task.0).ok()?;
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let stats = self
            .docker
            .stats(&container, Some(options))
            .next()
            .await?
            .ok()?;
        config::usage(&stats)
    }

    /// Makes sure `image` is on this node: never pulls one that is; pulls
    /// a missing one once.
    async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(DockerError::engine("inspect image", image, &e)),
        }
        let mut options = CreateImageOptionsBuilder::default().from_image(image);
        if let Some(tag) = config::pull_tag(image) {
            options = options.tag(tag);
        }
        let options = options.build();
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                let step = step.map_err(|e| describe(&e))?;
                if let Some(message) = step.error_detail.and_then(|detail| detail.message) {
                    return Err(message);
                }
            }
            Ok(())
        };
        let reason = match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(_) => format!("no pull finished within {}s", PULL_TIMEOUT.as_secs()),
        };
        Err(DockerError::ImageUnavailable {
            image: image.to_owned(),
            reason,
        })
    }

    /// Makes sure the job's network exists. Call with `networks` held shared.
    async fn ensure_network(&self, job: &str, network: &str) -> Result<(), DockerError> {
        match self.docker.inspect_network(network, None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(DockerError::engine("inspect network", network, &e)),
        }
        let request = NetworkCreateRequest {
            name: network.to_owned(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([(ICC_OPTION.to_owned(), "false".to_owned())])),
            labels: Some(HashMap::from([(LABEL_JOB.to_owned(), job.to_owned())])),
            ..NetworkCreateRequest::default()
        };
        match self.docker.create_network(request).await {
            // Engines before API 1.44 create a second network of the same
            // name (with only a warning) when another client won the race:
            // ours goes, and the name keeps meaning the first.
            Ok(created) if created.warning.contains("already exists") => {
                tracing::debug!(
                    network,
                    "network created concurrently; removing the duplicate"
                );
                if let Err(e) = self.docker.remove_network(&created.id).await {
                    tracing::warn!(network, error = %describe(&e), "cannot remove duplicate network");
                }
                Ok(())
            }
            Ok(_) => {
                tracing::debug!(network, "created job network");
                Ok(())
            }
            // Newer engines refuse the duplicate instead.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => {
                let reason = describe(&e);
                let lower = reason.to_ascii_lowercase();
                if lower.contains("address pool") || lower.contains("non-overlapping") {
                    Err(DockerError::AddressPoolsExhausted {
                        network: network.to_owned(),
                        reason,
                    })
                } else {
                    Err(DockerError::Engine {
                        op: "create network",
                        object: network.to_owned(),
                        reason,
                    })
                }
            }
        }
    }

    /// Removes a job's network unless a container still uses it. Best effort:
    /// "in use" is the normal case while other tasks of the job run here.
    async fn remove_network_if_unused(&self, network: &str) {
        let _removing = self.networks.write().await;
        match self.docker.remove_network(network).await {
            Ok(()) => tracing::debug!(network, "removed job network"),
            Err(e) => tracing::debug!(network, error = %describe(&e), "job network kept"),
        }
    }

    /// Force-removes a container; one already gone is fine.
    async fn remove_container(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(DockerError::engine("remove container", container, &e)),
        }
    }

    /// One `baton exec` session: an engine exec in the task's container,
    /// which runs with the container's user, capabilities, no-new-privileges
    /// and seccomp profile.
    async fn exec_session(
        &self,
        task: &TaskId,
        command: Vec<String>,
        tty: Option<Winsize>,
        mut input: mpsc::Receiver<ExecInput>,
        events: &mpsc::Sender<ExecEvent>,
    ) -> Result<ExitInfo, DockerError> {
        let container = docker_name("task id", &task.0)?;
        let options = bollard::exec::CreateExecOptions {
            cmd: Some(command),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty.is_some()),
            privileged: Some(false),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&container, options)
            .await
            .map_err(|e| DockerError::engine("create exec in", &container, &e))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| DockerError::engine("start exec in", &container, &e))?;
        let bollard::exec::StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = started
        else {
            return Err(DockerError::Engine {
                op: "start exec in",
                object: container,
                reason: "the engine did not attach".to_owned(),
            });
        };
        if let Some(size) = tty {
            self.resize_exec(&exec.id, size).await;
        }
        let mut stdin_open = true;
        loop {
            tokio::select! {
                () = events.closed() => {
                    // Nobody reads any more: the engine cannot stop an exec,
                    // so its process is killed (it is inside the container).
                    self.kill_exec(&exec.id).await;
                    break;
                }
                next = output.next() => match next {
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                        if events.send(ExecEvent::Stderr(message.to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(other)) => {
                        if events.send(ExecEvent::Stdout(other.into_bytes().to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(_)) | None => break,
                },
                next = input.recv(), if stdin_open => match next {
                    Some(ExecInput::Stdin(bytes)) => {
                        use tokio::io::AsyncWriteExt as _;
                        if stdin.write_all(&bytes).await.is_err() {
                            stdin_open = false;
                        }
                    }
                    Some(ExecInput::Resize(size)) => self.resize_exec(&exec.id, size).await,
                    Some(ExecInput::StdinEof) | None => {
                        use tokio::io::AsyncWriteExt as _;
                        let _ = stdin.shutdown().await;
                        stdin_open = false;
                    }
                },
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| DockerError::engine("inspect exec in", &container, &e))?;
        Ok(ExitInfo {
            code: inspected.exit_code.and_then(|c| i32::try_from(c).ok()),
            signal: None,
            oom_killed: false,
        })
    }

    /// Kills an exec's process with SIGKILL, by its host pid.
    async fn kill_exec(&self, exec: &str) {
        let pid = match self.docker.inspect_exec(exec).await {
            Ok(inspected) if inspected.running == Some(true) => inspected.pid,
            _ => None,
        };
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Sets the size of an exec's terminal; best effort (a session without
    /// a terminal, or one already ended, has none).
    async fn resize_exec(&self, exec: &str, size: Winsize) {
        let options = bollard::query_parameters::ResizeExecOptionsBuilder::default()
            .h(i32::from(size.rows))
            .w(i32::from(size.cols))
            .build();
        if let Err(e) = self.docker.resize_exec(exec, options).await {
            tracing::debug!(error = %describe(&e), "cannot resize the exec's terminal");
        }
    }

    /// Creates the container, attaches to its output and starts it. Call
    /// with `networks` held shared. On error the container may exist: the
    /// caller removes it.
    async fn create_and_start(
        &self,
        run: &TaskRun,
        container: &str,
        network: &str,
        body: ContainerCreateBody,
    ) -> Result<Output, DockerError> {
        self.ensure_network(&run.job, network).await?;
        let options = CreateContainerOptionsBuilder::default()
            .name(container)
            .build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DockerError::engine("create container", container, &e))?;
        let options = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = self
            .docker
            .attach_container(container, Some(options))
            .await
            .map_err(|e| DockerError::engine("attach to container", container, &e))?;
        // Both streams go to the one log, in the order the engine sends them.
        let output = StreamReader::new(
            attached
                .output
                .map_ok(bollard::container::LogOutput::into_bytes)
                .map_err(io::Error::other),
        );
        let mut copier = Output::default();
        copier.copy(output, run.log.clone());
        if let Err(e) = self.docker.start_container(container, None).await {
            // Dropping the copier leaves nothing behind: its stream ends with
            // the container's removal.
            return Err(DockerError::engine("start container", container, &e));
        }
        Ok(copier)
    }
}

#[async_trait::async_trait]
impl Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    async fn recover(&self, node: &NodeId, running: &[TaskId]) -> BTreeSet<TaskId> {
        // Nothing runs yet: every container of this node is a leftover,
        // whether or not the earlier agent recorded its task.
        let removed = self.remove_orphans(node, |_| false).await;
        running
            .iter()
            .filter(|task| removed.contains(&task.0))
            .cloned()
            .collect()
    }

    async fn usage(&self, task: &TaskId, _pid: Option<u32>) -> Option<Usage> {
        self.container_usage(task).await
    }

    async fn exec(
        &self,
        task: &TaskId,
        command: Vec<String>,
        tty: Option<Winsize>,
        input: mpsc::Receiver<ExecInput>,
        events: mpsc::Sender<ExecEvent>,
    ) {
        let end = match self.exec_session(task, command, tty, input, &events).await {
            Ok(exit) => ExecEvent::Exit(exit),
            Err(e) => ExecEvent::Error(e.to_string()),
        };
        let _ = events.send(end).await;
    }

    async fn start(&self, run: TaskRun) -> Result<Box<dyn TaskHandle>, AgentError> {
        let container = docker_name("task id", &run.task.0)?;
        let network = docker_name("job", &run.job)?;
        let image = run
            .spec
            .image
            .as_deref()
            .ok_or_else(|| AgentError::StartFailed {
                what: "docker".to_owned(),
                reason: "the task names no image".to_owned(),
            })?;
        if let Some(workdir) = &run.spec.workdir
            && let Some(problem) = baton_spec::workdir_problem(workdir)
        {
            return Err(AgentError::StartFailed {
                what: format!("workdir {workdir}"),
                reason: problem,
            });
        }
        // Its secrets and configs, in a tmpfs of its own, mounted read-only.
        let run_dir = if run.files.files.is_empty() {
            None
        } else {
            Some(RunDir::mount(&run.run_dir, &run.files, None)?)
        };
        let files = match &run_dir {
            Some(dir) => dir.write(
                &run.files,
                config::file_owner(run.spec.user.as_deref())?,
                (0, 0),
            )?,
            None => Vec::new(),
        };
        let body = config::container_body(&run, image, &network, &files)?;
        self.ensure_image(image).await?;
        // Left by a crashed agent (or a start that failed half-way).
        self.remove_container(&container).await?;

        let starting = self.networks.read().await;
        let started = self
            .create_and_start(&run, &container, &network, body)
            .await;
        drop(starting);
        let output = match started {
            Ok(output) => output,
            Err(e) => {
                if let Err(cleanup) = self.remove_container(&container).await {
                    tracing::warn!(task_id = %run.task, error = %cleanup, "cannot remove a container that failed to start");
                }
                self.remove_network_if_unused(&network).await;
                return Err(e.into());
            }
        };
        // The host pid of docker-init; 0 if the container already ended.
        let pid = match self.docker.inspect_container(&container, None).await {
            Ok(inspect) => inspect
                .state
                .and_then(|state| state.pid)
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or(0),
            Err(e) => {
                tracing::warn!(task_id = %run.task, error = %describe(&e), "cannot read the container's pid");
                0
            }
        };
        Ok(Box::new(DockerHandle {
            driver: self.clone(),
            task: run.task,
            container,
            network,
            pid,
            output,
            exit: None,
            sent: SignalsSent::default(),
            removed: false,
            _run_dir: run_dir,
        }))
    }
}

/// A started container.
#[derive(Debug)]
struct DockerHandle {
    driver: DockerDriver,
    task: TaskId,
    container: String,
    network: String,
    pid: u32,
    /// The output copier (the engine ends its stream once the container's
    /// output is closed; the grace only bounds a stuck engine).
    output: Output,
    /// Set once the container has ended.
    exit: Option<ExitInfo>,
    /// Signals delivered by [`TaskHandle::stop`].
    sent: SignalsSent,
    /// Set once the container (and, if unused, its network) was removed.
    removed: bool,
    /// Its secrets' and configs' tmpfs, unmounted when the handle goes.
    _run_dir: Option<RunDir>,
}

impl DockerHandle {
    fn failure(&self, op: &str, err: &EngineError) -> AgentError {
        AgentError::Process {
            pid: self.pid,
            reason: format!("container {}: {op}: {}", self.container, describe(err)),
        }
    }

    /// Waits for the container to end and reads how it did.
    async fn wait_exit(&self) -> Result<ExitInfo, AgentError> {
        // The stream's one item is the exit; bollard turns a non-zero status
        // into an error, which is an exit all the same.
        match self
            .driver
            .docker
            .wait_container(&self.container, None)
            .next()
            .await
        {
            Some(Ok(_) | Err(EngineError::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) => return Err(self.failure("wait", &e)),
            None => {
                return Err(AgentError::Process {
                    pid: self.pid,
                    reason: format!(
                        "container {}: wait: no answer from the engine",
                        self.container
                    ),
                });
            }
        }
        let inspect = self
            .driver
            .docker
            .inspect_container(&self.container, None)
            .await
            .map_err(|e| self.failure("inspect", &e))?;
        let state = inspect.state.unwrap_or_default();
        let code = state.exit_code.ok_or_else(|| AgentError::Process {
            pid: self.pid,
            reason: format!(
                "container {}: the engine reports no exit code",
                self.container
            ),
        })?;
        Ok(config::exit_info(
            code,
            state.oom_killed.unwrap_or(false),
            self.sent,
        ))
    }

    /// Delivers `signal` to the container's init (which forwards it to the
    /// task). Returns whether it was delivered: not if the container had
    /// already ended.
    async fn signal(&self, signal: &str) -> bool {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        match self
            .driver
            .docker
            .kill_container(&self.container, Some(options))
            .await
        {
            Ok(()) => true,
            // 409: not running any more.
            Err(e) if is_status(&e, 409) => false,
            Err(e) => {
                tracing::warn!(task_id = %self.task, signal, error = %describe(&e), "cannot signal container");
                false
            }
        }
    }
}

#[async_trait::async_trait]
impl TaskHandle for DockerHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> Result<ExitInfo, AgentError> {
        // Each step records its result before the next, so a dropped call
        // resumes where it stopped.
        let exit = match self.exit {
            Some(exit) => exit,
            None => {
                let exit = self.wait_exit().await?;
                self.exit = Some(exit);
                exit
            }
        };
        self.output.drain(&self.task.0).await;
        if !self.removed {
            if let Err(e) = self.driver.remove_container(&self.container).await {
                tracing::warn!(task_id = %self.task, error = %e, "cannot remove ended container");
            }
            self.driver.remove_network_if_unused(&self.network).await;
            self.removed = true;
        }
        Ok(exit)
    }

    fn ended(&self) -> bool {
        self.exit.is_some()
    }

    /// Through the engine, to docker-init, which forwards it to the task.
    /// What was delivered tells a SIGTERM/SIGKILL exit from the task's own.
    async fn signal_end(&mut self, force: bool) -> bool {
        let delivered = self.signal(if force { "SIGKILL" } else { "SIGTERM" }).await;
        if delivered {
            if force {
                self.sent.kill = true;
            } else {
                self.sent.term = true;
            }
        }
        delivered
    }
}
