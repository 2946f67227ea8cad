//! Opening CONNECT for each accepted client: non-blocking connects driven by
//! the reactor, every resolved address tried in order, one deadline for all.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_io::{Async, Timer};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::endpoint::{Endpoint, Host, UnixAddr};
use crate::timespan::Span;

/// Connects to `target`, giving up after `timeout` for all addresses together.
pub async fn connect(target: &Endpoint, timeout: Span) -> io::Result<Async<Socket>> {
    let attempt = connect_any(target);
    match timeout {
        None => attempt.await,
        Some(limit) => {
            futures_lite::future::or(attempt, async {
                Timer::after(limit).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no connection within {}",
                        crate::timespan::format(Some(limit))
                    ),
                ))
            })
            .await
        }
    }
}

async fn connect_any(target: &Endpoint) -> io::Result<Async<Socket>> {
    match target {
        Endpoint::Tcp { host, port } => {
            let addresses = resolve(host, *port).await?;
            let mut last_error =
                io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
            for address in addresses {
                match connect_to(Domain::for_address(address), &address.into()).await {
                    Ok(socket) => {
                        socket.get_ref().set_tcp_nodelay(true)?;
                        return Ok(socket);
                    }
                    Err(e) => last_error = io::Error::new(e.kind(), format!("{address}: {e}")),
                }
            }
            Err(last_error)
        }
        Endpoint::Unix(UnixAddr::Path(path)) => {
            connect_to(Domain::UNIX, &SockAddr::unix(path)?).await
        }
        Endpoint::Unix(UnixAddr::Abstract(name)) => {
            connect_to(Domain::UNIX, &crate::listener::abstract_addr(name)?).await
        }
        Endpoint::SdListen(_) | Endpoint::Fd(_) => {
            unreachable!("rejected as CONNECT when parsing")
        }
    }
}

/// Resolves a CONNECT host. IP literals need no lookup; names are resolved
/// at every connect so that a changed address is picked up.
async fn resolve(host: &Host, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            let query = (name.clone(), port);
            // getaddrinfo blocks; async-std runs it on its blocking pool.
            let found =
                crate::runtime::unblock(move || std::net::ToSocketAddrs::to_socket_addrs(&query))
                    .await
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot resolve '{name}': {e}"))
                    })?;
            Ok(found.collect())
        }
        Host::Any => unreachable!("rejected as CONNECT when parsing"),
    }
}

/// A non-blocking socket. Out of descriptors (EMFILE, ENFILE), the client
/// waits, as clients do in the backlog, rather than being dropped: the
/// caller's deadline bounds the wait.
async fn new_socket(domain: Domain) -> io::Result<Socket> {
    loop {
        match Socket::new(domain, Type::STREAM.cloexec().nonblocking(), None) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                Timer::after(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn connect_to(domain: Domain, address: &SockAddr) -> io::Result<Async<Socket>> {
    let socket = new_socket(domain).await?;
    let mut pause = Duration::from_millis(1);
    loop {
        match socket.connect(address) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                // Created non-blocking: no need to set it again.
                let socket = Async::new_nonblocking(socket)?;
                // poll_writable, not writable(): it uses the direction's one
                // waker slot instead of growing a waker list that would stay
                // allocated for the connection's life.
                futures_lite::future::poll_fn(|cx| socket.poll_writable(cx)).await?;
                return match socket.get_ref().take_error()? {
                    None => Ok(socket),
                    Some(e) => Err(e),
                };
            }
            // A Unix listener with a full backlog: wait and try again, as a
            // blocking connect would (the caller's deadline bounds this).
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && domain == Domain::UNIX => {
                Timer::after(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
    Async::new_nonblocking(socket)
}
