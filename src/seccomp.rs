//! The system calls the relay may make once it is confined: a seccomp-bpf
//! allowlist, the last step of the sandbox. It is installed while the
//! process is single-threaded, so every thread created later (the engine,
//! async-io's reactor, the executor's threads) inherits it; the resolver
//! helper installs a smaller one of its own ([`Profile::Resolver`]).
//!
//! The lists were measured (`strace -f` over the test suite, the benchmark
//! and ping-pongs through every feature) and then widened where a fault
//! takes another path (`malloc_trim`, descriptor shortages, thread
//! creation). A call outside the list ends the process: the kernel raises
//! SIGSYS (`SECCOMP_RET_TRAP`) and [`on_sigsys`] writes one error line
//! naming the call, then exits with [`EXIT_STATUS`]. With
//! [`MODE_VARIABLE`]`=log` the kernel lets such calls through and records
//! each in its own log (`SECCOMP_RET_LOG`: `journalctl -k`, `dmesg`,
//! `type=1326 … syscall=NR`); the relay itself cannot name them then, as a
//! signal handler cannot let the call it interrupted go on.
//!
//! A few calls get an error instead of either: `clone3` (ENOSYS, so that
//! glibc falls back to `clone`, whose flags a filter can check), `kcmp`
//! (ENOSYS: code that compares descriptors must do without), `open`,
//! `openat` and `readlink` in the relay (EACCES, which Landlock answers
//! anyway: the standard library looks for a CPU quota in
//! `/proc/self/cgroup` when the runtime starts, a panic's backtrace for
//! `/proc/self/exe`), and netlink sockets in the resolver (EAFNOSUPPORT:
//! glibc's getaddrinfo then orders addresses without asking the kernel
//! which ones are configured, and needs no `bind`).
//!
//! The lists name calls by `libc::SYS_*` and exist for x86-64 and aarch64
//! only; elsewhere [`unavailable`] says so and nothing is installed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod names;

/// Environment variable: `log` runs the filter in log-only mode.
pub const MODE_VARIABLE: &str = "SIMPLETCPUNIXRELAY_SECCOMP";

/// Environment variable honoured by debug builds only, for the tests: a
/// thread makes this forbidden call (`execve`, `bind`; `resolver:CALL` in
/// the resolver helper) once the filter is in place.
#[cfg(debug_assertions)]
pub const TEST_CALL_VARIABLE: &str = "SIMPLETCPUNIXRELAY_SECCOMP_TEST_CALL";

/// The exit status after a forbidden call: 128 + SIGSYS, as a shell
/// reports a process that SIGSYS killed.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Which allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The relay's threads: accept, connect, splice, epoll, the notify
    /// socket, timers, memory, threads, exit.
    Relay,
    /// The name resolution helper: read files, DNS over UDP and TCP, Unix
    /// sockets (nscd, systemd-resolved), threads, exit.
    Resolver,
}

/// What a call outside the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SIGSYS: one line naming the call, then exit.
    Trap,
    /// Let it through; the kernel logs it (`MODE_VARIABLE=log`).
    Log,
}

/// What [`install`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// How many system calls are allowed (some with argument checks).
    pub allowed: usize,
    /// What a call outside the list does.
    pub mode: Mode,
}

/// The variables this module reads, where set (the resolver helper is
/// given them: it runs with only the environment it needs).
pub fn variables() -> impl Iterator<Item = (&'static str, String)> {
    let names = [
        MODE_VARIABLE,
        #[cfg(debug_assertions)]
        TEST_CALL_VARIABLE,
    ];
    names
        .into_iter()
        .filter_map(|name| Some((name, variable(name)?)))
}

fn variable(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The mode [`MODE_VARIABLE`] asks for; an unknown value is an error.
pub fn mode() -> Result<Mode, String> {
    match variable(MODE_VARIABLE) {
        None => Ok(Mode::Trap),
        Some(v) if v.is_empty() || v == "trap" => Ok(Mode::Trap),
        Some(v) if v == "log" => Ok(Mode::Log),
        Some(v) => Err(format!(
            "{MODE_VARIABLE}={v}: unknown value (\"log\" for log-only mode, \"trap\" or unset to enforce)"
        )),
    }
}

/// Why no filter can be installed here, if so: an architecture the lists
/// were not made for, or a kernel without seccomp.
pub fn unavailable() -> Option<String> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Some(format!(
            "not available on {} (only x86-64 and aarch64 have a list)",
            std::env::consts::ARCH
        ));
    }
    // SAFETY: PR_GET_SECCOMP takes no pointer; it fails (EINVAL) on a
    // kernel built without seccomp.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Some(format!(
            "not available in this kernel ({})",
            std::io::Error::last_os_error()
        ));
    }
    None
}

