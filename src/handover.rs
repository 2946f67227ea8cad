//! Handing live connections to the next instance through systemd's file
//! descriptor store, and taking them over from the previous one.
//!
//! On a hand-over request (SIGUSR2, `systemctl reload`), every connection
//! is taken off the engine as it stands and stored: its client socket, its
//! backend socket, both ends of a pipe for each direction that has bytes in
//! flight (read but not yet written), and its state in the client socket's
//! name. The names pair the descriptors up again:
//!
//! ```text
//! conn.PID.N.client,up=BYTES,down=BYTES,ended=up+down,copy=up,age=MS,idle=MS
//! conn.PID.N.backend
//! conn.PID.N.up.read, conn.PID.N.up.write      (client -> CONNECT, in flight)
//! conn.PID.N.down.read, conn.PID.N.down.write  (CONNECT -> client, in flight)
//! ```
//!
//! Sockets are stored with `SO_LINGER` 0 and `FDPOLL=0`: one that no
//! instance takes over (the unit was stopped) is closed by systemd as a
//! reset, and one whose peer hung up stays stored with its pair. The next
//! instance puts each connection together without changing anything that
//! systemd's copies share (the pipes keep their bytes, the linger stays),
//! so that if it fails before it runs them, the instance after it finds
//! them intact. Only when a connection goes to its engine ([`commit`]) is
//! the linger cleared and the connection removed from the store
//! (`FDSTOREREMOVE=1`), so that systemd keeps no copy of a socket it closes.
//! Names beginning with `conn.` are reserved for this.

use std::io;
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
    up: [Option<OwnedFd>; 2],
    down: [Option<OwnedFd>; 2],
    names: Vec<String>,
    /// A name came twice (a reused PID, say): nothing here can be trusted.
    duplicate: bool,
}

