//! `baton shim`: the single-threaded process that creates one task's
//! container with youki's libcontainer, stays its parent, and reports how it
//! ended. One per running `exec` task, like containerd's shims and podman's
//! conmon; it sleeps in `poll` (a few MiB, text pages shared with the agent).
//!
//! Why a process of its own: the runtime `clone()`s its caller and runs Rust
//! in the child, which is only sound in a single-threaded process. The shim
//! is the `baton` binary dispatched before any runtime starts, and it checks
//! that it is alone before calling the runtime.
//!
//! Why it stays the parent: with libcontainer, the task's PID 1 is a child of
//! the process that created it. Waiting on it through a pidfd here means the
//! exit status, the OOM count and the cleanup all come from the one process
//! that can observe them without racing pid reuse.
//!
//! File descriptors: the agent starts the shim with the socket on fd 0 and
//! the task's output pipes on fds 1 and 2, nothing else (Rust opens every
//! other descriptor close-on-exec). The task's init gets `/dev/null` and
//! those two pipes; libcontainer marks every other descriptor close-on-exec
//! before the task's `execve`, so nothing of the shim reaches the task.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, pidfd_open, pidfd_send_signal, waitid,
};

use crate::cgroup;
use crate::protocol::{Request, Response, read_frame, write_frame};

/// Runs the shim: `baton shim` has the agent's socket on its stdin and
/// creates a task's container; `baton shim exec SOCKET` connects to the
/// agent's socket at that path and runs a command in a running container,
/// with its own stdio as the command's.
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    let socket = match args {
        [] => io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map(UnixStream::from),
        [mode, path] if mode == "exec" => UnixStream::connect(path),
        _ => {
            eprintln!("baton shim: started by the agent only");
            return ExitCode::from(2);
        }
    };
    let Ok(socket) = socket else {
        eprintln!("baton shim: no socket to the agent");
        return ExitCode::from(2);
    };
    let mut output = match socket.try_clone() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("baton shim: {e}");
            return ExitCode::from(2);
        }
    };
    let mut input = BufReader::new(socket);
    let request = match read_frame::<Request>(&mut input) {
        Ok(Some(Request::Create {
            id,
            state_root,
            bundle,
            spec,
        })) => (id, state_root, bundle, spec),
        Ok(Some(Request::Exec {
            id,
            state_root,
            command,
        })) => return exec(&id, &state_root, command, &mut input, &mut output),
        Ok(_) => {
            eprintln!("baton shim: expected a create or exec request");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("baton shim: reading the request: {e}");
            return ExitCode::from(2);
        }
    };
    let (id, state_root, bundle, spec) = request;
    let started = Instant::now();
    let cgroup_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut container = match create(&id, &state_root, &bundle, &spec) {
        Ok(container) => container,
        Err(message) => {
            let _ = write_frame(&mut output, &Response::Failed { message });
            return ExitCode::from(1);
        }
    };
    let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
    let pidfd = match Pid::from_raw(pid).map(|p| pidfd_open(p, PidfdFlags::empty())) {
        Some(Ok(fd)) => fd,
        other => {
            let message = match other {
                Some(Err(e)) => format!("cannot watch the task's process {pid}: {e}"),
                _ => "the runtime reported no process for the task".to_owned(),
            };
            let _ = container.delete(true);
            let _ = write_frame(&mut output, &Response::Failed { message });
            return ExitCode::from(1);
        }
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let pid = u32::try_from(pid).unwrap_or(0);
    let agent_here = write_frame(&mut output, &Response::Started { pid, micros }).is_ok();
    let ended = supervise(&mut input, &pidfd, agent_here);
    let oom_kills = cgroup::version()
        .map(|v| cgroup::oom_kills(v, &cgroup_path))
        .unwrap_or(0);
    // Force: kills whatever the task left behind, removes its cgroups and the
    // runtime's state.
    if let Err(e) = container.delete(true) {
        eprintln!("baton shim: deleting container {id}: {e}");
    }
    let _ = fs::remove_dir_all(&bundle);
    let (code, signal) = ended;
    let _ = write_frame(
        &mut output,
        &Response::Exited {
            code,
            signal,
            oom_kills,
        },
    );
    ExitCode::SUCCESS
}

/// `baton exec`: runs `command` in the running container `id`, as its task's
/// user with its capabilities, no new privileges and its seccomp filter,
/// waits for it and reports how it ended.
fn exec(
    id: &str,
    state_root: &Path,
    command: Vec<String>,
    input: &mut BufReader<UnixStream>,
    output: &mut UnixStream,
) -> ExitCode {
    let pid = match enter(id, state_root, command) {
        Ok(pid) => pid,
        Err(message) => {
            let _ = write_frame(output, &Response::Failed { message });
            return ExitCode::from(1);
        }
    };
    let pidfd = match Pid::from_raw(pid).map(|p| pidfd_open(p, PidfdFlags::empty())) {
        Some(Ok(fd)) => fd,
        _ => {
            let message = format!("cannot watch the command's process {pid}");
            let _ = write_frame(output, &Response::Failed { message });
            return ExitCode::from(1);
        }
    };
    let pid = u32::try_from(pid).unwrap_or(0);
    let agent_here = write_frame(output, &Response::Started { pid, micros: 0 }).is_ok();
    let (code, signal) = supervise(input, &pidfd, agent_here);
    let _ = write_frame(
        output,
        &Response::Exited {
            code,
            signal,
            oom_kills: 0,
        },
    );
    ExitCode::SUCCESS
}

