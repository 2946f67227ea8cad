//! Sockets on the test's side: clients that talk to the relay and backends
//! that the relay connects to, for TCP and Unix alike.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use super::{DEADLINE, Digest, TempDir, open_dir, wait_until};

/// A byte stream to either kind of socket, so tests read the same for both.
pub trait Conn: Read + Write + Send {
    /// Ends our sending (half-close): the peer reads EOF, we can still read.
    fn shutdown_write(&self);
    /// Bounds each read; a read that waits longer fails with `WouldBlock`.
    fn set_read_timeout(&self, timeout: Option<Duration>);
    /// A second handle to the same socket (for a writer thread).
    fn try_clone_box(&self) -> Box<dyn Conn>;
    /// Makes the coming close a reset (`SO_LINGER` 0) on TCP; Unix sockets
    /// have no reset, their close is always an EOF.
    fn abort(&self);
}

impl Conn for TcpStream {
    fn shutdown_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) {
        TcpStream::set_read_timeout(self, timeout).unwrap();
    }
    fn try_clone_box(&self) -> Box<dyn Conn> {
        Box::new(self.try_clone().unwrap())
    }
    fn abort(&self) {
        socket2::SockRef::from(self)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
}

impl Conn for UnixStream {
    fn shutdown_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) {
        UnixStream::set_read_timeout(self, timeout).unwrap();
    }
    fn try_clone_box(&self) -> Box<dyn Conn> {
        Box::new(self.try_clone().unwrap())
    }
    fn abort(&self) {}
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for tools that must
/// be told a port in advance (`systemd-socket-activate` cannot listen on
/// port 0 and report the port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The socket address of a Linux abstract name (without the `@`).
pub fn abstract_addr(name: &str) -> SocketAddr {
    SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
}

/// Connects to a relay address as printed in `listening on` (TCP `HOST:PORT`,
/// `[V6]:PORT`, a path, or `@name`), with reads bounded by [`DEADLINE`].
pub fn connect(address: &str) -> Box<dyn Conn> {
    let conn = try_connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    conn.set_read_timeout(Some(DEADLINE));
    conn
}

/// Like [`connect`], returning the error.
pub fn try_connect(address: &str) -> std::io::Result<Box<dyn Conn>> {
    if let Some(name) = address.strip_prefix('@') {
        return Ok(Box::new(UnixStream::connect_addr(&abstract_addr(name))?));
    }
    if address.contains('/') {
        return Ok(Box::new(UnixStream::connect(address)?));
    }
    let stream = TcpStream::connect(address)?;
    Ok(Box::new(stream))
}

/// Reads until EOF (or panics after the deadline).
pub fn read_to_end(conn: &mut dyn Conn) -> Vec<u8> {
    let mut out = Vec::new();
    conn.read_to_end(&mut out).expect("read until EOF");
    out
}

/// Reads exactly `len` bytes (or panics after the deadline).
pub fn read_exactly(conn: &mut dyn Conn, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    conn.read_exact(&mut out).expect("read the expected bytes");
    out
}

/// Waits for the end of a connection the relay closed: returns the bytes
/// that came before it and whether it ended with EOF (`true`) or an error
/// such as a reset (`false`). Panics if it does not end within [`DEADLINE`].
pub fn read_until_closed(conn: &mut dyn Conn) -> (Vec<u8>, bool) {
    conn.set_read_timeout(Some(DEADLINE));
    let mut out = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        match conn.read(&mut buffer) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection was not closed within {DEADLINE:?}")
            }
            Err(_) => return (out, false),
        }
    }
}

/// Asserts that nothing arrives on `conn` for `span` (the connection stays
/// open and silent); restores the usual read timeout afterwards.
pub fn assert_silent(conn: &mut dyn Conn, span: Duration, what: &str) {
    conn.set_read_timeout(Some(span));
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Ok(0) => panic!("{what}: the connection was closed"),
        Ok(_) => panic!("{what}: got a byte"),
        Err(e) => panic!("{what}: {e}"),
    }
    conn.set_read_timeout(Some(DEADLINE));
}

/// Sends `data`, half-closes, and returns everything read until EOF; writes
/// and reads run concurrently so large payloads cannot deadlock. Panics if
/// the EOF does not come within [`DEADLINE`] of the last byte.
pub fn exchange(conn: Box<dyn Conn>, data: Vec<u8>) -> Vec<u8> {
    conn.set_read_timeout(Some(DEADLINE));
    let mut writer = conn.try_clone_box();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown_write();
    });
    let mut reader = conn;
    let out = read_to_end(&mut *reader);
    sender.join().unwrap();
    out
}