/// Installs `profile`'s filter on the calling thread (and so on every
/// thread it creates later). `no_new_privs` must be set already.
pub fn install(profile: Profile) -> Result<Installed, String> {
    if let Some(reason) = unavailable() {
        return Err(reason);
    }
    let mode = mode()?;
    let mismatch = match mode {
        Mode::Trap => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    install_with(profile, mismatch)?;
    #[cfg(debug_assertions)]
    test_call(profile);
    Ok(Installed {
        allowed: allowed_names(profile).len(),
        mode,
    })
}

/// Compiles and installs the filters, `mismatch` being what a call outside
/// the list gets.
fn install_with(profile: Profile, mismatch: SeccompAction) -> Result<(), String> {
    let calls = calls(profile);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("{e:?}"))?;
    // One filter per error answer, then the allowlist, which lets those
    // calls through so that the answer decides (the kernel runs every
    // filter and takes the strictest action: trap, then error, then allow).
    let mut errnos: Vec<i32> = calls.iter().filter_map(|c| c.errno).collect();
    errnos.sort_unstable();
    errnos.dedup();
    let mut programs = Vec::new();
    for errno in errnos {
        let rules = rule_map(calls.iter().filter(|c| c.errno == Some(errno)));
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|e| e.to_string())?;
        programs.push(BpfProgram::try_from(filter).map_err(|e| e.to_string())?);
    }
    let mut rules = rule_map(calls.iter());
    // -1 is no call: what a tracer leaves when it skips one (strace's fault
    // injection); the kernel answers ENOSYS. (The filter compares the
    // number's 32 bits.)
    rules.insert(i64::from(u32::MAX), Vec::new());
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    programs.push(BpfProgram::try_from(filter).map_err(|e| e.to_string())?);

    handle_sigsys(profile).map_err(|e| format!("cannot handle SIGSYS: {e}"))?;
    for program in &programs {
        load(program).map_err(|e| format!("cannot install the filter: {e}"))?;
    }
    Ok(())
}

/// The rules of `calls` by number; a call listed with no condition allows
/// any arguments.
fn rule_map<'a>(calls: impl Iterator<Item = &'a Call>) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for call in calls {
        let entry = map.entry(call.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), call.rules.is_empty()) {
            (_, true) => *entry = None,
            (Some(rules), false) => rules.extend(call.rules.iter().cloned()),
            (None, false) => {}
        }
    }
    map.into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect()
}

/// Installs one BPF program with `prctl(PR_SET_SECCOMP)`: the same as
/// `seccomp(SECCOMP_SET_MODE_FILTER)`, but allowed where a unit's
/// `SystemCallFilter=@system-service` lacks `seccomp(2)`.
fn load(program: &BpfProgram) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const seccompiler::sock_filter,
    }
    let prog = SockFprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr(),
    };
    // SAFETY: the kernel copies the program it is pointed to, which lives
    // until the call returns.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const SockFprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One entry of a list: a call, the argument rules of which one must hold
/// (none: any arguments), and the error it gets instead of running, if so.
struct Call {
    name: &'static str,
    nr: i64,
    rules: Vec<SeccompRule>,
    errno: Option<i32>,
}

fn allow(name: &'static str, nr: libc::c_long) -> Call {
    Call {
        name,
        nr,
        rules: Vec::new(),
        errno: None,
    }
}

fn allow_if(name: &'static str, nr: libc::c_long, rules: Vec<SeccompRule>) -> Call {
    Call {
        name,
        nr,
        rules,
        errno: None,
    }
}

fn refuse(name: &'static str, nr: libc::c_long, errno: i32) -> Call {
    Call {
        name,
        nr,
        rules: Vec::new(),
        errno: Some(errno),
    }
}

/// A condition on argument `arg` (its low 32 bits, or all 64 with `wide`).
fn cond(arg: u8, op: SeccompCmpOp, value: u64, wide: bool) -> SeccompCondition {
    let len = if wide {
        SeccompCmpArgLen::Qword
    } else {
        SeccompCmpArgLen::Dword
    };
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("at least one condition")
}