/// Starts `command` in the container's namespaces and cgroup; its pid.
fn enter(id: &str, state_root: &Path, command: Vec<String>) -> Result<i32, String> {
    if !single_threaded() {
        return Err("baton shim is not single-threaded; refusing to call the runtime".to_owned());
    }
    let container = Container::load(state_root.join(id))
        .map_err(|e| format!("task {id} has no running container here: {e}"))?;
    let spec = oci_spec::runtime::Spec::load(container.bundle().join("config.json"))
        .map_err(|e| format!("cannot read the task's spec: {e}"))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or("the task's spec has no process")?;
    // The runtime builds a joining process from namespaces and the cgroup
    // only: the task's confinement is applied here from its own spec.
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone())
        .ok_or("the task's spec has no seccomp filter")?;
    let dup = |fd: io::Result<OwnedFd>| fd.map_err(|e| format!("cannot pass stdio: {e}"));
    let stdin = dup(io::stdin().as_fd().try_clone_to_owned())?;
    let stdout = dup(io::stdout().as_fd().try_clone_to_owned())?;
    let stderr = dup(io::stderr().as_fd().try_clone_to_owned())?;
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_executor(Confined { seccomp })
        .with_root_path(state_root)
        .map_err(|e| format!("runtime: {e}"))?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_tenant()
        .with_container_args(command)
        .with_cwd(Some(process.cwd()))
        .with_user(Some(process.user().uid()))
        .with_group(Some(process.user().gid()))
        .with_no_new_privs(true)
        .with_detach(true)
        .build()
        .map_err(|e| format!("cannot run the command in task {id}: {e}"))?;
    Ok(pid.as_raw())
}

/// Loads the task's seccomp filter in the joining process, just before it
/// executes the command (no new privileges is set by then, so an
/// unprivileged process may load it).
#[derive(Clone)]
struct Confined {
    seccomp: oci_spec::runtime::LinuxSeccomp,
}

impl Executor for Confined {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        libcontainer::seccomp::initialize_seccomp(&self.seccomp)
            .map_err(|e| ExecutorError::Other(format!("seccomp: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Whether this process has exactly one thread (from `/proc/self/status`).
fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().eq(["Threads:", "1"]))
        })
        .unwrap_or(false)
}

/// Writes the bundle, creates and starts the container, removes the bundle.
fn create(
    id: &str,
    state_root: &Path,
    bundle: &Path,
    spec: &oci_spec::runtime::Spec,
) -> Result<Container, String> {
    if !single_threaded() {
        return Err("baton shim is not single-threaded; refusing to call the runtime".to_owned());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(bundle)
        .map_err(|e| format!("cannot create the bundle {}: {e}", bundle.display()))?;
    let result = (|| {
        spec.save(bundle.join("config.json"))
            .map_err(|e| format!("cannot write the bundle: {e}"))?;
        let dup =
            |fd: io::Result<OwnedFd>| fd.map_err(|e| format!("cannot pass the task's output: {e}"));
        let stdout = dup(io::stdout().as_fd().try_clone_to_owned())?;
        let stderr = dup(io::stderr().as_fd().try_clone_to_owned())?;
        let stdin = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
        let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_executor(DefaultExecutor {})
            .with_root_path(state_root)
            .and_then(|b| b.validate_id())
            .map_err(|e| format!("runtime: {e}"))?
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| format!("cannot create the container: {e}"))?;
        if let Err(e) = container.start() {
            let _ = container.delete(true);
            return Err(format!("cannot start the container: {e}"));
        }
        Ok(container)
    })();
    // `baton exec` reads the running task's spec from the bundle: it stays
    // (root-only) until the task ends.
    if result.is_err() {
        let _ = fs::remove_dir_all(bundle);
    }
    result
}

/// Waits until the task's PID 1 exits, relaying signals from the agent. If
/// the agent goes away, kills the task. Returns (exit code, signal).
fn supervise(
    input: &mut BufReader<UnixStream>,
    pidfd: &OwnedFd,
    mut agent_here: bool,
) -> (Option<i32>, Option<i32>) {
    loop {
        let (socket_ready, task_ready) = {
            let mut fds = vec![PollFd::new(pidfd, PollFlags::IN)];
            if agent_here {
                fds.push(PollFd::new(input.get_ref(), PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) => (
                    fds.get(1).is_some_and(|fd| !fd.revents().is_empty()),
                    !fds[0].revents().is_empty(),
                ),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("baton shim: poll: {e}");
                    (false, true)
                }
            }
        };
        if task_ready {
            match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
                Ok(Some(status)) => return (status.exit_status(), status.terminating_signal()),
                Ok(None) | Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("baton shim: waitid: {e}");
                    return (None, None);
                }
            }
        }
        if socket_ready {
            // Every buffered frame, so none waits behind a poll that will
            // not wake for it.
            loop {
                match read_frame::<Request>(input) {
                    Ok(Some(Request::Signal { signal })) => {
                        if let Some(sig) = Signal::from_named_raw(signal) {
                            let _ = pidfd_send_signal(pidfd, sig);
                        }
                    }
                    Ok(Some(Request::Create { .. } | Request::Exec { .. })) => {}
                    Ok(None) | Err(_) => {
                        agent_here = false;
                        let _ = pidfd_send_signal(pidfd, Signal::KILL);
                        break;
                    }
                }
                if input.buffer().is_empty() {
                    break;
                }
            }
        }
    }
}
