//! The `raw` driver: the task is a plain child process of the agent, with no
//! isolation beyond an optional user switch.
//!
//! The process leads its own process group, so stopping the task (and cleaning
//! up after it) signals everything it started. It gets a clean environment (the
//! agent's own never leaks into it), `/dev/null` as stdin, and its stdout and
//! stderr go to the task's rotating log.
//!
//! Host ports: the task is told its ports in `BATON_PORT_<NAME>` and where to
//! listen in `BATON_ADDR_<NAME>` (see `ports.rs`). It runs in the host's
//! network namespace and binds them itself: the address is advice that
//! nothing enforces.
//!
//! Only the uid and gid are switched (std also drops the agent's supplementary
//! groups when it sets a uid). Adding the target user's own supplementary groups
//! would need code between fork and exec (`pre_exec`, which is `unsafe`), which
//! belongs in `baton-isolate`.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;

use baton_spec::{DriverKind, FileKind};
use baton_state::{ExitInfo, TaskId};
use nix::sys::signal::Signal;
use nix::unistd::{Uid, User, getegid, geteuid};
use tokio::process::{Child, Command};

use super::files::RunDir;
use super::output::Output;
use super::ports::port_env;
use super::{Driver, TaskHandle, TaskRun, Usage};
use crate::error::{AgentError, describe_io};
use crate::process::signal_group;

/// `PATH` given to every task (Debian's default for root).
pub(super) const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Group given to a numeric uid that has no passwd entry (`nogroup`): never
/// the agent's own group, which would often be root.
const FALLBACK_GID: u32 = 65534;

/// Runs tasks as plain processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawDriver;

impl RawDriver {
    /// The driver.
    pub fn new() -> RawDriver {
        RawDriver
    }
}

/// The identity a task runs as.
struct RunAs {
    /// `Some((uid, gid))` if the process must switch to it.
    switch: Option<(u32, u32)>,
    /// Home directory for `HOME`.
    home: Option<PathBuf>,
}

/// Resolves the spec's `user` (a name or a numeric uid). Refuses a user switch
/// the agent cannot make.
fn resolve_user(user: Option<&str>) -> Result<RunAs, AgentError> {
    let euid = geteuid();
    let Some(spec_user) = user else {
        let home = User::from_uid(euid).ok().flatten().map(|u| u.dir);
        return Ok(RunAs { switch: None, home });
    };
    let (uid, gid, home) = match spec_user.parse::<u32>() {
        Ok(uid) => match User::from_uid(Uid::from_raw(uid)).ok().flatten() {
            Some(entry) => (uid, entry.gid.as_raw(), Some(entry.dir)),
            None => (uid, FALLBACK_GID, None),
        },
        Err(_) => match User::from_name(spec_user).ok().flatten() {
            Some(entry) => (entry.uid.as_raw(), entry.gid.as_raw(), Some(entry.dir)),
            None => {
                return Err(AgentError::UnknownUser {
                    user: spec_user.to_owned(),
                });
            }
        },
    };
    if euid.is_root() {
        Ok(RunAs {
            switch: Some((uid, gid)),
            home,
        })
    } else if uid == euid.as_raw() {
        // Already that user: nothing to switch.
        Ok(RunAs { switch: None, home })
    } else {
        Err(AgentError::NotRoot {
            user: spec_user.to_owned(),
        })
    }
}

/// The task's whole environment: a clean base, the spec's variables, and the
/// `BATON_*` variables last, so a spec cannot forge them.
pub(super) fn task_env(run: &TaskRun, home: &str) -> Result<BTreeMap<String, String>, AgentError> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), TASK_PATH.to_owned());
    env.insert("HOME".to_owned(), home.to_owned());
    env.extend(run.spec.env.clone());
    env.extend(run.files.env_text()?);
    env.insert("BATON_TASK_ID".to_owned(), run.task.0.clone());
    env.insert("BATON_JOB".to_owned(), run.job.clone());
    env.insert("BATON_SLOT".to_owned(), run.slot.clone());
    env.insert("BATON_NODE_ID".to_owned(), run.node.0.clone());
    env.extend(port_env(&run.spec.ports, &run.ports, run.advertise_ip));
    Ok(env)
}

