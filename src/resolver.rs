//! Host names for CONNECT, resolved at each connect by a helper process of
//! the relay's own.
//!
//! Landlock rules name inodes: a relay allowed to read `/etc/hosts` loses it
//! when an editor, resolvconf or NetworkManager replaces the file by rename,
//! or systemd-resolved points the `/etc/resolv.conf` symlink elsewhere. So
//! the relay itself reads no file at all, and a helper does the look-ups
//! under a policy of its own ([`Policy::resolver`]): read any file, connect
//! to Unix sockets and TCP port 53, nothing else (no write, no bind, no
//! signal, no capability). The helper is this program again, executed
//! afresh from `/proc/self/exe` before the relay's sandbox (which forbids
//! exec), under a name no user gives it ([`HELPER_NAME`], then
//! [`HELPER_ARGUMENT`]), with an empty environment and its end of a socket
//! pair as standard input: it shares no memory, no thread and no
//! descriptor with the relay, and only ever hears from it over that
//! socket: `id, port, name` in, one datagram; `id, addresses` (in as many
//! datagrams as they need) or `id, error` out. A small pool of the
//! helper's threads runs the look-ups, so a slow DNS server delays only the
//! connections waiting for it, and a flood of queries costs the helper a
//! bounded number of threads.
//!
//! The helper ignores stop signals (and SIGHUP, SIGUSR2) and dies with the relay (end of file on
//! its socket, and `PR_SET_PDEATHSIG`), so that stopping a unit, which
//! signals every process of it at once, never ends the helper first. If it
//! dies anyway (the OOM killer, an operator's `kill -9`), the relay does not
//! start another: by then it is sandboxed (exec is forbidden). It reaps the
//! helper, fails every waiting look-up with how the helper died, and
//! [`failed`] tells the accept loop, which ends the relay with a non-zero
//! status for its supervisor to restart it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use rustix::process::Pid;
use socket2::{Domain, Socket, Type};

use crate::config::SandboxMode;
use crate::failure::Failure;
use crate::sandbox::{self, Policy};
use crate::{log, seccomp};

/// The helper's `argv[0]`: what `ps` shows for it.
const HELPER_NAME: &str = "simpletcpunixrelay: resolver";
/// The helper's first argument. With [`HELPER_NAME`] it makes the program
/// the helper before the command line is parsed, so it is neither in
/// `--help` nor in the completions, and nobody types both by accident.
const HELPER_ARGUMENT: &str = "--resolver-helper";

/// The largest datagram either side sends: a query (a host name is at most
/// 253 bytes), an error message, or one part of an answer (107 addresses of
/// 19 bytes each; a longer answer takes several parts).
const DATAGRAM_MAX: usize = 2048;
/// The longest host name DNS allows.
const NAME_MAX: usize = 253;
/// Bytes of one address in an answer: family, 16 address bytes, port.
const RECORD: usize = 19;
/// Bytes before the records or the message: id and kind.
const HEADER: usize = 5;
/// How many look-ups the helper runs at once; further queries wait their
/// turn (a slow name server delays them, it does not multiply threads).
const LOOKUPS_AT_ONCE: usize = 8;
/// How many queries wait in the helper for a free thread before it stops
/// reading more (the relay's sends then wait too).
const QUEUE_MAX: usize = 256;
/// How long the relay waits at start-up for the helper to say it is
/// confined (or why not).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay waits for a helper whose socket ended to be reapable
/// (it closes its descriptors on its way out, a moment before it is).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Kinds of answer datagrams.
const ADDRESSES_LAST: u8 = 0;
const ERROR: u8 = 1;
const ADDRESSES_MORE: u8 = 2;

/// The relay's end of the socket pair and the helper, until [`start`]
/// takes them.
static HELPER: Mutex<Option<(Socket, Child)>> = Mutex::new(None);

thread_local! {
    static CLIENT: RefCell<Option<Rc<Client>>> = const { RefCell::new(None) };
}

/// The relay's side once the runtime runs.
struct Client {
    socket: Async<Socket>,
    next_id: Cell<u32>,
    waiting: RefCell<HashMap<u32, Waiting>>,
    /// Why the helper is gone, once it is.
    reason: RefCell<Option<String>>,
    /// Closed (never sent on) once the helper is gone and `reason` is set.
    gone: async_channel::Receiver<()>,
}

