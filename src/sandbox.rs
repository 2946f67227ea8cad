//! Self-confinement, applied once every listener exists and before the first
//! accept, while the process is still single-threaded (capabilities,
//! `no_new_privs`, Landlock and the seccomp filter act on the calling
//! thread; threads created afterwards inherit them).
//!
//! The policy is a plain value derived from the endpoints ([`Policy::derive`]),
//! so it can be logged and tested; [`apply`] then enforces as much of it as
//! the kernel allows and reports what it got.

use std::fmt;
use std::path::{Path, PathBuf};

use caps::CapSet;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::config::{Config, SandboxMode};
use crate::endpoint::{Endpoint, Target, UnixAddr};
use crate::seccomp;

/// Environment variable that caps the Landlock ABI the relay uses, to test
/// older kernels on a new one. It can only weaken the sandbox.
pub const ABI_MAX_VARIABLE: &str = "SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX";

/// The rights the relay asks for are those of the newest Landlock ABI the
/// landlock crate knows, as far as the kernel (and [`ABI_MAX_VARIABLE`])
/// offers them.
const TARGET_ABI: ABI = ABI::V9;
/// What `--sandbox strict` requires: every right of this ABI the policy
/// uses (the filesystem, TCP bind/connect rules, both scopes). Newer rights
/// (connecting to Unix socket files, ABI 9) are applied where the kernel
/// has them and never required: no released kernel before them can do it.
const REQUIRED_ABI: ABI = ABI::V6;

/// What the relay may still do once confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: SandboxMode,
    /// Directory beneath which files may be removed: the one holding the
    /// socket file the relay created, so it can remove it at exit.
    pub remove_beneath: Option<PathBuf>,
    /// Directories beneath which files may be read: none for the relay
    /// itself; everything for its name resolution helper (see
    /// the resolver module), since the files the C library reads may be
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
    /// The system call allowlist installed last (`None`: none).
    pub system_calls: Option<seccomp::Profile>,
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
            system_calls: Some(seccomp::Profile::Relay),
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
            system_calls: Some(seccomp::Profile::Resolver),
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A part of the policy the kernel could not enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No Landlock at all.
    Landlock,
    /// TCP bind/connect rules, which arrived with ABI `need`.
    TcpRules { need: i32, have: i32 },
    /// Abstract-socket and signal scoping, which arrived with ABI `need`.
    Scopes { need: i32, have: i32 },
    /// Landlock enforced less than it was asked (per `RestrictionStatus`).
    Partial,
    /// Landlock refused the ruleset.
    Failed(String),
    /// The capability bounding set cannot be emptied (needs CAP_SETPCAP).
    Bounding,
    /// A capability set could not be emptied.
    Capabilities(&'static str),
    /// `no_new_privs` could not be set.
    NoNewPrivs,
    /// The seccomp filter is not installed, or only logs.
    Seccomp(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Landlock => write!(f, "landlock (not available in this kernel)"),
            Missing::TcpRules { need, have } => write!(
                f,
                "tcp bind/connect rules (need Landlock ABI {need}, have {have})"
            ),
            Missing::Scopes { need, have } => write!(
                f,
                "abstract-unix and signal scoping (need Landlock ABI {need}, have {have})"
            ),
            Missing::Partial => write!(f, "some Landlock rights (partially enforced)"),
            Missing::Failed(e) => write!(f, "landlock ({e})"),
            Missing::Bounding => write!(
                f,
                "emptying the capability bounding set (needs CAP_SETPCAP)"
            ),
            Missing::Capabilities(set) => write!(f, "emptying the {set} capability set"),
            Missing::NoNewPrivs => write!(f, "no_new_privs"),
            Missing::Seccomp(reason) => write!(f, "seccomp filter ({reason})"),
        }
    }
}

