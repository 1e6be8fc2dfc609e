//! The `exec` driver: each task an isolated process, run by youki's
//! libcontainer inside a `baton shim` (see `baton_isolate` for what a task
//! gets and why the runtime lives in a process of its own).
//!
//! The agent spawns the shim with a socket on its stdin and the task's output
//! pipes on its stdout and stderr, sends it the task's OCI spec, and reads
//! back `Started` (the task's PID 1, a host pid) and, later, `Exited` (with
//! the cgroup's OOM-kill count). Stopping sends SIGTERM through the shim and
//! SIGKILL after the grace period. If the agent dies, the shim sees its
//! socket close and kills the task: an exec task never outlives its agent
//! unwatched.
//!
//! Users: the spec's user (a name or uid of the host, whose `/etc` the task
//! sees), `nobody` (65534) by default; uid 0 is refused. The task's writable
//! directory is `tasks/<id>/work` on the host, `/work` inside, owned by the
//! task's user and private to it (0700). `HOME` is `/work`.
//!
//! Network: the host's (as `raw`): the task binds the ports the cluster gave
//! it, told in `BATON_PORT_<NAME>`.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_isolate::cgroup::{self, Usage, Version};
use baton_isolate::protocol::{Request, Response};
use baton_isolate::{HostLayout, IsolatedTask, bundle};
use baton_rpc::{ExecEvent, ExecInput, Winsize};
use baton_spec::DriverKind;
use baton_state::{ExitInfo, NodeId, TaskId};
use nix::unistd::{Gid, Uid, User, chown};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::files::RunDir;
use super::output::{OUTPUT_GRACE, Output};
use super::raw::task_env;
use super::{Driver, TaskHandle, TaskRun};
use crate::error::{AgentError, describe_io};

/// The hidden subcommand of the `baton` binary that runs a shim.
pub const SHIM_COMMAND: &str = "shim";

/// The user a task runs as unless its spec names one: `nobody`.
const NOBODY: u32 = 65534;

/// Where a task's writable directory is, inside its task directory.
const WORK_DIR: &str = "work";

