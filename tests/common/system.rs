//! How the relay's process is set up before it runs (inherited descriptors,
//! by hand or by `systemd-socket-activate`, resource limits, umask, a private
//! `/etc/hosts`), and what the tests ask the kernel and the machine (its
//! tools, its groups) about themselves and the running relay. Expected values come from the system, never from the
//! relay's own code.
//!
//! The set-up runs in the forked child before `exec` (`pre_exec`), where only
//! async-signal-safe calls are allowed: no allocation, plain system calls.

use std::ffi::CString;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

use super::{Relay, relay_bin};

/// Whether the tests run as root (changing a file's group to one we are not
/// in and mount namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The full path of a program, searched in `PATH` and the sbin directories
/// (which a non-root `PATH` often lacks).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The first of `names` that is not installed.
pub fn missing_tool(names: &[&'static str]) -> Option<&'static str> {
    names.iter().copied().find(|n| tool(n).is_none())
}

/// Sends `signal` to the process `pid` or, as kill(2) does, to the process
/// group `-pid` when `pid` is negative: the one way the tests signal a
/// process on this host (the relay through [`Relay::signal`]). The error
/// names the call.
pub fn signal(pid: i32, signal: Signal) -> io::Result<()> {
    let target = Pid::from_raw(pid.abs())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "kill: pid 0"))?;
    let sent = if pid < 0 {
        kill_process_group(target, signal)
    } else {
        kill_process(target, signal)
    };
    sent.map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("kill({pid}, {signal:?}): {e}"))
    })
}

/// Whether the kernel offers Landlock (the relay then confines itself fully).
pub fn kernel_has_landlock() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|l| l.contains("landlock"))
}

/// Whether this machine has an IPv6 loopback address to test with.
pub fn has_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// `st_dev` and `st_ino` of an open descriptor.
pub fn device_and_inode(fd: RawFd) -> (u64, u64) {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the struct on success, which is checked.
    assert_eq!(unsafe { libc::fstat(fd, stat.as_mut_ptr()) }, 0, "fstat");
    // SAFETY: fstat succeeded.
    let stat = unsafe { stat.assume_init() };
    (stat.st_dev, stat.st_ino)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `fds[i]` the child's descriptor `3 + i`, open across `exec`, the
/// way systemd and inetd pass sockets. Our own copies stay ours: they are
/// close-on-exec, like every descriptor Rust opens.
pub fn pass_fds(command: &mut Command, fds: &[RawFd]) {
    const MAX: usize = 64;
    assert!(fds.len() <= MAX);
    let mut sources = [-1; MAX];
    sources[..fds.len()].copy_from_slice(fds);
    let count = fds.len();
    // SAFETY: the closure makes only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            // First move every source out of the way, so that placing one
            // cannot overwrite another that happens to sit at 3, 4, …
            let mut high = [-1; MAX];
            for i in 0..count {
                high[i] = libc::fcntl(sources[i], libc::F_DUPFD_CLOEXEC, 100);
                check(high[i])?;
            }
            for (i, &fd) in high.iter().enumerate().take(count) {
                // dup2 clears close-on-exec on the new descriptor.
                check(libc::dup2(fd, 3 + i as RawFd))?;
            }
            Ok(())
        });
    }
}

/// Makes sure descriptor `fd` is closed in the child.
pub fn close_in_child(command: &mut Command, fd: RawFd) {
    // SAFETY: close is async-signal-safe; EBADF (already closed) is fine.
    unsafe {
        command.pre_exec(move || {
            libc::close(fd);
            Ok(())
        });
    }
}

/// Sets both the soft and the hard open-file limit of the child (the relay
/// raises its soft limit to the hard one, so both must be set).
pub fn limit_open_files(command: &mut Command, limit: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit is async-signal-safe and reads one struct.
    unsafe {
        command.pre_exec(move || check(libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit)));
    }
}

/// Sets the child's umask.
pub fn set_umask(command: &mut Command, mask: u32) {
    // SAFETY: umask is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
}

/// Runs the child in a mount namespace of its own where `/etc/hosts` is the
/// file `hosts`. Needs root and mount namespaces; returns false (and
/// changes nothing) where they are missing.
pub fn private_hosts(command: &mut Command, hosts: &Path) -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    let etc_hosts = Path::new("/etc/hosts");
    let works = *WORKS.get_or_init(|| {
        if !is_root() {
            return false;
        }
        // Try it once on a harmless command.
        let mut probe = Command::new("/bin/true");
        bind_in_private_mount_namespace(&mut probe, etc_hosts, etc_hosts);
        probe.status().is_ok_and(|s| s.success())
    });
    if works {
        bind_in_private_mount_namespace(command, hosts, etc_hosts);
    }
    works
}

/// Runs the child in a mount namespace of its own where `target` (a file or
/// a directory) is `source`, bind-mounted over it. The namespace is private,
/// so the mount never reaches the machine's own tree. Needs root and mount
/// namespaces: without them the child fails to start.
pub fn bind_in_private_mount_namespace(command: &mut Command, source: &Path, target: &Path) {
    let source = CString::new(source.as_os_str().as_bytes()).unwrap();
    let target = CString::new(target.as_os_str().as_bytes()).unwrap();
    let root = CString::new("/").unwrap();
    // SAFETY: unshare and mount are plain system calls; the strings were
    // allocated before the fork and live in the closure.
    unsafe {
        command.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Keep the bind mount from propagating back to the host.
            let private = libc::MS_REC | libc::MS_PRIVATE;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
}

/// A command that runs the relay with `fds` passed by "socket activation":
/// descriptors 3, 4, … with `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID`
/// set to the relay's own pid (a shell sets it, then execs the relay).
pub fn socket_activated(args: &[&str], fds: &[RawFd], names: &[&str]) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(relay_bin())
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    pass_fds(&mut command, fds);
    command
}

/// `systemd-socket-activate ARGS...` with a clean activation environment.
pub fn socket_activate(args: &[&str]) -> Command {
    let mut command = Command::new(tool("systemd-socket-activate").unwrap());
    command.args(args);
    for variable in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        command.env_remove(variable);
    }
    command
}

/// `systemd-socket-activate ARGS...` running with its `sockets` open (one
/// `Listening on` line each). Without `-a` it starts the relay at the first
/// client, as systemd does.
pub fn start_activator(args: &[&str], sockets: usize) -> Relay {
    let mut activator = Relay::start_command(socket_activate(args), 0);
    for _ in 0..sockets {
        activator.wait_for_line("Listening on ");
    }
    activator
}

/// The id of the group called `name`, if there is one, as the system's name
/// service tells it (`getent group NAME`, whose third field is the id): the
/// value `--socket-group NAME` must give the socket file.
pub fn group_id(name: &str) -> Option<u32> {
    let output = Command::new("getent").args(["group", name]).output().ok()?;
    if !output.status.success() {
        return None; // exit 2: no such group
    }
    let entry = String::from_utf8(output.stdout).ok()?;
    // NAME:PASSWORD:GID:MEMBERS
    entry.lines().next()?.split(':').nth(2)?.parse().ok()
}

/// Copies of every socket descriptor the process `pid` holds (`pidfd_getfd`,
/// which needs ptrace rights over it: our own child is fine).
pub fn process_sockets(pid: i32) -> io::Result<Vec<socket2::Socket>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd is a descriptor we just opened and own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_getfd duplicates the target's descriptor into ours.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if copy < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EBADF) {
                continue; // closed meanwhile
            }
            return Err(error);
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        sockets.push(unsafe { socket2::Socket::from_raw_fd(copy as RawFd) });
    }
    Ok(sockets)
}
