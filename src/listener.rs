//! Opening LISTEN: binding TCP and Unix sockets, taking over inherited ones
//! (systemd socket activation, `fd:N`), replacing stale socket files and
//! removing the socket file the relay created when it exits.
//!
//! Everything here uses blocking std/socket2 calls on purpose: it runs
//! before the async runtime starts, while the process is single-threaded, so
//! that the sandbox applied afterwards covers every thread.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::endpoint::{Endpoint, Host, UnixAddr, abstract_addr, display_addr};
use crate::failure::Failure;
use crate::passed::Passed;

/// A socket to accept connections on.
pub struct Listener {
    /// The listening socket (blocking until the server converts it).
    pub socket: Socket,
    /// The bound address as printed in `listening on ADDR`.
    pub address: String,
    /// The socket file this relay created, removed when the listener is dropped.
    file: Option<SocketFile>,
    /// Adopted from systemd's file descriptor store, where it stays.
    pub from_store: bool,
}

/// What LISTEN gave: sockets to serve, or one already accepted connection
/// (`fd:N` or `sd-listen` with `Accept=yes`, inetd, s6-tcpserver).
pub enum Opened {
    Listeners(Listeners),
    Connection(Socket),
}

/// One listener or more, by construction.
pub struct Listeners {
    first: Listener,
    rest: Vec<Listener>,
}

impl Listeners {
    /// `None` for an empty list.
    fn from_vec(mut all: Vec<Listener>) -> Option<Listeners> {
        if all.is_empty() {
            return None;
        }
        let first = all.remove(0);
        Some(Listeners { first, rest: all })
    }

