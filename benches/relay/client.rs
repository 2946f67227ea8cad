//! The load the benchmark puts on a relay (or on the backend directly):
//! bulk transfers, ping-pong, connection churn, idle connections. Plain
//! blocking sockets, each with read and write timeouts, so that no
//! measurement can hang: a stuck peer turns into an error.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::backend::{CHUNK, CONN_MESSAGE};

/// Longest any single read, write or connect may block.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a client connects.
#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Which way the bulk bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// Client → backend.
    Up,
    /// Backend → client.
    Down,
}

impl Dir {
    pub fn key(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// A blocking connection with every operation bounded by `timeout`.
pub fn connect(addr: &Addr, timeout: Duration) -> io::Result<Socket> {
    let socket = match addr {
        Addr::Tcp(a) => {
            let socket = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
            socket.set_tcp_nodelay(true)?;
            socket.connect_timeout(&(*a).into(), timeout)?;
            socket
        }
        Addr::Unix(path) => {
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            // A blocking connect to a Unix socket whose backlog is full
            // waits for SO_SNDTIMEO.
            socket.set_write_timeout(Some(timeout))?;
            socket.connect(&SockAddr::unix(path)?)?;
            socket
        }
    };
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    Ok(socket)
}

fn header(mode: u8, length: u64) -> [u8; 9] {
    let mut header = [mode; 9];
    header[1..].copy_from_slice(&length.to_le_bytes());
    header
}

/// Reads exactly `length` bytes, in `buffer`-sized reads.
fn drain(mut socket: &Socket, buffer: &mut [u8], length: u64) -> io::Result<()> {
    let mut left = length;
    while left > 0 {
        let want = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        match socket.read(&mut buffer[..want])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => left -= n as u64,
        }
    }
    Ok(())
}

/// Writes `length` bytes from `buffer`, over and over.
fn fill(mut socket: &Socket, buffer: &[u8], length: u64) -> io::Result<()> {
    let mut left = length;
    while left > 0 {
        let now = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        socket.write_all(&buffer[..now])?;
        left -= now as u64;
    }
    Ok(())
}

/// Moves `length` bytes one way over an already open connection.
fn transfer_on(mut socket: &Socket, dir: Dir, length: u64, buffer: &mut [u8]) -> io::Result<()> {
    match dir {
        Dir::Up => {
            socket.write_all(&header(b'U', length))?;
            fill(socket, buffer, length)?;
            let mut answer = [0u8; 8];
            socket.read_exact(&mut answer)?;
            if u64::from_le_bytes(answer) != length {
                return Err(io::Error::other("the backend counted a different length"));
            }
        }
        Dir::Down => {
            socket.write_all(&header(b'D', length))?;
            drain(socket, buffer, length)?;
        }
    }
    Ok(())
}

/// One bulk transfer on a new connection; returns its duration (connect
/// included, which is negligible at these sizes).
pub fn transfer(addr: &Addr, dir: Dir, length: u64) -> io::Result<Duration> {
    let mut buffer = vec![0x5a_u8; CHUNK];
    let started = Instant::now();
    let socket = connect(addr, IO_TIMEOUT)?;
    transfer_on(&socket, dir, length, &mut buffer)?;
    Ok(started.elapsed())
}

/// `streams` connections moving `total` bytes between them at once;
/// returns the time from the moment all are connected until the last one
/// is done.
pub fn parallel(addr: &Addr, dir: Dir, streams: usize, total: u64) -> io::Result<Duration> {
    let each = (total / streams as u64).max(1);
    let sockets = (0..streams)
        .map(|_| connect(addr, IO_TIMEOUT))
        .collect::<io::Result<Vec<_>>>()?;
    let start = Barrier::new(streams + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = sockets
            .iter()
            .map(|socket| {
                let start = &start;
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let mut buffer = vec![0x5a_u8; CHUNK];
                        start.wait();
                        transfer_on(socket, dir, each, &mut buffer)
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        start.wait();
        let started = Instant::now();
        for worker in workers {
            worker
                .join()
                .map_err(|_| io::Error::other("stream thread panicked"))??;
        }
        Ok(started.elapsed())
    })
}

/// One connection in the backend's echo mode, for ping-pongs of a fixed
/// size.
pub struct PingPong {
    socket: Socket,
    message: Vec<u8>,
    answer: Vec<u8>,
}

impl PingPong {
    pub fn open(addr: &Addr, size: usize) -> io::Result<PingPong> {
        let socket = connect(addr, IO_TIMEOUT)?;
        let mut message = vec![b'p'; size.max(1)];
        message[0] = b'E';
        let answer = vec![0u8; message.len()];
        Ok(PingPong {
            socket,
            message,
            answer,
        })
    }

    /// Sends the message and reads its echo.
    pub fn round_trip(&mut self) -> io::Result<()> {
        self.socket.write_all(&self.message)?;
        self.socket.read_exact(&mut self.answer)
    }

    /// A round trip that also says whether the echo is what was sent.
    pub fn checked_round_trip(&mut self) -> io::Result<bool> {
        self.round_trip()?;
        Ok(self.answer == self.message)
    }
}

/// Round-trip times of `messages` ping-pongs of `size` bytes, in
/// nanoseconds, after a short warm-up.
pub fn ping_pong(addr: &Addr, messages: usize, size: usize) -> io::Result<Vec<u32>> {
    let mut connection = PingPong::open(addr, size)?;
    let warm_up = (messages / 10).clamp(1, 1000);
    let mut times = Vec::with_capacity(messages);
    for i in 0..warm_up + messages {
        let started = Instant::now();
        connection.round_trip()?;
        if i >= warm_up {
            times.push(started.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        }
    }
    Ok(times)
}

/// Pins the calling thread to one CPU for the rest of its life.
pub fn pin_this_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it and
    // sched_setaffinity(0) reads it for the calling thread.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Outcome of a connection-rate run.
#[derive(Debug, Default)]
pub struct ConnRate {
    /// Connections that completed the exchange.
    pub completed: u64,
    /// Connections that failed.
    pub failed: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl ConnRate {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One connection of the connection-rate run: connect, 32 bytes each way,
/// the backend closes, the client sees EOF and closes.
fn one_connection(addr: &Addr, request: &[u8; CONN_MESSAGE]) -> io::Result<()> {
    let mut socket = connect(addr, Duration::from_secs(5))?;
    socket.write_all(request)?;
    let mut answer = [0u8; CONN_MESSAGE + 1];
    socket.read_exact(&mut answer[..CONN_MESSAGE])?;
    match socket.read(&mut answer)? {
        0 => Ok(()),
        _ => Err(io::Error::other("more bytes than expected")),
    }
}

/// Connection churn from `threads` client threads for `duration`. Stops
/// early after 100 failures.
pub fn conn_rate(addr: &Addr, threads: usize, duration: Duration) -> ConnRate {
    let completed = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_error = std::sync::Mutex::new(None);
    let mut request = [b'r'; CONN_MESSAGE];
    request[0] = b'C';
    let started = Instant::now();
    let deadline = started + duration;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match one_connection(addr, &request) {
                        Ok(()) => {
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            first_error
                                .lock()
                                .expect("not poisoned")
                                .get_or_insert_with(|| e.to_string());
                            if failed.fetch_add(1, Ordering::Relaxed) >= 100 {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    ConnRate {
        completed: completed.into_inner(),
        failed: failed.into_inner(),
        elapsed: started.elapsed(),
        first_error: first_error.into_inner().expect("not poisoned"),
    }
}

/// Opens a connection and checks it reaches the backend (one echoed byte),
/// then leaves it idle.
pub fn open_idle(addr: &Addr, timeout: Duration) -> io::Result<Socket> {
    let mut socket = connect(addr, timeout)?;
    socket.write_all(b"E")?;
    let mut answer = [0u8; 1];
    socket.read_exact(&mut answer)?;
    Ok(socket)
}

/// Opens up to `count` idle connections, stopping at the first failure or
/// after `limit`; returns them and why it stopped early, if it did.
pub fn open_many(
    addr: &Addr,
    count: usize,
    timeout: Duration,
    limit: Duration,
) -> (Vec<Socket>, Option<String>) {
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        if started.elapsed() > limit {
            return (held, Some(format!("time limit of {limit:?} reached")));
        }
        match open_idle(addr, timeout) {
            Ok(socket) => held.push(socket),
            Err(e) => return (held, Some(e.to_string())),
        }
    }
    (held, None)
}