/// Argument `arg` is one of `values`.
fn one_of(arg: u8, values: &[libc::c_int]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|v| rule(vec![cond(arg, SeccompCmpOp::Eq, *v as u64, false)]))
        .collect()
}

/// Argument `arg` has none of the bits of `mask`.
fn without(arg: u8, mask: u64) -> Vec<SeccompRule> {
    vec![rule(vec![cond(
        arg,
        SeccompCmpOp::MaskedEq(mask),
        0,
        false,
    )])]
}

/// `socket(family, type, …)` for each (family, type) pair; the type's
/// flags (SOCK_NONBLOCK, SOCK_CLOEXEC) are free.
fn sockets(pairs: &[(libc::c_int, libc::c_int)]) -> Vec<SeccompRule> {
    const SOCK_TYPE_MASK: u64 = 0xf;
    pairs
        .iter()
        .map(|(family, kind)| {
            rule(vec![
                cond(0, SeccompCmpOp::Eq, *family as u64, false),
                cond(
                    1,
                    SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK),
                    *kind as u64,
                    false,
                ),
            ])
        })
        .collect()
}

/// `level, name` pairs of `setsockopt`/`getsockopt`.
fn options(pairs: &[(libc::c_int, libc::c_int)]) -> Vec<SeccompRule> {
    pairs
        .iter()
        .map(|(level, name)| {
            rule(vec![
                cond(1, SeccompCmpOp::Eq, *level as u64, false),
                cond(2, SeccompCmpOp::Eq, *name as u64, false),
            ])
        })
        .collect()
}

/// No list for other architectures ([`unavailable`] says so).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn calls(_profile: Profile) -> Vec<Call> {
    Vec::new()
}

/// Calls both lists share: memory, threads, signals, time, exit.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn common(exec_mappings: bool) -> Vec<Call> {
    use libc::*;
    // New threads only: clone without CLONE_THREAD would make a process,
    // and no namespace flag.
    let namespaces = (CLONE_NEWNS
        | CLONE_NEWCGROUP
        | CLONE_NEWUTS
        | CLONE_NEWIPC
        | CLONE_NEWUSER
        | CLONE_NEWPID
        | CLONE_NEWNET) as u64;
    let thread = vec![rule(vec![cond(
        0,
        SeccompCmpOp::MaskedEq(CLONE_THREAD as u64 | namespaces),
        CLONE_THREAD as u64,
        false,
    )])];
    let prot = |name, nr| {
        if exec_mappings {
            allow(name, nr)
        } else {
            allow_if(name, nr, without(2, PROT_EXEC as u64))
        }
    };
    vec![
        allow("read", SYS_read),
        allow("write", SYS_write),
        allow("readv", SYS_readv),
        allow("writev", SYS_writev),
        allow("close", SYS_close),
        allow("fstat", SYS_fstat),
        allow("newfstatat", SYS_newfstatat),
        allow("statx", SYS_statx),
        // Memory (malloc, malloc_trim, thread stacks).
        allow("brk", SYS_brk),
        prot("mmap", SYS_mmap),
        prot("mprotect", SYS_mprotect),
        allow("munmap", SYS_munmap),
        allow("mremap", SYS_mremap),
        allow("madvise", SYS_madvise),
        // Threads.
        allow_if("clone", SYS_clone, thread),
        refuse("clone3", SYS_clone3, ENOSYS),
        allow("set_robust_list", SYS_set_robust_list),
        allow("rseq", SYS_rseq),
        allow("futex", SYS_futex),
        allow("sched_getaffinity", SYS_sched_getaffinity),
        allow("sched_yield", SYS_sched_yield),
        allow("gettid", SYS_gettid),
        allow("getpid", SYS_getpid),
        allow_if("prctl", SYS_prctl, one_of(0, &[PR_SET_NAME, PR_GET_NAME])),
        allow("getrandom", SYS_getrandom),
        // glibc's qsort (getaddrinfo sorts its answers) asks how much memory
        // the machine has.
        allow("sysinfo", SYS_sysinfo),
        // Signals; nobody may take the SIGSYS handler away.
        allow_if(
            "rt_sigaction",
            SYS_rt_sigaction,
            vec![rule(vec![cond(0, SeccompCmpOp::Ne, SIGSYS as u64, false)])],
        ),
        allow("rt_sigprocmask", SYS_rt_sigprocmask),
        allow("rt_sigreturn", SYS_rt_sigreturn),
        // A sleep with a timeout that a stop interrupted (SIGSTOP and
        // SIGCONT, a debugger or strace attaching) goes on through it.
        allow("restart_syscall", SYS_restart_syscall),
        allow("sigaltstack", SYS_sigaltstack),
        // abort() after a panic that cannot unwind.
        allow_if("tgkill", SYS_tgkill, one_of(2, &[SIGABRT])),
        // Time (the vDSO answers most of it).
        allow("clock_gettime", SYS_clock_gettime),
        allow("clock_getres", SYS_clock_getres),
        allow("gettimeofday", SYS_gettimeofday),
        allow("clock_nanosleep", SYS_clock_nanosleep),
        allow("nanosleep", SYS_nanosleep),
        // Non-blocking mode, pending bytes; whether standard error is a
        // terminal (TCGETS: the line of a failure after the sandbox).
        allow_if(
            "ioctl",
            SYS_ioctl,
            one_of(1, &[FIONBIO as c_int, FIONREAD as c_int, TCGETS as c_int]),
        ),
        allow_if(
            "fcntl",
            SYS_fcntl,
            one_of(
                1,
                &[
                    F_GETFD,
                    F_SETFD,
                    F_GETFL,
                    F_SETFL,
                    F_DUPFD_CLOEXEC,
                    F_GETPIPE_SZ,
                    F_SETPIPE_SZ,
                ],
            ),
        ),
        allow("connect", SYS_connect),
        allow("sendto", SYS_sendto),
        allow("recvfrom", SYS_recvfrom),
        allow("sendmsg", SYS_sendmsg),
        allow("recvmsg", SYS_recvmsg),
        allow("getsockname", SYS_getsockname),
        allow("getpeername", SYS_getpeername),
        allow("ppoll", SYS_ppoll),
        #[cfg(target_arch = "x86_64")]
        allow("poll", SYS_poll),
        refuse("kcmp", SYS_kcmp, ENOSYS),
        allow("exit", SYS_exit),
        allow("exit_group", SYS_exit_group),
    ]
}

