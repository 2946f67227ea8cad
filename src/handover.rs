//! Handing live connections to the next instance through systemd's file
//! descriptor store, and taking them over from the previous one.
//!
//! On a hand-over request (SIGUSR2, `systemctl reload`), every connection
//! is taken off the engine as it stands and stored: its client socket, its
//! backend socket, a pipe for each direction that has bytes in flight (read
//! but not yet written), and its state in the client socket's name. The
//! names pair the descriptors up again:
//!
//! ```text
//! conn.PID.N.client,up=BYTES,down=BYTES,ended=up+down,copy=up,age=MS,idle=MS
//! conn.PID.N.backend
//! conn.PID.N.up        (bytes from the client, not yet sent to CONNECT)
//! conn.PID.N.down      (bytes from CONNECT, not yet sent to the client)
//! ```
//!
//! Sockets are stored with `SO_LINGER` 0 and `FDPOLL=0`: one that no
//! instance takes over (the unit was stopped) is closed by systemd as a
//! reset, and one whose peer hung up stays stored with its pair. The next
//! instance clears the linger, reads what the pipes hold into its own
//! buffers, goes on relaying, and removes the names from the store
//! (`FDSTOREREMOVE=1`), so that systemd keeps no copy of a socket it closes.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::engine::Taken;
use crate::relay::{Half, InFlight, Relay};

/// The exit status that asks systemd to start the next instance
/// (`RestartForceExitStatus=3` in the unit), after a hand-over or, when
/// none was possible, a drain.
pub const EXIT_STATUS: u8 = 3;

/// What every stored connection's names begin with.
const PREFIX: &str = "conn.";

/// How long systemd may take to read the stored descriptors.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `name` is one of a stored connection's descriptors (and not a
/// listener).
pub fn is_connection_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// A connection a previous instance stored, put together again.
pub struct Adopted {
    pub relay: Relay,
    pub started: Instant,
    pub last_moved: Instant,
    /// The client's IP address, for the `-v` line.
    pub peer: Option<SocketAddr>,
    /// Its names in the store, to be removed once it runs here.
    pub names: Vec<String>,
}

/// One stored connection's descriptors, as passed back.
#[derive(Default)]
struct Parts {
    client: Option<(OwnedFd, String)>,
    backend: Option<(OwnedFd, String)>,
    up: Option<(OwnedFd, String)>,
    down: Option<(OwnedFd, String)>,
}

/// Takes over the connections among the descriptors systemd passed back.
/// A connection whose descriptors are not all there, or whose state cannot
/// be read, is closed (it was stored to end as a reset) and its names are
/// returned for removal from the store, with the count of such.
pub fn adopt(passed: Vec<(RawFd, String)>) -> (Vec<Adopted>, Vec<String>) {
    let mut groups: Vec<(String, Parts)> = Vec::new();
    for (fd, name) in passed {
        if !is_connection_name(&name) {
            continue;
        }
        // SAFETY: systemd passed this descriptor to this process, and no
        // other part of the relay takes descriptors named "conn.…"
        // (listener.rs leaves them alone).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        let (id, role) = split_name(&name);
        let index = match groups.iter().position(|(g, _)| g == id) {
            Some(index) => index,
            None => {
                groups.push((id.to_string(), Parts::default()));
                groups.len() - 1
            }
        };
        let parts = &mut groups[index].1;
        let slot = match role.split(',').next() {
            Some("client") => &mut parts.client,
            Some("backend") => &mut parts.backend,
            Some("up") => &mut parts.up,
            Some("down") => &mut parts.down,
            _ => {
                crate::warn!("stored descriptor '{name}' is unknown to this version: closed");
                continue;
            }
        };
        *slot = Some((fd, name));
    }
    let mut adopted = Vec::new();
    let mut dropped = Vec::new();
    for (id, parts) in groups {
        let names: Vec<String> = [&parts.client, &parts.backend, &parts.up, &parts.down]
            .into_iter()
            .flatten()
            .map(|(_, name)| name.clone())
            .collect();
        match assemble(parts) {
            Ok(mut connection) => {
                connection.names = names;
                adopted.push(connection);
            }
            Err(why) => {
                crate::warn!("stored connection {id} {why}: closed");
                dropped.extend(names);
            }
        }
    }
    (adopted, dropped)
}

/// `conn.PID.N` and the rest.
fn split_name(name: &str) -> (&str, &str) {
    let mut dots = name.match_indices('.').map(|(i, _)| i);
    match dots.nth(2) {
        Some(end) => (&name[..end], &name[end + 1..]),
        None => (name, ""),
    }
}