/// A look-up the relay waits for: the addresses received so far, and where
/// the whole answer goes.
struct Waiting {
    addresses: Vec<SocketAddr>,
    answer: async_channel::Sender<io::Result<Vec<SocketAddr>>>,
}

/// Starts the helper. Call before the sandbox, which forbids exec.
pub fn spawn(mode: SandboxMode) -> Result<(), Failure> {
    let failure = |e: io::Error| Failure::Startup(format!("cannot start the resolver: {e}"));
    let (relay_end, helper_end) =
        Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(failure)?;
    let log = if log::to_journal() {
        "journal"
    } else if log::timestamps() {
        "timestamps"
    } else {
        "plain"
    };
    // /proc/self/exe itself, not the path it links to: the binary on disk
    // may have been replaced (an upgrade) since the relay started.
    let mut command = Command::new(SELF);
    command
        .arg0(HELPER_NAME)
        .arg(HELPER_ARGUMENT)
        .arg(format!("parent={}", std::process::id()))
        .arg(format!("sandbox={}", mode_name(mode)))
        .arg(format!("log={log}"))
        .env_clear()
        .envs(helper_environment())
        .stdin(Stdio::from(OwnedFd::from(helper_end)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command
        .spawn()
        .map_err(|e| Failure::Startup(cannot_execute(&e)))?;
    // The command holds the helper's end: it must go, or the helper's
    // death would never end the relay's reads.
    drop(command);
    // The helper's first datagram: confined, or why not.
    relay_end
        .set_read_timeout(Some(START_TIMEOUT))
        .map_err(failure)?;
    let mut buffer = [0u8; DATAGRAM_MAX];
    let n = rustix::net::recv(&relay_end, &mut buffer, rustix::net::RecvFlags::empty())
        .map_err(|e| failure(e.into()))?
        .0;
    let report = String::from_utf8_lossy(&buffer[..n]).into_owned();
    match report.strip_prefix("error: ") {
        Some(reason) => return Err(Failure::Startup(reason.to_owned())),
        None if report.is_empty() => {
            return Err(failure(io::Error::other("it exited at once")));
        }
        None => crate::debug!("resolver {report}"),
    }
    relay_end.set_read_timeout(None).map_err(failure)?;
    relay_end.set_nonblocking(true).map_err(failure)?;
    *HELPER.lock().expect("not poisoned") = Some((relay_end, child));
    Ok(())
}

/// Glibc's resolver options: resolv.conf(5)'s `LOCALDOMAIN` and
/// `RES_OPTIONS`, hostname(7)'s `HOSTALIASES`.
const RESOLVER_VARIABLES: [&str; 3] = ["LOCALDOMAIN", "RES_OPTIONS", "HOSTALIASES"];

/// The helper's environment: of the relay's, only what its look-ups and
/// its own sandbox read (the variables that cap Landlock's ABI and set the
/// seccomp filter's mode), where set.
fn helper_environment() -> impl Iterator<Item = (&'static str, String)> {
    let names = RESOLVER_VARIABLES
        .into_iter()
        .chain([sandbox::ABI_MAX_VARIABLE]);
    names
        .filter_map(|name| Some((name, std::env::var(name).ok()?)))
        .chain(seccomp::variables())
}

/// The helper is the relay's own binary, executed through /proc.
const SELF: &str = "/proc/self/exe";

/// Why the helper cannot be executed, naming what it takes.
fn cannot_execute(e: &io::Error) -> String {
    format!(
        "cannot start the resolver helper: {SELF}: {e} (a host-name CONNECT needs /proc mounted, to execute the relay's own binary)"
    )
}

/// `--check`: whether the helper could be started (nothing is executed).
pub fn check() -> Result<(), Failure> {
    rustix::fs::access(SELF, rustix::fs::Access::EXEC_OK)
        .map_err(|e| Failure::Startup(cannot_execute(&e.into())))
}

const MODES: [SandboxMode; 3] = [
    SandboxMode::BestEffort,
    SandboxMode::Strict,
    SandboxMode::Off,
];

/// `--sandbox`'s value for `mode`.
fn mode_name(mode: SandboxMode) -> &'static str {
    match mode {
        SandboxMode::BestEffort => "best-effort",
        SandboxMode::Strict => "strict",
        SandboxMode::Off => "off",
    }
}

/// Registers the relay's end with the reactor and starts the task that
/// hands each answer to the connection waiting for it, and notices the
/// helper's death. Call on the runtime's thread.
pub fn start() -> Result<(), Failure> {
    let Some((socket, child)) = HELPER.lock().expect("not poisoned").take() else {
        return Ok(());
    };
    let socket = Async::new_nonblocking(socket)
        .map_err(|e| Failure::Startup(format!("cannot use the resolver helper: {e}")))?;
    let (alive, gone) = async_channel::bounded::<()>(1);
    let client = Rc::new(Client {
        socket,
        next_id: Cell::new(0),
        waiting: RefCell::new(HashMap::new()),
        reason: RefCell::new(None),
        gone,
    });
    CLIENT.with(|c| *c.borrow_mut() = Some(client.clone()));
    crate::runtime::spawn(async move {
        let mut buffer = vec![0u8; DATAGRAM_MAX];
        loop {
            let n = match client
                .socket
                .read_with(|s| {
                    rustix::net::recv(s, &mut buffer, rustix::net::RecvFlags::empty())
                        .map(|(n, _)| n)
                        .map_err(io::Error::from)
                })
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((id, part)) = decode_answer(&buffer[..n]) {
                client.take(id, part);
            }
        }
        // Not an error line here: the accept loop decides what the death
        // means (an ordinary stop may be under way) and says it once.
        let reason = reap(child).await;
        crate::debug!("{reason}");
        for (_, waiting) in client.waiting.borrow_mut().drain() {
            let _ = waiting
                .answer
                .try_send(Err(io::Error::other(reason.clone())));
        }
        *client.reason.borrow_mut() = Some(reason);
        drop(alive);
    });
    Ok(())
}

/// Resolves with why the resolver helper is gone, once it is: one line
/// such as "the resolver helper (pid 123) was killed by signal 9
/// (SIGKILL)". Pending forever when there is no helper (an IP literal
/// CONNECT) or it lives.
pub async fn failed() -> String {
    let Some(client) = CLIENT.with(|c| c.borrow().clone()) else {
        return std::future::pending().await;
    };
    // Nothing is ever sent: this ends when the channel closes.
    let _ = client.gone.recv().await;
    client
        .reason
        .borrow()
        .clone()
        .unwrap_or_else(|| "the resolver helper is gone".into())
}

/// Resolves `name` for `port`: every address, in the C library's order.
pub async fn resolve(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let Some(client) = CLIENT.with(|c| c.borrow().clone()) else {
        return Err(io::Error::other("no resolver is running"));
    };
    if let Some(reason) = client.reason.borrow().as_ref() {
        return Err(io::Error::other(reason.clone()));
    }
    if name.len() > NAME_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a host name is at most {NAME_MAX} bytes"),
        ));
    }
    let id = client.next_id.get();
    client.next_id.set(id.wrapping_add(1));
    let (sender, receiver) = async_channel::bounded(1);
    client.waiting.borrow_mut().insert(
        id,
        Waiting {
            addresses: Vec::new(),
            answer: sender,
        },
    );
    let mut query = Vec::with_capacity(6 + name.len());
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&port.to_be_bytes());
    query.extend_from_slice(name.as_bytes());
    // Removes the entry if this future is dropped (the connect timed out).
    let _forget = Forget {
        client: &client,
        id,
    };
    client
        .socket
        .write_with(|s| {
            rustix::net::send(s, &query, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
        })
        .await?;
    receiver
        .recv()
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the resolver helper is gone")))
}