/// Host directories every exec task sees, read-only, when they exist as real
/// directories (Debian's `/bin`, `/lib`, … are symlinks into `/usr`).
const HOST_DIRS: &[&str] = &[
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// How long a `baton shim exec` may take to connect back.
const SHIM_CONNECT: Duration = Duration::from_secs(10);

/// Where Debian's `tini` package puts its static build.
const TINI: &str = "/usr/bin/tini-static";

/// Runs tasks isolated.
#[derive(Clone, Debug)]
pub struct ExecDriver {
    /// The `baton` binary, run as `baton shim`.
    shim: PathBuf,
    layout: HostLayout,
    /// The runtime's state directory.
    state_root: PathBuf,
    /// Where `baton shim exec` sessions' sockets are.
    exec_sockets: PathBuf,
    version: Version,
}

impl ExecDriver {
    /// The driver, if this host can isolate tasks: the agent runs as root,
    /// the kernel has seccomp, and cgroups can be made under `cgroup_parent`.
    /// The error says why not. Makes the read-only skeleton every task's root
    /// is, under `data_dir/isolate`.
    pub fn probe(
        shim: PathBuf,
        data_dir: &Path,
        cgroup_parent: &str,
    ) -> Result<ExecDriver, String> {
        if !Uid::effective().is_root() {
            return Err(format!(
                "exec: the agent is not running as root (euid {})",
                Uid::effective()
            ));
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if !status.lines().any(|l| l.starts_with("Seccomp:")) {
            return Err("exec: the kernel has no seccomp".to_owned());
        }
        if !shim.is_file() {
            return Err(format!(
                "exec: no baton binary at {} to run shims",
                shim.display()
            ));
        }
        let version = cgroup::probe(cgroup_parent).map_err(|e| format!("exec: {e}"))?;
        let isolate = data_dir.join("isolate");
        let skel = isolate.join("skel");
        let ro_binds: Vec<PathBuf> = HOST_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
            .collect();
        make_skeleton(&skel, &ro_binds)
            .map_err(|e| format!("exec: cannot make {}: {e}", skel.display()))?;
        let init = Path::new(TINI).is_file().then(|| PathBuf::from(TINI));
        Ok(ExecDriver {
            shim,
            layout: HostLayout {
                skel,
                cgroup_parent: cgroup_parent.to_owned(),
                ro_binds,
                init,
            },
            state_root: isolate.join("state"),
            exec_sockets: isolate.join("exec"),
            version,
        })
    }

    /// Kills whatever is left in the cgroup of `task` (by a shim that died
    /// with the agent) and removes it. Returns whether there was one.
    pub fn kill_leftover(&self, task: &str) -> std::io::Result<bool> {
        let _ = std::fs::remove_dir_all(self.state_root.join(task));
        cgroup::kill_and_remove(self.version, &bundle::cgroup_path(&self.layout, task))
    }
}

/// The task's root: empty mount points for the host directories, `/proc`,
/// `/dev`, `/tmp` and `/work`, and the host's top-level symlinks (so
/// `/bin/sh` resolves to the bound `/usr/bin/sh`). Root-owned and 0755; it is
/// mounted read-only.
fn make_skeleton(skel: &Path, ro_binds: &[PathBuf]) -> std::io::Result<()> {
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    dirs.create(skel)?;
    std::fs::set_permissions(skel, std::fs::Permissions::from_mode(0o755))?;
    for dir in ["proc", "dev", "tmp", "run", "work"] {
        dirs.create(skel.join(dir))?;
    }
    for dir in ro_binds {
        dirs.create(skel.join(dir.strip_prefix("/").unwrap_or(dir)))?;
    }
    for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(name);
        let inside = skel.join(name);
        if let Ok(target) = std::fs::read_link(&host)
            && inside.symlink_metadata().is_err()
        {
            std::os::unix::fs::symlink(target, &inside)?;
        }
    }
    Ok(())
}

/// The uid and gid a task runs as. Refuses root.
fn resolve_user(user: Option<&str>) -> Result<(u32, u32), AgentError> {
    let Some(name) = user else {
        return Ok((NOBODY, NOBODY));
    };
    let entry = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or((uid, NOBODY), |u| (uid, u.gid.as_raw())),
        Err(_) => match User::from_name(name).ok().flatten() {
            Some(u) => (u.uid.as_raw(), u.gid.as_raw()),
            None => {
                return Err(AgentError::UnknownUser {
                    user: name.to_owned(),
                });
            }
        },
    };
    if entry.0 == 0 {
        return Err(AgentError::StartFailed {
            what: format!("user {name}"),
            reason: "exec tasks do not run as root (uid 0); use a user of the host, \
                     or the docker driver"
                .to_owned(),
        });
    }
    Ok(entry)
}

