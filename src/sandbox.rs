//! Self-confinement, applied once every listener exists and before the first
//! accept, while the process is still single-threaded (capabilities,
//! `no_new_privs` and Landlock act on the calling thread; threads created
//! afterwards inherit them).
//!
//! The policy is a plain value derived from the endpoints ([`Policy::derive`]),
//! so it can be logged and tested; [`apply`] then enforces as much of it as
//! the kernel allows and reports what it got.

use std::fmt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::config::{Config, SandboxMode};
use crate::endpoint::{Endpoint, Target, UnixAddr};

/// Environment variable that caps the Landlock ABI the relay uses, to test
/// older kernels on a new one. It can only weaken the sandbox.
pub const ABI_MAX_VARIABLE: &str = "SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX";

/// The newest Landlock ABI this build knows.
const NEWEST_ABI: i32 = 9;

/// What the relay may still do once confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: SandboxMode,
    /// Directory beneath which files may be removed: the one holding the
    /// socket file the relay created, so it can remove it at exit.
    pub remove_beneath: Option<PathBuf>,
    /// Directories beneath which files may be read: none for the relay
    /// itself; everything for its name resolution helper (see
    /// `crate::resolver`), since the files the C library reads may be
    /// replaced, or symlinked elsewhere, at any time.
    pub read_beneath: Vec<PathBuf>,
    /// Directories whose Unix sockets may be connected to (Landlock ABI 9
    /// restricts that): CONNECT's.
    pub unix_connect_beneath: Vec<PathBuf>,
    /// TCP ports `connect()` may reach; empty means none.
    pub tcp_connect_ports: Vec<u16>,
    /// Whether connecting to abstract sockets outside the sandbox is denied.
    pub scope_abstract_unix: bool,
    /// Whether signalling other processes is denied.
    pub scope_signal: bool,
}

impl Policy {
    /// Derives the policy from the configuration, without touching the
    /// system. (The notification socket needs no rule: it is connected
    /// before the sandbox.)
    pub fn derive(config: &Config) -> Policy {
        let remove_beneath = match &config.listen {
            Endpoint::Unix(UnixAddr::Path(path)) => Some(parent(path)),
            _ => None,
        };
        let mut unix_connect_beneath = Vec::new();
        let mut tcp_connect_ports = Vec::new();
        match &config.connect {
            // Host names are resolved by the helper, under its own policy.
            Target::Tcp { port, .. } => tcp_connect_ports.push(*port),
            Target::Unix(UnixAddr::Path(path)) => unix_connect_beneath.push(parent(path)),
            Target::Unix(UnixAddr::Abstract(_)) => {}
        }
        Policy {
            mode: config.sandbox,
            remove_beneath,
            read_beneath: Vec::new(),
            unix_connect_beneath,
            tcp_connect_ports,
            scope_abstract_unix: !matches!(config.connect, Target::Unix(UnixAddr::Abstract(_))),
            scope_signal: true,
        }
    }

    /// The policy of the name resolution helper: read any file (the C
    /// library's resolver files, NSS modules, and whatever they are
    /// replaced by or link to), connect to Unix sockets (nscd,
    /// systemd-resolved) and to TCP port 53 (DNS over TCP); write, remove,
    /// bind and signal nothing.
    pub fn resolver(mode: SandboxMode) -> Policy {
        Policy {
            mode,
            remove_beneath: None,
            read_beneath: vec![PathBuf::from("/")],
            unix_connect_beneath: vec![PathBuf::from("/")],
            tcp_connect_ports: vec![53],
            scope_abstract_unix: true,
            scope_signal: true,
        }
    }

    /// The requirements Landlock cannot meet below `abi`, for `--sandbox
    /// strict` and the startup line. Restricting connects to Unix socket
    /// paths (ABI 9) is applied where available and never required: no
    /// released kernel before it can do it.
    pub fn missing_at(&self, abi: i32) -> Vec<String> {
        let mut missing = Vec::new();
        if abi < 1 {
            missing.push("landlock (not available in this kernel)".to_string());
            return missing;
        }
        if abi < 4 {
            missing.push(format!(
                "tcp bind/connect rules (need Landlock ABI 4, have {abi})"
            ));
        }
        if abi < 6 && (self.scope_abstract_unix || self.scope_signal) {
            missing.push(format!(
                "abstract-unix and signal scoping (need Landlock ABI 6, have {abi})"
            ));
        }
        missing
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What [`apply`] enforced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The Landlock ABI used (0: none).
    pub abi: i32,
    /// Requirements that could not be enforced.
    pub missing: Vec<String>,
    /// Capability sets that could not be emptied.
    pub capabilities_kept: Vec<String>,
    pub no_new_privs: bool,
    policy: Policy,
}

/// The Landlock ABI the kernel offers (0 if none), capped by
/// [`ABI_MAX_VARIABLE`].
pub fn kernel_abi() -> i32 {
    // SAFETY: the version query takes no pointer and has no side effect.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, /* LANDLOCK_CREATE_RULESET_VERSION */
        )
    };
    let version = i32::try_from(version).unwrap_or(0).max(0);
    let cap = std::env::var(ABI_MAX_VARIABLE)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(i32::MAX);
    version.min(cap).min(NEWEST_ABI)
}