impl Client {
    /// Adds one datagram of an answer to the look-up `id` waits for, and
    /// completes it with the last.
    fn take(&self, id: u32, part: Part) {
        let mut waiting = self.waiting.borrow_mut();
        // Parts for a look-up nobody waits for any more are dropped.
        let Some(entry) = waiting.get_mut(&id) else {
            return;
        };
        let answer = match part {
            Part::Addresses { addresses, last } => {
                entry.addresses.extend(addresses);
                if !last {
                    return;
                }
                Ok(std::mem::take(&mut entry.addresses))
            }
            Part::Error(message) => Err(io::Error::other(message)),
        };
        if let Some(entry) = waiting.remove(&id) {
            let _ = entry.answer.try_send(answer);
        }
    }
}

struct Forget<'a> {
    client: &'a Client,
    id: u32,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.client.waiting.borrow_mut().remove(&self.id);
    }
}

/// Reaps the helper whose socket ended (so no zombie stays) and says how it
/// died.
async fn reap(mut child: Child) -> String {
    let who = format!("the resolver helper (pid {})", child.id());
    let deadline = Instant::now() + REAP_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return format!("{who} {}", died(status.into_raw())),
            Ok(None) if Instant::now() < deadline => {
                Timer::after(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Ok(None) => return format!("{who} closed its socket"),
            Err(e) => return format!("{who} is gone (cannot learn how: {e})"),
        }
    }
}

