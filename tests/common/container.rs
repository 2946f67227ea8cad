//! The isolation systemd gives a service, in two strengths: by hand, a
//! network namespace of its own ([`NetworkNamespace`], what
//! `PrivateNetwork=yes` makes), and for real, systemd as PID 1 in
//! `systemd-nspawn` ([`Container`]) booted from a minimal Debian root file
//! system that [`debian_rootfs`] builds once and keeps.
//!
//! Both need root and the tools [`CONTAINER_TOOLS`] and
//! [`NETWORK_NAMESPACE_TOOLS`] name; the tests check before they start.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{ChildGuard, Finished, Signal, run_tool, signal, tool, wait_exit, wait_until};

/// What [`NetworkNamespace`] runs (packages util-linux, iproute2).
pub const NETWORK_NAMESPACE_TOOLS: &[&str] = &["unshare", "nsenter", "ip"];

/// What [`Container`] and [`debian_rootfs`] run (packages
/// systemd-container, debootstrap, util-linux, coreutils).
pub const CONTAINER_TOOLS: &[&str] = &["systemd-nspawn", "debootstrap", "nsenter", "timeout"];

/// The network namespace of a process, as `net:[INODE]` (empty if the
/// process is gone).
pub fn netns_of(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A network namespace of its own with only its loopback, up: what
/// `PrivateNetwork=yes` gives a service. It lives as long as a `sleep` that
/// `unshare --net` started in it, which ends on drop.
pub struct NetworkNamespace {
    keeper: ChildGuard,
    /// `/proc/PID/ns/net` of the keeper, for `nsenter` and `setns`.
    path: String,
}

impl NetworkNamespace {
    /// Creates the namespace and brings its loopback up.
    pub fn new() -> NetworkNamespace {
        let keeper = ChildGuard(
            Command::new(tool("unshare").unwrap())
                .args(["--net", "sleep", "600"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let ours = netns_of(std::process::id());
        wait_until("the new network namespace", || {
            let theirs = netns_of(keeper.0.id());
            !theirs.is_empty() && theirs != ours
        });
        let namespace = NetworkNamespace {
            path: format!("/proc/{}/ns/net", keeper.0.id()),
            keeper,
        };
        let mut lo_up = namespace.command("ip");
        lo_up.args(["link", "set", "lo", "up"]);
        let output = run_tool(lo_up);
        assert!(output.status.success(), "{}", output.stderr);
        namespace
    }

    /// The namespace, as [`netns_of`] names it.
    pub fn id(&self) -> String {
        netns_of(self.keeper.0.id())
    }

    /// A command that runs `program` inside the namespace (through
    /// `nsenter`); add its arguments.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(tool("nsenter").unwrap());
        command.arg(format!("--net={}", self.path)).arg(program);
        command
    }

    /// Runs `make` on a thread that has joined the namespace: sockets it
    /// creates belong to the namespace for good.
    pub fn run<T: Send + 'static>(&self, make: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(&self.path).expect("open the namespace");
        thread::spawn(move || {
            // SAFETY: setns on an open namespace descriptor; it changes the
            // network namespace of this short-lived thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            make()
        })
        .join()
        .unwrap()
    }
}

/// Where the Debian root file system for the container is kept between runs.
const ROOTFS: &str = "/var/cache/simpletcpunixrelay-test-rootfs";
/// How it is made; a cache made another way is rebuilt.
const ROOTFS_PACKAGES: &str = "--variant=minbase --include=systemd";
/// Written inside the root file system once it is complete.
const ROOTFS_MARKER: &str = ".simpletcpunixrelay-test-rootfs";

/// The running system's Debian suite and the mirror apt uses for it.
fn apt_suite_and_mirror() -> Result<(String, String), String> {
    let os = fs::read_to_string("/etc/os-release").map_err(|e| format!("os-release: {e}"))?;
    let field = |name: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    if field("ID").as_deref() != Some("debian") {
        return Err("the host is not Debian".into());
    }
    let suite = field("VERSION_CODENAME").ok_or("no VERSION_CODENAME in os-release")?;
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        sources.extend(more);
    }
    for source in sources {
        let Ok(content) = fs::read_to_string(&source) else {
            continue;
        };
        let name = source.to_string_lossy();
        if name.ends_with(".list") {
            // deb [OPTION=VALUE ...] URI SUITE COMPONENTS...
            for line in content.lines() {
                let Some(rest) = line.trim().strip_prefix("deb ") else {
                    continue;
                };
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(options) => options.split_once(']').map_or("", |(_, r)| r),
                    None => rest,
                };
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.len() >= 2 && words[1] == suite {
                    return Ok((suite, words[0].to_string()));
                }
            }
        } else if name.ends_with(".sources") {
            // deb822 stanzas: Types, URIs, Suites, Enabled.
            for stanza in content.split("\n\n") {
                let value = |key: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{key}:")))
                        .map(str::trim)
                        .unwrap_or("")
                };
                if value("Enabled") == "no"
                    || !value("Types").split_whitespace().any(|t| t == "deb")
                {
                    continue;
                }
                if value("Suites").split_whitespace().any(|s| s == suite)
                    && let Some(uri) = value("URIs").split_whitespace().next()
                {
                    return Ok((suite, uri.to_string()));
                }
            }
        }
    }
    Err(format!("no apt source for {suite}"))
}

