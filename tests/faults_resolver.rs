//! Faults from a system that changes under the sandbox: a host-name CONNECT
//! is resolved at each connect, and that must keep working when the files
//! the resolver reads are replaced the way editors, resolvconf and
//! systemd-resolved replace them (a new file renamed over the old one, a
//! symlink swapped for the file).
//!
//! The relay runs in a mount namespace of its own where `/etc` is a
//! temporary directory holding copies of the files it needs; the test
//! changes that directory from outside the namespace. The machine's own
//! `/etc` is only read, to copy from.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Bounds each client's wait for its backend's answer.
const QUICK: Duration = Duration::from_secs(5);

/// The host name CONNECT uses; only the private `/etc/hosts` knows it.
const NAME: &str = "backend.test";

/// A temporary tree whose `etc/` becomes the relay's `/etc`.
struct PrivateEtc {
    tree: TempDir,
    etc: PathBuf,
}

impl PrivateEtc {
    /// `etc/` with copies of what the relay needs from the machine's `/etc`
    /// (the dynamic loader's cache, the user and group databases, the
    /// resolver's settings), name resolution from files only, and a hosts
    /// file mapping [`NAME`] to `address`.
    fn new(address: &str) -> PrivateEtc {
        let tree = TempDir::new();
        let etc = tree.join("etc");
        std::fs::create_dir(&etc).unwrap();
        for name in [
            "ld.so.cache",
            "ld.so.conf",
            "passwd",
            "group",
            "host.conf",
            "gai.conf",
            "localtime",
        ] {
            let source = Path::new("/etc").join(name);
            if source.exists() {
                std::fs::copy(&source, etc.join(name)).unwrap();
            }
        }
        std::fs::write(
            etc.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files\n",
        )
        .unwrap();
        std::fs::write(etc.join("resolv.conf"), "# no name servers: files only\n").unwrap();
        std::fs::write(etc.join("hosts"), hosts_mapping(address)).unwrap();
        PrivateEtc { tree, etc }
    }

    /// Replaces `etc/hosts` as an editor does: writes a new file beside it
    /// and renames it over the old one.
    fn rename_hosts_to(&self, address: &str) {
        let new = self.etc.join("hosts.new");
        std::fs::write(&new, hosts_mapping(address)).unwrap();
        std::fs::rename(&new, self.etc.join("hosts")).unwrap();
    }

    /// Replaces `etc/hosts` by a symlink to a file in a new directory of the
    /// tree, as systemd-resolved does with `/etc/resolv.conf`. The target is
    /// absolute, so it resolves the same inside the relay's namespace.
    fn symlink_hosts_to(&self, address: &str) {
        let elsewhere = self.tree.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let target = elsewhere.join("hosts");
        std::fs::write(&target, hosts_mapping(address)).unwrap();
        let link = self.etc.join("hosts.link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::fs::rename(&link, self.etc.join("hosts")).unwrap();
    }

    /// Makes `command` run in a mount namespace of its own with `etc/`
    /// bind-mounted over `/etc`.
    fn apply(&self, command: &mut Command) {
        bind_in_private_mount_namespace(command, &self.etc, Path::new("/etc"));
    }
}

fn hosts_mapping(address: &str) -> String {
    format!("127.0.0.1 localhost\n{address} {NAME}\n")
}

/// Two backends on the same port, A on 127.0.0.1 and B on 127.0.0.2; each
/// answers every connection with its own letter.
fn backends_a_and_b() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let Ok(b) = TcpListener::bind(("127.0.0.2", port)) else {
            continue; // that port is taken on 127.0.0.2: pick another
        };
        let answer = |letter: &'static [u8]| {
            move |mut conn: Box<dyn Conn>| {
                let _ = conn.write_all(letter);
            }
        };
        return (
            Backend::tcp_on(a, answer(b"A")),
            Backend::tcp_on(b, answer(b"B")),
            port,
        );
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Connects a client through the relay: the letter of the backend that
/// answered it.
fn reached(relay: &Relay) -> String {
    let mut client = TcpStream::connect(relay.address()).unwrap();
    client.set_read_timeout(Some(QUICK)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    match client.read_to_string(&mut answer) {
        Ok(_) => answer,
        Err(e) => panic!("no answer through the relay: {e}; log:\n{}", relay.log()),
    }
}

/// Asserts that the next client through `relay` reaches the backend called
/// `letter`; `when` says at which step, for the failure message.
fn assert_reaches(relay: &Relay, letter: &str, when: &str) {
    assert_eq!(reached(relay), letter, "{when}; log:\n{}", relay.log());
}

/// Backends A and B on one port, and a relay to `backend.test:PORT` under a
/// private `/etc` that maps the name to A, with the default sandbox, that
/// has already relayed one client to A. Dropped in the order of the fields.
struct Resolving {
    relay: Relay,
    etc: PrivateEtc,
    _b: Backend,
    _a: Backend,
}

impl Resolving {
    fn to_a() -> Resolving {
        let (a, b, port) = backends_a_and_b();
        let etc = PrivateEtc::new("127.0.0.1");
        let mut command = command(&["127.0.0.1:0", &format!("{NAME}:{port}")]);
        etc.apply(&mut command);
        let relay = Relay::start_command(command, 1);
        assert_reaches(&relay, "A", "before any change");
        Resolving {
            relay,
            etc,
            _b: b,
            _a: a,
        }
    }
}

#[test]
fn a_hosts_file_renamed_over_the_old_one_is_used_for_the_next_client() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    let resolving = Resolving::to_a();

    resolving.etc.rename_hosts_to("127.0.0.2");

    assert_reaches(&resolving.relay, "B", "after the rename");
}

#[test]
fn a_hosts_file_replaced_by_a_symlink_elsewhere_is_used_for_the_next_client() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    let resolving = Resolving::to_a();

    resolving.etc.symlink_hosts_to("127.0.0.2");

    assert_reaches(&resolving.relay, "B", "after the symlink swap");
}

#[test]
fn hosts_renamed_then_swapped_for_a_symlink_keeps_resolving_each_time() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    let resolving = Resolving::to_a();

    resolving.etc.rename_hosts_to("127.0.0.2");
    assert_reaches(&resolving.relay, "B", "after the rename");

    resolving.etc.symlink_hosts_to("127.0.0.1");
    assert_reaches(&resolving.relay, "A", "after the symlink swap");
}