fn assemble(parts: Parts) -> Result<Adopted, String> {
    let (Some((client, state)), Some((backend, _))) = (parts.client, parts.backend) else {
        return Err("is incomplete (a socket is missing)".into());
    };
    let state = State::parse(&state).ok_or_else(|| format!("has an unreadable state '{state}'"))?;
    let client = Socket::from(client);
    let backend = Socket::from(backend);
    for socket in [&client, &backend] {
        // Stored to end as a reset if nobody took it over; here it goes on.
        socket
            .set_linger(None)
            .map_err(|e| format!("cannot be set up again ({e})"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("cannot be set up again ({e})"))?;
    }
    let half = |moved, ended, copying, pipe: Option<(OwnedFd, String)>| {
        let in_flight = match pipe {
            None => InFlight::Nothing,
            Some((pipe, _)) => InFlight::Bytes(drain_pipe(pipe)?.into_boxed_slice()),
        };
        Ok::<_, String>(Half {
            moved,
            ended,
            copying,
            in_flight,
        })
    };
    let up = half(state.up, state.up_ended, state.up_copy, parts.up)?;
    let down = half(state.down, state.down_ended, state.down_copy, parts.down)?;
    let now = Instant::now();
    let peer = client.peer_addr().ok().and_then(|a| a.as_socket());
    Ok(Adopted {
        relay: Relay::from_halves(client, backend, up, down),
        started: now.checked_sub(state.age).unwrap_or(now),
        last_moved: now.checked_sub(state.idle).unwrap_or(now),
        peer,
        names: Vec::new(),
    })
}

/// Everything a stored pipe holds (its write end closed with the instance
/// that stored it).
fn drain_pipe(pipe: OwnedFd) -> Result<Vec<u8>, String> {
    let mut file = std::fs::File::from(pipe);
    let _ = rustix::io::ioctl_fionbio(&file, true);
    let mut bytes = Vec::new();
    loop {
        let mut chunk = [0u8; 64 << 10];
        match file.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A writer is still open: what is there is all there is.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(bytes),
            Err(e) => return Err(format!("has a pipe that cannot be read ({e})")),
        }
    }
}

/// A connection's state, as written into its client socket's name.
#[derive(Debug, Default, PartialEq)]
struct State {
    up: u64,
    down: u64,
    up_ended: bool,
    down_ended: bool,
    up_copy: bool,
    down_copy: bool,
    age: Duration,
    idle: Duration,
}

impl State {
    fn format(&self) -> String {
        let both = |up: bool, down: bool| match (up, down) {
            (true, true) => "up+down",
            (true, false) => "up",
            (false, true) => "down",
            (false, false) => "-",
        };
        format!(
            "client,up={},down={},ended={},copy={},age={},idle={}",
            self.up,
            self.down,
            both(self.up_ended, self.down_ended),
            both(self.up_copy, self.down_copy),
            self.age.as_millis(),
            self.idle.as_millis()
        )
    }

    fn parse(name: &str) -> Option<State> {
        let (_, role) = split_name(name);
        let mut fields = role.split(',');
        if fields.next() != Some("client") {
            return None;
        }
        let mut state = State::default();
        let number = |v: &str| crate::endpoint::parse_number::<u64>(v);
        let both = |v: &str| match v {
            "up+down" => Some((true, true)),
            "up" => Some((true, false)),
            "down" => Some((false, true)),
            "-" => Some((false, false)),
            _ => None,
        };
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "up" => state.up = number(value)?,
                "down" => state.down = number(value)?,
                "ended" => (state.up_ended, state.down_ended) = both(value)?,
                "copy" => (state.up_copy, state.down_copy) = both(value)?,
                "age" => state.age = Duration::from_millis(number(value)?),
                "idle" => state.idle = Duration::from_millis(number(value)?),
                // A later version's addition: not needed to go on.
                _ => {}
            }
        }
        Some(state)
    }
}

/// One descriptor of a connection being stored.
enum Stored {
    Socket(Socket),
    /// Stored by its read end; the write end closes with this instance.
    Pipe(crate::pipe::Pipe),
}

impl Stored {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stored::Socket(socket) => socket.as_fd(),
            Stored::Pipe(pipe) => pipe.read_fd(),
        }
    }
}

/// Descriptors a connection takes in the store.
fn descriptors(taken: &Taken) -> usize {
    2 + taken.relay.pipes_needed()
}

/// How many descriptors the unit's store holds, when systemd says
/// (`$FDSTORE`, set by systemd 254 and later, and by the unit templates).
fn capacity() -> Option<usize> {
    std::env::var("FDSTORE")
        .ok()
        .and_then(|n| crate::endpoint::parse_number::<usize>(&n))
}

