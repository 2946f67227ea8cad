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
//! conn.PID.N.client,v=1,up=BYTES,down=BYTES,ended=up+down,copy=up,age=MS,idle=MS
//! conn.PID.N.backend
//! conn.PID.N.up.read, conn.PID.N.up.write      (client -> CONNECT, in flight)
//! conn.PID.N.down.read, conn.PID.N.down.write  (CONNECT -> client, in flight)
//! ```
//!
//! `v=` is the format's version (absent: 1, as the first hand-over wrote
//! it); a connection stored in a format this version does not know is
//! refused, not guessed at.
//!
//! Sockets are stored with `SO_LINGER` 0 and `FDPOLL=0`: one that no
//! instance takes over (the unit was stopped) is closed by systemd as a
//! reset, and one whose peer hung up stays stored with its pair. systemd
//! refuses without a word what does not fit in the store, so the relay
//! never takes its size on trust: after the connections it stores a
//! descriptor that tells whether it was kept (see [`store`]), and takes
//! every connection back when it was not.
//!
//! The next instance checks every descriptor before it believes its name
//! (a socket of the right kind, connected; both ends of one pipe;
//! non-blocking), and puts each connection together without changing
//! anything that systemd's copies share (the pipes keep their bytes, the
//! linger stays), so that if it fails before it runs them, the instance
//! after it finds them intact. When a connection goes to its engine
//! ([`commit`]) it is removed from the store (`FDSTOREREMOVE=1`); its linger
//! stays 0 until the store has confirmed that (`BARRIER=1`) and the
//! connection ends cleanly, so that a crash in between is a reset for its
//! peers, never a clean end of a cut stream. Names beginning with `conn.`
//! are reserved for this.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::engine::Taken;
use crate::passed::Passed;
use crate::relay::{Half, InFlight, Relay};

/// The exit status that asks systemd to start the next instance
/// (`RestartForceExitStatus=3` in the unit), after a hand-over or, when
/// none was possible, a drain.
pub const EXIT_STATUS: u8 = 3;

/// What every stored connection's names begin with.
const PREFIX: &str = "conn.";

/// How long systemd may take to read the stored descriptors, or to confirm
/// what it was sent (`BARRIER=1`).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// The version of the stored connections' names that this version writes.
const FORMAT: u64 = 1;

/// The role of the descriptor that tells whether the store kept everything
/// (`conn.PID.0.check`): the next instance drops it without a word.
const CHECK_ROLE: &str = "check";

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