/// The list of `profile`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn calls(profile: Profile) -> Vec<Call> {
    use libc::*;
    match profile {
        Profile::Relay => {
            let mut calls = common(false);
            calls.extend([
                allow_if(
                    "socket",
                    SYS_socket,
                    sockets(&[
                        (AF_INET, SOCK_STREAM),
                        (AF_INET6, SOCK_STREAM),
                        (AF_UNIX, SOCK_STREAM),
                    ]),
                ),
                // The runtime's reactor is started with a probe pair.
                allow_if("socketpair", SYS_socketpair, one_of(0, &[AF_UNIX])),
                allow("accept4", SYS_accept4),
                allow("shutdown", SYS_shutdown),
                allow_if(
                    "setsockopt",
                    SYS_setsockopt,
                    options(&[
                        (SOL_SOCKET, SO_KEEPALIVE),
                        (SOL_SOCKET, SO_LINGER),
                        (IPPROTO_TCP, TCP_NODELAY),
                        (IPPROTO_TCP, TCP_KEEPIDLE),
                        (IPPROTO_TCP, TCP_KEEPINTVL),
                        (IPPROTO_TCP, TCP_KEEPCNT),
                    ]),
                ),
                allow_if(
                    "getsockopt",
                    SYS_getsockopt,
                    options(&[
                        (SOL_SOCKET, SO_ERROR),
                        (SOL_SOCKET, SO_PEERCRED),
                        (SOL_SOCKET, SO_PEERGROUPS),
                        (SOL_SOCKET, SO_ACCEPTCONN),
                        (SOL_SOCKET, SO_TYPE),
                        (SOL_SOCKET, SO_DOMAIN),
                    ]),
                ),
                allow("splice", SYS_splice),
                allow("pipe2", SYS_pipe2),
                // The reactor's wake-up pipe, when no eventfd is left.
                #[cfg(target_arch = "x86_64")]
                allow("pipe", SYS_pipe),
                allow("epoll_create1", SYS_epoll_create1),
                allow("epoll_ctl", SYS_epoll_ctl),
                allow("epoll_pwait", SYS_epoll_pwait),
                allow("epoll_pwait2", SYS_epoll_pwait2),
                #[cfg(target_arch = "x86_64")]
                allow("epoll_wait", SYS_epoll_wait),
                allow("eventfd2", SYS_eventfd2),
                allow("timerfd_create", SYS_timerfd_create),
                allow("timerfd_settime", SYS_timerfd_settime),
                allow("timerfd_gettime", SYS_timerfd_gettime),
                // The descriptor limit, read only.
                allow_if(
                    "prlimit64",
                    SYS_prlimit64,
                    vec![rule(vec![cond(2, SeccompCmpOp::Eq, 0, true)])],
                ),
                // The resolver helper, reaped.
                allow("wait4", SYS_wait4),
                allow("waitid", SYS_waitid),
                // Removing its own socket file at exit (Landlock allows it
                // beneath that file's directory only).
                #[cfg(target_arch = "x86_64")]
                allow("unlink", SYS_unlink),
                allow_if("unlinkat", SYS_unlinkat, one_of(2, &[0])),
                #[cfg(target_arch = "x86_64")]
                refuse("open", SYS_open, EACCES),
                refuse("openat", SYS_openat, EACCES),
                // A panic's backtrace looks for the binary (/proc/self/exe).
                #[cfg(target_arch = "x86_64")]
                refuse("readlink", SYS_readlink, EACCES),
                refuse("readlinkat", SYS_readlinkat, EACCES),
            ]);
            calls
        }
        Profile::Resolver => {
            // Mapping NSS modules needs executable mappings.
            let mut calls = common(true);
            calls.extend([
                // Read-only: no write access, no O_CREAT, no O_TRUNC.
                allow_if(
                    "openat",
                    SYS_openat,
                    without(2, (O_ACCMODE | O_CREAT | O_TRUNC) as u64),
                ),
                allow("pread64", SYS_pread64),
                allow("lseek", SYS_lseek),
                allow("uname", SYS_uname),
                allow_if(
                    "socket",
                    SYS_socket,
                    sockets(&[
                        (AF_INET, SOCK_DGRAM),
                        (AF_INET, SOCK_STREAM),
                        (AF_INET6, SOCK_DGRAM),
                        (AF_INET6, SOCK_STREAM),
                        (AF_UNIX, SOCK_STREAM),
                    ]),
                ),
                Call {
                    name: "socket",
                    nr: SYS_socket,
                    rules: one_of(0, &[AF_NETLINK]),
                    errno: Some(EAFNOSUPPORT),
                },
                allow_if(
                    "setsockopt",
                    SYS_setsockopt,
                    options(&[(SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)]),
                ),
                allow_if(
                    "getsockopt",
                    SYS_getsockopt,
                    options(&[(SOL_SOCKET, SO_ERROR)]),
                ),
                allow("sendmmsg", SYS_sendmmsg),
                allow("recvmmsg", SYS_recvmmsg),
            ]);
            calls
        }
    }
}

