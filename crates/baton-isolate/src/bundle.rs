//! The OCI runtime spec of an isolated task: what it sees, as whom it runs,
//! and what it may use. Pure: written as the `config.json` document the OCI
//! runtime spec describes, so it reads like one, and tested field by field.
//!
//! The task's root is a read-only skeleton directory ([`HostLayout::skel`])
//! holding only mount points and the host's top-level symlinks (Debian's
//! `/bin -> usr/bin`). On it, read-only binds of the host's `/usr` and `/etc`
//! (so host programs run, and nothing else of the host shows: no `/home`,
//! `/root`, `/var`, `/run`, no agent data), a fresh `/proc` with the kernel's
//! sensitive files masked, a minimal `/dev`, no `/sys`, a `/tmp` tmpfs, and
//! the task's own writable `/work` directory. Its own pid, mount, uts, ipc and
//! cgroup namespaces; the host's network (the ports the cluster gave it).
//!
//! The process runs as an unprivileged uid, with no capabilities unless the
//! spec adds some (then in every set, so a non-root process holds them),
//! `no_new_privs`, and the [`seccomp`](crate::seccomp) filter. PID 1 is
//! `tini` when the host has it, so that SIGTERM reaches the task (the kernel
//! drops signals a namespace's init has no handler for) and zombies are reaped.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

/// One task, as the exec driver runs it.
#[derive(Clone, PartialEq, Eq)]
pub struct IsolatedTask {
    /// Task id (the container id and cgroup name).
    pub id: String,
    /// Host name inside (the job name).
    pub hostname: String,
    /// argv.
    pub args: Vec<String>,
    /// Environment, `NAME=value`. May hold secrets: never printed.
    pub env: Vec<String>,
    /// Working directory inside.
    pub cwd: String,
    /// uid and gid to run as.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Capabilities added to the empty set (upper-case, no `CAP_` prefix).
    pub capabilities: Vec<String>,
    /// Memory limit in bytes (also the limit of memory plus swap).
    pub memory_bytes: u64,
    /// CPU reservation in millicores (becomes the cgroup's CPU weight).
    pub cpu_millis: u64,
    /// Most processes and threads at once.
    pub pids_limit: u32,
    /// The host directory mounted writable at `/work`.
    pub work_dir: PathBuf,
    /// Host files (the task's secrets and configs, in a tmpfs) mounted
    /// read-only at a path under `/run`: (source, target).
    pub files: Vec<(PathBuf, String)>,
}

// By hand: the environment may hold secrets.
impl std::fmt::Debug for IsolatedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsolatedTask")
            .field("id", &self.id)
            .field("args", &self.args)
            .field("env_len", &self.env.len())
            .field("cwd", &self.cwd)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// Where things are on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLayout {
    /// The read-only skeleton used as every task's root.
    pub skel: PathBuf,
    /// Cgroup under which each task gets `<parent>/<task id>`, e.g. `/baton`.
    pub cgroup_parent: String,
    /// Host directories bound read-only at the same path.
    pub ro_binds: Vec<PathBuf>,
    /// `tini` (static) on the host, if present: the task's PID 1.
    pub init: Option<PathBuf>,
}

/// Where the task's writable directory is mounted.
pub const WORK_MOUNT: &str = "/work";

/// Where a task's own tmpfs `/run` is, under which its files are mounted.
pub const RUN_MOUNT: &str = "/run";

/// The cgroup path of a task, relative to each hierarchy's root.
pub fn cgroup_path(layout: &HostLayout, task_id: &str) -> String {
    format!("{}/{task_id}", layout.cgroup_parent.trim_end_matches('/'))
}

/// Kernel files a task must not read (as runc and Docker mask them).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
];

/// Kernel files a task may read but not write.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes every task gets (c major:minor), and nothing else.
const DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The CPU weight (`cpu.shares`) for a reservation: 1024 per core, as Docker
/// and Kubernetes map it, at least the kernel's minimum of 2.
pub fn cpu_shares(cpu_millis: u64) -> u64 {
    (cpu_millis.saturating_mul(1024) / 1000).max(2)
}

