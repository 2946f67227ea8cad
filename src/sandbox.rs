//! Self-confinement, applied once every listener exists and before the first
//! accept, while the process is still single-threaded (capabilities,
//! `no_new_privs`, Landlock and the seccomp filter act on the calling
//! thread; threads created afterwards inherit them).
//!
//! The policy is a plain value derived from the endpoints ([`Policy::derive`]),
//! so it can be logged and tested; [`apply`] then enforces as much of it as
//! the kernel allows and reports what it got.
//!
//! Landlock follows the landlock crate's own model (its `sandboxer`
//! example): ask for the rights of the newest ABI the crate knows, each
//! call at the compatibility level the mode wants (a hard requirement under
//! `--sandbox strict`, best effort otherwise), and report what the
//! `RestrictionStatus` of `restrict_self` says the kernel enforced.

use std::fmt;
use std::path::{Path, PathBuf};

use caps::CapSet;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, PathFd, RestrictSelf, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, RulesetStatus, Scope,
};

use crate::config::{Config, SandboxMode};
use crate::endpoint::{Endpoint, Target, UnixAddr};
use crate::seccomp;

/// Environment variable that caps the Landlock ABI the relay uses, to test
/// older kernels on a new one. It can only weaken the sandbox.
pub const ABI_MAX_VARIABLE: &str = "SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX";

/// The relay asks for the rights of the newest Landlock ABI the landlock
/// crate knows; the kernel enforces those it has.
const TARGET_ABI: ABI = ABI::V9;

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

/// The Landlock rights the relay asks for, grouped by how it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rights {
    /// Every filesystem right but `unix_connect`: nothing beyond the
    /// policy's rules.
    fs: BitFlags<AccessFs>,
    /// TCP bind and connect.
    net: BitFlags<AccessNet>,
    /// The scopes the policy asks for.
    scopes: BitFlags<Scope>,
    /// Connecting to Unix socket files (ABI 9), asked for at best effort in
    /// every mode: no released kernel before it can restrict that, so
    /// `--sandbox strict` cannot require it.
    unix_connect: BitFlags<AccessFs>,
}