/// Holds an exclusive `flock` on a file while alive.
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &str) -> Result<FileLock, String> {
        let file = File::create(path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: flock on a descriptor we own; blocks until it is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("flock {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: file })
    }
}

/// A minimal Debian root file system with systemd, built once with
/// debootstrap from the host's mirror and kept in [`ROOTFS`]. The error
/// says why it cannot be had here (not Debian, no mirror, debootstrap
/// failed).
pub fn debian_rootfs() -> Result<PathBuf, String> {
    let root = PathBuf::from(ROOTFS);
    let (suite, mirror) = apt_suite_and_mirror()?;
    let recipe = format!("debootstrap {ROOTFS_PACKAGES} {suite} {mirror}\n");
    let complete =
        || fs::read_to_string(root.join(ROOTFS_MARKER)).ok().as_deref() == Some(recipe.as_str());
    if complete() {
        return Ok(root);
    }
    // Another test run may be building it right now.
    let _lock = FileLock::acquire(&format!("{ROOTFS}.lock"))?;
    if complete() {
        return Ok(root);
    }
    let build = PathBuf::from(format!("{ROOTFS}.build"));
    let log_path = format!("{ROOTFS}.log");
    let _ = fs::remove_dir_all(&build);
    let log = File::create(&log_path).map_err(|e| format!("{log_path}: {e}"))?;
    eprintln!("building {ROOTFS} ({recipe}) ...");
    let started = Instant::now();
    // `timeout` ends debootstrap and everything it started.
    let status = Command::new(tool("timeout").ok_or("timeout not installed")?)
        .arg("150")
        .arg(tool("debootstrap").ok_or("debootstrap not installed")?)
        .args(ROOTFS_PACKAGES.split(' '))
        .arg(&suite)
        .arg(&build)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .map_err(|e| format!("debootstrap: {e}"))?;
    if !status.success() {
        let _ = fs::remove_dir_all(&build);
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(format!("debootstrap {status}; {log_path} ends: {tail:?}"));
    }
    fs::write(build.join(ROOTFS_MARKER), &recipe).map_err(|e| e.to_string())?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&build, &root).map_err(|e| format!("rename to {ROOTFS}: {e}"))?;
    eprintln!("built {ROOTFS} in {:.0?}", started.elapsed());
    Ok(root)
}

/// A booted container with systemd as PID 1, stopped (and killed if need
/// be) on drop. If the test fails, its console and journal are printed.
pub struct Container {
    /// One container at a time: with `--keep-unit` each container's
    /// systemd makes its `init.scope` and `system.slice` in the cgroup of
    /// the test process, the same for all, and two at once remove each
    /// other's (a unit then fails "at step CGROUP").
    _alone: std::sync::MutexGuard<'static, ()>,
    nspawn: std::process::Child,
    /// The container's PID 1 (systemd), as the host sees it; 0 until found.
    init: i32,
    console: PathBuf,
}

