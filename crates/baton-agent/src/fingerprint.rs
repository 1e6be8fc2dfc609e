//! What the node offers: its measured capacity and its drivers.

use std::collections::BTreeSet;

use baton_spec::{DriverKind, Resources};

use crate::config::AgentConfig;

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
    config.capacity.unwrap_or_else(host_capacity)
}

/// The drivers this node offers.
pub(crate) fn drivers(config: &AgentConfig) -> BTreeSet<DriverKind> {
    let mut drivers = BTreeSet::new();
    if config.enable_raw {
        drivers.insert(DriverKind::Raw);
    }
    drivers
}

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
    fn host_capacity_is_measured() {
        let cap = host_capacity();
        assert!(cap.cpu_millis >= 1000 && cap.cpu_millis.is_multiple_of(1000));
        assert!(cap.memory_bytes > 0);
    }
}
