//! What the node offers: its measured capacity and its drivers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use baton_spec::{DriverKind, Resources};

use crate::config::AgentConfig;
use crate::driver::{DockerDriver, Driver, ExecDriver, RawDriver};

/// The host's capacity: every usable CPU (as the scheduler affinity and cgroup
/// quota allow) as 1000 millicores, and `MemTotal` of `/proc/meminfo`.
pub fn host_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_total(&text))
        .unwrap_or(0);
    Resources::new(
        u64::try_from(cpus).unwrap_or(1).saturating_mul(1000),
        memory_bytes,
    )
}

/// The host's capacity as [`host_capacity`], plus the disk it offers: the
/// space free to unprivileged users on the filesystem holding `data_dir`
/// (0 when it cannot be read).
pub fn measure_capacity(data_dir: &Path) -> Resources {
    Resources {
        disk_bytes: disk_free(data_dir).unwrap_or(0),
        ..host_capacity()
    }
}

/// Bytes free to unprivileged users on the filesystem holding `path`
/// (`statvfs`: available blocks times the fragment size), `None` if it cannot
/// be read. Measured once, when the agent starts: what tasks may use is
/// reserved by the scheduler, not watched.
pub fn disk_free(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    available_bytes(stat.blocks_available(), stat.fragment_size())
}

/// `blocks * block_size`, `None` on overflow.
fn available_bytes(blocks: impl TryInto<u64>, block_size: impl TryInto<u64>) -> Option<u64> {
    let blocks: u64 = blocks.try_into().ok()?;
    let block_size: u64 = block_size.try_into().ok()?;
    blocks.checked_mul(block_size)
}

/// `MemTotal` in bytes from the text of `/proc/meminfo` (which counts in kB,
/// meaning KiB).
pub(crate) fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The capacity to offer: configured, or measured.
pub(crate) fn capacity(config: &AgentConfig) -> Resources {
    config
        .capacity
        .unwrap_or_else(|| measure_capacity(&config.data_dir))
}

/// The drivers that work on this node, and why each other one does not.
/// `raw` only when the configuration enables it; `exec` when the agent is
/// root and can make cgroups and confine processes; `docker` when a Docker
/// engine with seccomp answers.
pub(crate) async fn drivers(config: &AgentConfig) -> (Drivers, BTreeMap<DriverKind, String>) {
    let mut drivers: Drivers = BTreeMap::new();
    let mut problems = BTreeMap::new();
    if config.enable_raw {
        drivers.insert(DriverKind::Raw, Arc::new(RawDriver::new()));
    }
    let exec = match &config.shim {
        Some(shim) => ExecDriver::probe(shim.clone(), &config.data_dir, &config.cgroup_parent),
        None => Err("exec: no baton binary configured to run shims".to_owned()),
    };
    match exec {
        Ok(exec) => {
            drivers.insert(DriverKind::Exec, Arc::new(exec));
        }
        Err(problem) => {
            problems.insert(DriverKind::Exec, problem);
        }
    }
    match DockerDriver::connect().await {
        Ok(docker) => {
            drivers.insert(DriverKind::Docker, Arc::new(docker));
        }
        Err(problem) => {
            problems.insert(DriverKind::Docker, problem);
        }
    }
    (drivers, problems)
}

/// The drivers of a node, by kind.
pub(crate) type Drivers = BTreeMap<DriverKind, Arc<dyn Driver>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn disk_free_is_measured_on_the_data_dirs_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = disk_free(dir.path()).expect("statvfs of a temp dir");
        assert!(free > 0);
        assert!(measure_capacity(dir.path()).disk_bytes > 0);
        assert_eq!(disk_free(&dir.path().join("missing")), None);
        assert_eq!(available_bytes(10u64, 4096u64), Some(40_960));
        assert_eq!(available_bytes(u64::MAX, 2u64), None);
    }

    #[test]
    fn configured_capacity_wins_over_the_measure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = AgentConfig::new(dir.path().to_owned(), "h".to_owned(), true);
        assert!(capacity(&config).disk_bytes > 0);
        config.capacity = Some(Resources::new(500, 1 << 30));
        assert_eq!(capacity(&config), Resources::new(500, 1 << 30));
    }

    #[test]
    fn host_capacity_is_measured() {
        let cap = host_capacity();
        assert!(cap.cpu_millis >= 1000 && cap.cpu_millis.is_multiple_of(1000));
        assert!(cap.memory_bytes > 0);
    }
}