/// The names of the calls `profile` allows (some with argument checks),
/// sorted.
pub fn allowed_names(profile: Profile) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = calls(profile)
        .iter()
        .filter(|c| c.errno.is_none())
        .map(|c| c.name)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

// What the SIGSYS handler needs, set before the filter.
static JOURNAL: AtomicBool = AtomicBool::new(false);
static TIMESTAMPS: AtomicBool = AtomicBool::new(true);
static WHO: AtomicU8 = AtomicU8::new(0);

fn handle_sigsys(profile: Profile) -> std::io::Result<()> {
    JOURNAL.store(crate::log::to_journal(), Ordering::Relaxed);
    TIMESTAMPS.store(crate::log::timestamps(), Ordering::Relaxed);
    WHO.store(
        match profile {
            Profile::Relay => 0,
            Profile::Resolver => 1,
        },
        Ordering::Relaxed,
    );
    // SAFETY: a zeroed sigaction with an empty mask is valid; the handler
    // makes only async-signal-safe calls (write, _exit, clock_gettime).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The SIGSYS part of `siginfo_t` (`_sigsys` in the kernel's union, after
/// three ints and padding on 64-bit architectures).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a SIGSYS from a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

/// A line built without allocating.
struct Line {
    bytes: [u8; 384],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &b in text {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
    }

    /// `n` in decimal, with at least `width` digits.
    fn number(&mut self, mut n: u64, width: usize) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        while n > 0 || digits.len() - start < width.max(1) {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.push(&digits[start..]);
    }

    /// `2026-11-21T05:40:01.123Z ` as the log module writes it.
    fn timestamp(&mut self) {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec; it is async-signal-safe.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        let secs = now.tv_sec.max(0) as u64;
        let (year, month, day) = crate::log::civil_date((secs / 86400) as i64);
        let rem = secs % 86400;
        self.number(year as u64, 4);
        self.push(b"-");
        self.number(month as u64, 2);
        self.push(b"-");
        self.number(day as u64, 2);
        self.push(b"T");
        self.number(rem / 3600, 2);
        self.push(b":");
        self.number(rem / 60 % 60, 2);
        self.push(b":");
        self.number(rem % 60, 2);
        self.push(b".");
        self.number(now.tv_nsec as u64 / 1_000_000, 3);
        self.push(b"Z ");
    }
}

/// The name of system call `nr` on this architecture, if known.
fn name_of(nr: i64) -> Option<&'static str> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        usize::try_from(nr)
            .ok()
            .and_then(|i| names::NAMES.get(i))
            .copied()
            .filter(|n| !n.is_empty())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = nr;
        None
    }
}

