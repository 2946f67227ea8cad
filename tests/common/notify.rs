//! The service manager's end of `NOTIFY_SOCKET`: a datagram socket the test
//! binds, recording every message the relay sends and when it arrived.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{DEADLINE, TempDir, command};

/// A `NOTIFY_SOCKET` at a path, with what it has received so far.
pub struct Notifications {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub path: PathBuf,
    /// Every message so far, with the moment it was read.
    pub received: Vec<(Instant, String)>,
    _dir: TempDir,
}

impl Notifications {
    /// Binds a fresh socket in a directory of its own.
    pub fn new() -> Notifications {
        let dir = TempDir::new();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifications {
            socket,
            path,
            received: Vec::new(),
            _dir: dir,
        }
    }

    /// A relay command with `args` that notifies this socket.
    pub fn relay_command(&self, args: &[&str]) -> Command {
        let mut command = command(args);
        command.env("NOTIFY_SOCKET", &self.path);
        command
    }

    /// The next message within `limit`.
    pub fn next(&mut self, limit: Duration) -> Option<String> {
        let limit = limit.max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                self.received.push((Instant::now(), message.clone()));
                Some(message)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv on NOTIFY_SOCKET: {e}"),
        }
    }

    /// The first message within `limit` that `wanted` accepts.
    pub fn wait_within(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next(left) {
                Some(message) if wanted(&message) => return Some(message),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// The first message with the line `line` (`READY=1`), within [`DEADLINE`].
    pub fn wait_for(&mut self, line: &str) -> String {
        self.wait_within(DEADLINE, |m| has_line(m, line))
            .unwrap_or_else(|| panic!("no {line} within {DEADLINE:?}; got {:?}", self.received))
    }

    /// How many messages so far carry the line `line`.
    pub fn count(&self, line: &str) -> usize {
        self.received
            .iter()
            .filter(|(_, m)| has_line(m, line))
            .count()
    }
}

/// Whether a notification carries the line `line` (`READY=1`).
pub fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// The `STATUS=` text of a notification, if it has one.
pub fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}
