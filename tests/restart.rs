//! Restarting without refusing a client: the relay hands its listeners to
//! systemd's file descriptor store (`FDSTORE=1`, `--fd-store`), and the next
//! instance, passed them back in `LISTEN_FDS`/`LISTEN_FDNAMES`, adopts them
//! instead of binding again. Here the test plays the service manager: it
//! keeps what the relay stores, and starts the next instance with it.

mod common;

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use common::*;

/// The service manager's notification socket and its file descriptor store.
struct Manager {
    socket: UnixDatagram,
    dir: TempDir,
    /// Stored descriptors, by name.
    store: Vec<(String, OwnedFd)>,
}

impl Manager {
    fn new() -> Manager {
        let dir = TempDir::new();
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Manager {
            socket,
            dir,
            store: Vec::new(),
        }
    }

    fn notify_socket(&self) -> String {
        self.dir.arg("notify")
    }

    /// Reads messages until `READY=1`, keeping what comes with `FDSTORE=1`.
    fn until_ready(&mut self) {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            let mut data = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                &self.socket,
                &mut [std::io::IoSliceMut::new(&mut data)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            let Ok(received) = received else {
                continue;
            };
            let text = String::from_utf8_lossy(&data[..received.bytes]).into_owned();
            let mut fds = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = message {
                    fds.extend(rights);
                }
            }
            if text.lines().any(|l| l == "FDSTORE=1") {
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                self.store
                    .extend(fds.into_iter().map(|fd| (name.clone(), fd)));
            }
            if text.lines().any(|l| l == "READY=1") {
                return;
            }
        }
        panic!("no READY=1 within {DEADLINE:?}");
    }

    /// A relay started with NOTIFY_SOCKET, and with the store passed back
    /// as systemd passes it (descriptors 3…, LISTEN_FDNAMES).
    fn start(&mut self, args: &[&str]) -> Relay {
        let fds: Vec<i32> = self.store.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = self.store.iter().map(|(n, _)| n.as_str()).collect();
        let mut command = if fds.is_empty() {
            command(args)
        } else {
            socket_activated(args, &fds, &names)
        };
        command.env("NOTIFY_SOCKET", self.notify_socket());
        let relay = Relay::start_command(command, 1);
        self.until_ready();
        relay
    }
}

#[test]
fn a_unix_listener_survives_a_restart_and_the_client_in_between_is_served() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let socket = dir.arg("relay.sock");
    let args = ["--fd-store", &socket, &backend.connect_arg];
    let mut manager = Manager::new();
    let mut first = manager.start(&args);
    assert_eq!(manager.store.len(), 1, "one listener stored");
    assert_eq!(manager.store[0].0, "listener");
    let inode = std::fs::metadata(&socket).unwrap().ino();
    assert_eq!(exchange(connect(&socket), b"before".to_vec()), b"before");

    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success());
    assert_eq!(
        std::fs::metadata(&socket).map(|m| m.ino()).ok(),
        Some(inode),
        "the socket file stays for the next instance"
    );
    // Nobody relays now, yet the client is not refused: it waits in the
    // stored listener's backlog.
    let mut waiting = UnixStream::connect(&socket).expect("not refused during the restart");
    waiting.write_all(b"during the restart").unwrap();
    waiting.shutdown(std::net::Shutdown::Write).unwrap();

    let second = manager.start(&args);
    assert!(second.log().contains("adopted"), "{}", second.log());
    let mut reply = Vec::new();
    waiting.set_read_timeout(Some(DEADLINE)).unwrap();
    waiting.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"during the restart");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        inode,
        "adopted, not bound again"
    );
    assert_eq!(second.address(), first.address());
}

#[test]
fn a_tcp_listener_on_port_0_keeps_its_port_across_a_restart() {
    let backend = Backend::tcp(echo);
    let args = ["--fd-store", "127.0.0.1:0", &backend.connect_arg];
    let mut manager = Manager::new();
    let mut first = manager.start(&args);
    let address = first.address().to_string();
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success());
    let waiting = std::net::TcpStream::connect(&address).expect("not refused during the restart");
    let second = manager.start(&args);
    assert_eq!(
        second.address(),
        address,
        "the same listener, the same port"
    );
    assert_eq!(exchange(Box::new(waiting), b"queued".to_vec()), b"queued");
}

#[test]
fn without_fd_store_nothing_is_stored_and_the_socket_file_goes() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let socket = dir.arg("relay.sock");
    let mut manager = Manager::new();
    let mut relay = manager.start(&[&socket, &backend.connect_arg]);
    assert!(manager.store.is_empty());
    relay.signal(libc::SIGTERM);
    assert!(relay.wait_exit().success());
    assert!(!std::path::Path::new(&socket).exists());
}

#[test]
fn a_stored_listener_for_another_path_is_not_adopted() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut manager = Manager::new();
    let mut first = manager.start(&["--fd-store", &dir.arg("a.sock"), &backend.connect_arg]);
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success());
    let second = manager.start(&["--fd-store", &dir.arg("b.sock"), &backend.connect_arg]);
    assert!(!second.log().contains("adopted"), "{}", second.log());
    assert_eq!(exchange(connect(&dir.arg("b.sock")), b"b".to_vec()), b"b");
}