/// The line [`on_sigsys`] writes for call `nr` (`None`: a SIGSYS that no
/// filter raised).
fn forbidden_line(line: &mut Line, nr: Option<i64>, journal: bool, resolver: bool) {
    if journal {
        line.push(b"<3>");
    } else if TIMESTAMPS.load(Ordering::Relaxed) {
        line.timestamp();
    }
    line.push(b"simpletcpunixrelay: error: ");
    if resolver {
        line.push(b"resolver: ");
    }
    let Some(nr) = nr else {
        line.push(b"SIGSYS received from outside the seccomp filter; exiting\n");
        return;
    };
    line.push(b"forbidden system call ");
    match name_of(nr) {
        Some(name) => line.push(name.as_bytes()),
        None => line.push(b"?"),
    }
    line.push(b" (");
    if nr < 0 {
        line.push(b"-");
    }
    line.number(nr.unsigned_abs(), 1);
    line.push(b"): the seccomp filter allows only what the relay needs; please report it (");
    line.push(MODE_VARIABLE.as_bytes());
    line.push(b"=log lets such calls through, logged by the kernel)\n");
}

/// Writes the line naming the forbidden call to standard error and exits
/// with [`EXIT_STATUS`]. Only async-signal-safe calls.
extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a siginfo_t for SIGSYS, whose fields past
    // the header are SigsysInfo's when si_code is SYS_SECCOMP.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let nr = (info.code == SYS_SECCOMP).then_some(i64::from(info.syscall));
    let mut line = Line {
        bytes: [0; 384],
        len: 0,
    };
    forbidden_line(
        &mut line,
        nr,
        JOURNAL.load(Ordering::Relaxed),
        WHO.load(Ordering::Relaxed) == 1,
    );
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(EXIT_STATUS);
    }
}