/// Takes over the connections among the descriptors systemd passed back
/// (those LISTEN did not take).
/// Nothing that systemd's copies share is changed yet (see [`commit`]). A
/// connection whose descriptors are not all there, or whose state cannot
/// be read, is closed (it was stored to end as a reset); its names come
/// back, with those of unknown descriptors, for removal from the store.
pub fn adopt(passed: &mut Vec<Passed>) -> (Vec<Adopted>, Vec<String>) {
    let mut groups: Vec<(String, Parts)> = Vec::new();
    let mut dropped = Vec::new();
    for Passed { name, fd, .. } in crate::passed::claim(passed, |p| is_connection_name(&p.name)) {
        let Some(fd) = fd else {
            dropped.push(name);
            continue;
        };
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
            Some(CHECK_ROLE) => {
                dropped.push(name);
                continue;
            }
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

/// Makes an adopted connection this instance's: systemd forgets it. Its
/// sockets keep `SO_LINGER` 0 until the store has confirmed that and the
/// connection ends cleanly (`crate::engine::store_forgot`).
pub fn commit(connection: &Adopted) {
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
    let state = State::parse(&state)?;
    check_socket(&client).map_err(|why| format!("has a client socket that {why}"))?;
    check_socket(&backend).map_err(|why| format!("has a backend socket that {why}"))?;
    if same_file(&client, &backend) {
        return Err("has one socket as both client and backend".into());
    }
    let client = Socket::from(client);
    let backend = Socket::from(backend);
    let half = |moved, ended, copying, [read, write]: [Option<OwnedFd>; 2]| {
        let in_flight = match (read, write) {
            (None, None) => InFlight::Nothing,
            (Some(read), Some(write)) => match check_pipe(&read, &write)
                .and_then(|()| crate::pipe::Pipe::from_ends(read, write).map_err(|e| e.to_string()))
            {
                Ok((_, 0)) => InFlight::Nothing,
                Ok((pipe, len)) => InFlight::Pipe(pipe, len),
                Err(why) => return Err(format!("has a pipe that cannot be used ({why})")),
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

/// What a stored socket must be: a connected, non-blocking stream socket
/// (Unix, IPv4 or IPv6), as the relay stored it.
fn check_socket(fd: &OwnedFd) -> Result<(), String> {
    let socket = socket2::SockRef::from(fd);
    match socket.r#type() {
        Ok(kind) if kind == socket2::Type::STREAM => {}
        Ok(_) => return Err("is not a stream socket".into()),
        Err(_) => return Err("is not a socket".into()),
    }
    match socket.domain() {
        Ok(d)
            if [
                socket2::Domain::UNIX,
                socket2::Domain::IPV4,
                socket2::Domain::IPV6,
            ]
            .contains(&d) => {}
        _ => return Err("is neither Unix nor TCP".into()),
    }
    if socket.is_listener().unwrap_or(true) {
        return Err("is listening, not connected".into());
    }
    // Connected, or connected once: a TCP socket whose peer reset it while
    // it was stored has no peer any more, and still a local port (the bytes
    // in flight towards the other side are still to be delivered, or the
    // reset passed on).
    let bound = || {
        socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() != 0)
    };
    if let Err(e) = socket.peer_addr()
        && !bound()
    {
        return Err(format!("was never connected ({e})"));
    }
    if !nonblocking(fd) {
        return Err("is blocking (the relay stores non-blocking sockets)".into());
    }
    Ok(())
}

/// Both ends of one pipe, the read end and the write end, non-blocking.
fn check_pipe(read: &OwnedFd, write: &OwnedFd) -> Result<(), String> {
    use rustix::fs::{FileType, OFlags};
    let stat = |fd: &OwnedFd| rustix::fs::fstat(fd).map_err(|e| e.to_string());
    let (r, w) = (stat(read)?, stat(write)?);
    if FileType::from_raw_mode(r.st_mode) != FileType::Fifo
        || FileType::from_raw_mode(w.st_mode) != FileType::Fifo
    {
        return Err("not a pipe".into());
    }
    if (r.st_dev, r.st_ino) != (w.st_dev, w.st_ino) {
        return Err("its two ends belong to different pipes".into());
    }
    let mode = |fd: &OwnedFd| rustix::fs::fcntl_getfl(fd).map(|f| f & OFlags::RWMODE);
    if mode(read).ok() != Some(OFlags::RDONLY) || mode(write).ok() != Some(OFlags::WRONLY) {
        return Err("its ends are swapped".into());
    }
    if !nonblocking(read) || !nonblocking(write) {
        return Err("blocking".into());
    }
    Ok(())
}

fn nonblocking(fd: &OwnedFd) -> bool {
    rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
}

/// Whether two descriptors are the same socket (or file).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
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
            "client,v={FORMAT},up={},down={},ended={},copy={},age={},idle={}",
            self.up,
            self.down,
            both(self.up_ended, self.down_ended),
            both(self.up_copy, self.down_copy),
            self.age.as_millis(),
            self.idle.as_millis()
        )
    }

    /// The state in a client socket's name, or why it cannot be read.
    fn parse(name: &str) -> Result<State, String> {
        let unreadable = || format!("has an unreadable state '{name}'");
        let (_, role) = split_name(name);
        let mut fields = role.split(',');
        if fields.next() != Some("client") {
            return Err(unreadable());
        }
        let version = fields
            .clone()
            .find_map(|f| f.strip_prefix("v="))
            .map_or(Some(1), crate::endpoint::parse_number::<u64>);
        match version {
            Some(FORMAT) => {}
            Some(v) => {
                return Err(format!(
                    "was stored in format {v}, which this version (format {FORMAT}) does not know"
                ));
            }
            None => return Err(unreadable()),
        }
        State::fields(fields).ok_or_else(unreadable)
    }

    fn fields<'a>(fields: impl Iterator<Item = &'a str>) -> Option<State> {
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
                "v" => {}
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
/// (`$FDSTORE`, set by systemd 254 and later). Only a first check: a unit
/// can set it larger than the store really is, so what systemd kept is
/// checked afterwards all the same.
fn capacity() -> Option<usize> {
    std::env::var("FDSTORE")
        .ok()
        .and_then(|n| crate::endpoint::parse_number::<usize>(&n))
}

/// Stores every taken connection in systemd's file descriptor store, in
/// which `occupied` descriptors are already (when known), and checks that
/// the store kept them all. On failure, the connections come back, with
/// why, to be relayed here until they end: those sent are removed from the
/// store first.
pub async fn store(
    taken: Vec<Taken>,
    occupied: Option<usize>,
) -> Result<usize, (Vec<Taken>, String)> {
    let needed = occupied.unwrap_or(0) + taken.iter().map(descriptors).sum::<usize>();
    if let Some(capacity) = capacity()
        && needed + 1 > capacity
    {
        return Err((
            taken,
            format!(
                "they need {needed} descriptors in the store and one to check it, and $FDSTORE says it holds {capacity} (raise FileDescriptorStoreMax=)"
            ),
        ));
    }
    let deadline = Instant::now() + STORE_TIMEOUT;
    let pid = std::process::id();
    let mut packed = Vec::with_capacity(taken.len());
    let mut taken = taken.into_iter().enumerate();
    let mut failure = None;
    while let Some((n, connection)) = taken.next() {
        match Packed::new(connection, format!("{PREFIX}{pid}.{}", n + 1)) {
            Ok(connection) => packed.push(connection),
            Err(refused) => {
                let (connection, why) = *refused;
                let mut rest = vec![connection];
                rest.extend(taken.map(|(_, t)| t));
                failure = Some((rest, why));
                break;
            }
        }
    }
    let (mut back, why) = failure.unwrap_or_default();
    if back.is_empty()
        && let Err(too_long) = names_fit(&packed, occupied.unwrap_or(0))
    {
        return Err((packed.into_iter().map(Packed::unpack).collect(), too_long));
    }
    if back.is_empty() {
        match send_and_check(&packed, pid, deadline).await {
            Ok(()) => return Ok(packed.len()),
            Err(e) => {
                // Whatever reached the store must leave it before the
                // connections go on here: two instances must never relay
                // the same sockets.
                for connection in &packed {
                    for (name, _) in connection.descriptors() {
                        crate::notify::remove_stored(&name);
                    }
                }
                if let Err(e) = crate::notify::barrier(STORE_TIMEOUT).await {
                    crate::warn!("hand-over: systemd did not confirm the removals ({e})");
                }
                return Err((packed.into_iter().map(Packed::unpack).collect(), e));
            }
        }
    }
    back.splice(0..0, packed.into_iter().map(Packed::unpack));
    Err((back, why))
}

/// The longest environment string Linux passes to a program
/// (`MAX_ARG_STRLEN`, 32 pages), its final NUL included: systemd hands the
/// store's names to the next instance in one, `LISTEN_FDNAMES=a:b:…`, and
/// cannot start it at all (E2BIG) if they are longer.
const ENVIRONMENT_STRING_MAX: usize = 32 * 4096;

/// Room kept in `LISTEN_FDNAMES` for each descriptor the relay does not
/// name itself (listeners, a socket unit's sockets): systemd's limit for a
/// name, and its separator.
const OTHER_NAME_MAX: usize = 256;

/// Whether the names of `packed` fit in the next instance's
/// `LISTEN_FDNAMES` besides the `occupied` descriptors already stored
/// (and a socket unit's, and the store check's).
fn names_fit(packed: &[Packed], occupied: usize) -> Result<(), String> {
    let names: usize = packed
        .iter()
        .flat_map(|p| p.descriptors())
        .map(|(name, _)| name.len() + 1)
        .sum();
    let room = (ENVIRONMENT_STRING_MAX - "LISTEN_FDNAMES=".len() - 1)
        .saturating_sub(OTHER_NAME_MAX.saturating_mul(occupied.saturating_add(8)));
    if names > room {
        return Err(format!(
            "their names would take {names} bytes of LISTEN_FDNAMES, which Linux limits to {room} here (128 KiB in all): systemd could not start the next instance; fewer connections at once can be handed over"
        ));
    }
    Ok(())
}

/// Sends every packed connection to the store, then a descriptor of its
/// own: a pipe's write end, kept by systemd only if there was room for it
/// after everything else (a full store closes what does not fit, without a
/// word). Once systemd has processed it all (`BARRIER=1`), the pipe's read
/// end tells: a hang-up means systemd closed the write end.
async fn send_and_check(packed: &[Packed], pid: u32, deadline: Instant) -> Result<(), String> {
    for connection in packed {
        for (name, fd) in connection.descriptors() {
            crate::notify::store_connection(&name, fd, deadline)
                .map_err(|e| format!("systemd did not take a descriptor ({e})"))?;
        }
    }
    let (check, probe) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("no pipe to check the store with ({e})"))?;
    let check_name = format!("{PREFIX}{pid}.0.{CHECK_ROLE}");
    // Polled by systemd (no FDPOLL=0): it removes itself when this process,
    // holding the read end, exits.
    crate::notify::store_polled(&check_name, probe.as_fd(), deadline)
        .map_err(|e| format!("systemd did not take a descriptor ({e})"))?;
    drop(probe);
    crate::notify::barrier(STORE_TIMEOUT)
        .await
        .map_err(|e| format!("systemd did not confirm the stored connections ({e})"))?;
    let mut fds = [rustix::event::PollFd::new(
        &check,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let kept = match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(0) => true,
        Ok(_) => !fds[0].revents().contains(rustix::event::PollFlags::HUP),
        Err(e) => return Err(format!("cannot check the store ({e})")),
    };
    // Not needed by anybody once checked.
    crate::notify::remove_stored(&check_name);
    if kept {
        Ok(())
    } else {
        let sent: usize = packed.iter().map(|p| p.descriptors().len()).sum();
        Err(format!(
            "systemd did not keep them all: {sent} descriptors and one to check the store did not fit (FileDescriptorStoreMax= too small, or no store)"
        ))
    }
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
        assert_eq!(State::parse(&name), Ok(state));
    }

    #[test]
    fn an_unreadable_state_is_refused() {
        assert!(State::parse("conn.1.2.client,up=x").is_err());
        assert!(State::parse("conn.1.2.backend").is_err());
        assert!(State::parse("conn.1.2.client,ended=sideways").is_err());
    }

    #[test]
    fn a_state_without_a_version_is_the_first_format_and_a_later_one_is_refused() {
        let first = State::parse("conn.1.2.client,up=5,down=6,ended=-,copy=-,age=1,idle=0");
        assert_eq!(first.map(|s| (s.up, s.down)), Ok((5, 6)));
        let later = State::parse("conn.1.2.client,v=2,up=5").unwrap_err();
        assert!(later.contains("format 2"), "{later}");
    }
}