/// What [`apply`] enforced.
#[derive(Debug)]
pub struct Report {
    /// The Landlock ABI whose rights were asked for (0: none).
    pub abi: i32,
    /// Landlock's own word on the ruleset.
    pub landlock: Option<RulesetStatus>,
    /// Requirements that could not be enforced.
    pub missing: Vec<Missing>,
    /// Capability sets that could not be emptied.
    pub capabilities_kept: Vec<CapSet>,
    pub no_new_privs: bool,
    /// The seccomp filter, if installed.
    pub seccomp: Option<seccomp::Installed>,
    policy: Policy,
}

impl Report {
    /// Whether everything asked for is in place. An unprivileged relay
    /// cannot empty the bounding set; with nothing permitted and
    /// `no_new_privs` set, that is no reason for a warning.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
            && self
                .capabilities_kept
                .iter()
                .all(|set| matches!(set, CapSet::Bounding))
    }
}

fn set_name(set: CapSet) -> &'static str {
    match set {
        CapSet::Ambient => "ambient",
        CapSet::Bounding => "bounding",
        CapSet::Effective => "effective",
        CapSet::Inheritable => "inheritable",
        CapSet::Permitted => "permitted",
    }
}

/// The newest ABI up to [`TARGET_ABI`] (and [`ABI_MAX_VARIABLE`]) whose
/// every right the running kernel has, as the landlock crate sees it: each
/// ABI's rights are asked for as a hard requirement in a ruleset that is
/// never enforced. 0 without Landlock.
pub fn kernel_abi() -> i32 {
    // Asked once: start-up checks it for --sandbox strict and again to apply.
    static ABI_IN_EFFECT: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *ABI_IN_EFFECT.get_or_init(probe_abi)
}

fn probe_abi() -> i32 {
    let cap = std::env::var(ABI_MAX_VARIABLE)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(i32::MAX);
    let mut have = 0;
    for version in 1..=(TARGET_ABI as i32).min(cap) {
        let abi = ABI::from(version);
        let probe = || -> Result<_, landlock::RulesetError> {
            let mut ruleset = Ruleset::default()
                .set_compatibility(CompatLevel::HardRequirement)
                .handle_access(AccessFs::from_all(abi))?;
            if !AccessNet::from_all(abi).is_empty() {
                ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
            }
            if !Scope::from_all(abi).is_empty() {
                ruleset = ruleset.scope(Scope::from_all(abi))?;
            }
            Ok(ruleset)
        };
        if probe().is_err() {
            break;
        }
        have = version;
    }
    have
}

/// The first ABI whose rights include all of `rights`.
fn introduced<T: Access>(rights: BitFlags<T>) -> i32 {
    (1..=TARGET_ABI as i32)
        .find(|v| T::from_all(ABI::from(*v)).contains(rights))
        .unwrap_or(TARGET_ABI as i32 + 1)
}

/// The scopes the policy asks for.
fn scopes(policy: &Policy) -> BitFlags<Scope> {
    let mut scopes = BitFlags::empty();
    if policy.scope_abstract_unix {
        scopes |= Scope::AbstractUnixSocket;
    }
    if policy.scope_signal {
        scopes |= Scope::Signal;
    }
    scopes
}

/// The parts of `policy` that the rights of ABI `have` cannot enforce,
/// among those `--sandbox strict` requires.
fn missing_at(policy: &Policy, have: i32) -> Vec<Missing> {
    if have < 1 {
        return vec![Missing::Landlock];
    }
    let abi = ABI::from(have);
    let mut missing = Vec::new();
    let tcp = AccessNet::from_all(REQUIRED_ABI);
    if !AccessNet::from_all(abi).contains(tcp) {
        missing.push(Missing::TcpRules {
            need: introduced(tcp),
            have,
        });
    }
    let wanted = scopes(policy) & Scope::from_all(REQUIRED_ABI);
    if !Scope::from_all(abi).contains(wanted) {
        missing.push(Missing::Scopes {
            need: introduced(wanted),
            have,
        });
    }
    missing
}