/// What a backend does with each connection it accepts (on its own thread).
pub type Handler = Arc<dyn Fn(Box<dyn Conn>) + Send + Sync>;

/// A Unix socket path that other users reach (in an [`open_dir`], kept while
/// this lives) and an echo backend for a relay on it to connect to.
pub struct SharedSocket {
    /// The socket's path, as a command-line argument.
    pub socket: String,
    pub backend: Backend,
    _dir: TempDir,
}

impl SharedSocket {
    /// A socket path called `name` and a TCP echo backend.
    pub fn new(name: &str) -> SharedSocket {
        let dir = open_dir();
        let backend = Backend::tcp(echo);
        let socket = dir.arg(name);
        SharedSocket {
            socket,
            backend,
            _dir: dir,
        }
    }

    /// The arguments of a relay from the socket, which anyone may connect to
    /// (`--socket-mode 0666`), to the backend, that admits only the clients
    /// `flag` (`--allow-uid`, `--allow-gid`) with `id` names.
    pub fn allowlist_args<'a>(&'a self, flag: &'a str, id: &'a str) -> [&'a str; 6] {
        [
            "--socket-mode",
            "0666",
            flag,
            id,
            &self.socket,
            &self.backend.connect_arg,
        ]
    }
}

/// A test backend: accepts connections on its own thread and runs a handler
/// on each, on a thread of its own. Counts connections so tests can tell
/// whether one ever arrived.
pub struct Backend {
    /// The address to give the relay as CONNECT.
    pub connect_arg: String,
    pub accepted: Arc<AtomicUsize>,
}

impl Backend {
    /// A TCP backend on 127.0.0.1 with a kernel-chosen port.
    pub fn tcp(handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static) -> Backend {
        Backend::tcp_on(TcpListener::bind("127.0.0.1:0").unwrap(), handler)
    }

    /// A TCP backend on a listener the test bound (IPv6, a chosen port).
    pub fn tcp_on(
        listener: TcpListener,
        handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static,
    ) -> Backend {
        let connect_arg = listener.local_addr().unwrap().to_string();
        let accept = move || listener.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>);
        Backend::spawn(connect_arg, accept, Arc::new(handler))
    }

    /// A Unix backend at `path`.
    pub fn unix(path: &Path, handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static) -> Backend {
        let listener = UnixListener::bind(path).unwrap();
        let connect_arg = path.to_str().unwrap().to_string();
        Backend::unix_on(listener, connect_arg, handler)
    }

    /// A Unix backend on the abstract socket `@name`.
    pub fn abstract_name(
        name: &str,
        handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static,
    ) -> Backend {
        let listener = UnixListener::bind_addr(&abstract_addr(name)).unwrap();
        Backend::unix_on(listener, format!("@{name}"), handler)
    }

    fn unix_on(
        listener: UnixListener,
        connect_arg: String,
        handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static,
    ) -> Backend {
        let accept = move || listener.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>);
        Backend::spawn(connect_arg, accept, Arc::new(handler))
    }

    fn spawn(
        connect_arg: String,
        accept: impl Fn() -> std::io::Result<Box<dyn Conn>> + Send + 'static,
        handler: Handler,
    ) -> Backend {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        thread::spawn(move || {
            while let Ok(conn) = accept() {
                counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                thread::spawn(move || handler(conn));
            }
        });
        Backend {
            connect_arg,
            accepted,
        }
    }

    /// How many connections the backend has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the backend has accepted at least `count` connections.
    pub fn wait_connections(&self, count: usize) {
        wait_until(&format!("{count} backend connections"), || {
            self.connections() >= count
        });
    }
}

/// Echoes every byte back; half-closes after the client's EOF.
pub fn echo(mut conn: Box<dyn Conn>) {
    let mut buffer = vec![0u8; 65536];
    loop {
        match conn.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.flush();
    conn.shutdown_write();
}

/// Reads everything until EOF, then answers with the length and hash of what
/// it read (`LEN HASH\n`) and closes: the reply comes only after the
/// client's half-close.
pub fn digest(mut conn: Box<dyn Conn>) {
    let line = Digest::of_stream(&mut *conn).line();
    let _ = conn.write_all(line.as_bytes());
}

/// Reads until EOF or error and never answers: holds a connection open for
/// as long as the client does.
pub fn hold(mut conn: Box<dyn Conn>) {
    let _ = Digest::of_stream(&mut *conn);
}