#[async_trait::async_trait]
impl Driver for ExecDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Exec
    }

    async fn recover(&self, _node: &NodeId, running: &[TaskId]) -> BTreeSet<TaskId> {
        // The shims see the earlier agent's sockets close and end their
        // tasks; this is for a shim that died with it.
        let driver = self.clone();
        let running = running.to_vec();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = BTreeSet::new();
            for task in running {
                match driver.kill_leftover(&task.0) {
                    Ok(true) => {
                        found.insert(task);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(task_id = %task, error = %e, "cannot remove the task's cgroup");
                    }
                }
            }
            found
        })
        .await;
        found.unwrap_or_default()
    }

    async fn usage(&self, task: &TaskId, _pid: Option<u32>) -> Option<Usage> {
        // The task's whole cgroup: every process it started.
        cgroup::usage(self.version, &bundle::cgroup_path(&self.layout, &task.0))
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
            Err(message) => ExecEvent::Error(message),
        };
        let _ = events.send(end).await;
    }

    async fn start(&self, run: TaskRun) -> Result<Box<dyn TaskHandle>, AgentError> {
        let cwd = run
            .spec
            .workdir
            .clone()
            .unwrap_or_else(|| bundle::WORK_MOUNT.to_owned());
        // The manager is not trusted with what reaches the runtime.
        if let Some(problem) = baton_spec::workdir_problem(&cwd) {
            return Err(AgentError::StartFailed {
                what: format!("workdir {cwd}"),
                reason: problem,
            });
        }
        let (uid, gid) = resolve_user(run.spec.user.as_deref())?;
        let work_dir = run.task_dir.join(WORK_DIR);
        make_work_dir(&work_dir, uid, gid).map_err(|e| AgentError::StartFailed {
            what: format!("work directory {}", work_dir.display()),
            reason: describe_io(&e),
        })?;
        let env = task_env(&run, bundle::WORK_MOUNT)?
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // The task's runtime spec (its environment, perhaps with secrets)
        // and its files live in a tmpfs of its own, never on disk.
        let run_dir = RunDir::mount(&run.run_dir, &run.files, None)?;
        let files = run_dir.write(&run.files, (uid, gid), (0, 0))?;
        let task = IsolatedTask {
            id: run.task.0.clone(),
            hostname: run.job.clone(),
            args: run.spec.command.clone(),
            env,
            cwd,
            uid,
            gid,
            capabilities: run.spec.capabilities.clone(),
            memory_bytes: run.spec.resources.memory_bytes,
            cpu_millis: run.spec.resources.cpu_millis,
            pids_limit: run.spec.pids_limit,
            work_dir,
            files: files
                .into_iter()
                .map(|bind| (bind.source, bind.target))
                .collect(),
        };
        let spec =
            baton_isolate::oci_spec(&task, &self.layout).map_err(|e| AgentError::StartFailed {
                what: "runtime spec".to_owned(),
                reason: e.to_string(),
            })?;
        let request = Request::Create {
            id: task.id.clone(),
            state_root: self.state_root.clone(),
            bundle: run_dir.path().join("bundle"),
            spec: Box::new(spec),
        };
        self.spawn_shim(request, &run, run_dir).await
    }
}

impl ExecDriver {
    /// `baton shim` with a clean environment, `stdin`, and piped output, in
    /// its own process group: a Ctrl-C meant for the agent's terminal must
    /// not kill a shim and leave its task unwatched.
    fn shim_command(&self, stdin: Stdio) -> Command {
        let mut command = Command::new(&self.shim);
        command
            .arg(SHIM_COMMAND)
            .env_clear()
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command
    }