/// Whether this thread may empty the capability bounding set.
fn can_drop_bounding() -> bool {
    caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
}

/// What `--sandbox strict` would not get here, checked before anything is
/// applied so that a refusal leaves the process as it was.
pub fn check_strict(policy: &Policy) -> Result<(), String> {
    if policy.mode != SandboxMode::Strict {
        return Ok(());
    }
    let mut missing = missing_at(policy, kernel_abi());
    let bounding_empty = caps::read(None, CapSet::Bounding)
        .map(|s| s.is_empty())
        .unwrap_or(false);
    if !bounding_empty && !can_drop_bounding() {
        missing.push(Missing::Bounding);
    }
    if policy.system_calls.is_some() {
        if let Some(reason) = seccomp::unavailable() {
            missing.push(Missing::Seccomp(reason));
        } else if seccomp::mode() == Ok(seccomp::Mode::Log) {
            missing.push(Missing::Seccomp(log_only()));
        }
    }
    strict_refusal(&missing)
}

fn strict_refusal(missing: &[Missing]) -> Result<(), String> {
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(Missing::to_string).collect();
    Err(format!(
        "--sandbox strict: cannot enforce {}",
        list.join("; ")
    ))
}

fn log_only() -> String {
    format!("log only: {}=log", seccomp::MODE_VARIABLE)
}

/// Confines the calling thread (and every thread it creates later).
pub fn apply(policy: &Policy) -> Result<Report, String> {
    if policy.mode != SandboxMode::Off && policy.system_calls.is_some() {
        // A typo must not weaken the sandbox: refuse before applying any.
        seccomp::mode()?;
    }
    let abi = if policy.mode == SandboxMode::Off {
        0
    } else {
        kernel_abi()
    };
    let mut report = Report {
        abi,
        landlock: None,
        missing: Vec::new(),
        capabilities_kept: Vec::new(),
        no_new_privs: false,
        seccomp: None,
        policy: policy.clone(),
    };
    if policy.mode == SandboxMode::Off {
        return Ok(report);
    }
    report.capabilities_kept = drop_capabilities();
    report.missing = missing_at(policy, abi);
    if abi >= 1 {
        let level = if policy.mode == SandboxMode::Strict {
            CompatLevel::HardRequirement
        } else {
            CompatLevel::BestEffort
        };
        match restrict(policy, ABI::from(abi), level) {
            Ok(status) => {
                report.no_new_privs = status.no_new_privs;
                match &status.ruleset {
                    RulesetStatus::FullyEnforced => {}
                    RulesetStatus::PartiallyEnforced => report.missing.push(Missing::Partial),
                    RulesetStatus::NotEnforced => report.missing.push(Missing::Landlock),
                }
                report.landlock = Some(status.ruleset);
                if let LandlockStatus::Available { effective_abi, .. } = status.landlock {
                    report.abi = report.abi.min(effective_abi as i32);
                }
            }
            Err(e) => report.missing.push(Missing::Failed(e.to_string())),
        }
    }
    if !report.no_new_privs {
        report.no_new_privs = rustix::thread::set_no_new_privs(true).is_ok();
    }
    // Last: from here on, only the calls the relay needs.
    if let Some(profile) = policy.system_calls {
        match seccomp::install(profile) {
            Ok(installed) => {
                if installed.mode == seccomp::Mode::Log {
                    report.missing.push(Missing::Seccomp(log_only()));
                }
                report.seccomp = Some(installed);
            }
            Err(reason) => report.missing.push(Missing::Seccomp(reason)),
        }
    }
    if policy.mode == SandboxMode::Strict {
        let mut problems = report.missing.clone();
        problems.extend(
            report
                .capabilities_kept
                .iter()
                .map(|set| Missing::Capabilities(set_name(*set))),
        );
        if !report.no_new_privs {
            problems.push(Missing::NoNewPrivs);
        }
        strict_refusal(&problems)?;
    }
    Ok(report)
}

