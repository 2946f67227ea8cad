//! What the relay is asked to do, validated: the [`Config`] the command line
//! is turned into (by `cli`) and everything else reads.

use std::time::Duration;

use crate::endpoint::{Endpoint, Target};
use crate::log::Level;
use crate::peer::Allowlist;
use crate::proxy::ProxyVersion;
use crate::timespan::Span;

/// How hard the relay confines itself after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Enforce what the kernel supports, warn about the rest.
    BestEffort,
    /// Refuse to start unless everything is enforced.
    Strict,
    /// No self-confinement (with a warning).
    Off,
}

/// Everything the relay needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Endpoint,
    pub connect: Target,
    pub connections_max: usize,
    pub connect_timeout: Span,
    pub idle_timeout: Span,
    pub exit_idle_time: Span,
    pub shutdown_timeout: Span,
    /// Permissions of a socket file the relay creates.
    pub socket_mode: Option<u32>,
    /// Group of a socket file the relay creates.
    pub socket_group: Option<libc::gid_t>,
    pub sandbox: SandboxMode,
    /// Send CONNECT a PROXY protocol header first.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Which Unix clients may connect.
    pub allow: Allowlist,
    /// Retry a refused or missing CONNECT until `connect_timeout`.
    pub connect_retry: bool,
    /// Store the listeners in systemd's file descriptor store.
    pub fd_store: bool,
    /// `SO_KEEPALIVE` on TCP sockets, with this idle time before the first probe.
    pub keepalive: Option<Duration>,
    /// Where to write a newline once ready (s6's `notification-fd`).
    pub ready_fd: Option<std::os::fd::RawFd>,
    /// Only check the configuration (`--check`), touching nothing.
    pub check: bool,
    pub level: Level,
    /// Start log lines with a timestamp (outside the journal).
    pub log_time: bool,
}