#[async_trait::async_trait]
impl Driver for RawDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Raw
    }

    /// Approximate: the task's main process only, not what it started.
    async fn usage(&self, _task: &TaskId, pid: Option<u32>) -> Option<Usage> {
        crate::process::usage(pid?)
    }

    async fn start(&self, run: TaskRun) -> Result<Box<dyn TaskHandle>, AgentError> {
        let Some((program, args)) = run.spec.command.split_first() else {
            return Err(AgentError::StartFailed {
                what: "command".to_owned(),
                reason: "empty".to_owned(),
            });
        };
        let run_as = resolve_user(run.spec.user.as_deref())?;
        let workdir = run
            .spec
            .workdir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| run.task_dir.clone());
        if let Some(problem) = baton_spec::workdir_problem(&workdir.to_string_lossy()) {
            return Err(AgentError::StartFailed {
                what: format!("workdir {}", workdir.display()),
                reason: problem,
            });
        }
        // Checked here because a failing chdir in the child would be reported
        // under the program's name.
        match tokio::fs::metadata(&workdir).await {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(AgentError::StartFailed {
                    what: format!("workdir {}", workdir.display()),
                    reason: "Not a directory".to_owned(),
                });
            }
            Err(e) => {
                return Err(AgentError::StartFailed {
                    what: format!("workdir {}", workdir.display()),
                    reason: describe_io(&e),
                });
            }
        }
        let home = run_as.home.clone().unwrap_or_else(|| run.task_dir.clone());
        let mut env = task_env(&run, &home.to_string_lossy())?;
        // Its files, in a tmpfs the task's user owns: raw tasks share the
        // host's mounts, so they are told where, not given a path.
        let run_dir = if run.files.files.is_empty() {
            None
        } else {
            let owner = run_as
                .switch
                .unwrap_or_else(|| (geteuid().as_raw(), getegid().as_raw()));
            let dir = RunDir::mount(&run.run_dir, &run.files, Some(owner))?;
            dir.write(&run.files, owner, owner)?;
            for kind in [FileKind::Secret, FileKind::Config] {
                if run.files.files.iter().any(|f| f.kind == kind) {
                    env.insert(
                        kind.dir_env().to_owned(),
                        dir.dir(kind).to_string_lossy().into_owned(),
                    );
                }
            }
            Some(dir)
        };

        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(&env)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: stop signals reach everything it started,
            // and a signal to the agent's group does not reach the task.
            .process_group(0)
            // An agent that dies must not take its tasks with it: a restarted
            // agent finds them through their run records.
            .kill_on_drop(false);
        if let Some((uid, gid)) = run_as.switch {
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().map_err(|e| AgentError::StartFailed {
            what: program.clone(),
            reason: describe_io(&e),
        })?;
        let pid = child.id().ok_or_else(|| AgentError::Process {
            pid: 0,
            reason: "exited before its pid was read".to_owned(),
        })?;
        let mut output = Output::default();
        if let Some(stdout) = child.stdout.take() {
            output.copy(stdout, run.log.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            output.copy(stderr, run.log.clone());
        }
        Ok(Box::new(RawHandle {
            child,
            pid,
            task: run.task.0.clone(),
            exit: None,
            output,
            _run_dir: run_dir,
        }))
    }
}

/// A running raw task.
#[derive(Debug)]
struct RawHandle {
    child: Child,
    pid: u32,
    /// Set once the main process has been reaped.
    exit: Option<ExitInfo>,
    /// Task id, for logs.
    task: String,
    output: Output,
    /// Its secrets' and configs' tmpfs, unmounted when the handle goes.
    _run_dir: Option<RunDir>,
}