/// For the tests (debug builds only): a thread of the confined process
/// makes the forbidden call [`TEST_CALL_VARIABLE`] names.
#[cfg(debug_assertions)]
fn test_call(profile: Profile) {
    let Some(value) = variable(TEST_CALL_VARIABLE) else {
        return;
    };
    let call = match (profile, value.strip_prefix("resolver:")) {
        (Profile::Resolver, Some(call)) => call.to_owned(),
        (Profile::Relay, None) => value,
        _ => return,
    };
    let nr = match call.as_str() {
        "execve" => libc::SYS_execve,
        "bind" => libc::SYS_bind,
        _ => return,
    };
    // A thread created after the filter: it inherits it. Null arguments:
    // in log-only mode the call goes through and fails (EFAULT, EBADF).
    let _ = std::thread::Builder::new()
        .name("seccomp-test".into())
        .spawn(move || {
            // SAFETY: null pointers and an invalid descriptor: the kernel
            // fails the call without touching memory.
            unsafe { libc::syscall(nr, -1 as libc::c_long, 0, 0) };
        });
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_call() {
        let mut line = Line {
            bytes: [0; 384],
            len: 0,
        };
        forbidden_line(&mut line, Some(libc::SYS_execve), true, false);
        let text = std::str::from_utf8(&line.bytes[..line.len]).unwrap();
        assert!(
            text.starts_with(&format!(
                "<3>simpletcpunixrelay: error: forbidden system call execve ({})",
                libc::SYS_execve
            )),
            "{text}"
        );
        assert!(text.ends_with("kernel)\n"), "{text}");
        let mut line = Line {
            bytes: [0; 384],
            len: 0,
        };
        forbidden_line(&mut line, Some(99_999), false, true);
        let text = std::str::from_utf8(&line.bytes[..line.len]).unwrap();
        assert!(
            text.starts_with("20")
                && text.contains(
                    "Z simpletcpunixrelay: error: resolver: forbidden system call ? (99999)"
                ),
            "{text}"
        );
    }

    #[test]
    fn names_match_the_numbers() {
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("openat", libc::SYS_openat),
            ("execve", libc::SYS_execve),
            ("splice", libc::SYS_splice),
            ("clone3", libc::SYS_clone3),
            ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
        ] {
            assert_eq!(name_of(nr), Some(name));
        }
    }

    #[test]
    fn lists_are_small_and_lack_the_dangerous_calls() {
        let relay = allowed_names(Profile::Relay);
        let resolver = allowed_names(Profile::Resolver);
        for forbidden in [
            "execve", "execveat", "open", "openat", "bind", "listen", "ptrace", "mount", "unshare",
            "setns", "clone3", "kcmp", "seccomp", "bpf", "kill",
        ] {
            assert!(!relay.contains(&forbidden), "relay allows {forbidden}");
        }
        for forbidden in [
            "execve", "bind", "listen", "accept4", "splice", "unlinkat", "ptrace",
        ] {
            assert!(
                !resolver.contains(&forbidden),
                "resolver allows {forbidden}"
            );
        }
        assert!(resolver.len() < relay.len(), "{resolver:?} / {relay:?}");
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc >= 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        }
    }

    /// A thread of this test process confined with the relay's list, calls
    /// outside it answered EPERM instead of SIGSYS (which would end the
    /// test process): what it can and cannot do.
    #[test]
    fn confined_thread_makes_only_the_relays_calls() {
        if unavailable().is_some() {
            return;
        }
        let failures = std::thread::spawn(|| {
            rustix::thread::set_no_new_privs(true).unwrap();
            install_with(Profile::Relay, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            let mut failures = Vec::new();
            let mut check = |what: &str, got: i32, want: i32| {
                if got != want {
                    failures.push(format!("{what}: errno {got}, want {want}"));
                }
            };
            let sys = |nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long| {
                // SAFETY: integers and null pointers only; the filter
                // answers the forbidden calls before the kernel reads them,
                // and the allowed ones below take no pointer.
                errno_of(unsafe { libc::syscall(nr, a, b, c) })
            };
            check("execve", sys(libc::SYS_execve, 0, 0, 0), libc::EPERM);
            check("bind", sys(libc::SYS_bind, -1, 0, 0), libc::EPERM);
            check("listen", sys(libc::SYS_listen, -1, 0, 0), libc::EPERM);
            check("ptrace", sys(libc::SYS_ptrace, 0, 0, 0), libc::EPERM);
            check("mount", sys(libc::SYS_mount, 0, 0, 0), libc::EPERM);
            check(
                "unshare",
                sys(libc::SYS_unshare, libc::CLONE_NEWNET as _, 0, 0),
                libc::EPERM,
            );
            check("setns", sys(libc::SYS_setns, -1, 0, 0), libc::EPERM);
            check(
                "openat",
                sys(libc::SYS_openat, libc::AT_FDCWD as _, 0, 0),
                libc::EACCES,
            );
            check("clone3", sys(libc::SYS_clone3, 0, 0, 0), libc::ENOSYS);
            check("kcmp", sys(libc::SYS_kcmp, 0, 0, 0), libc::ENOSYS);
            check(
                "clone without CLONE_THREAD (fork)",
                sys(libc::SYS_clone, libc::SIGCHLD as _, 0, 0),
                libc::EPERM,
            );
            check(
                "clone of a thread in a new network namespace",
                sys(
                    libc::SYS_clone,
                    (libc::CLONE_THREAD | libc::CLONE_NEWNET) as _,
                    0,
                    0,
                ),
                libc::EPERM,
            );
            check(
                "socket(AF_PACKET)",
                sys(
                    libc::SYS_socket,
                    libc::AF_PACKET as _,
                    libc::SOCK_RAW as _,
                    0,
                ),
                libc::EPERM,
            );
            check(
                "socket(AF_INET, SOCK_DGRAM)",
                sys(
                    libc::SYS_socket,
                    libc::AF_INET as _,
                    libc::SOCK_DGRAM as _,
                    0,
                ),
                libc::EPERM,
            );
            check(
                "mmap PROT_EXEC",
                sys(libc::SYS_mmap, 0, 4096, libc::PROT_EXEC as _),
                libc::EPERM,
            );
            check(
                "fcntl(F_SETOWN)",
                sys(libc::SYS_fcntl, 0, libc::F_SETOWN as _, 0),
                libc::EPERM,
            );
            check(
                "setsockopt(SO_REUSEADDR)",
                // SAFETY: a null option value, refused by the filter.
                errno_of(unsafe {
                    libc::syscall(
                        libc::SYS_setsockopt,
                        -1,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        0,
                        0,
                    )
                }),
                libc::EPERM,
            );
            check(
                "prctl(PR_SET_DUMPABLE)",
                sys(libc::SYS_prctl, libc::PR_SET_DUMPABLE as _, 1, 0),
                libc::EPERM,
            );
            check(
                "rt_sigaction(SIGSYS)",
                sys(libc::SYS_rt_sigaction, libc::SIGSYS as _, 0, 0),
                libc::EPERM,
            );
            check("kill", sys(libc::SYS_kill, 0, 0, 0), libc::EPERM);
            // What the relay does.
            check(
                "socket(AF_INET, SOCK_STREAM)",
                sys(
                    libc::SYS_socket,
                    libc::AF_INET as _,
                    libc::SOCK_STREAM as _,
                    0,
                ),
                0,
            );
            check(
                "socket(AF_UNIX, SOCK_STREAM)",
                sys(
                    libc::SYS_socket,
                    libc::AF_UNIX as _,
                    libc::SOCK_STREAM as _,
                    0,
                ),
                0,
            );
            check(
                "pipe2",
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .err()
                    .map_or(0, |e| e.raw_os_error()),
                0,
            );
            // A thread: clone3 refused, clone with CLONE_THREAD allowed.
            check(
                "a new thread",
                std::thread::spawn(|| 0).join().unwrap_or(-1),
                0,
            );
            failures
        })
        .join()
        .unwrap();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// The resolver helper's list, on a thread of this test process: the C
    /// library resolves a name under it; writing files, binding, accepting
    /// and netlink are refused.
    #[test]
    fn confined_thread_resolves_names_with_the_resolvers_calls() {
        use std::net::ToSocketAddrs;
        if unavailable().is_some() {
            return;
        }
        let failures = std::thread::spawn(|| {
            rustix::thread::set_no_new_privs(true).unwrap();
            install_with(Profile::Resolver, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            let mut failures = Vec::new();
            match ("localhost", 80).to_socket_addrs() {
                Ok(addresses) if addresses.len() > 0 => {}
                other => failures.push(format!("resolving localhost: {other:?}")),
            }
            if let Err(e) = std::fs::read("/etc/hosts") {
                failures.push(format!("reading /etc/hosts: {e}"));
            }
            let errno = |result: std::io::Result<std::fs::File>| {
                result.err().and_then(|e| e.raw_os_error())
            };
            let written = std::env::temp_dir().join(format!("seccomp-{}", std::process::id()));
            if errno(std::fs::File::create(&written)) != Some(libc::EPERM) {
                failures.push("creating a file".into());
            }
            if errno(std::fs::OpenOptions::new().append(true).open("/etc/hosts"))
                != Some(libc::EPERM)
            {
                failures.push("opening /etc/hosts for writing".into());
            }
            let sys = |nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long| {
                // SAFETY: integers only; refused before the kernel runs them.
                let rc = unsafe { libc::syscall(nr, a, b, c) };
                if rc >= 0 {
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap()
                }
            };
            for (what, got, want) in [
                ("bind", sys(libc::SYS_bind, -1, 0, 0), libc::EPERM),
                ("accept4", sys(libc::SYS_accept4, -1, 0, 0), libc::EPERM),
                ("splice", sys(libc::SYS_splice, -1, 0, -1), libc::EPERM),
                ("execve", sys(libc::SYS_execve, 0, 0, 0), libc::EPERM),
                (
                    "socket(AF_NETLINK)",
                    sys(
                        libc::SYS_socket,
                        libc::AF_NETLINK as _,
                        libc::SOCK_RAW as _,
                        0,
                    ),
                    libc::EAFNOSUPPORT,
                ),
            ] {
                if got != want {
                    failures.push(format!("{what}: errno {got}, want {want}"));
                }
            }
            failures
        })
        .join()
        .unwrap();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