/// Whether this thread may empty the capability bounding set.
fn can_drop_bounding() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
}

/// What `--sandbox strict` would not get here, checked before anything is
/// applied so that a refusal leaves the process as it was.
pub fn check_strict(policy: &Policy) -> Result<(), String> {
    if policy.mode != SandboxMode::Strict {
        return Ok(());
    }
    let mut missing = policy.missing_at(kernel_abi());
    let bounding_empty = caps::read(None, caps::CapSet::Bounding)
        .map(|s| s.is_empty())
        .unwrap_or(false);
    if !bounding_empty && !can_drop_bounding() {
        missing.push("emptying the capability bounding set (needs CAP_SETPCAP)".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "--sandbox strict: cannot enforce {}",
            missing.join("; ")
        ))
    }
}

/// Confines the calling thread (and every thread it creates later).
pub fn apply(policy: &Policy) -> Result<Report, String> {
    let abi = if policy.mode == SandboxMode::Off {
        0
    } else {
        kernel_abi()
    };
    let mut report = Report {
        abi,
        missing: Vec::new(),
        capabilities_kept: Vec::new(),
        no_new_privs: false,
        policy: policy.clone(),
    };
    if policy.mode == SandboxMode::Off {
        return Ok(report);
    }
    report.capabilities_kept = drop_capabilities();
    report.no_new_privs = rustix::thread::set_no_new_privs(true).is_ok();
    report.missing = policy.missing_at(abi);
    if abi >= 1 {
        match restrict(policy, abi) {
            Ok(RulesetStatus::FullyEnforced) => {}
            Ok(RulesetStatus::PartiallyEnforced) => report
                .missing
                .push("some Landlock rights (partially enforced)".into()),
            Ok(RulesetStatus::NotEnforced) => report.missing.push("landlock (not enforced)".into()),
            Err(e) => report.missing.push(format!("landlock ({e})")),
        }
    }
    if policy.mode == SandboxMode::Strict {
        let mut problems = report.missing.clone();
        problems.extend(
            report
                .capabilities_kept
                .iter()
                .map(|set| format!("emptying the {set} capability set")),
        );
        if !report.no_new_privs {
            problems.push("no_new_privs".into());
        }
        if !problems.is_empty() {
            return Err(format!(
                "--sandbox strict: cannot enforce {}",
                problems.join("; ")
            ));
        }
    }
    Ok(report)
}

/// Empties every capability set, in the order the kernel requires: ambient,
/// bounding (needs CAP_SETPCAP, so before effective), inheritable,
/// permitted, effective. Returns the sets that could not be emptied.
fn drop_capabilities() -> Vec<String> {
    use caps::CapSet;
    let mut kept = Vec::new();
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Bounding, "bounding"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Permitted, "permitted"),
        (CapSet::Effective, "effective"),
    ] {
        let already_empty = caps::read(None, set).map(|s| s.is_empty()).unwrap_or(false);
        if already_empty {
            continue;
        }
        if matches!(set, CapSet::Bounding) && !can_drop_bounding() {
            kept.push(name.to_string());
            continue;
        }
        if caps::clear(None, set).is_err() {
            kept.push(name.to_string());
        }
    }
    kept
}

fn restrict(policy: &Policy, abi: i32) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi_enum = ABI::from(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi_enum))?;
    if abi >= 4 {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    if abi >= 6 {
        if policy.scope_abstract_unix {
            ruleset = ruleset.scope(Scope::AbstractUnixSocket)?;
        }
        if policy.scope_signal {
            ruleset = ruleset.scope(Scope::Signal)?;
        }
    }
    let mut created = ruleset.create()?;
    if let Some(dir) = &policy.remove_beneath {
        match PathFd::new(dir) {
            Ok(fd) => created = created.add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))?,
            Err(e) => crate::warn!(
                "sandbox: cannot allow removing the socket file in {}: {e}",
                dir.display()
            ),
        }
    }
    for dir in &policy.read_beneath {
        if let Ok(fd) = PathFd::new(dir) {
            created =
                created.add_rule(PathBeneath::new(fd, AccessFs::ReadFile | AccessFs::ReadDir))?;
        }
    }
    if abi >= 9 {
        for dir in &policy.unix_connect_beneath {
            if let Ok(fd) = PathFd::new(dir) {
                created = created.add_rule(PathBeneath::new(
                    fd,
                    AccessFs::from_all(abi_enum) & AccessFs::ResolveUnix,
                ))?;
            }
        }
    }
    if abi >= 4 {
        for port in &policy.tcp_connect_ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
    }
    Ok(created.restrict_self()?.ruleset)
}