/// Empties every capability set, in the order the kernel requires: ambient,
/// bounding (needs CAP_SETPCAP, so before effective), inheritable,
/// permitted, effective. Returns the sets that could not be emptied.
fn drop_capabilities() -> Vec<CapSet> {
    let mut kept = Vec::new();
    for set in [
        CapSet::Ambient,
        CapSet::Bounding,
        CapSet::Inheritable,
        CapSet::Permitted,
        CapSet::Effective,
    ] {
        let already_empty = caps::read(None, set).map(|s| s.is_empty()).unwrap_or(false);
        if already_empty {
            continue;
        }
        if matches!(set, CapSet::Bounding) && !can_drop_bounding() {
            kept.push(set);
            continue;
        }
        if caps::clear(None, set).is_err() {
            kept.push(set);
        }
    }
    kept
}

/// Asks Landlock for every right of `abi` (each at `level`: a hard
/// requirement under `--sandbox strict`, best effort otherwise) and grants
/// back what the policy allows; the status says what the kernel enforced.
fn restrict(
    policy: &Policy,
    abi: ABI,
    level: CompatLevel,
) -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
    let net = AccessNet::from_all(abi);
    let scoped = scopes(policy) & Scope::from_all(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))?;
    if !net.is_empty() {
        ruleset = ruleset.handle_access(net)?;
    }
    if !scoped.is_empty() {
        ruleset = ruleset.scope(scoped)?;
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
    let resolve_unix = AccessFs::from_all(abi) & AccessFs::ResolveUnix;
    if !resolve_unix.is_empty() {
        for dir in &policy.unix_connect_beneath {
            if let Ok(fd) = PathFd::new(dir) {
                created = created.add_rule(PathBeneath::new(fd, resolve_unix))?;
            }
        }
    }
    if net.contains(AccessNet::ConnectTcp) {
        for port in &policy.tcp_connect_ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
    }
    created.restrict_self()
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
            let landlock_complete = self
                .missing
                .iter()
                .all(|m| matches!(m, Missing::Seccomp(_)));
            let state = if landlock_complete {
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
            let abi = ABI::from(self.abi);
            if AccessFs::from_all(abi).contains(AccessFs::ResolveUnix) {
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
            if !AccessNet::from_all(abi).is_empty() {
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
            if !Scope::from_all(abi).is_empty() {
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
                let missing: Vec<String> = self.missing.iter().map(Missing::to_string).collect();
                write!(f, " [not enforced: {}]", missing.join("; "))?;
            }
        }
        let caps = if self.capabilities_kept.is_empty() {
            "none".to_string()
        } else if matches!(self.capabilities_kept.as_slice(), [CapSet::Bounding]) {
            // Unprivileged: nothing is permitted, and no_new_privs keeps it so.
            "none (bounding set unchanged: needs CAP_SETPCAP)".to_string()
        } else {
            let kept: Vec<&str> = self
                .capabilities_kept
                .iter()
                .map(|s| set_name(*s))
                .collect();
            format!("dropped except the {} set", kept.join(", "))
        };
        write!(
            f,
            "; capabilities: {caps}; no_new_privs: {}",
            if self.no_new_privs { "yes" } else { "no" }
        )?;
        if policy.system_calls.is_none() {
            return Ok(());
        }
        match &self.seccomp {
            Some(installed) => {
                write!(f, "; seccomp: {} system calls allowed", installed.allowed)?;
                if installed.mode == seccomp::Mode::Log {
                    write!(
                        f,
                        ", others logged by the kernel and let through ({}=log)",
                        seccomp::MODE_VARIABLE
                    )?;
                }
                Ok(())
            }
            None => {
                let reason = self.missing.iter().find_map(|m| match m {
                    Missing::Seccomp(reason) => Some(reason.as_str()),
                    _ => None,
                });
                match reason {
                    // "not available on riscv64 (…)", "… in this kernel (…)"
                    Some(reason) if reason.starts_with("not available") => {
                        write!(f, "; seccomp: {reason}")
                    }
                    Some(reason) => write!(f, "; seccomp: not installed ({reason})"),
                    None => write!(f, "; seccomp: not installed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(args: &[&str]) -> Policy {
        Policy::derive(&crate::cli::config_for(args))
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
        assert!(missing_at(&p, 7).is_empty());
        assert!(missing_at(&p, 6).is_empty());
        assert_eq!(
            missing_at(&p, 5),
            vec![Missing::Scopes { need: 6, have: 5 }]
        );
        assert_eq!(
            missing_at(&p, 3),
            vec![
                Missing::TcpRules { need: 4, have: 3 },
                Missing::Scopes { need: 6, have: 3 }
            ]
        );
        assert_eq!(missing_at(&p, 0), vec![Missing::Landlock]);
    }

    #[test]
    fn the_line_says_what_became_of_the_seccomp_filter() {
        let report = |seccomp, missing| Report {
            abi: 7,
            landlock: None,
            missing,
            capabilities_kept: Vec::new(),
            no_new_privs: true,
            seccomp,
            policy: policy(&[":0", "127.0.0.1:1"]),
        };
        let installed = |mode| Some(seccomp::Installed { allowed: 68, mode });
        let line = report(installed(seccomp::Mode::Trap), Vec::new()).to_string();
        assert!(
            line.contains("fully enforced") && line.ends_with("; seccomp: 68 system calls allowed"),
            "{line}"
        );
        let line = report(
            installed(seccomp::Mode::Log),
            vec![Missing::Seccomp(log_only())],
        )
        .to_string();
        assert!(
            line.contains("landlock ABI 7 fully enforced")
                && line.contains("[not enforced: seccomp filter (log only")
                && line.contains("68 system calls allowed, others logged by the kernel"),
            "{line}"
        );
        let unavailable = "not available on riscv64 (only x86-64 and aarch64 have a list)";
        let line = report(None, vec![Missing::Seccomp(unavailable.into())]).to_string();
        assert!(
            line.ends_with(&format!("; seccomp: {unavailable}")),
            "{line}"
        );
        let line = report(None, vec![Missing::Seccomp("cannot install".into())]).to_string();
        assert!(
            line.ends_with("; seccomp: not installed (cannot install)"),
            "{line}"
        );
    }

    // What a thread confined with the relay's own policy can still do.
    // These run in the test process: each test confines a thread of its
    // own, which ends with the test.

    use std::net::{TcpListener, TcpStream};
    use std::process::Command;

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let path = std::env::temp_dir().join(unique_name("sandbox-test"));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        fn arg(&self, name: &str) -> String {
            self.join(name).display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn unique_name(tag: &str) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{tag}-{}-{n}", std::process::id())
    }

    fn landlock_abi() -> i32 {
        kernel_abi()
    }

    /// As tests/common's skip: a failure in CI, which must run everything.
    fn skip(reason: &str) {
        assert!(
            std::env::var_os("CI").is_none(),
            "would skip in CI, which must run every test: {reason}"
        );
        eprintln!("skipped: {reason}");
    }

    fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
        result.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn confined_thread_can_reach_connect_and_nothing_else() {
        if landlock_abi() < 6 {
            skip(&format!(
                "needs Landlock ABI 6 (this kernel: {})",
                landlock_abi()
            ));
            return;
        }
        let dir = TempDir::new();
        let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let allowed_port = allowed.local_addr().unwrap().port();
        let other_port = other.local_addr().unwrap().port();
        let outside_abstract = unique_name("outside");
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(outside_abstract.as_bytes())
                    .unwrap();
            std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
        };
        let existing_file = dir.join("secret.txt");
        std::fs::write(&existing_file, "secret").unwrap();
        let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
        let victim_pid = victim.id() as i32;

        let mut policy = policy(&[&dir.arg("relay.sock"), &format!("127.0.0.1:{allowed_port}")]);
        // Landlock alone: the seccomp filter would end the test process at
        // the first forbidden call (src/seccomp.rs tests it on its own).
        policy.system_calls = None;
        let new_socket = dir.join("new.sock");
        let result = std::thread::spawn(move || {
            let report = apply(&policy).expect("apply");
            assert!(report.missing.is_empty(), "{report}");
            let mut failures = Vec::new();
            let mut check = |what: &str, got: Option<i32>, want: i32| {
                if got != Some(want) {
                    failures.push(format!("{what}: got errno {got:?}, want {want}"));
                }
            };
            check(
                "open an existing file",
                errno(std::fs::read(&existing_file)),
                libc::EACCES,
            );
            check(
                "read /etc/passwd",
                errno(std::fs::read("/etc/passwd")),
                libc::EACCES,
            );
            check(
                "create a socket file",
                errno(std::os::unix::net::UnixListener::bind(&new_socket)),
                libc::EACCES,
            );
            check(
                "bind a TCP port",
                errno(TcpListener::bind("127.0.0.1:0")),
                libc::EACCES,
            );
            check(
                "connect to another TCP port",
                errno(TcpStream::connect(("127.0.0.1", other_port))),
                libc::EACCES,
            );
            check(
                "connect to an outside abstract socket",
                errno({
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(
                        outside_abstract.as_bytes(),
                    )
                    .unwrap();
                    std::os::unix::net::UnixStream::connect_addr(&addr)
                }),
                libc::EPERM,
            );
            // SAFETY: kill with a pid and a signal number.
            let killed = unsafe { libc::kill(victim_pid, libc::SIGTERM) };
            check(
                "signal another process",
                (killed != 0)
                    .then(std::io::Error::last_os_error)
                    .and_then(|e| e.raw_os_error()),
                libc::EPERM,
            );
            if let Err(e) = TcpStream::connect(("127.0.0.1", allowed_port)) {
                failures.push(format!("connect to CONNECT's port failed: {e}"));
            }
            // Capabilities, per thread.
            let status = std::fs::read_to_string("/proc/thread-self/status");
            // /proc is not readable once confined: that is the point.
            if status.is_ok() {
                failures.push("read /proc/thread-self/status".into());
            }
            failures
        })
        .join()
        .unwrap();
        let victim_alive = victim.try_wait().unwrap().is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        drop(abstract_listener);
        assert!(result.is_empty(), "the confined thread could: {result:#?}");
        assert!(victim_alive, "the signal must not have been delivered");
        assert!(!dir.join("new.sock").exists());
    }

    #[test]
    fn confined_thread_may_remove_only_beneath_its_socket_directory() {
        if landlock_abi() < 6 {
            skip("needs Landlock ABI 6");
            return;
        }
        let socket_dir = TempDir::new();
        let elsewhere = TempDir::new();
        std::fs::write(socket_dir.join("relay.sock"), "").unwrap();
        std::fs::write(elsewhere.join("keep.txt"), "").unwrap();
        let mut policy = policy(&[&socket_dir.arg("relay.sock"), "@backend"]);
        // Landlock alone: the seccomp filter would end the test process at
        // the first forbidden call (src/seccomp.rs tests it on its own).
        policy.system_calls = None;
        assert!(
            !policy.scope_abstract_unix,
            "an abstract CONNECT stays reachable"
        );
        let (mine, other) = (socket_dir.join("relay.sock"), elsewhere.join("keep.txt"));
        let (removed, kept) = std::thread::spawn(move || {
            apply(&policy).expect("apply");
            (std::fs::remove_file(&mine), std::fs::remove_file(&other))
        })
        .join()
        .unwrap();
        assert!(removed.is_ok(), "{removed:?}");
        assert_eq!(errno(kept), Some(libc::EACCES));
    }
}
