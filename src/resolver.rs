//! Host names for CONNECT, resolved at each connect by a helper process of
//! the relay's own.
//!
//! Landlock rules name inodes: a relay allowed to read `/etc/hosts` loses it
//! when an editor, resolvconf or NetworkManager replaces the file by rename,
//! or systemd-resolved points the `/etc/resolv.conf` symlink elsewhere. So
//! the relay itself reads no file at all, and a helper forked before the
//! sandbox (while the process is single-threaded) does the look-ups under a
//! policy of its own ([`Policy::resolver`]): read any file, connect to Unix
//! sockets and TCP port 53, nothing else (no write, no bind, no signal, no
//! capability). It holds none of the relay's sockets and only ever hears
//! from the relay, over a socket pair: `id, port, name` in, `id, addresses`
//! or `id, error` out, one datagram each. Each query runs on a thread of the
//! helper, so a slow DNS server delays only the connections waiting for it.
//! The helper dies with the relay.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use async_io::Async;
use socket2::{Domain, Socket, Type};

use crate::config::SandboxMode;
use crate::failure::Failure;
use crate::sandbox::{self, Policy};

/// The largest datagram either side sends: a host name is at most 253
/// bytes; 64 addresses of 19 bytes each is more than any answer needs.
const DATAGRAM_MAX: usize = 2048;
/// How long the relay waits at start-up for the helper to say it is
/// confined (or why not).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's end of the socket pair, until [`start`] takes it.
static SOCKET: Mutex<Option<Socket>> = Mutex::new(None);

thread_local! {
    static CLIENT: RefCell<Option<std::rc::Rc<Client>>> = const { RefCell::new(None) };
}

/// The relay's side once the runtime runs.
struct Client {
    socket: Async<Socket>,
    next_id: Cell<u32>,
    waiting: RefCell<HashMap<u32, async_channel::Sender<io::Result<Vec<SocketAddr>>>>>,
}

/// Forks the helper. Call before the sandbox, before any thread exists and
/// before signal handlers are installed (the helper keeps the defaults, so
/// that a stop signal to the unit's processes ends it too).
pub fn spawn(mode: SandboxMode) -> Result<(), Failure> {
    let failure = |e: io::Error| Failure::Startup(format!("cannot start the resolver: {e}"));
    let (relay_end, helper_end) =
        Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(failure)?;
    let parent = rustix::process::getpid();
    // SAFETY: the process is single-threaded here (no runtime, no helper
    // thread yet), so the child may go on running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(failure(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(relay_end);
        helper(helper_end, parent, mode);
    }
    drop(helper_end);
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
    *SOCKET.lock().expect("not poisoned") = Some(relay_end);
    Ok(())
}

/// Registers the relay's end with the reactor and starts the task that
/// hands each answer to the connection waiting for it. Call on the
/// runtime's thread.
pub fn start() {
    let Some(socket) = SOCKET.lock().expect("not poisoned").take() else {
        return;
    };
    let socket = match Async::new_nonblocking(socket) {
        Ok(socket) => socket,
        Err(e) => {
            crate::warn!("cannot use the resolver: {e}");
            return;
        }
    };
    let client = std::rc::Rc::new(Client {
        socket,
        next_id: Cell::new(0),
        waiting: RefCell::new(HashMap::new()),
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
            if let Some((id, answer)) = decode_answer(&buffer[..n])
                && let Some(waiter) = client.waiting.borrow_mut().remove(&id)
            {
                let _ = waiter.try_send(answer);
            }
        }
        crate::error!("the resolver helper is gone: host names can no longer be resolved");
        for (_, waiter) in client.waiting.borrow_mut().drain() {
            let _ = waiter.try_send(Err(io::Error::other("the resolver helper is gone")));
        }
    });
}

/// Resolves `name` for `port`: every address, in the C library's order.
pub async fn resolve(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let Some(client) = CLIENT.with(|c| c.borrow().clone()) else {
        return Err(io::Error::other("no resolver is running"));
    };
    let id = client.next_id.get();
    client.next_id.set(id.wrapping_add(1));
    let (sender, receiver) = async_channel::bounded(1);
    client.waiting.borrow_mut().insert(id, sender);
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

struct Forget<'a> {
    client: &'a Client,
    id: u32,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.client.waiting.borrow_mut().remove(&self.id);
    }
}