impl fmt::Display for Report {
    /// `sandbox: landlock ABI 7 fully enforced (fs: none; tcp connect: 8000;
    /// scoped: abstract-unix, signal); capabilities: none; no_new_privs: yes`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.policy;
        if policy.mode == SandboxMode::Off {
            return write!(f, "sandbox: off (--sandbox off): no confinement");
        }
        if self.abi < 1 {
            write!(f, "sandbox: landlock not available")?;
        } else {
            let state = if self.missing.is_empty() {
                "fully enforced"
            } else {
                "partially enforced"
            };
            let mut fs = Vec::new();
            if let Some(dir) = &policy.remove_beneath {
                fs.push(format!("remove files beneath {}", dir.display()));
            }
            for dir in &policy.read_beneath {
                fs.push(format!("read beneath {}", dir.display()));
            }
            if self.abi >= 9 {
                for dir in &policy.unix_connect_beneath {
                    fs.push(format!("unix connect beneath {}", dir.display()));
                }
            }
            let fs = if fs.is_empty() {
                "none".to_string()
            } else {
                fs.join(", ")
            };
            write!(f, "sandbox: landlock ABI {} {state} (fs: {fs}", self.abi)?;
            if self.abi >= 4 {
                let ports: Vec<String> = policy
                    .tcp_connect_ports
                    .iter()
                    .map(u16::to_string)
                    .collect();
                let ports = if ports.is_empty() {
                    "none".into()
                } else {
                    ports.join(", ")
                };
                write!(f, "; tcp bind: none; tcp connect: {ports}")?;
            }
            if self.abi >= 6 {
                let mut scoped = Vec::new();
                if policy.scope_abstract_unix {
                    scoped.push("abstract-unix");
                }
                if policy.scope_signal {
                    scoped.push("signal");
                }
                write!(
                    f,
                    "; scoped: {}",
                    if scoped.is_empty() {
                        "none".into()
                    } else {
                        scoped.join(", ")
                    }
                )?;
            }
            write!(f, ")")?;
            if !self.missing.is_empty() {
                write!(f, " [not enforced: {}]", self.missing.join("; "))?;
            }
        }
        let caps = if self.capabilities_kept.is_empty() {
            "none".to_string()
        } else if self.capabilities_kept == ["bounding"] {
            // Unprivileged: nothing is permitted, and no_new_privs keeps it so.
            "none (bounding set unchanged: needs CAP_SETPCAP)".to_string()
        } else {
            format!(
                "dropped except the {} set",
                self.capabilities_kept.join(", ")
            )
        };
        write!(
            f,
            "; capabilities: {caps}; no_new_privs: {}",
            if self.no_new_privs { "yes" } else { "no" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(args: &[&str]) -> Policy {
        let args: Vec<std::ffi::OsString> = args.iter().map(|s| s.into()).collect();
        let Ok(crate::cli::Command::Run(config)) = crate::cli::parse("relay", &args) else {
            panic!("bad test arguments {args:?}")
        };
        Policy::derive(&config)
    }

    #[test]
    fn unix_listen_tcp_connect() {
        let p = policy(&["/run/foobar-unix/socket", "127.0.0.1:8000"]);
        assert_eq!(p.remove_beneath, Some(PathBuf::from("/run/foobar-unix")));
        assert_eq!(p.tcp_connect_ports, vec![8000]);
        assert!(p.read_beneath.is_empty());
        assert!(p.unix_connect_beneath.is_empty());
        assert!(p.scope_abstract_unix && p.scope_signal);
    }

    #[test]
    fn tcp_listen_unix_connect() {
        let p = policy(&["127.0.0.1:0", "/run/app/app.sock"]);
        assert_eq!(p.remove_beneath, None);
        assert!(
            p.tcp_connect_ports.is_empty(),
            "no TCP connect when CONNECT is Unix"
        );
        assert_eq!(p.unix_connect_beneath, vec![PathBuf::from("/run/app")]);
        assert!(p.scope_abstract_unix);
    }

    #[test]
    fn abstract_connect_is_not_scoped() {
        let p = policy(&[":0", "@backend"]);
        assert!(!p.scope_abstract_unix);
        assert!(p.scope_signal);
        assert!(p.tcp_connect_ports.is_empty());
    }

    #[test]
    fn host_name_reads_nothing_itself() {
        let p = policy(&["./s", "localhost:8080"]);
        assert_eq!(p.remove_beneath, Some(PathBuf::from(".")));
        assert_eq!(p.tcp_connect_ports, vec![8080]);
        assert!(p.read_beneath.is_empty());
        let r = Policy::resolver(SandboxMode::BestEffort);
        assert_eq!(r.tcp_connect_ports, vec![53]);
        assert_eq!(r.remove_beneath, None);
    }

    #[test]
    fn missing_features_by_abi() {
        let p = policy(&[":0", "127.0.0.1:1"]);
        assert!(p.missing_at(7).is_empty());
        assert!(p.missing_at(6).is_empty());
        assert_eq!(p.missing_at(5).len(), 1);
        assert_eq!(p.missing_at(3).len(), 2);
        assert!(p.missing_at(0)[0].contains("not available"));
    }
}