    /// One `baton exec` session: a `baton shim exec` whose stdio is the
    /// command's, and which reports on a socket it connects to.
    async fn exec_session(
        &self,
        task: &TaskId,
        command: Vec<String>,
        tty: Option<Winsize>,
        mut input: mpsc::Receiver<ExecInput>,
        events: &mpsc::Sender<ExecEvent>,
    ) -> Result<ExitInfo, String> {
        let dir = &self.exec_sockets;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot make {}: {}", dir.display(), describe_io(&e)))?;
        let path = dir.join(format!("{:016x}.sock", rand::random::<u64>()));
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| format!("cannot listen at {}: {}", path.display(), describe_io(&e)))?;
        let spawned = self
            .shim_command(Stdio::piped())
            .arg(baton_isolate::shim::EXEC_MODE)
            .arg(&path)
            .kill_on_drop(true)
            .spawn();
        let shim = match spawned {
            Ok(shim) => shim,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(format!("cannot run the shim: {}", describe_io(&e)));
            }
        };
        let accepted = tokio::time::timeout(SHIM_CONNECT, listener.accept()).await;
        let _ = std::fs::remove_file(&path);
        let (socket, _) = accepted
            .map_err(|_| "the shim did not connect".to_owned())?
            .map_err(|e| format!("the shim did not connect: {}", describe_io(&e)))?;
        let (read, write) = socket.into_split();
        let mut control = ExecHandle {
            shim,
            to_shim: write,
            from_shim: BufReader::new(read),
            line: Vec::new(),
            pid: 0,
            task: task.0.clone(),
            exit: None,
            output: Output::default(),
            _run_dir: None,
        };
        let request = Request::Exec {
            id: task.0.clone(),
            state_root: self.state_root.clone(),
            command,
            tty: tty.map(|size| (size.rows, size.cols)),
        };
        control.send(&request).await.map_err(|e| e.to_string())?;
        match control.next_response().await.map_err(|e| e.to_string())? {
            Response::Started { pid, .. } => control.pid = pid,
            Response::Failed { message } => return Err(message),
            other => return Err(format!("unexpected answer from the shim: {other:?}")),
        }
        let stdout = control.shim.stdout.take();
        let stderr = control.shim.stderr.take();
        let mut stdin = control.shim.stdin.take();
        let pumps = [
            stdout.map(|out| tokio::spawn(pump(out, events.clone(), ExecEvent::Stdout))),
            stderr.map(|err| tokio::spawn(pump(err, events.clone(), ExecEvent::Stderr))),
        ];
        let mut killed = false;
        let exit = loop {
            tokio::select! {
                response = control.next_response() => match response.map_err(|e| e.to_string())? {
                    Response::Exited { code, signal, .. } => break ExitInfo { code, signal, oom_killed: false },
                    other => tracing::warn!("unexpected shim frame {other:?}"),
                },
                next = input.recv(), if stdin.is_some() => match next {
                    Some(ExecInput::Stdin(bytes)) => {
                        if let Some(pipe) = stdin.as_mut()
                            && pipe.write_all(&bytes).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Some(ExecInput::Resize(size)) => {
                        let resize = Request::Resize { rows: size.rows, cols: size.cols };
                        if let Err(e) = control.send(&resize).await {
                            tracing::debug!(error = %e, "cannot resize the exec's terminal");
                        }
                    }
                    // End of input, or the client is gone: close its stdin.
                    Some(ExecInput::StdinEof) | None => stdin = None,
                },
                () = events.closed(), if !killed => {
                    // Nobody reads any more: end the command.
                    control.signal(libc_signal::SIGKILL).await;
                    killed = true;
                }
            }
        };
        drop(stdin);
        let _ = control.shim.wait().await;
        for pump in pumps.into_iter().flatten() {
            let _ = tokio::time::timeout(OUTPUT_GRACE, pump).await;
        }
        Ok(exit)
    }

    async fn spawn_shim(
        &self,
        request: Request,
        run: &TaskRun,
        run_dir: RunDir,
    ) -> Result<Box<dyn TaskHandle>, AgentError> {
        let failed = |reason: String| AgentError::StartFailed {
            what: "shim".to_owned(),
            reason,
        };
        let (ours, theirs) = StdUnixStream::pair().map_err(|e| failed(describe_io(&e)))?;
        ours.set_nonblocking(true)
            .map_err(|e| failed(describe_io(&e)))?;
        let mut shim = self
            .shim_command(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            // The shim must outlive a dropped handle long enough to see its
            // socket close, then it kills the task itself.
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| failed(format!("{}: {}", self.shim.display(), describe_io(&e))))?;
        let mut output = Output::default();
        if let Some(stdout) = shim.stdout.take() {
            output.copy(stdout, run.log.clone());
        }
        if let Some(stderr) = shim.stderr.take() {
            output.copy(stderr, run.log.clone());
        }
        let socket = UnixStream::from_std(ours).map_err(|e| failed(describe_io(&e)))?;
        let (read, write) = socket.into_split();
        let mut handle = ExecHandle {
            shim,
            to_shim: write,
            from_shim: BufReader::new(read),
            line: Vec::new(),
            pid: 0,
            task: run.task.0.clone(),
            exit: None,
            output,
            _run_dir: Some(run_dir),
        };
        if let Err(e) = handle.send(&request).await {
            handle.abandon().await;
            return Err(failed(e));
        }
        match handle.next_response().await {
            Ok(Response::Started { pid, micros }) => {
                tracing::debug!(pid, micros, "exec task started");
                handle.pid = pid;
                Ok(Box::new(handle))
            }
            Ok(Response::Failed { message }) => {
                handle.abandon().await;
                Err(AgentError::StartFailed {
                    what: "container".to_owned(),
                    reason: message,
                })
            }
            Ok(other) => {
                handle.abandon().await;
                Err(failed(format!("unexpected answer {other:?}")))
            }
            Err(e) => {
                handle.abandon().await;
                Err(e)
            }
        }
    }
}