impl Rights {
    /// What `policy` asks for among the rights of ABI `abi`.
    fn of(policy: &Policy, abi: ABI) -> Rights {
        let mut fs = AccessFs::from_all(abi);
        let unix_connect = fs & AccessFs::ResolveUnix;
        fs.remove(AccessFs::ResolveUnix);
        Rights {
            fs,
            net: AccessNet::from_all(abi),
            scopes: scopes(policy) & Scope::from_all(abi),
            unix_connect,
        }
    }
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

/// A part of the policy the kernel could not enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No Landlock at all.
    Landlock,
    /// Filesystem rights (truncation, device ioctls, …) that arrived with
    /// ABI `need`.
    Filesystem { need: ABI, have: ABI },
    /// TCP bind/connect rules, which arrived with ABI `need`.
    TcpRules { need: ABI, have: ABI },
    /// Abstract-socket and signal scoping, which arrived with ABI `need`.
    Scopes { need: ABI, have: ABI },
    /// Landlock enforced less than it was asked (per `RestrictionStatus`)
    /// although the kernel's ABI has every right asked for.
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
            Missing::Filesystem { need, have } => write!(
                f,
                "some filesystem rights (need Landlock ABI {need}, have {have})"
            ),
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
    /// The Landlock ABI whose rights the relay got (`Unsupported`: none).
    pub abi: ABI,
    /// Landlock's own word on the ruleset. `PartiallyEnforced` on a kernel
    /// older than ABI 9 (it cannot restrict connecting to Unix socket
    /// files), which [`Report::missing`] does not count.
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

/// The newest ABI the relay asks rights of: [`TARGET_ABI`], or less with
/// [`ABI_MAX_VARIABLE`].
fn abi_cap() -> ABI {
    std::env::var(ABI_MAX_VARIABLE)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(TARGET_ABI, |n| ABI::from(n).min(TARGET_ABI))
}

/// The ABI whose rights the relay gets, as the landlock crate sees the
/// kernel (its `effective_abi`: the newest ABI both know), within `cap`.
/// The number is for the start-up line and strict's refusal only; what is
/// enforced is the crate's business.
fn abi_of(landlock: LandlockStatus, cap: ABI) -> ABI {
    ABI::from(landlock).min(cap)
}

/// [`abi_of`] before anything is applied. A `RestrictSelf` with nothing to
/// apply only asks the kernel for its Landlock version: it sets no
/// `no_new_privs` and restricts nothing.
fn abi_here() -> ABI {
    let landlock = RestrictSelf::default()
        .no_new_privs(false)
        .apply()
        .map_or(LandlockStatus::NotImplemented, |status| status.landlock);
    abi_of(landlock, abi_cap())
}

/// The first ABI that has all of `rights`.
fn introduced<T: Access>(rights: BitFlags<T>) -> ABI {
    (1..=TARGET_ABI as i32)
        .map(ABI::from)
        .find(|abi| T::from_all(*abi).contains(rights))
        .unwrap_or(TARGET_ABI)
}

/// The parts of `policy` that the rights of ABI `abi` cannot enforce:
/// what `--sandbox strict` requires (everything but connecting to Unix
/// socket files). From the crate's tables of each ABI's rights.
fn missing_at(policy: &Policy, abi: ABI) -> Vec<Missing> {
    if abi == ABI::Unsupported {
        return vec![Missing::Landlock];
    }
    let (want, have) = (Rights::of(policy, TARGET_ABI), Rights::of(policy, abi));
    let mut missing = Vec::new();
    if have.fs != want.fs {
        let need = introduced(want.fs);
        missing.push(Missing::Filesystem { need, have: abi });
    }
    if have.net != want.net {
        let need = introduced(want.net);
        missing.push(Missing::TcpRules { need, have: abi });
    }
    if have.scopes != want.scopes {
        let need = introduced(want.scopes);
        missing.push(Missing::Scopes { need, have: abi });
    }
    missing
}

/// What the kernel enforced of a ruleset asked for at ABI `cap`, from the
/// `ruleset` and `landlock` fields of its `RestrictionStatus`: the ABI whose
/// rights the relay got, and the parts of the policy left out.
fn enforced(
    policy: &Policy,
    ruleset: &RulesetStatus,
    landlock: LandlockStatus,
    cap: ABI,
) -> (ABI, Vec<Missing>) {
    let abi = abi_of(landlock, cap);
    let mut missing = missing_at(policy, abi);
    match ruleset {
        RulesetStatus::FullyEnforced => {}
        // A kernel older than `cap` lacks some rights asked for: those
        // strict requires are named above, connecting to Unix socket files
        // is not one of them. Without that excuse, say so.
        RulesetStatus::PartiallyEnforced => {
            if ABI::from(landlock) >= cap {
                missing.push(Missing::Partial);
            }
        }
        RulesetStatus::NotEnforced => {
            if abi != ABI::Unsupported {
                missing.push(Missing::Failed("ruleset not enforced".into()));
            }
        }
    }
    (abi, missing)
}

/// Whether this thread may empty the capability bounding set.
fn can_drop_bounding() -> bool {
    caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
}

/// What `--sandbox strict` would not get here, checked before anything is
/// applied so that a refusal leaves the process as it was. ([`apply`] asks
/// for the same rights as a hard requirement, so the landlock crate
/// refuses too should this check miss something.)
pub fn check_strict(policy: &Policy) -> Result<(), String> {
    if policy.mode != SandboxMode::Strict {
        return Ok(());
    }
    let mut missing = missing_at(policy, abi_here());
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
    let mut report = Report {
        abi: ABI::Unsupported,
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
    let cap = abi_cap();
    if cap == ABI::Unsupported {
        report.missing.push(Missing::Landlock);
    } else {
        match restrict(policy, &Rights::of(policy, cap)) {
            Ok(status) => {
                (report.abi, report.missing) =
                    enforced(policy, &status.ruleset, status.landlock, cap);
                report.no_new_privs = status.no_new_privs;
                report.landlock = Some(status.ruleset);
            }
            Err(e) => {
                report.abi = abi_here();
                report.missing = missing_at(policy, report.abi);
                report.missing.push(Missing::Failed(e.to_string()));
            }
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

/// Asks Landlock for `rights`, each call at its compatibility level (those
/// strict requires as a hard requirement under `--sandbox strict`,
/// connecting to Unix socket files at best effort always), grants back what
/// the policy allows and confines the calling thread.
fn restrict(policy: &Policy, rights: &Rights) -> Result<RestrictionStatus, RulesetError> {
    let level = if policy.mode == SandboxMode::Strict {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(rights.fs)?;
    if !rights.net.is_empty() {
        ruleset = ruleset.handle_access(rights.net)?;
    }
    if !rights.scopes.is_empty() {
        ruleset = ruleset.scope(rights.scopes)?;
    }
    ruleset = ruleset.set_compatibility(CompatLevel::BestEffort);
    if !rights.unix_connect.is_empty() {
        ruleset = ruleset.handle_access(rights.unix_connect)?;
    }
    // Rules only grant: one the kernel cannot take is for a right it does
    // not restrict either.
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
    if !rights.unix_connect.is_empty() {
        for dir in &policy.unix_connect_beneath {
            if let Ok(fd) = PathFd::new(dir) {
                created = created.add_rule(PathBeneath::new(fd, rights.unix_connect))?;
            }
        }
    }
    if rights.net.contains(AccessNet::ConnectTcp) {
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
        if self.abi == ABI::Unsupported {
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
            if AccessFs::from_all(self.abi).contains(AccessFs::ResolveUnix) {
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
            if !AccessNet::from_all(self.abi).is_empty() {
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
            if !Scope::from_all(self.abi).is_empty() {
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
mod confined_tests;

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
        assert!(missing_at(&p, ABI::V9).is_empty());
        assert!(missing_at(&p, ABI::V7).is_empty());
        assert!(missing_at(&p, ABI::V6).is_empty());
        assert_eq!(
            missing_at(&p, ABI::V5),
            vec![Missing::Scopes {
                need: ABI::V6,
                have: ABI::V5
            }]
        );
        assert_eq!(
            missing_at(&p, ABI::V3),
            vec![
                Missing::Filesystem {
                    need: ABI::V5,
                    have: ABI::V3
                },
                Missing::TcpRules {
                    need: ABI::V4,
                    have: ABI::V3
                },
                Missing::Scopes {
                    need: ABI::V6,
                    have: ABI::V3
                }
            ]
        );
        assert_eq!(missing_at(&p, ABI::Unsupported), vec![Missing::Landlock]);
    }

    #[test]
    fn connecting_to_unix_socket_files_is_asked_apart() {
        let p = policy(&[":0", "/run/app/app.sock"]);
        let rights = Rights::of(&p, TARGET_ABI);
        assert_eq!(rights.unix_connect, AccessFs::ResolveUnix);
        assert!(!rights.fs.contains(AccessFs::ResolveUnix));
        assert_eq!(
            rights.fs | rights.unix_connect,
            AccessFs::from_all(TARGET_ABI)
        );
        assert!(Rights::of(&p, ABI::V7).unix_connect.is_empty());
    }

    /// The start-up line and strict's verdict from a `RestrictionStatus`'s
    /// `ruleset` and `landlock` fields (the struct itself is
    /// `non_exhaustive`), as an older or newer kernel would report them.
    fn line_from(
        policy: &Policy,
        ruleset: RulesetStatus,
        landlock: LandlockStatus,
        cap: ABI,
    ) -> (String, Result<(), String>) {
        let (abi, missing) = enforced(policy, &ruleset, landlock, cap);
        let verdict = strict_refusal(&missing);
        let report = Report {
            abi,
            landlock: Some(ruleset),
            missing,
            capabilities_kept: Vec::new(),
            no_new_privs: true,
            seccomp: None,
            policy: Policy {
                system_calls: None,
                ..policy.clone()
            },
        };
        (report.to_string(), verdict)
    }

    fn kernel(abi: ABI) -> LandlockStatus {
        LandlockStatus::Available {
            effective_abi: abi,
            kernel_abi: None,
        }
    }

    #[test]
    fn the_line_says_what_the_kernel_enforced() {
        use RulesetStatus::*;
        let p = policy(&[":0", "127.0.0.1:8000"]);
        // ABI 7: everything but connecting to Unix socket files, which the
        // crate counts as partial and strict does not require.
        let (line, strict) = line_from(&p, PartiallyEnforced, kernel(ABI::V7), TARGET_ABI);
        assert_eq!(
            line,
            "sandbox: landlock ABI 7 fully enforced (fs: none; tcp bind: none; \
             tcp connect: 8000; scoped: abstract-unix, signal); capabilities: none; \
             no_new_privs: yes"
        );
        assert_eq!(strict, Ok(()));
        // An older kernel.
        let (line, strict) = line_from(&p, PartiallyEnforced, kernel(ABI::V5), TARGET_ABI);
        assert!(
            line.starts_with("sandbox: landlock ABI 5 partially enforced (fs: none; tcp bind")
                && line.contains(
                    "[not enforced: abstract-unix and signal scoping \
                     (need Landlock ABI 6, have 5)]"
                ),
            "{line}"
        );
        let strict = strict.unwrap_err();
        assert!(
            strict.starts_with("--sandbox strict: cannot enforce ")
                && strict.contains("scoping (need Landlock ABI 6, have 5)"),
            "{strict}"
        );
        // Much older: no TCP rules, so the line names no ports.
        let (line, _) = line_from(&p, PartiallyEnforced, kernel(ABI::V3), TARGET_ABI);
        assert!(
            line.starts_with("sandbox: landlock ABI 3 partially enforced (fs: none)")
                && line.contains("tcp bind/connect rules (need Landlock ABI 4, have 3)"),
            "{line}"
        );
        // The cap on a newer kernel: what the kernel enforced is all that
        // was asked, and that is not all the policy needs.
        let (line, strict) = line_from(&p, FullyEnforced, kernel(ABI::V7), ABI::V5);
        assert!(line.contains("landlock ABI 5 partially enforced"), "{line}");
        assert!(strict.is_err());
        // No Landlock.
        let (line, strict) = line_from(&p, NotEnforced, LandlockStatus::NotEnabled, TARGET_ABI);
        assert!(
            line.starts_with("sandbox: landlock not available;"),
            "{line}"
        );
        assert!(
            strict
                .unwrap_err()
                .contains("landlock (not available in this kernel)"),
            "strict refuses"
        );
    }

    #[test]
    fn a_partial_ruleset_on_a_kernel_with_every_right_is_reported() {
        let p = policy(&[":0", "127.0.0.1:8000"]);
        let (abi, missing) = enforced(
            &p,
            &RulesetStatus::PartiallyEnforced,
            kernel(ABI::V9),
            TARGET_ABI,
        );
        assert_eq!((abi, missing), (ABI::V9, vec![Missing::Partial]));
        let (abi, missing) = enforced(
            &p,
            &RulesetStatus::PartiallyEnforced,
            kernel(ABI::V7),
            ABI::V6,
        );
        assert_eq!((abi, missing), (ABI::V6, vec![Missing::Partial]));
    }

    #[test]
    fn a_kernel_newer_than_the_crate_gets_the_newest_rights_the_crate_knows() {
        let p = policy(&[":0", "/run/app/app.sock"]);
        let newer = LandlockStatus::Available {
            effective_abi: ABI::V9,
            kernel_abi: Some(10),
        };
        let (line, strict) = line_from(&p, RulesetStatus::FullyEnforced, newer, TARGET_ABI);
        assert!(
            line.starts_with(
                "sandbox: landlock ABI 9 fully enforced (fs: unix connect beneath /run/app; \
                 tcp bind: none; tcp connect: none"
            ),
            "{line}"
        );
        assert_eq!(strict, Ok(()));
    }

    #[test]
    fn the_line_says_what_became_of_the_seccomp_filter() {
        let report = |seccomp, missing| Report {
            abi: ABI::V7,
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
}
