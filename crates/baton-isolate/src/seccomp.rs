//! The default syscall filter of isolated tasks: an allow-list equivalent to
//! Docker's default profile, written out here (not vendored) so every rule is
//! ours to read and test.
//!
//! Everything not listed fails with `EPERM`. What the list leaves out is what
//! lets a process reach beyond its task: mounting, new namespaces (`unshare`,
//! `setns`, `clone` with namespace flags), kernel modules, `bpf`, `ptrace` and
//! `process_vm_*`, keyrings (`add_key`, `keyctl`), `kexec`, `reboot`, clock
//! setting, `perf_event_open`, `userfaultfd`, `open_by_handle_at` (the
//! "shocker" escape), `pidfd_getfd`, `kcmp`, `io_uring_*`.
//!
//! Differences from Docker's profile, all stricter: `ptrace` is refused
//! (Docker allows it on kernels from 4.8; no capability that a Baton task may
//! add needs it), `io_uring_*` is refused (Docker too, since 25.0), and no
//! capability a task may add unlocks `CAP_SYS_ADMIN`-only calls because
//! `SYS_ADMIN` cannot be added. `SYS_CHROOT` unlocks `chroot`.
//!
//! `clone3` gets `ENOSYS` rather than `EPERM`, as in Docker: its flags live in
//! memory that a filter cannot inspect, and `ENOSYS` makes glibc fall back to
//! `clone`, whose flags the filter checks.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// `EPERM`: what a refused call returns.
const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` returns.
const ENOSYS: u32 = 38;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`: `clone` is allowed only with
/// none of these bits.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`: sockets to the hypervisor are refused.
const AF_VSOCK: u64 = 40;

/// `personality` values allowed: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32|UNAME26`, and the query `0xffffffff`.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Calls every task may make, whatever its capabilities. Names the running
/// architecture does not have (the 32-bit `*32` and `*64` variants on
/// x86-64) are skipped by libseccomp's name lookup.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Calls a capability the task was given unlocks: (capability, calls).
const BY_CAPABILITY: &[(&str, &[&str])] = &[("SYS_CHROOT", &["chroot"])];

/// The filter for a task that holds `capabilities` (upper-case, without the
/// `CAP_` prefix).
pub fn profile(capabilities: &[String]) -> LinuxSeccomp {
    let mut syscalls = vec![rule(ALLOWED.iter().copied(), Vec::new())];
    for (cap, names) in BY_CAPABILITY {
        if capabilities.iter().any(|c| c == cap) {
            syscalls.push(rule(names.iter().copied(), Vec::new()));
        }
    }
    syscalls.push(rule(
        ["clone"],
        vec![arg(
            0,
            CLONE_NAMESPACE_FLAGS,
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )],
    ));
    syscalls.push(rule(
        ["socket"],
        vec![arg(0, AF_VSOCK, 0, LinuxSeccompOperator::ScmpCmpNe)],
    ));
    for value in PERSONALITIES {
        syscalls.push(rule(
            ["personality"],
            vec![arg(0, value, 0, LinuxSeccompOperator::ScmpCmpEq)],
        ));
    }
    let mut clone3 = rule(["clone3"], Vec::new());
    clone3.set_action(LinuxSeccompAction::ScmpActErrno);
    clone3.set_errno_ret(Some(ENOSYS));
    syscalls.push(clone3);

    let mut seccomp = LinuxSeccomp::default();
    seccomp
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(EPERM))
        .set_architectures(Some(architectures()))
        .set_syscalls(Some(syscalls));
    seccomp
}

/// The architectures a task's process may use: the native one and its
/// compatibility modes (a 32-bit binary gets the same filter).
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

fn rule<'a>(names: impl IntoIterator<Item = &'a str>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(names.into_iter().map(str::to_owned).collect())
        .set_action(LinuxSeccompAction::ScmpActAllow)
        .set_args((!args.is_empty()).then_some(args));
    syscall
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("every field of a seccomp argument is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(seccomp: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn the_default_refuses_what_reaches_beyond_the_task() {
        let p = profile(&[]);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "chroot",
            "bpf",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "keyctl",
            "add_key",
            "init_module",
            "finit_module",
            "kexec_load",
            "reboot",
            "open_by_handle_at",
            "perf_event_open",
            "userfaultfd",
            "pidfd_getfd",
            "kcmp",
            "io_uring_setup",
            "settimeofday",
            "swapon",
            "acct",
            "quotactl",
            "fsopen",
            "move_mount",
        ] {
            assert!(allowed(&p, name).is_empty(), "{name} must not be allowed");
        }
        for name in [
            "read", "write", "execve", "openat", "futex", "fork", "wait4",
        ] {
            let rules = allowed(&p, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
            assert_eq!(rules[0].args(), &None);
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        let p = profile(&[]);
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        let args = clone[0]
            .args()
            .as_ref()
            .expect("clone has an argument rule");
        assert_eq!(args[0].index(), 0);
        assert_eq!(args[0].value(), 0x7E02_0000);
        assert_eq!(args[0].value_two(), Some(0));
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        let clone3 = allowed(&p, "clone3");
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(ENOSYS));
        assert_eq!(allowed(&p, "personality").len(), PERSONALITIES.len());
    }

    #[test]
    fn an_added_capability_unlocks_only_its_calls() {
        assert!(allowed(&profile(&[]), "chroot").is_empty());
        let p = profile(&["SYS_CHROOT".to_owned()]);
        assert_eq!(allowed(&p, "chroot").len(), 1);
        assert!(allowed(&p, "mount").is_empty());
        assert!(allowed(&profile(&["NET_RAW".to_owned()]), "chroot").is_empty());
    }

    #[test]
    fn the_allow_list_is_sorted_and_has_no_duplicates() {
        let mut sorted: Vec<&str> = ALLOWED.to_vec();
        sorted.sort_by_key(|n| n.trim_start_matches('_'));
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED.len(), "duplicates in ALLOWED");
    }
}