/// The helper process: never returns.
fn helper(socket: Socket, parent: rustix::process::Pid, mode: SandboxMode) -> ! {
    // Die with the relay (and if it already died, now).
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::getppid() != Some(parent) {
        std::process::exit(0);
    }
    let _ = rustix::thread::set_name(c"resolver");
    // Keep standard input, output and error, and the socket; close
    // everything else (the relay's listeners above all).
    let socket = keep_only(socket);
    let report = match sandbox::apply(&Policy::resolver(mode)) {
        Ok(report) => report.to_string(),
        Err(reason) => format!("error: resolver: {reason}"),
    };
    let _ = rustix::net::send(&socket, report.as_bytes(), rustix::net::SendFlags::NOSIGNAL);
    if report.starts_with("error: ") {
        std::process::exit(1);
    }
    let socket = std::sync::Arc::new(socket);
    let mut buffer = [0u8; DATAGRAM_MAX];
    loop {
        let n = match rustix::net::recv(&*socket, &mut buffer, rustix::net::RecvFlags::empty()) {
            Ok((0, _)) => break,
            Ok((n, _)) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        };
        let Some((id, port, name)) = decode_query(&buffer[..n]) else {
            continue;
        };
        let socket = socket.clone();
        let resolve = move || {
            let answer = encode_answer(id, (name.as_str(), port).to_socket_addrs());
            let _ = rustix::net::send(&*socket, &answer, rustix::net::SendFlags::NOSIGNAL);
        };
        if std::thread::Builder::new().spawn(resolve.clone()).is_err() {
            resolve();
        }
    }
    // The relay is gone.
    std::process::exit(0)
}

/// Closes every descriptor but standard input, output, error and `socket`.
fn keep_only(socket: Socket) -> Socket {
    let fd = socket.as_raw_fd() as u32;
    if fd > 3 {
        // SAFETY: close_range takes integers; it closes descriptors 3 to
        // fd - 1, none of which the helper uses.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, fd - 1, 0u32) };
    }
    // SAFETY: as above, for the descriptors above the socket.
    unsafe { libc::syscall(libc::SYS_close_range, fd + 1, u32::MAX, 0u32) };
    socket
}

fn decode_query(datagram: &[u8]) -> Option<(u32, u16, String)> {
    let id = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
    let port = u16::from_be_bytes(datagram.get(4..6)?.try_into().ok()?);
    let name = std::str::from_utf8(datagram.get(6..)?).ok()?.to_owned();
    Some((id, port, name))
}

/// `id`, then 0 and the addresses (family 4 or 6, 16 address bytes, port),
/// or 1 and the error message.
fn encode_answer(id: u32, answer: io::Result<impl Iterator<Item = SocketAddr>>) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    match answer {
        Ok(addresses) => {
            out.push(0);
            for address in addresses.take((DATAGRAM_MAX - 5) / 19) {
                let (family, octets) = match address.ip() {
                    IpAddr::V4(ip) => (4, ip.to_ipv6_mapped().octets()),
                    IpAddr::V6(ip) => (6, ip.octets()),
                };
                out.push(family);
                out.extend_from_slice(&octets);
                out.extend_from_slice(&address.port().to_be_bytes());
            }
        }
        Err(e) => {
            out.push(1);
            let message = e.to_string();
            out.extend_from_slice(&message.as_bytes()[..message.len().min(DATAGRAM_MAX - 5)]);
        }
    }
    out
}

fn decode_answer(datagram: &[u8]) -> Option<(u32, io::Result<Vec<SocketAddr>>)> {
    let id = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
    let body = datagram.get(5..)?;
    match datagram.get(4)? {
        0 => {
            let mut addresses = Vec::new();
            for record in body.chunks_exact(19) {
                let octets: [u8; 16] = record[1..17].try_into().ok()?;
                let ip = Ipv6Addr::from(octets);
                let ip = match record[0] {
                    4 => IpAddr::V4(ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    _ => IpAddr::V6(ip),
                };
                let port = u16::from_be_bytes([record[17], record[18]]);
                addresses.push(SocketAddr::new(ip, port));
            }
            Some((id, Ok(addresses)))
        }
        _ => Some((
            id,
            Err(io::Error::other(String::from_utf8_lossy(body).into_owned())),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let addresses: Vec<SocketAddr> =
            vec!["127.0.0.1:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        let encoded = encode_answer(7, Ok(addresses.clone().into_iter()));
        let (id, decoded) = decode_answer(&encoded).unwrap();
        assert_eq!(id, 7);
        assert_eq!(decoded.unwrap(), addresses);
        let failed = encode_answer(
            9,
            Err::<std::vec::IntoIter<SocketAddr>, _>(io::Error::other("no such host")),
        );
        let (id, decoded) = decode_answer(&failed).unwrap();
        assert_eq!(id, 9);
        assert_eq!(decoded.unwrap_err().to_string(), "no such host");
    }
}