/// The runtime spec of `task` on this host.
pub fn oci_spec(task: &IsolatedTask, layout: &HostLayout) -> Result<Spec, serde_json::Error> {
    serde_json::from_value(config(task, layout))
}

fn config(task: &IsolatedTask, layout: &HostLayout) -> Value {
    let mut args = Vec::new();
    if let Some(init) = &layout.init {
        // -g: signals go to the task's whole process group.
        args.extend([init.display().to_string(), "-g".to_owned(), "--".to_owned()]);
    }
    args.extend(task.args.iter().cloned());
    let caps: Vec<String> = task
        .capabilities
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let ro_bind = |path: &PathBuf| {
        json!({
            "destination": path,
            "type": "bind",
            "source": path,
            "options": ["rbind", "ro", "nosuid", "nodev"],
        })
    };
    let mut mounts: Vec<Value> = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    mounts.extend(layout.ro_binds.iter().map(ro_bind));
    mounts.push(json!({
        "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        // Files in a tmpfs are charged to the task's memory cgroup, so the
        // memory limit bounds it too.
        "options": ["nosuid", "nodev", "mode=1777", format!("size={}", task.memory_bytes)],
    }));
    mounts.push(json!({
        "destination": WORK_MOUNT, "type": "bind", "source": task.work_dir,
        "options": ["rbind", "rw", "nosuid", "nodev"],
    }));
    // The task's own /run, where its secrets and configs are mounted (the
    // runtime makes their mount points in it, not in the shared skeleton).
    mounts.push(json!({
        "destination": RUN_MOUNT, "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "noexec", "mode=755", format!("size={}", task.memory_bytes)],
    }));
    mounts.extend(task.files.iter().map(|(source, target)| {
        json!({
            "destination": target, "type": "bind", "source": source,
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        })
    }));
    let mut devices: Vec<Value> = vec![json!({"allow": false, "access": "rwm"})];
    devices.extend(DEVICES.iter().map(|(_, major, minor)| {
        json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"})
    }));
    // /dev/ptmx and the pseudo-terminals of the task's own devpts.
    devices.push(json!({"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"}));
    devices.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": layout.skel, "readonly": true},
        "hostname": task.hostname,
        "process": {
            "terminal": false,
            "user": {"uid": task.uid, "gid": task.gid, "additionalGids": []},
            "args": args,
            "env": task.env,
            "cwd": task.cwd,
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": caps, "ambient": caps,
            },
            "rlimits": [{"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
        },
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                {"type": "ipc"}, {"type": "cgroup"},
            ],
            "cgroupsPath": cgroup_path(layout, &task.id),
            "resources": {
                "devices": devices,
                "memory": {"limit": task.memory_bytes, "swap": task.memory_bytes},
                "cpu": {"shares": cpu_shares(task.cpu_millis)},
                "pids": {"limit": task.pids_limit},
            },
            "rootfsPropagation": "private",
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": crate::seccomp::profile(&task.capabilities),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> IsolatedTask {
        IsolatedTask {
            id: "web.0.abc".to_owned(),
            hostname: "web".to_owned(),
            args: vec!["/bin/sh".to_owned(), "-c".to_owned(), "echo hi".to_owned()],
            env: vec!["PATH=/usr/bin:/bin".to_owned(), "SECRET=s3cr3t".to_owned()],
            cwd: "/work".to_owned(),
            uid: 65534,
            gid: 65534,
            capabilities: Vec::new(),
            memory_bytes: 64 << 20,
            cpu_millis: 250,
            pids_limit: 64,
            work_dir: PathBuf::from("/var/lib/baton/tasks/web.0.abc/work"),
            files: vec![(
                PathBuf::from("/var/lib/baton/run/web.0.abc/secrets/db"),
                "/run/secrets/db".to_owned(),
            )],
        }
    }

    fn layout() -> HostLayout {
        HostLayout {
            skel: PathBuf::from("/var/lib/baton/isolate/skel"),
            cgroup_parent: "/baton".to_owned(),
            ro_binds: vec![PathBuf::from("/usr"), PathBuf::from("/etc")],
            init: Some(PathBuf::from("/usr/bin/tini-static")),
        }
    }

    #[test]
    fn a_task_is_confined_by_default() {
        let spec = oci_spec(&task(), &layout()).expect("valid spec");
        let root = spec.root().as_ref().expect("root");
        assert!(root.readonly().unwrap_or(false));
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.user().uid(), 65534);
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(
            process.args().as_deref(),
            Some(
                &[
                    "/usr/bin/tini-static",
                    "-g",
                    "--",
                    "/bin/sh",
                    "-c",
                    "echo hi"
                ]
                .map(str::to_owned)[..]
            )
        );
        let caps = process.capabilities().as_ref().expect("capabilities");
        assert!(caps.effective().as_ref().expect("set").is_empty());
        assert!(caps.bounding().as_ref().expect("set").is_empty());
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some("/baton/web.0.abc".as_ref())
        );
        let kinds: Vec<String> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ().to_string())
            .collect();
        assert_eq!(kinds, ["pid", "mnt", "uts", "ipc", "cgroup"]);
        let resources = linux.resources().as_ref().expect("resources");
        let memory = resources.memory().as_ref().expect("memory");
        assert_eq!(memory.limit(), Some(64 << 20));
        assert_eq!(memory.swap(), Some(64 << 20));
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(64));
        assert_eq!(resources.cpu().as_ref().and_then(|c| c.shares()), Some(256));
        assert!(linux.seccomp().is_some());
        assert!(
            linux
                .masked_paths()
                .iter()
                .flatten()
                .any(|p| p == "/proc/kcore")
        );
    }

    #[test]
    fn only_the_allow_listed_host_directories_are_visible_and_only_work_tmp_and_run_are_writable() {
        let spec = oci_spec(&task(), &layout()).expect("valid spec");
        let mounts = spec.mounts().as_ref().expect("mounts");
        let binds: Vec<_> = mounts
            .iter()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .map(|m| {
                let options = m.options().clone().unwrap_or_default();
                (
                    m.destination().display().to_string(),
                    options.contains(&"ro".to_owned()),
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                ("/usr".to_owned(), true),
                ("/etc".to_owned(), true),
                ("/work".to_owned(), false),
                ("/run/secrets/db".to_owned(), true)
            ]
        );
        // The secret's mount point is made in the task's own /run, mounted first.
        let destinations: Vec<String> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        let run = destinations.iter().position(|d| d == "/run").expect("/run");
        let secret = destinations
            .iter()
            .position(|d| d == "/run/secrets/db")
            .expect("secret");
        assert!(run < secret, "{destinations:?}");
        assert_eq!(mounts[run].typ().as_deref(), Some("tmpfs"));
        assert!(!mounts.iter().any(|m| m.destination().starts_with("/sys")));
        let tmp = mounts
            .iter()
            .find(|m| m.destination().as_os_str() == "/tmp")
            .expect("/tmp");
        assert!(
            tmp.options()
                .iter()
                .flatten()
                .any(|o| o == &format!("size={}", 64 << 20))
        );
    }

    #[test]
    fn added_capabilities_are_held_by_the_unprivileged_process() {
        let mut t = task();
        t.capabilities = vec!["NET_BIND_SERVICE".to_owned()];
        let spec = oci_spec(&t, &layout()).expect("valid spec");
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("capabilities");
        for set in [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.ambient(),
        ] {
            let names: Vec<String> = set.iter().flatten().map(|c| c.to_string()).collect();
            assert_eq!(names, ["NET_BIND_SERVICE"]);
        }
    }

    #[test]
    fn without_tini_the_command_is_pid_1() {
        let mut l = layout();
        l.init = None;
        let spec = oci_spec(&task(), &l).expect("valid spec");
        let args = spec.process().as_ref().and_then(|p| p.args().clone());
        assert_eq!(args.expect("args")[0], "/bin/sh");
    }

    #[test]
    fn debug_output_never_shows_the_environment() {
        let text = format!("{:?}", task());
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn cpu_shares_follow_the_reservation() {
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(1), 2);
    }
}