/// Takes over the connections among the descriptors systemd passed back,
/// except `skip` (a descriptor LISTEN names as `fd:N`, which is LISTEN's).
/// Nothing that systemd's copies share is changed yet (see [`commit`]). A
/// connection whose descriptors are not all there, or whose state cannot
/// be read, is closed (it was stored to end as a reset); its names come
/// back, with those of unknown descriptors, for removal from the store.
pub fn adopt(passed: Vec<(RawFd, String)>, skip: Option<RawFd>) -> (Vec<Adopted>, Vec<String>) {
    let mut groups: Vec<(String, Parts)> = Vec::new();
    let mut dropped = Vec::new();
    for (fd, name) in passed {
        if !is_connection_name(&name) || Some(fd) == skip {
            continue;
        }
        // SAFETY: systemd passed this descriptor to this process, and no
        // other part of the relay takes descriptors named "conn.…"
        // (listener.rs leaves them alone, and `skip` is LISTEN's own).
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
        let twice = match role.split(',').next() {
            Some("client") => parts.client.replace((fd, name.clone())).is_some(),
            Some("backend") => parts.backend.replace((fd, name.clone())).is_some(),
            Some("up.read") => parts.up[0].replace(fd).is_some(),
            Some("up.write") => parts.up[1].replace(fd).is_some(),
            Some("down.read") => parts.down[0].replace(fd).is_some(),
            Some("down.write") => parts.down[1].replace(fd).is_some(),
            _ => {
                crate::warn!("stored descriptor '{name}' is unknown to this version: closed");
                dropped.push(name);
                continue;
            }
        };
        parts.duplicate |= twice;
        parts.names.push(name);
    }
    let mut adopted = Vec::new();
    for (id, mut parts) in groups {
        let names = std::mem::take(&mut parts.names);
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

/// Makes an adopted connection this instance's: its sockets close normally
/// from now on, and systemd forgets them.
pub fn commit(connection: &Adopted) {
    for side in [&connection.relay.client, &connection.relay.backend] {
        let _ = side.socket().set_linger(None);
    }
    for name in &connection.names {
        crate::notify::remove_stored(name);
    }
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
    if parts.duplicate {
        return Err("has a name twice".into());
    }
    let (Some((client, state)), Some((backend, _))) = (parts.client, parts.backend) else {
        return Err("is incomplete (a socket is missing)".into());
    };
    let state = State::parse(&state).ok_or_else(|| format!("has an unreadable state '{state}'"))?;
    let client = Socket::from(client);
    let backend = Socket::from(backend);
    let half = |moved, ended, copying, [read, write]: [Option<OwnedFd>; 2]| {
        let in_flight = match (read, write) {
            (None, None) => InFlight::Nothing,
            (Some(read), Some(write)) => match crate::pipe::Pipe::from_ends(read, write) {
                Ok((_, 0)) => InFlight::Nothing,
                Ok((pipe, len)) => InFlight::Pipe(pipe, len),
                Err(e) => return Err(format!("has a pipe that cannot be used ({e})")),
            },
            _ => return Err("is incomplete (a pipe end is missing)".into()),
        };
        Ok(Half {
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

/// Descriptors a connection takes in the store.
fn descriptors(taken: &Taken) -> usize {
    2 + 2 * taken.relay.pipes_needed()
}

/// How many descriptors the unit's store holds, when systemd says
/// (`$FDSTORE`, set by systemd 254 and later, and by the unit templates).
/// systemd refuses what does not fit without a word, so without it
/// nothing is handed over.
fn capacity() -> Option<usize> {
    std::env::var("FDSTORE")
        .ok()
        .and_then(|n| crate::endpoint::parse_number::<usize>(&n))
}

/// Stores every taken connection in systemd's file descriptor store, in
/// which `occupied` descriptors are already. On failure, the connections
/// that were not stored come back, with why, to be relayed here until they
/// end.
pub fn store(taken: Vec<Taken>, occupied: usize) -> Result<usize, (Vec<Taken>, String)> {
    let Some(capacity) = capacity() else {
        return Err((
            taken,
            "the store's size is unknown ($FDSTORE is not set: systemd 254 and later set it; on 252 set Environment=FDSTORE= to FileDescriptorStoreMax=)".into(),
        ));
    };
    let needed = occupied + taken.iter().map(descriptors).sum::<usize>();
    if needed > capacity {
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
        let packed = match Packed::new(connection, format!("{PREFIX}{pid}.{n}")) {
            Ok(packed) => packed,
            Err(refused) => {
                let (connection, why) = *refused;
                let mut rest = vec![connection];
                rest.extend(taken.map(|(_, t)| t));
                return Err((rest, why));
            }
        };
        let sent = packed
            .descriptors()
            .into_iter()
            .try_for_each(|(name, fd)| crate::notify::store_connection(&name, fd, deadline));
        if let Err(e) = sent {
            // What reached the store of this one is incomplete there: the
            // next instance closes it. This one, too, is relayed here.
            let mut rest = vec![packed.unpack()];
            rest.extend(taken.map(|(_, t)| t));
            return Err((rest, format!("systemd did not take a descriptor ({e})")));
        }
    }
    if let Err(e) = crate::notify::barrier(deadline) {
        crate::warn!("systemd did not confirm the stored connections ({e})");
    }
    Ok(count)
}

/// A connection set up to be stored: its sockets end as a reset if nobody
/// takes them over, and its bytes in flight are in pipes.
struct Packed {
    id: String,
    client: Socket,
    backend: Socket,
    up: Half,
    down: Half,
    state: State,
    started: Instant,
    last_moved: Option<Instant>,
}

/// A connection that cannot be stored, and why.
type Refused = Box<(Taken, String)>;

impl Packed {
    fn new(taken: Taken, id: String) -> Result<Packed, Refused> {
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
        Ok(Packed {
            id,
            client,
            backend,
            up,
            down,
            state,
            started,
            last_moved,
        })
    }

    /// Every descriptor to store, by name.
    fn descriptors(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let id = &self.id;
        let mut names = vec![
            (format!("{id}.{}", self.state.format()), self.client.as_fd()),
            (format!("{id}.backend"), self.backend.as_fd()),
        ];
        for (direction, half) in [("up", &self.up), ("down", &self.down)] {
            if let InFlight::Pipe(pipe, _) = &half.in_flight {
                names.push((format!("{id}.{direction}.read"), pipe.read_fd()));
                names.push((format!("{id}.{direction}.write"), pipe.write_fd()));
            }
        }
        names
    }

    /// The connection as it was, to be relayed here after all.
    fn unpack(self) -> Taken {
        for socket in [&self.client, &self.backend] {
            let _ = socket.set_linger(None);
        }
        Taken {
            relay: Relay::from_halves(self.client, self.backend, self.up, self.down),
            started: self.started,
            last_moved: self.last_moved,
        }
    }
}

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
