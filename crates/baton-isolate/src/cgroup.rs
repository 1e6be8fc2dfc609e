//! Reading a task's cgroup (usage, OOM kills), killing what is left in it,
//! and probing whether this host can give tasks cgroups at all.
//!
//! cgroup v1 (each controller its own hierarchy; what these machines have) or
//! v2 (one unified hierarchy), as libcgroups detects. A "hybrid" host (v1
//! controllers plus an empty v2 mount) counts as v1, as for the runtime.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupSetup, get_cgroup_setup};
use libcgroups::v1::ControllerType;
use libcgroups::v1::util::get_subsystem_mount_point;
use rustix::process::{Pid, Signal, kill_process};

/// Where v2's single hierarchy is mounted.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";

/// A task's resource use at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the task started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, without the page cache that could be dropped (as
    /// `docker stats` counts it).
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
}

/// Which cgroup version tasks get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The cgroup version of this host.
pub fn version() -> Result<Version, String> {
    match get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => Ok(Version::V2),
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => Ok(Version::V1),
        Err(e) => Err(format!("cannot tell the cgroup version: {e}")),
    }
}

/// The directory of `path` (e.g. `/baton/<task>`) in the hierarchy holding
/// `controller` (v1), or in the unified hierarchy (v2).
fn dir(version: Version, controller: ControllerType, path: &str) -> Option<PathBuf> {
    let root = match version {
        Version::V2 => PathBuf::from(UNIFIED_ROOT),
        Version::V1 => get_subsystem_mount_point(&controller).ok()?,
    };
    Some(root.join(path.trim_start_matches('/')))
}

fn read(version: Version, controller: ControllerType, path: &str, file: &str) -> Option<String> {
    fs::read_to_string(dir(version, controller, path)?.join(file)).ok()
}

/// The value of `key` in a flat keyed file (`memory.stat`, `cpu.stat`,
/// `memory.events`, `memory.oom_control`).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// How many processes of the cgroup the kernel killed for memory.
pub fn oom_kills(version: Version, path: &str) -> u64 {
    let file = match version {
        Version::V1 => "memory.oom_control",
        Version::V2 => "memory.events",
    };
    read(version, ControllerType::Memory, path, file)
        .and_then(|text| keyed(&text, "oom_kill"))
        .unwrap_or(0)
}

/// What the task at `path` uses now; `None` once its cgroup is gone.
pub fn usage(version: Version, path: &str) -> Option<Usage> {
    let number = |c, file| -> Option<u64> { read(version, c, path, file)?.trim().parse().ok() };
    match version {
        Version::V1 => {
            let stat = read(version, ControllerType::Memory, path, "memory.stat")?;
            let used = number(ControllerType::Memory, "memory.usage_in_bytes")?;
            Some(Usage {
                cpu_ns: number(ControllerType::CpuAcct, "cpuacct.usage")?,
                memory_bytes: used.saturating_sub(keyed(&stat, "total_inactive_file").unwrap_or(0)),
                pids: number(ControllerType::Pids, "pids.current").unwrap_or(0),
            })
        }
        Version::V2 => {
            let stat = read(version, ControllerType::Memory, path, "memory.stat")?;
            let cpu = read(version, ControllerType::Cpu, path, "cpu.stat")?;
            let used = number(ControllerType::Memory, "memory.current")?;
            Some(Usage {
                cpu_ns: keyed(&cpu, "usage_usec")?.saturating_mul(1000),
                memory_bytes: used.saturating_sub(keyed(&stat, "inactive_file").unwrap_or(0)),
                pids: number(ControllerType::Pids, "pids.current").unwrap_or(0),
            })
        }
    }
}

/// Controllers a task's cgroup is made in (v1).
const V1_CONTROLLERS: [ControllerType; 6] = [
    ControllerType::Memory,
    ControllerType::Pids,
    ControllerType::Cpu,
    ControllerType::CpuAcct,
    ControllerType::Devices,
    ControllerType::Freezer,
];

/// The directories of a task's cgroup, one per hierarchy.
fn dirs(version: Version, path: &str) -> Vec<PathBuf> {
    match version {
        Version::V2 => dir(version, ControllerType::Memory, path)
            .into_iter()
            .collect(),
        Version::V1 => V1_CONTROLLERS
            .iter()
            .filter_map(|c| dir(version, *c, path))
            .collect(),
    }
}

/// Kills every process left in the cgroup at `path` and removes it: what a
/// restarted agent does with the tasks of its previous life. Safe against pid
/// reuse: a pid listed in the cgroup is a process of that cgroup. Returns
/// whether the cgroup existed.
pub fn kill_and_remove(version: Version, path: &str) -> io::Result<bool> {
    let dirs: Vec<PathBuf> = dirs(version, path)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    if dirs.is_empty() {
        return Ok(false);
    }
    // Processes forking while being killed: a bounded number of sweeps.
    for _ in 0..100 {
        let mut any = false;
        for dir in &dirs {
            for pid in procs(dir) {
                any = true;
                if let Some(pid) = Pid::from_raw(pid) {
                    // Gone already is fine.
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
        if !any {
            break;
        }
        std::thread::yield_now();
    }
    for dir in &dirs {
        remove_dir_retrying(dir)?;
    }
    Ok(true)
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `rmdir` of a cgroup fails with EBUSY until its last process is reaped.
fn remove_dir_retrying(dir: &Path) -> io::Result<()> {
    let mut last = None;
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(last.unwrap_or_else(|| io::Error::other("cgroup busy")))
}

/// Why this host cannot give tasks cgroups under `parent`, if it cannot:
/// the version is known and a cgroup can be made and removed under `parent`
/// in every controller a task uses.
pub fn probe(parent: &str) -> Result<Version, String> {
    let version = version()?;
    let probe = format!(
        "{}/probe-{}",
        parent.trim_end_matches('/'),
        std::process::id()
    );
    let targets: Vec<(String, PathBuf)> = match version {
        Version::V2 => vec![("unified".to_owned(), PathBuf::from(UNIFIED_ROOT))],
        Version::V1 => V1_CONTROLLERS
            .iter()
            .map(|c| {
                get_subsystem_mount_point(c)
                    .map(|root| (c.to_string(), root))
                    .map_err(|e| format!("no {c} cgroup controller: {e}"))
            })
            .collect::<Result<_, _>>()?,
    };
    for (name, root) in targets {
        let dir = root.join(probe.trim_start_matches('/'));
        fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create cgroups under {parent} in {name}: {e}"))?;
        let _ = fs::remove_dir(&dir);
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_key() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(v1, "oom_kill"), Some(3));
        assert_eq!(keyed(v1, "oom"), None);
        let stat = "cache 10\ntotal_inactive_file 4096\n";
        assert_eq!(keyed(stat, "total_inactive_file"), Some(4096));
    }
}