/// `tasks/<id>/work`, owned by the task's user, 0700.
fn make_work_dir(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    chown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(std::io::Error::from)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A running exec task: its shim, and the socket to it.
#[derive(Debug)]
struct ExecHandle {
    shim: Child,
    to_shim: OwnedWriteHalf,
    from_shim: BufReader<OwnedReadHalf>,
    /// The frame being read (kept across cancelled reads).
    line: Vec<u8>,
    /// Host pid of the task's PID 1.
    pid: u32,
    /// Task id, for logs.
    task: String,
    exit: Option<ExitInfo>,
    output: Output,
    /// The task's tmpfs (bundle, secrets, configs): unmounted when the
    /// handle goes. `None` for a `baton exec` session.
    _run_dir: Option<RunDir>,
}

impl ExecHandle {
    /// The shim's next frame. Cancel-safe: a partly read frame stays in
    /// `line`.
    async fn next_response(&mut self) -> Result<Response, AgentError> {
        let lost = |reason: String| AgentError::Process {
            pid: self.pid,
            reason: format!("shim: {reason}"),
        };
        loop {
            if self.line.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.line);
                return serde_json::from_slice(&line).map_err(|e| lost(e.to_string()));
            }
            if self.line.len() > baton_isolate::protocol::MAX_FRAME {
                return Err(lost("frame too long".to_owned()));
            }
            let read = self
                .from_shim
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|e| lost(describe_io(&e)))?;
            if read == 0 {
                return Err(lost(
                    "exited without reporting how the task ended".to_owned(),
                ));
            }
        }
    }

    /// Writes one frame to the shim.
    async fn send(&mut self, request: &Request) -> Result<(), String> {
        let mut frame = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        frame.push(b'\n');
        self.to_shim
            .write_all(&frame)
            .await
            .map_err(|e| format!("cannot talk to the shim: {}", describe_io(&e)))
    }

    /// Sends `signal` to the watched process; whether the shim got it.
    async fn signal(&mut self, signal: i32) -> bool {
        match self.send(&Request::Signal { signal }).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot reach the task's shim");
                false
            }
        }
    }

    /// After a failed start: the shim exits by itself; reap it.
    async fn abandon(&mut self) {
        let _ = self.to_shim.shutdown().await;
        let _ = self.shim.wait().await;
        self.output.drain(&self.task).await;
    }
}

#[async_trait::async_trait]
impl TaskHandle for ExecHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> Result<ExitInfo, AgentError> {
        let exit = match self.exit {
            Some(exit) => exit,
            None => {
                let exit = loop {
                    match self.next_response().await? {
                        Response::Exited {
                            code,
                            signal,
                            oom_kills,
                        } => {
                            break ExitInfo {
                                code,
                                signal,
                                // The task died of a kill, and the kernel
                                // killed one of its processes for memory.
                                oom_killed: oom_kills > 0
                                    && (signal == Some(9) || code == Some(128 + 9)),
                            };
                        }
                        other => {
                            tracing::warn!(pid = self.pid, "unexpected shim frame {other:?}");
                        }
                    }
                };
                self.exit = Some(exit);
                let _ = self.shim.wait().await;
                exit
            }
        };
        self.output.drain(&self.task).await;
        Ok(exit)
    }

    fn ended(&self) -> bool {
        self.exit.is_some()
    }

    /// Through the shim, which signals the task's PID 1 by its pidfd.
    async fn signal_end(&mut self, force: bool) -> bool {
        let signal = if force {
            libc_signal::SIGKILL
        } else {
            libc_signal::SIGTERM
        };
        self.signal(signal).await
    }
}

/// Copies one output pipe of an exec'd command into events.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    events: mpsc::Sender<ExecEvent>,
    wrap: fn(Vec<u8>) -> ExecEvent,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if events.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Signal numbers sent through the shim.
mod libc_signal {
    pub const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
    pub const SIGKILL: i32 = nix::sys::signal::Signal::SIGKILL as i32;
}