/// How a process ended, from its raw wait status, as the end of a sentence.
fn died(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let core = if libc::WCOREDUMP(status) {
            " (core dumped)"
        } else {
            ""
        };
        match signal_name(signal) {
            Some(name) => format!("was killed by signal {signal} ({name}){core}"),
            None => format!("was killed by signal {signal}{core}"),
        }
    } else if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else {
        format!("ended (wait status {status:#x})")
    }
}

/// The name of the signals a process commonly dies of.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Becomes the resolver helper, if this process was started as one (see
/// [`spawn`]): never returns then. Call before the command line is parsed.
pub fn helper_if_asked() {
    let mut args = std::env::args_os();
    if args.next().is_some_and(|a| a == HELPER_NAME)
        && args.next().is_some_and(|a| a == HELPER_ARGUMENT)
    {
        helper(args.collect())
    }
}

/// What the relay tells its helper on the command line.
struct HelperArgs {
    parent: Pid,
    mode: SandboxMode,
    journal: bool,
    timestamps: bool,
}

impl HelperArgs {
    /// Reads `parent=PID sandbox=MODE log=WHERE`.
    fn parse(args: Vec<OsString>) -> Option<HelperArgs> {
        let (mut parent, mut mode, mut log) = (None, None, None);
        for arg in args {
            let (key, value) = arg.to_str()?.split_once('=')?;
            match key {
                "parent" => parent = Pid::from_raw(value.parse().ok()?),
                "sandbox" => mode = MODES.into_iter().find(|m| mode_name(*m) == value),
                "log" => log = Some(value.to_owned()),
                _ => return None,
            }
        }
        let log = log?;
        Some(HelperArgs {
            parent: parent?,
            mode: mode?,
            journal: log == "journal",
            timestamps: log == "timestamps",
        })
    }
}

/// The helper process, its socket on standard input: never returns.
fn helper(args: Vec<OsString>) -> ! {
    let Some(args) = HelperArgs::parse(args) else {
        crate::error!("resolver: not started by the relay");
        std::process::exit(2);
    };
    // Die with the relay; and if it died before this, now.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::getppid() != Some(args.parent) {
        std::process::exit(0);
    }
    // Exec closes only what is close-on-exec: what the relay inherited
    // without the flag (from whoever started it, or systemd's store, if it
    // left it there) came through too. Keep standard input (the socket),
    // output and error.
    // SAFETY: close_range takes integers; nothing in this process owns a
    // descriptor above 2 yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // A stop signals every process of the unit at once: the relay drains
    // and its exit ends the helper, which must not go first. Nor may any
    // other signal that means something to the relay (`systemctl kill -s
    // USR2` signals every process too).
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2] {
        // SAFETY: SIG_IGN installs no handler, so none can run unsafely.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let _ = rustix::thread::set_name(c"resolver");
    log::set_journal(args.journal);
    log::set_timestamps(args.timestamps);
    let socket = std::io::stdin();
    let report = match sandbox::apply(&Policy::resolver(args.mode)) {
        Ok(report) => report.to_string(),
        Err(reason) => format!("error: resolver: {reason}"),
    };
    let _ = rustix::net::send(&socket, report.as_bytes(), rustix::net::SendFlags::NOSIGNAL);
    if report.starts_with("error: ") {
        std::process::exit(1);
    }
    serve_queries();
    // The relay is gone.
    std::process::exit(0)
}