/// Stores every taken connection in systemd's file descriptor store
/// (`listeners` descriptors are there already). On failure, the
/// connections that were not stored come back, with why, to be relayed
/// here until they end.
pub fn store(taken: Vec<Taken>, listeners: usize) -> Result<usize, (Vec<Taken>, String)> {
    let needed = listeners + taken.iter().map(descriptors).sum::<usize>();
    if let Some(capacity) = capacity()
        && needed > capacity
    {
        return Err((
            taken,
            format!(
                "they need {needed} descriptors in the store, which holds {capacity} (raise FileDescriptorStoreMax= and FDSTORE=)"
            ),
        ));
    }
    let deadline = Instant::now() + STORE_TIMEOUT;
    let pid = std::process::id();
    let count = taken.len();
    let mut taken = taken.into_iter().enumerate();
    while let Some((n, connection)) = taken.next() {
        let parcel = match pack(connection, &format!("{PREFIX}{pid}.{n}")) {
            Ok(names) => names,
            Err(refused) => {
                let (connection, why) = *refused;
                let mut rest = vec![connection];
                rest.extend(taken.map(|(_, t)| t));
                return Err((rest, why));
            }
        };
        for (name, fd) in &parcel {
            if let Err(e) = crate::notify::store_connection(name, fd.fd(), deadline) {
                // What was stored of this one is taken over (or closed) by
                // the next instance; the rest stay here.
                let rest = taken.map(|(_, t)| t).collect();
                return Err((rest, format!("systemd did not take a descriptor ({e})")));
            }
        }
    }
    if let Err(e) = crate::notify::barrier(deadline) {
        crate::warn!("systemd did not confirm the stored connections ({e})");
    }
    Ok(count)
}

/// Names a connection's descriptors and makes its sockets end as a reset
/// if nobody takes them over. A buffer in flight goes into a pipe of its
/// own.
fn pack(taken: Taken, id: &str) -> Result<Vec<(String, Stored)>, Refused> {
    let now = Instant::now();
    let Taken {
        relay,
        started,
        last_moved,
    } = taken;
    let (client, backend, mut up, mut down) = relay.into_halves();
    if let Err(e) = into_pipe(&mut up).and_then(|()| into_pipe(&mut down)) {
        let relay = Relay::from_halves(client, backend, up, down);
        let taken = Taken {
            relay,
            started,
            last_moved,
        };
        return Err(Box::new((
            taken,
            format!("no pipe for its bytes in flight ({e})"),
        )));
    }
    let state = State {
        up: up.moved,
        down: down.moved,
        up_ended: up.ended,
        down_ended: down.ended,
        up_copy: up.copying,
        down_copy: down.copying,
        age: now.saturating_duration_since(started),
        idle: last_moved.map_or(Duration::ZERO, |at| now.saturating_duration_since(at)),
    };
    for socket in [&client, &backend] {
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
    let mut names = vec![
        (format!("{id}.{}", state.format()), Stored::Socket(client)),
        (format!("{id}.backend"), Stored::Socket(backend)),
    ];
    for (direction, half) in [("up", up), ("down", down)] {
        if let InFlight::Pipe(pipe, _) = half.in_flight {
            names.push((format!("{id}.{direction}"), Stored::Pipe(pipe)));
        }
    }
    Ok(names)
}

/// A connection that cannot be stored, and why.
type Refused = Box<(Taken, String)>;

/// Moves a buffer in flight into a pipe, which can be stored.
fn into_pipe(half: &mut Half) -> io::Result<()> {
    if let InFlight::Bytes(bytes) = &half.in_flight {
        let pipe = crate::pipe::filled(bytes)?;
        half.in_flight = InFlight::Pipe(pipe, bytes.len() as u32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_as_written() {
        let state = State {
            up: 123,
            down: 1 << 40,
            up_ended: true,
            down_ended: false,
            up_copy: false,
            down_copy: true,
            age: Duration::from_millis(98765),
            idle: Duration::from_millis(5),
        };
        let name = format!("conn.42.7.{}", state.format());
        assert!(name.len() <= 255, "systemd's limit for a name");
        assert!(!name.contains(':'), "systemd's separator");
        assert_eq!(split_name(&name).0, "conn.42.7");
        assert_eq!(State::parse(&name), Some(state));
    }

    #[test]
    fn an_unreadable_state_is_refused() {
        assert_eq!(State::parse("conn.1.2.client,up=x"), None);
        assert_eq!(State::parse("conn.1.2.backend"), None);
        assert_eq!(State::parse("conn.1.2.client,ended=sideways"), None);
    }
}