impl Container {
    /// Boots `root` with systemd as PID 1 and waits until it runs. The root
    /// stays untouched (a tmpfs overlay takes every write); `binds` are
    /// `(host path, container path)` pairs mounted read-only; the console
    /// goes to the file `console`.
    pub fn boot(root: &Path, binds: &[(&Path, &str)], console: PathBuf) -> Container {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // A test that failed with a container left the lock poisoned; the
        // container itself is gone (stopped on drop).
        let alone = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut command = Command::new(tool("systemd-nspawn").unwrap());
        command
            .arg("--directory")
            .arg(root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                // Without it, loopback stays down in the services' own
                // network namespaces.
                "--private-network",
                "--link-journal=no",
                "--console=pipe",
                "--volatile=overlay",
                // bpf: IPAddressDeny= needs it; landlock_*: the relay's
                // own sandbox, which the units allow.
                "--system-call-filter=bpf landlock_create_ruleset landlock_add_rule landlock_restrict_self",
            ])
            .args(
                binds
                    .iter()
                    .map(|(host, inside)| format!("--bind-ro={}:{inside}", host.display())),
            )
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&console).unwrap())
            .stderr(File::create(&console).unwrap());
        for variable in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
        ] {
            command.env_remove(variable);
        }
        let nspawn = command.spawn().expect("spawn systemd-nspawn");
        let mut container = Container {
            _alone: alone,
            init: 0,
            nspawn,
            console,
        };
        // PID 1 of the container is nspawn's child once it runs systemd.
        let nspawn_pid = container.nspawn.id();
        wait_until("systemd as PID 1 of the container", || {
            if let Some(status) = container.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited ({status})");
            }
            let children =
                fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                    .unwrap_or_default();
            container.init = children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|p| {
                    fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
                .unwrap_or(0);
            container.init != 0
        });
        // Until systemd listens on its private socket, systemctl fails at once.
        wait_until("the container to boot", || {
            let state = container.sh("systemctl is-system-running --wait");
            matches!(state.stdout.trim(), "running" | "degraded")
        });
        container
    }

    /// What the container printed on its console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Runs a shell script in the container, in all of PID 1's namespaces
    /// (so outside every service's), with a clean environment.
    pub fn sh(&self, script: &str) -> Finished {
        let mut command = Command::new(tool("nsenter").unwrap());
        command
            .args(["-t", &self.init.to_string(), "-a"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["sh", "-c", script]);
        run_tool(command)
    }

    /// Runs a script that must succeed; returns its standard output.
    pub fn ok(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "in the container: {script}\n{}{}",
            output.stdout,
            output.stderr
        );
        output.stdout
    }

    /// Polls `script` until it prints `wanted` (trimmed).
    pub fn wait_for_output(&self, script: &str, wanted: &str) {
        wait_until(&format!("{script} to print {wanted:?}"), || {
            self.sh(script).stdout.trim() == wanted
        });
    }

    /// The network namespace of a unit's main process.
    pub fn netns_of_unit(&self, unit: &str) -> String {
        self.ok(&format!(
            "readlink /proc/$(systemctl show -p MainPID --value {unit})/ns/net"
        ))
        .trim()
        .to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("container console:\n{}", self.console());
            if self.init != 0 {
                let journal = self.sh("journalctl --no-pager -n 150");
                eprintln!("container journal:\n{}", journal.stdout);
            }
        }
        // SIGTERM asks nspawn (our own child, not reaped yet) to shut the
        // container down cleanly.
        let _ = signal(self.nspawn.id() as i32, Signal::TERM);
        if wait_exit(&mut self.nspawn, Duration::from_secs(15)).is_none() {
            if self.init != 0 {
                // The container's PID 1; killing it ends the container.
                let _ = signal(self.init, Signal::KILL);
            }
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}