    fn one(listener: Listener) -> Listeners {
        Listeners {
            first: listener,
            rest: Vec::new(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        std::iter::once(&self.first).chain(&self.rest)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Listener> {
        std::iter::once(&mut self.first).chain(&mut self.rest)
    }

    /// The first listener and the others.
    pub fn into_parts(self) -> (Listener, Vec<Listener>) {
        (self.first, self.rest)
    }
}

/// Options that shape a socket file the relay creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOptions {
    pub mode: Option<u32>,
    pub group: Option<libc::gid_t>,
}

/// The name listeners are stored under in systemd's file descriptor store,
/// and passed back under at the next start (`LISTEN_FDNAMES`).
pub const STORED_NAME: &str = "listener";

/// Opens LISTEN. Nothing is left behind on failure: a socket file created
/// before a later step failed is removed again by [`Listener`]'s drop.
/// Listeners a previous instance left in systemd's file descriptor store
/// are adopted instead of bound again, when they are LISTEN's; those that
/// LISTEN no longer names are closed first (see [`Opened::stale`]).
/// LISTEN takes what it needs of the `passed` descriptors.
pub fn open(
    endpoint: &Endpoint,
    file_options: FileOptions,
    passed: &mut Vec<Passed>,
) -> Result<(Opened, Stale), Failure> {
    let (adopted, stale) = adopt_stored(endpoint, passed)?;
    if let Some(listeners) = adopted {
        return Ok((Opened::Listeners(listeners), stale));
    }
    open_anew(endpoint, file_options, passed).map(|opened| (opened, stale))
}

/// What `--check` can tell of LISTEN without binding or touching anything:
/// a name that resolves, a socket path whose directory exists and which is
/// free or a socket (served now, by the running instance). Inherited
/// sockets are the service manager's to pass at the start: nothing to check.
pub fn check(endpoint: &Endpoint) -> Result<(), Failure> {
    let failure = |what: String| Failure::Startup(format!("cannot listen on {endpoint}: {what}"));
    match endpoint {
        Endpoint::Tcp {
            host: host @ Host::Name(_),
            port,
        } if wanted_ips(host, *port).is_empty() => {
            return Err(failure("the name resolves to no address".into()));
        }
        Endpoint::Unix(UnixAddr::Path(path)) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !std::fs::metadata(parent).is_ok_and(|m| m.is_dir()) {
                return Err(failure(format!(
                    "directory {} does not exist",
                    parent.display()
                )));
            }
            match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_socket() => {
                    return Err(failure(
                        "the path exists and is not a socket; not touching it".into(),
                    ));
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Stored listeners that LISTEN no longer names, closed: their entries are
/// to leave systemd's store (all listeners share one name there).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stale(pub usize);

fn open_anew(
    endpoint: &Endpoint,
    file_options: FileOptions,
    passed: &mut Vec<Passed>,
) -> Result<Opened, Failure> {
    let listeners = match endpoint {
        Endpoint::Tcp { host, port } => {
            Listeners::from_vec(bind_tcp(host, *port)?).ok_or_else(|| {
                Failure::Startup(format!(
                    "cannot listen on {endpoint}: the name resolved to no address"
                ))
            })?
        }
        Endpoint::Unix(UnixAddr::Path(path)) => Listeners::one(bind_unix_path(path, file_options)?),
        Endpoint::Unix(UnixAddr::Abstract(name)) => Listeners::one(bind_abstract(name)?),
        Endpoint::SdListen(name) => return inherit_systemd(name.as_deref(), passed),
        Endpoint::Fd(fd) => return inherit_fd(*fd, &endpoint.to_string(), passed),
    };
    Ok(Opened::Listeners(listeners))
}

impl Listener {
    fn new(socket: Socket, file: Option<SocketFile>) -> Result<Listener, Failure> {
        let address = socket
            .local_addr()
            .map(|a| display_addr(&a))
            .map_err(|e| Failure::Startup(format!("cannot read the listening address: {e}")))?;
        Ok(Listener {
            socket,
            address,
            file,
            from_store: false,
        })
    }

    /// Leaves the socket file in place at exit: the listener lives on in
    /// systemd's file descriptor store, for the next instance.
    pub fn keep_file(&mut self) {
        if let Some(file) = self.file.take() {
            std::mem::forget(file);
        }
    }

    /// Splits off the socket, keeping the file guard, for conversion to async.
    pub fn into_parts(self) -> (Socket, String, Option<SocketFile>) {
        (self.socket, self.address, self.file)
    }
}

/// Backlog for every listener: the kernel clamps it to `net.core.somaxconn`.
/// A deep queue is what lets clients wait at `--connections-max` instead of
/// being refused.
const BACKLOG: i32 = libc::SOMAXCONN;

fn bind_tcp(host: &Host, port: u16) -> Result<Vec<Listener>, Failure> {
    let addresses: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Any => vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)],
        Host::Name(name) => {
            let mut found: Vec<SocketAddr> = (name.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| Failure::Startup(format!("cannot resolve '{name}': {e}")))?
                .collect();
            found.dedup();
            found
        }
    };
    let mut listeners: Vec<Listener> = Vec::new();
    for mut address in addresses {
        // With port 0 on several addresses (localhost), all share the port
        // the kernel picked for the first.
        if let Some(first) = listeners.first() {
            address.set_port(
                first
                    .socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or(port, |a| a.port()),
            );
        }
        let socket = match bind_tcp_one(address, matches!(host, Host::Any)) {
            Err(e) if matches!(host, Host::Any) && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                // No IPv6 on this machine: all IPv4 interfaces it is.
                bind_tcp_one(
                    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
                    false,
                )
            }
            other => other,
        }
        .map_err(|e| Failure::Startup(format!("cannot listen on {address}: {}", explain(&e))))?;
        listeners.push(Listener::new(socket, None)?);
    }
    Ok(listeners)
}

fn bind_tcp_one(address: SocketAddr, dual_stack: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM.cloexec(), None)?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Restarting the relay must not fail on connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

fn bind_abstract(name: &[u8]) -> Result<Listener, Failure> {
    let display = format!("@{}", String::from_utf8_lossy(name));
    let address = abstract_addr(name).map_err(|e| Failure::Startup(format!("{display}: {e}")))?;
    let socket = (|| {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        socket.bind(&address)?;
        socket.listen(BACKLOG)?;
        Ok(socket)
    })()
    .map_err(|e: io::Error| {
        Failure::Startup(format!("cannot listen on {display}: {}", explain(&e)))
    })?;
    Listener::new(socket, None)
}

fn bind_unix_path(path: &Path, options: FileOptions) -> Result<Listener, Failure> {
    let failure =
        |what: String| Failure::Startup(format!("cannot listen on {}: {what}", path.display()));
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failure(e.to_string())),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(failure(
                "the path exists and is not a socket; not touching it".into(),
            ));
        }
        Ok(_) => match probe(path) {
            Ok(()) => return Err(failure("already in use by another process".into())),
            // A full backlog: somebody listens there, and is busy.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                return Err(failure(
                    "already in use by another process (its backlog is full)".into(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Nobody accepts on it: a stale socket left by a crash.
                std::fs::remove_file(path)
                    .map_err(|e| failure(format!("cannot remove the stale socket: {e}")))?;
                crate::info!("replaced stale socket {}", path.display());
            }
            Err(e) => {
                return Err(failure(format!(
                    "a socket exists there and connecting to it failed: {e}"
                )));
            }
        },
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)
        .map_err(|e| failure(e.to_string()))?;
    let address = SockAddr::unix(path).map_err(|e| failure(e.to_string()))?;
    // The file gets its mode when bind creates it; a matching umask makes it
    // never exist with wider permissions, not even for an instant.
    // (umask is process-wide: fine, the process is single-threaded here.)
    let old_umask = options
        .mode
        .map(|mode| rustix::process::umask(rustix::fs::Mode::from_raw_mode(!mode & 0o777)));
    let bound = socket.bind(&address);
    if let Some(old) = old_umask {
        rustix::process::umask(old);
    }
    bound.map_err(|e| {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // ENOENT means a missing directory only if it is missing indeed.
        if e.kind() == io::ErrorKind::NotFound && std::fs::symlink_metadata(parent).is_err() {
            failure(format!("directory {} does not exist", parent.display()))
        } else {
            failure(explain(&e))
        }
    })?;
    let file = SocketFile::created(path.to_path_buf()).map_err(|e| failure(e.to_string()))?;
    if let Some(mode) = options.mode {
        chmod(path, mode).map_err(|e| failure(format!("cannot set mode {mode:04o}: {e}")))?;
    }
    if let Some(gid) = options.group {
        chown_group(path, gid).map_err(|e| failure(format!("cannot set group {gid}: {e}")))?;
    }
    socket.listen(BACKLOG).map_err(|e| failure(explain(&e)))?;
    Listener::new(socket, Some(file))
}