/// A look-up the helper is asked for.
struct Query {
    id: u32,
    port: u16,
    name: String,
}

impl Query {
    /// Looks the name up and sends the answer.
    fn answer(self, socket: impl AsFd) {
        let answer = (self.name.as_str(), self.port).to_socket_addrs();
        for datagram in encode_answer(self.id, answer) {
            if rustix::net::send(&socket, &datagram, rustix::net::SendFlags::NOSIGNAL).is_err() {
                return;
            }
        }
    }
}

/// Reads queries from standard input until the relay is gone, each
/// answered by one of at most [`LOOKUPS_AT_ONCE`] threads, started as they
/// are needed.
fn serve_queries() {
    let socket = std::io::stdin();
    let (queue, queued) = std::sync::mpsc::sync_channel::<Query>(QUEUE_MAX);
    let queued = Arc::new(Mutex::new(queued));
    // Queries handed to the pool and not yet answered.
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut threads = 0;
    let mut buffer = [0u8; DATAGRAM_MAX];
    loop {
        let n = match rustix::net::recv(&socket, &mut buffer, rustix::net::RecvFlags::empty()) {
            Ok((0, _)) => return,
            Ok((n, _)) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        };
        let Some(query) = decode_query(&buffer[..n]) else {
            continue;
        };
        let busy = outstanding.fetch_add(1, Ordering::SeqCst);
        if busy >= threads && threads < LOOKUPS_AT_ONCE {
            let (queued, outstanding) = (queued.clone(), outstanding.clone());
            let work = move || {
                loop {
                    let next = queued.lock().expect("not poisoned").recv();
                    let Ok(query) = next else { return };
                    query.answer(std::io::stdin());
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                }
            };
            if std::thread::Builder::new()
                .name("resolver".into())
                .spawn(work)
                .is_ok()
            {
                threads += 1;
            }
        }
        if threads == 0 {
            // Not even one thread: answer here.
            query.answer(&socket);
            outstanding.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        // Waits while the queue is full: the relay's sends wait in turn.
        if queue.send(query).is_err() {
            return;
        }
    }
}

fn decode_query(datagram: &[u8]) -> Option<Query> {
    let id = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
    let port = u16::from_be_bytes(datagram.get(4..6)?.try_into().ok()?);
    let name = std::str::from_utf8(datagram.get(6..)?).ok()?.to_owned();
    Some(Query { id, port, name })
}

/// One datagram of an answer.
#[derive(Debug, PartialEq)]
enum Part {
    Addresses {
        addresses: Vec<SocketAddr>,
        last: bool,
    },
    Error(String),
}

/// The datagrams of an answer: each starts with `id` and a kind. Addresses
/// (family 4 or 6, 16 address bytes, port each) fill as many datagrams as
/// they need, all but the last of kind [`ADDRESSES_MORE`]; an error is one
/// datagram of kind [`ERROR`] with the message.
fn encode_answer(id: u32, answer: io::Result<impl Iterator<Item = SocketAddr>>) -> Vec<Vec<u8>> {
    let start = |kind| {
        let mut datagram = Vec::with_capacity(DATAGRAM_MAX);
        datagram.extend_from_slice(&id.to_be_bytes());
        datagram.push(kind);
        datagram
    };
    match answer {
        Ok(addresses) => {
            let mut datagrams = vec![start(ADDRESSES_LAST)];
            for address in addresses {
                if datagrams.last().expect("one at least").len() + RECORD > DATAGRAM_MAX {
                    datagrams.last_mut().expect("one at least")[4] = ADDRESSES_MORE;
                    datagrams.push(start(ADDRESSES_LAST));
                }
                let (family, octets) = match address.ip() {
                    IpAddr::V4(ip) => (4, ip.to_ipv6_mapped().octets()),
                    IpAddr::V6(ip) => (6, ip.octets()),
                };
                let datagram = datagrams.last_mut().expect("one at least");
                datagram.push(family);
                datagram.extend_from_slice(&octets);
                datagram.extend_from_slice(&address.port().to_be_bytes());
            }
            datagrams
        }
        Err(e) => {
            let mut datagram = start(ERROR);
            let message = e.to_string();
            let mut end = message.len().min(DATAGRAM_MAX - HEADER);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            datagram.extend_from_slice(&message.as_bytes()[..end]);
            vec![datagram]
        }
    }
}

fn decode_answer(datagram: &[u8]) -> Option<(u32, Part)> {
    let id = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
    let body = datagram.get(HEADER..)?;
    let kind = *datagram.get(4)?;
    if kind == ERROR {
        return Some((id, Part::Error(String::from_utf8_lossy(body).into_owned())));
    }
    let mut addresses = Vec::with_capacity(body.len() / RECORD);
    for record in body.chunks_exact(RECORD) {
        let octets: [u8; 16] = record[1..17].try_into().ok()?;
        let ip = Ipv6Addr::from(octets);
        let ip = match record[0] {
            4 => IpAddr::V4(ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            _ => IpAddr::V6(ip),
        };
        let port = u16::from_be_bytes([record[17], record[18]]);
        addresses.push(SocketAddr::new(ip, port));
    }
    let last = kind != ADDRESSES_MORE;
    Some((id, Part::Addresses { addresses, last }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(datagrams: &[Vec<u8>]) -> (u32, io::Result<Vec<SocketAddr>>) {
        let mut all = Vec::new();
        for (i, datagram) in datagrams.iter().enumerate() {
            assert!(datagram.len() <= DATAGRAM_MAX, "datagram {i} too long");
            let (id, part) = decode_answer(datagram).unwrap();
            match part {
                Part::Addresses { addresses, last } => {
                    all.extend(addresses);
                    assert_eq!(last, i + 1 == datagrams.len(), "only the last is last");
                    if last {
                        return (id, Ok(all));
                    }
                }
                Part::Error(message) => return (id, Err(io::Error::other(message))),
            }
        }
        panic!("no last datagram")
    }

    #[test]
    fn answers_round_trip() {
        let addresses: Vec<SocketAddr> =
            vec!["127.0.0.1:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        let encoded = encode_answer(7, Ok(addresses.clone().into_iter()));
        assert_eq!(encoded.len(), 1);
        let (id, decoded) = decode_all(&encoded);
        assert_eq!(id, 7);
        assert_eq!(decoded.unwrap(), addresses);
        let failed = encode_answer(
            9,
            Err::<std::vec::IntoIter<SocketAddr>, _>(io::Error::other("no such host")),
        );
        let (id, decoded) = decode_all(&failed);
        assert_eq!(id, 9);
        assert_eq!(decoded.unwrap_err().to_string(), "no such host");
    }

    #[test]
    fn no_address_is_an_empty_last_part() {
        let encoded = encode_answer(3, Ok(std::iter::empty()));
        assert_eq!(decode_all(&encoded).1.unwrap(), vec![]);
    }

    /// However many addresses a name has, every one arrives, in order.
    #[test]
    fn long_answers_take_several_datagrams() {
        for count in [106usize, 107, 108, 150, 214, 215, 1000] {
            let addresses: Vec<SocketAddr> = (0..count)
                .map(|i| SocketAddr::new(Ipv4Addr::from(0x7f00_0000 + i as u32).into(), 80))
                .collect();
            let encoded = encode_answer(1, Ok(addresses.clone().into_iter()));
            assert_eq!(encoded.len(), count.div_ceil(107), "{count} addresses");
            assert_eq!(decode_all(&encoded).1.unwrap(), addresses, "{count}");
        }
    }

    #[test]
    fn death_is_told_by_signal_name_or_status() {
        // Raw wait statuses as the kernel makes them.
        assert_eq!(died(libc::SIGKILL), "was killed by signal 9 (SIGKILL)");
        assert_eq!(
            died(libc::SIGSEGV | 0x80),
            "was killed by signal 11 (SIGSEGV) (core dumped)"
        );
        assert_eq!(died(3 << 8), "exited with status 3");
    }
}