#[async_trait::async_trait]
impl TaskHandle for RawHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> Result<ExitInfo, AgentError> {
        let exit = match self.exit {
            Some(exit) => exit,
            None => {
                let status = self.child.wait().await.map_err(|e| AgentError::Process {
                    pid: self.pid,
                    reason: format!("wait: {}", describe_io(&e)),
                })?;
                let exit = ExitInfo {
                    code: status.code(),
                    signal: status.signal(),
                    oom_killed: false,
                };
                self.exit = Some(exit);
                // The task is its process group: whatever it left running in
                // the background ends with it, so nothing outlives the task or
                // keeps its output pipes open.
                if let Err(e) = signal_group(self.pid, Signal::SIGKILL) {
                    tracing::warn!(pid = self.pid, error = %e, "cannot kill task process group");
                }
                exit
            }
        };
        self.output.drain(&self.task).await;
        Ok(exit)
    }

    fn ended(&self) -> bool {
        self.exit.is_some()
    }

    async fn signal_end(&mut self, force: bool) -> bool {
        // Until it is reaped the pid (and so the group id) is still this task's.
        let signal = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        match signal_group(self.pid, signal) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot signal task process group");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use baton_spec::{DriverKind, PortSpec, Resources, TaskSpec};
    use baton_state::{NodeId, TaskId};

    use super::*;
    use crate::log_file::LogWriter;

    #[tokio::test]
    async fn the_task_is_told_its_ports_and_a_spec_cannot_forge_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogWriter::open(dir.path(), 1 << 20).await.expect("log");
        let run = TaskRun {
            task: TaskId("web.0.a".to_owned()),
            job: "web".to_owned(),
            slot: "0".to_owned(),
            node: NodeId("n1".to_owned()),
            spec: TaskSpec {
                driver: DriverKind::Raw,
                command: vec!["/bin/true".to_owned()],
                env: BTreeMap::from([
                    ("BATON_PORT_HTTP".to_owned(), "1".to_owned()),
                    ("APP".to_owned(), "x".to_owned()),
                ]),
                workdir: None,
                user: None,
                resources: Resources::default(),
                kill_timeout: Duration::from_secs(1),
                ports: vec![PortSpec {
                    name: "http".to_owned(),
                    static_port: None,
                    publish: false,
                }],
                image: None,
                capabilities: Vec::new(),
                pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
                secrets: Vec::new(),
                env_secrets: std::collections::BTreeMap::new(),
                configs: Vec::new(),
            },
            task_dir: dir.path().to_owned(),
            log,
            ports: BTreeMap::from([("http".to_owned(), 20_123)]),
            advertise_ip: None,
            files: super::super::files::TaskFiles {
                files: Vec::new(),
                env: vec![(
                    "DB_PASSWORD".to_owned(),
                    baton_state::SecretBytes::new(b"hunter2".to_vec()),
                )],
            },
            run_dir: std::path::PathBuf::from("/nonexistent/run"),
        };
        let env = task_env(&run, "/home/x").expect("env");
        assert_eq!(env["DB_PASSWORD"], "hunter2");
        assert_eq!(env["BATON_PORT_HTTP"], "20123");
        assert_eq!(env["BATON_ADDR_HTTP"], "127.0.0.1:20123");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["BATON_NODE_ID"], "n1");
    }

    #[tokio::test]
    async fn a_workdir_in_proc_is_refused_even_if_the_manager_sent_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogWriter::open(dir.path(), 1 << 20).await.expect("log");
        let run = TaskRun {
            task: TaskId("web.0.a".to_owned()),
            job: "web".to_owned(),
            slot: "0".to_owned(),
            node: NodeId("n1".to_owned()),
            spec: TaskSpec {
                driver: DriverKind::Raw,
                command: vec!["/bin/true".to_owned()],
                env: BTreeMap::new(),
                workdir: Some("/proc/self/cwd".to_owned()),
                user: None,
                resources: Resources::default(),
                kill_timeout: Duration::from_secs(1),
                ports: Vec::new(),
                image: None,
                capabilities: Vec::new(),
                pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
                secrets: Vec::new(),
                env_secrets: std::collections::BTreeMap::new(),
                configs: Vec::new(),
            },
            task_dir: dir.path().to_owned(),
            log,
            ports: BTreeMap::new(),
            advertise_ip: None,
            files: Default::default(),
            run_dir: std::path::PathBuf::from("/nonexistent/run"),
        };
        let err = match RawDriver::new().start(run).await {
            Ok(_) => panic!("started in /proc"),
            Err(err) => err,
        };
        assert!(err.to_string().contains("kernel filesystem"), "{err}");
    }
}