/// Connects to an existing socket file without blocking: a blocking
/// `connect()` to a listener whose backlog is full would wait forever.
/// `Ok` means somebody accepts there; `ECONNREFUSED`, that nobody does.
fn probe(path: &Path) -> io::Result<()> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec().nonblocking(), None)?;
    socket.connect(&SockAddr::unix(path)?)
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Sets the group of the socket file itself (not of a symlink's target).
fn chown_group(path: &Path, gid: libc::gid_t) -> io::Result<()> {
    let gid = rustix::fs::Gid::from_raw(gid);
    Ok(rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        None,
        Some(gid),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// A socket file the relay created; removed on drop if it is still the same
/// file (another process may have replaced it meanwhile).
pub struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl SocketFile {
    fn created(path: PathBuf) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(SocketFile {
            path,
            device: meta.dev(),
            inode: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let same = std::fs::symlink_metadata(&self.path)
            .map(|m| m.dev() == self.device && m.ino() == self.inode)
            .unwrap_or(false);
        if same && let Err(e) = std::fs::remove_file(&self.path) {
            crate::warn!("cannot remove socket file {}: {e}", self.path.display());
        }
    }
}

fn inherit_systemd(name: Option<&str>, passed: &mut Vec<Passed>) -> Result<Opened, Failure> {
    let usage = |reason: String| {
        Failure::Usage(format!(
            "LISTEN '{}': {reason}",
            name.map_or("sd-listen".into(), |n| format!("sd-listen:{n}"))
        ))
    };
    if passed.is_empty() {
        return Err(usage(
            "no sockets were passed (LISTEN_FDS not set, or LISTEN_PID names another process)"
                .into(),
        ));
    }
    // A stored connection is not a socket to listen on (crate::handover).
    let chosen = crate::passed::claim(passed, |p| {
        !crate::handover::is_connection_name(&p.name) && name.is_none_or(|n| p.name == n)
    });
    if chosen.is_empty() {
        return Err(usage(
            "no passed socket has that FileDescriptorName=".into(),
        ));
    }
    let mut listeners = Vec::new();
    let mut connections = Vec::new();
    for Passed {
        number,
        name: fd_name,
        fd,
    } in chosen
    {
        match adopt(fd).map_err(|r| usage(format!("passed fd {number} ({fd_name}) {r}")))? {
            (socket, true) => listeners.push(Listener::new(socket, None)?),
            (socket, false) => connections.push(socket),
        }
    }
    let mixed = || {
        usage("mixes connected and listening sockets; pass one connection (Accept=yes) or listening sockets".into())
    };
    match (Listeners::from_vec(listeners), connections.pop()) {
        (Some(listeners), None) => Ok(Opened::Listeners(listeners)),
        (None, Some(connection)) if connections.is_empty() => Ok(Opened::Connection(connection)),
        _ => Err(mixed()),
    }
}

/// The listeners of LISTEN that systemd passed back from its file
/// descriptor store, if every one is there: a TCP LISTEN whose addresses
/// all match (any port for port 0), the same socket path (whose file still
/// exists) or abstract name. `None`: bind as usual. The other stored
/// listeners are closed, with their socket files: clients that connect to
/// them would wait for ever.
fn adopt_stored(
    endpoint: &Endpoint,
    passed: &mut Vec<Passed>,
) -> Result<(Option<Listeners>, Stale), Failure> {
    if !matches!(endpoint, Endpoint::Tcp { .. } | Endpoint::Unix(_)) {
        return Ok((None, Stale(0)));
    }
    let stored = crate::passed::claim(passed, |p| p.name == STORED_NAME);
    if stored.is_empty() {
        return Ok((None, Stale(0)));
    }
    let mut sockets = Vec::new();
    for Passed { number, fd, .. } in stored {
        match adopt(fd) {
            Ok((socket, true)) => sockets.push(socket),
            Ok((socket, false)) => drop(socket),
            Err(reason) => crate::warn!("stored descriptor {number} {reason}: ignored"),
        }
    }
    let local = |s: &Socket| s.local_addr().ok();
    let named = |s: &Socket| -> bool {
        let Some(address) = local(s) else {
            return false;
        };
        match endpoint {
            Endpoint::Tcp { host, port } => address.as_socket().is_some_and(|a| {
                wanted_ips(host, *port).contains(&a.ip()) && (*port == 0 || a.port() == *port)
            }),
            Endpoint::Unix(UnixAddr::Path(path)) => address.as_pathname() == Some(path.as_path()),
            Endpoint::Unix(UnixAddr::Abstract(name)) => {
                address.as_abstract_namespace() == Some(name.as_slice())
            }
            _ => false,
        }
    };
    let (mut found, stale): (Vec<Socket>, Vec<Socket>) = sockets.into_iter().partition(named);
    let complete = match endpoint {
        Endpoint::Tcp { host, port } => {
            let wanted = wanted_ips(host, *port);
            !wanted.is_empty() && found.len() == wanted.len()
        }
        Endpoint::Unix(UnixAddr::Path(path)) => {
            std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
                && found.len() == 1
        }
        _ => found.len() == 1,
    };
    let mut stale = stale;
    if !complete {
        stale.append(&mut found);
    }
    let closed = close_stale(stale);
    if !complete {
        return Ok((None, closed));
    }
    let listeners = found
        .into_iter()
        .map(|socket| {
            Listener::new(socket, None).map(|listener| Listener {
                from_store: true,
                ..listener
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for listener in &listeners {
        crate::info!(
            "adopted {} from the file descriptor store (not bound again)",
            listener.address
        );
    }
    Ok((Listeners::from_vec(listeners), closed))
}

/// The addresses a TCP LISTEN binds.
fn wanted_ips(host: &Host, port: u16) -> Vec<IpAddr> {
    match host {
        Host::Ip(ip) => vec![*ip],
        Host::Any => vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
        Host::Name(name) => (name.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    }
}

/// Closes stored listeners that LISTEN does not name (any clients waiting
/// in their backlogs get a reset instead of waiting for ever), and removes
/// the socket file of each one whose file still leads to it: a probe
/// connected through the file is found in its backlog.
fn close_stale(stale: Vec<Socket>) -> Stale {
    if stale.is_empty() {
        return Stale(0);
    }
    let mut addresses = Vec::new();
    for socket in stale {
        let address = socket.local_addr().ok();
        addresses.push(address.as_ref().map(display_addr).unwrap_or_default());
        if let Some(path) = address.as_ref().and_then(|a| a.as_pathname())
            && leads_to(path, &socket)
            && let Err(e) = std::fs::remove_file(path)
        {
            crate::warn!("cannot remove socket file {}: {e}", path.display());
        }
    }
    crate::info!(
        "closed {} stored listener{} that LISTEN no longer names, and removed {} from the store: {}",
        addresses.len(),
        if addresses.len() == 1 { "" } else { "s" },
        if addresses.len() == 1 { "it" } else { "them" },
        addresses.join(", ")
    );
    Stale(addresses.len())
}

/// Whether connecting to `path` reaches `listener` (and not a socket that
/// another process has bound there since).
fn leads_to(path: &Path, listener: &Socket) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket || listener.set_nonblocking(true).is_err() {
        return false;
    }
    let Ok(probe) = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None) else {
        return false;
    };
    let Ok(address) = SockAddr::unix(path) else {
        return false;
    };
    if probe.connect(&address).is_err() {
        return false;
    }
    let me = std::process::id() as libc::pid_t;
    // The backlog may hold real clients too: the probe is the one whose
    // peer is this process.
    while let Ok((client, _)) = listener.accept() {
        if crate::peer::credentials(&client).is_ok_and(|c| c.pid == me) {
            return true;
        }
    }
    false
}

fn inherit_fd(number: RawFd, argument: &str, passed: &mut Vec<Passed>) -> Result<Opened, Failure> {
    // One of the descriptors socket activation passed, or one of its own.
    let fd = match crate::passed::claim(passed, |p| p.number == number).pop() {
        Some(passed) => passed.fd,
        None => crate::passed::take(number),
    };
    let (socket, listening) =
        adopt(fd).map_err(|r| Failure::Usage(format!("LISTEN '{argument}': fd {number} {r}")))?;
    if listening {
        Ok(Opened::Listeners(Listeners::one(Listener::new(
            socket, None,
        )?)))
    } else {
        Ok(Opened::Connection(socket))
    }
}

/// Takes an inherited descriptor as a socket if it is a stream socket that
/// listens or is connected; tells whether it is listening. (Anything else
/// is closed: a usage error or a warning follows.)
fn adopt(fd: Option<OwnedFd>) -> Result<(Socket, bool), String> {
    let fd = fd.ok_or("is not open")?;
    let socket = Socket::from(fd);
    match socket.r#type() {
        Err(_) => return Err("is not a socket".into()),
        Ok(kind) if kind != Type::STREAM => return Err("is not a stream socket".into()),
        Ok(_) => {}
    }
    let listening = socket.is_listener().map_err(|e| e.to_string())?;
    if !listening && let Err(e) = socket.peer_addr() {
        return Err(format!("is neither listening nor connected ({e})"));
    }
    Ok((socket, listening))
}

/// An error with a hint for the usual startup mistakes.
fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!("{e}: the address is already in use"),
        Some(libc::EACCES) if e.kind() == io::ErrorKind::PermissionDenied => {
            format!("{e}: not allowed (privileged port or directory permissions?)")
        }
        Some(libc::EADDRNOTAVAIL) => format!("{e}: no such local address"),
        Some(libc::ENOTDIR) => format!("{e}: a component of the path is not a directory"),
        Some(libc::EROFS) => format!("{e}: the file system is read-only"),
        _ => e.to_string(),
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Listener({})", self.address)
    }
}
