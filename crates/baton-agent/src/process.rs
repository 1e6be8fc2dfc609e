//! Host process helpers: reading `/proc/<pid>/stat`, signalling process groups,
//! and waiting for processes that are not the agent's children to be gone.
//!
//! A pid alone is not an identity: the kernel reuses pids. A process is
//! identified by its pid *and* its start time (field 22 of `/proc/<pid>/stat`),
//! and the agent never signals a recorded pid whose start time differs.

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::fs;

/// What the agent reads of `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `Z`, ...
    pub state: char,
    /// Field 5: process group id.
    pub pgrp: u32,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process has exited and waits to be reaped (or is being torn down).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// What one process uses, from `/proc/<pid>/stat` (utime and stime,
/// fields 14 and 15, in clock ticks; threads, field 20) and
/// `/proc/<pid>/statm` (resident pages, its second field).
pub(crate) fn parse_usage(
    stat: &str,
    statm: &str,
    ticks_per_second: u64,
    page_size: u64,
) -> Option<crate::driver::Usage> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 of the file.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = field(14)?.checked_add(field(15)?)?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(crate::driver::Usage {
        cpu_ns: ticks.saturating_mul(1_000_000_000) / ticks_per_second.max(1),
        memory_bytes: resident.saturating_mul(page_size),
        pids: field(20)?,
    })
}

/// What the process `pid` uses now (not its children).
pub(crate) fn usage(pid: u32) -> Option<crate::driver::Usage> {
    use nix::unistd::{SysconfVar, sysconf};
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()?;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()?;
    parse_usage(
        &stat,
        &statm,
        u64::try_from(ticks).ok()?,
        u64::try_from(page).ok()?,
    )
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 of the file.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Sends `signal` to process group `pgid`. A group that no longer exists is not
/// an error: the point was for it to stop.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> Result<(), Errno> {
    let pgid = i32::try_from(pgid).map_err(|_| Errno::EINVAL)?;
    match signal::killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether process `pid` started at `start_time` is still alive (not a zombie).
pub(crate) fn is_alive(pid: u32, start_time: u64) -> bool {
    read_stat(pid).is_some_and(|stat| stat.start_time == start_time && !stat.is_dead())
}

/// Whether any live process is still in process group `pgid`.
pub(crate) fn group_has_live_members(pgid: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .any(|stat| stat.pgrp == pgid && !stat.is_dead())
}

/// The name of signal `number` (`SIGKILL`), or `""` if unknown.
pub(crate) fn signal_name(number: i32) -> &'static str {
    Signal::try_from(number).map(Signal::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_stat_and_statm() {
        // utime 150, stime 50 ticks; 3 threads; 25 resident pages.
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 99 1000 \
                    25 18446744073709551615";
        let usage = parse_usage(stat, "1000 25 10 1 0 30 0\n", 100, 4096).expect("usage");
        assert_eq!(usage.cpu_ns, 2_000_000_000);
        assert_eq!(usage.memory_bytes, 25 * 4096);
        assert_eq!(usage.pids, 3);
        assert_eq!(parse_usage("garbage", "", 100, 4096), None);
        let own = super::usage(std::process::id()).expect("this process");
        assert!(own.memory_bytes > 0 && own.pids >= 1);
    }

    #[test]
    fn parse_stat_counts_fields_after_the_command_name() {
        // Field 2 contains a space and a parenthesis; field 22 is 98765.
        let text = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    1 2 0 0 20 0 1 0 98765 1000000 100 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgrp: 1234,
                start_time: 98765
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_with_its_start_time_only() {
        let pid = std::process::id();
        let stat = read_stat(pid).expect("own stat");
        assert!(is_alive(pid, stat.start_time));
        assert!(!is_alive(pid, stat.start_time + 1));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(1000), "");
    }
}
