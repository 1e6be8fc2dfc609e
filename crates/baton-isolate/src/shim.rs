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
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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

/// The argument that makes a shim run a command in a running container.
pub const EXEC_MODE: &str = "exec";

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
        [mode, path] if mode == EXEC_MODE => UnixStream::connect(path),
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
            tty,
        })) => return exec(&id, &state_root, command, tty, &mut input, &mut output),
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
    let ended = supervise(&mut input, &pidfd, agent_here, None);
    let version = cgroup::version().ok();
    let oom_kills = version.map_or(0, |v| cgroup::oom_kills(v, &cgroup_path));
    // Force: kills whatever the task left behind, removes its cgroups and the
    // runtime's state.
    if let Err(e) = container.delete(true) {
        eprintln!("baton shim: deleting container {id}: {e}");
    }
    // The runtime removes each hierarchy's directory once; one whose last
    // process was still being reaped stays behind, empty. Sweep them.
    if let Some(version) = version
        && let Err(e) = cgroup::kill_and_remove(version, &cgroup_path)
    {
        eprintln!("baton shim: removing cgroup {cgroup_path}: {e}");
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
    tty: Option<(u16, u16)>,
    input: &mut BufReader<UnixStream>,
    output: &mut UnixStream,
) -> ExitCode {
    let (pid, pty) = match enter(id, state_root, command, tty) {
        Ok(entered) => entered,
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
    let (code, signal) = supervise(input, &pidfd, agent_here, pty.as_ref());
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

/// Starts `command` in the container's namespaces and cgroup, as the
/// task's own process (its user, capabilities, environment, working
/// directory) with the command as argv; on a pseudo-terminal of `tty`'s size
/// (rows, columns) when asked, whose master end is returned with the pid.
fn enter(
    id: &str,
    state_root: &Path,
    command: Vec<String>,
    tty: Option<(u16, u16)>,
) -> Result<(i32, Option<OwnedFd>), String> {
    if !single_threaded() {
        return Err("baton shim is not single-threaded; refusing to call the runtime".to_owned());
    }
    let container = Container::load(state_root.join(id))
        .map_err(|e| format!("task {id} has no running container here: {e}"))?;
    let spec = oci_spec::runtime::Spec::load(container.bundle().join("config.json"))
        .map_err(|e| format!("cannot read the task's spec: {e}"))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or("the task's spec has no process")?;
    process
        .set_args(Some(command))
        .set_terminal(Some(tty.is_some()))
        .set_no_new_privileges(Some(true));
    // The runtime builds a joining process from namespaces and the cgroup
    // only: the task's seccomp filter is loaded here, from its own spec.
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone())
        .ok_or("the task's spec has no seccomp filter")?;
    // Private files of this session, next to the runtime's state (root only).
    let private = |what: &str| state_root.join(format!(".{id}.{what}.{}", std::process::id()));
    let process_file = private("process.json");
    let console = private("console.sock");
    let written = serde_json::to_vec(&process)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&process_file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &json))
                .map_err(|e| format!("cannot write {}: {e}", process_file.display()))
        });
    let listener = match (&written, tty) {
        (Ok(()), Some(_)) => Some(
            std::os::unix::net::UnixListener::bind(&console)
                .map_err(|e| format!("cannot make a console socket: {e}"))?,
        ),
        _ => None,
    };
    let built = written.and_then(|()| {
        let dup = |fd: io::Result<OwnedFd>| fd.map_err(|e| format!("cannot pass stdio: {e}"));
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_executor(Confined { seccomp })
            .with_root_path(state_root)
            .map_err(|e| format!("runtime: {e}"))?;
        if tty.is_some() {
            builder = builder.with_console_socket(Some(&console));
        } else {
            builder = builder
                .with_stdin(dup(io::stdin().as_fd().try_clone_to_owned())?)
                .with_stdout(dup(io::stdout().as_fd().try_clone_to_owned())?)
                .with_stderr(dup(io::stderr().as_fd().try_clone_to_owned())?);
        }
        builder
            .as_tenant()
            .with_process(Some(&process_file))
            .with_detach(true)
            .build()
            .map_err(|e| format!("cannot run the command in task {id}: {e}"))
    });
    let _ = fs::remove_file(&process_file);
    let _ = fs::remove_file(&console);
    let pid = built?;
    let pty = match (listener, tty) {
        (Some(listener), Some((rows, cols))) => {
            let master = receive_pty(&listener)?;
            let _ = rustix::termios::tcsetwinsize(&master, winsize(rows, cols));
            Some(master)
        }
        _ => None,
    };
    Ok((pid.as_raw(), pty))
}

/// The pseudo-terminal's master end, which the runtime sends over the
/// console socket once the process has it as its controlling terminal.
fn receive_pty(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("the runtime sent no terminal: {e}"))?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 4096];
    recvmsg(
        &conn,
        &mut [io::IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("the runtime sent no terminal: {e}"))?;
    control
        .drain()
        .find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| "the runtime sent no terminal".to_owned())
}

fn winsize(rows: u16, cols: u16) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
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

/// Waits until the watched process exits, relaying signals (and terminal
/// resizes) from the agent, and with `pty`, copying between our stdio and
/// the pseudo-terminal. If the agent goes away, kills the process. Returns
/// (exit code, signal).
fn supervise(
    input: &mut BufReader<UnixStream>,
    pidfd: &OwnedFd,
    mut agent_here: bool,
    pty: Option<&OwnedFd>,
) -> (Option<i32>, Option<i32>) {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut stdin_open = pty.is_some();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let mut fds = vec![PollFd::new(pidfd, PollFlags::IN)];
        if agent_here {
            fds.push(PollFd::new(input.get_ref(), PollFlags::IN));
        }
        if let Some(master) = pty {
            fds.push(PollFd::new(master, PollFlags::IN));
            if stdin_open {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
            }
        }
        if let Err(e) = poll(&mut fds, None) {
            if e == rustix::io::Errno::INTR {
                continue;
            }
            eprintln!("baton shim: poll: {e}");
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        let mut next = 1;
        let socket_ready = agent_here && ready[next];
        if agent_here {
            next += 1;
        }
        if let Some(master) = pty {
            if ready[next] {
                // The output first: what the command wrote before it ended.
                match rustix::io::read(master, &mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = rustix::io::write(&stdout, &buf[..n]);
                    }
                    // EIO: every process holding the terminal has ended.
                    _ => stdin_open = false,
                }
            }
            if stdin_open && ready.get(next + 1).copied().unwrap_or(false) {
                match rustix::io::read(&stdin, &mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = rustix::io::write(master, &buf[..n]);
                    }
                    _ => stdin_open = false,
                }
            }
        }
        if ready[0] {
            match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
                Ok(Some(status)) => {
                    if let Some(master) = pty {
                        drain(master, &stdout, &mut buf);
                    }
                    return (status.exit_status(), status.terminating_signal());
                }
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
                    Ok(Some(Request::Resize { rows, cols })) => {
                        if let Some(master) = pty {
                            let _ = rustix::termios::tcsetwinsize(master, winsize(rows, cols));
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

/// What is left on the terminal once the command has ended.
fn drain(master: &OwnedFd, to: &io::Stdout, buf: &mut [u8]) {
    let _ = rustix::fs::fcntl_setfl(master, rustix::fs::OFlags::NONBLOCK);
    while let Ok(n) = rustix::io::read(master, &mut *buf) {
        if n == 0 {
            break;
        }
        let _ = rustix::io::write(to, &buf[..n]);
    }
}
