//! Faults in client identity: every path that decides who a client is must
//! describe the real client or refuse it, never something weaker.
//!
//! - A TCP client that resets while it waits in the listen backlog must not
//!   reach CONNECT behind a `PROXY UNKNOWN` (v1) or `LOCAL` (v2) header, which
//!   backends read as "the relay itself, on loopback".
//! - A Unix client in another PID namespace (`SO_PEERCRED` pid 0) is judged
//!   by its uid and gid, not refused as unreadable.
//! - A Unix client with many supplementary groups (`SO_PEERGROUPS` larger
//!   than any fixed buffer) is judged by all of them.
//! - User and group records larger than any fixed buffer (`getpwnam_r`,
//!   `getgrnam_r` and `ERANGE`) are found, in a private mount namespace with
//!   bind-mounted copies of `/etc/passwd` and `/etc/group`.

mod common;
use common::*;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a client that resets in the backlog sends: an attempt on an
/// endpoint a backend would guard with a localhost ACL.
const REQUEST: &[u8] = b"POST /admin HTTP/1.0\r\n\r\n";

/// How often the backlog race is run in one test.
const ROUNDS: usize = 20;

/// Everything the backend received on each connection, in accept order, and
/// whether that connection has ended.
type Recordings = Arc<Mutex<Vec<Arc<Mutex<(Vec<u8>, bool)>>>>>;

/// A TCP backend that echoes every byte and records what it received.
fn recording_echo_backend() -> (Backend, Recordings) {
    let recordings: Recordings = Arc::default();
    let all = recordings.clone();
    let backend = Backend::tcp(move |mut conn: Box<dyn Conn>| {
        let mine = Arc::new(Mutex::new((Vec::new(), false)));
        all.lock().unwrap().push(mine.clone());
        let mut buffer = [0u8; 4096];
        loop {
            match conn.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    mine.lock().unwrap().0.extend_from_slice(&buffer[..n]);
                    if conn.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        mine.lock().unwrap().1 = true;
    });
    (backend, recordings)
}

/// Waits until every connection the backend accepted has ended, and returns
/// what each received.
fn finished_recordings(backend: &Backend, recordings: &Recordings) -> Vec<Vec<u8>> {
    wait_until("every backend connection to end", || {
        let all = recordings.lock().unwrap();
        all.len() == backend.connections() && all.iter().all(|r| r.lock().unwrap().1)
    });
    let all = recordings.lock().unwrap();
    all.iter().map(|r| r.lock().unwrap().0.clone()).collect()
}

/// The PROXY header the relay must send for a client on 127.0.0.1.
fn header(version: &str, client_port: u16, relay_port: u16) -> Vec<u8> {
    match version {
        "v1" => {
            format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {relay_port}\r\n").into_bytes()
        }
        _ => {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
            h.extend_from_slice(&client_port.to_be_bytes());
            h.extend_from_slice(&relay_port.to_be_bytes());
            h
        }
    }
}

/// A client that holds the relay's only slot: it is relayed (its marker
/// comes back behind its own header) and stays open until dropped.
fn hold_the_slot(version: &str, relay_port: u16, marker: &[u8]) -> (TcpStream, u16) {
    let mut holder = TcpStream::connect(("127.0.0.1", relay_port)).unwrap();
    holder.set_read_timeout(Some(DEADLINE)).unwrap();
    let port = holder.local_addr().unwrap().port();
    holder.write_all(marker).unwrap();
    let mut want = header(version, port, relay_port);
    want.extend_from_slice(marker);
    let mut got = vec![0u8; want.len()];
    holder.read_exact(&mut got).expect("the holder is relayed");
    assert_eq!(got, want, "the holder's own header and bytes");
    (holder, port)
}

/// The race from issue 10: with `-c 1`, client B connects while A holds the
/// slot, sends a request and resets (`SO_LINGER {1, 0}`) while it still
/// waits in the backlog; then A closes. Run `ROUNDS` times against one relay;
/// returns the relay's port, the ports of the holders and of the B clients,
/// and what the backend received on each of its connections.
fn reset_in_backlog_race(version: &str) -> (u16, Vec<u16>, Vec<u16>, Vec<Vec<u8>>) {
    let (backend, recordings) = recording_echo_backend();
    let relay = Relay::start(&[
        "-c",
        "1",
        "--proxy-protocol",
        version,
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    let relay_port = relay.port();
    let mut holders = Vec::new();
    let mut resetters = Vec::new();
    let (mut holder, port) = hold_the_slot(version, relay_port, b"holder 0\n");
    holders.push(port);
    for round in 1..=ROUNDS {
        let mut b = TcpStream::connect(("127.0.0.1", relay_port)).unwrap();
        resetters.push(b.local_addr().unwrap().port());
        b.write_all(REQUEST).unwrap();
        socket2::SockRef::from(&b)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(b); // a reset, while B is still in the listen backlog
        holder.shutdown(Shutdown::Write).unwrap();
        drop(holder); // frees the slot: the relay accepts B next
        // The next holder is accepted after B: once it is relayed, the
        // relay has dealt with B.
        let (next, port) =
            hold_the_slot(version, relay_port, format!("holder {round}\n").as_bytes());
        holder = next;
        holders.push(port);
    }
    drop(holder);
    let received = finished_recordings(&backend, &recordings);
    (relay_port, holders, resetters, received)
}

/// Checks what the backend received in the race: each connection begins with
/// a header naming one of the real clients, and B's request only ever comes
/// behind B's own header.
fn assert_every_header_names_the_real_client(version: &str) {
    let (relay_port, holders, resetters, received) = reset_in_backlog_race(version);
    for (i, got) in received.iter().enumerate() {
        let shown = String::from_utf8_lossy(got);
        assert!(
            !got.starts_with(b"PROXY UNKNOWN"),
            "connection {i}: the backend got PROXY UNKNOWN: {shown:?}"
        );
        if version == "v2" && got.len() > 12 {
            assert_ne!(
                got[12], 0x20,
                "connection {i}: the backend got a v2 LOCAL header: {got:?}"
            );
        }
        let holder = holders
            .iter()
            .find(|&&p| got.starts_with(&header(version, p, relay_port)));
        let resetter = resetters
            .iter()
            .find(|&&p| got.starts_with(&header(version, p, relay_port)));
        match (holder, resetter) {
            (Some(&p), _) => {
                let marker = format!("holder {}\n", holders.iter().position(|&h| h == p).unwrap());
                assert_eq!(
                    &got[header(version, p, relay_port).len()..],
                    marker.as_bytes(),
                    "connection {i}: a holder's bytes: {shown:?}"
                );
            }
            (None, Some(&p)) => {
                let body = &got[header(version, p, relay_port).len()..];
                assert!(
                    REQUEST.starts_with(body),
                    "connection {i}: behind B's header only B's bytes: {shown:?}"
                );
            }
            (None, None) => panic!(
                "connection {i}: the header names none of the clients \
                 (holders {holders:?}, resetters {resetters:?}, relay port {relay_port}): {shown:?} {got:?}"
            ),
        }
    }
}

#[test]
fn v1_header_of_a_client_that_reset_in_the_backlog_is_its_own_or_none() {
    assert_every_header_names_the_real_client("v1");
}

#[test]
fn v2_header_of_a_client_that_reset_in_the_backlog_is_proxy_inet_or_none() {
    assert_every_header_names_the_real_client("v2");
}

/// Who a client process is: the ids it takes before it connects.
#[derive(Clone, Copy)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: &'static [libc::gid_t],
}

/// Connects to the Unix socket at `path` from a child process that first
/// takes `who`'s ids (setgroups, setgid, setuid), then hands the connected
/// socket to the test: the kernel records the peer credentials and groups at
/// connect(), so the relay sees the child's identity while the test talks.
fn connect_as(path: &Path, who: Identity) -> io::Result<UnixStream> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    let address = socket2::SockAddr::unix(path)?;
    let fd = socket.as_raw_fd();
    let mut child = Command::new("/bin/true");
    // SAFETY: only system calls between fork and exec, on memory allocated
    // before the fork (the address, the group list).
    unsafe {
        child.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setgroups(who.groups.len(), who.groups.as_ptr()))?;
            check(libc::setgid(who.gid))?;
            check(libc::setuid(who.uid))?;
            check(libc::connect(fd, address.as_ptr().cast(), address.len()))
        });
    }
    let mut child = child.spawn()?;
    child.wait()?;
    let stream = UnixStream::from(OwnedFd::from(socket));
    stream.set_read_timeout(Some(DEADLINE))?;
    Ok(stream)
}

/// Sends `data`, half-closes and reads until the relay closes: what came
/// back (empty for a refused client; write errors are part of a refusal).
fn talk(mut stream: UnixStream, data: &[u8]) -> Vec<u8> {
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Checks that a client `who` is relayed: `data` comes back from the echo
/// backend behind the relay on `at`.
fn assert_admitted(relay: &Relay, at: &SharedSocket, who: Identity, data: &[u8]) {
    let stream = connect_as(Path::new(&at.socket), who).unwrap();
    assert_eq!(talk(stream, data), data, "log:\n{}", relay.log());
}

/// Checks that a client `who` sending `data` is refused for its uid, and
/// that the backend never sees it.
fn assert_refused_for_its_uid(relay: &mut Relay, at: &SharedSocket, who: Identity, data: &[u8]) {
    let stream = connect_as(Path::new(&at.socket), who).unwrap();
    assert_eq!(talk(stream, data), b"");
    // Refused for who it is, not because its credentials "cannot be read".
    let line = relay.wait_for_line("refused");
    assert!(line.contains(&format!("uid {}", who.uid)), "{line}");
    assert_eq!(at.backend.connections(), 0, "the backend never sees it");
}

const NOBODY: Identity = Identity {
    uid: 65534,
    gid: 65534,
    groups: &[],
};

/// A command running the relay as PID 1 of a PID namespace of its own, so
/// `SO_PEERCRED` reports pid 0 for the test's clients. `--kill-child` takes
/// the relay down with the `unshare` process the harness kills.
fn in_own_pid_namespace(args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child", "--"])
        .arg(relay_bin())
        .args(args);
    command
}

fn pid_namespaces_work() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "/bin/true"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn client_outside_the_relays_pid_namespace_is_judged_by_its_uid() {
    if !pid_namespaces_work() {
        skip("needs root, unshare and PID namespaces");
        return;
    }
    let at = SharedSocket::new("pidns.sock");
    let _relay = Relay::start_command(
        in_own_pid_namespace(&["--allow-uid", "0", &at.socket, &at.backend.connect_arg]),
        1,
    );
    let stream = UnixStream::connect(&at.socket).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        talk(stream, b"root from outside"),
        b"root from outside",
        "a root client (pid 0 as the relay sees it) is admitted by --allow-uid 0"
    );
    assert_eq!(at.backend.connections(), 1);
}

#[test]
fn client_outside_the_relays_pid_namespace_with_another_uid_is_refused_for_its_uid() {
    if !pid_namespaces_work() {
        skip("needs root, unshare and PID namespaces");
        return;
    }
    let at = SharedSocket::new("pidns.sock");
    let mut relay = Relay::start_command(
        in_own_pid_namespace(&at.allowlist_args("--allow-uid", "0")),
        1,
    );
    assert_refused_for_its_uid(&mut relay, &at, NOBODY, b"let me in");
}

/// 300 supplementary groups: more than fit a 256-entry `SO_PEERGROUPS` buffer.
static MANY_GROUPS: [libc::gid_t; 300] = {
    let mut groups = [0; 300];
    let mut i = 0;
    while i < 300 {
        groups[i] = 20000 + i as libc::gid_t;
        i += 1;
    }
    groups
};

const IN_300_GROUPS: Identity = Identity {
    uid: 65534,
    gid: 65534,
    groups: &MANY_GROUPS,
};

#[test]
fn client_in_300_groups_is_admitted_by_its_300th_group() {
    if !is_root() {
        skip("needs root to run a client with 300 supplementary groups");
        return;
    }
    let at = SharedSocket::new("groups.sock");
    let relay = Relay::start(&at.allowlist_args("--allow-gid", "20299"));
    assert_admitted(&relay, &at, IN_300_GROUPS, b"member of 20299");
    assert_eq!(at.backend.connections(), 1);
}

#[test]
fn client_in_300_groups_is_refused_when_none_is_allowed() {
    // Today's relay already refuses this client (it sees none of its
    // groups); this guards the other half of the fix: reading every group
    // must not admit a client that is in none of the allowed ones.
    if !is_root() {
        skip("needs root to run a client with 300 supplementary groups");
        return;
    }
    let at = SharedSocket::new("groups.sock");
    let mut relay = Relay::start(&at.allowlist_args("--allow-gid", "20999"));
    assert_refused_for_its_uid(&mut relay, &at, IN_300_GROUPS, b"not a member");
}

/// Starts the relay with `args` in a mount namespace of its own where
/// `target` (a file in `/etc`) is the file `source`. The namespace is
/// private, so nothing reaches the machine's own `/etc`.
fn start_with_private_file(args: &[&str], source: &Path, target: &str) -> Relay {
    let mut relay = command(args);
    bind_in_private_mount_namespace(&mut relay, source, Path::new(target));
    Relay::start_command(relay, 1)
}

fn mount_namespaces_work() -> bool {
    if !is_root() {
        return false;
    }
    let mut probe = Command::new("/bin/true");
    let group = Path::new("/etc/group");
    bind_in_private_mount_namespace(&mut probe, group, group);
    probe.status().is_ok_and(|s| s.success())
}

/// Skips the test (see [`skip`]) where there can be no private `file` (an
/// `/etc` file) for want of root or mount namespaces; returns whether it did.
fn skip_without_a_private(file: &str) -> bool {
    let works = mount_namespaces_work();
    if !works {
        skip(&format!(
            "needs root and mount namespaces for a private {file}"
        ));
    }
    !works
}

const BIG_GID: libc::gid_t = 54321;
const BIG_UID: libc::uid_t = 54322;

/// A client whose group is `biggroup`.
const BIG_GROUP_MEMBER: Identity = Identity {
    uid: 65534,
    gid: BIG_GID,
    groups: &[],
};

/// A client that is `biguser`.
const BIG_USER: Identity = Identity {
    uid: BIG_UID,
    gid: 65534,
    groups: &[],
};

/// A copy of `/etc/NAME` (`group`, `passwd`) in `dir` with `record`, which
/// must be more than 64 KiB, added at the end.
fn etc_file_with_a_big_record(dir: &TempDir, name: &str, record: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(Path::new("/etc").join(name)).unwrap();
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    assert!(record.len() > 64 * 1024);
    text.push_str(record);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A copy of `/etc/group` with `biggroup` (gid [`BIG_GID`]), whose record
/// lists 9000 members: about 100 KiB, more than 64 KiB.
fn group_file_with_a_big_group(dir: &TempDir) -> PathBuf {
    let members: Vec<String> = (0..9000).map(|i| format!("member{i:05}")).collect();
    let record = format!("biggroup:x:{BIG_GID}:{}\n", members.join(","));
    etc_file_with_a_big_record(dir, "group", &record)
}

/// A copy of `/etc/passwd` with `biguser` (uid [`BIG_UID`]), whose GECOS
/// field makes its record about 100 KiB, more than 64 KiB.
fn passwd_file_with_a_big_user(dir: &TempDir) -> PathBuf {
    let gecos = "Big User ".repeat(11_000);
    let record = format!("biguser:x:{BIG_UID}:65534:{gecos}:/nonexistent:/usr/sbin/nologin\n");
    etc_file_with_a_big_record(dir, "passwd", &record)
}

#[test]
fn socket_group_names_a_group_whose_record_is_over_64_kib() {
    if skip_without_a_private("/etc/group") {
        return;
    }
    let files = TempDir::new();
    let group = group_file_with_a_big_group(&files);
    let at = SharedSocket::new("big-group.sock");
    let relay = start_with_private_file(
        &[
            "--socket-group",
            "biggroup",
            &at.socket,
            &at.backend.connect_arg,
        ],
        &group,
        "/etc/group",
    );
    assert_eq!(
        std::fs::metadata(&at.socket).unwrap().gid(),
        BIG_GID,
        "log:\n{}",
        relay.log()
    );
}

#[test]
fn allow_gid_names_a_group_whose_record_is_over_64_kib() {
    if skip_without_a_private("/etc/group") {
        return;
    }
    let files = TempDir::new();
    let group = group_file_with_a_big_group(&files);
    let at = SharedSocket::new("big-group.sock");
    let args = at.allowlist_args("--allow-gid", "biggroup");
    let relay = start_with_private_file(&args, &group, "/etc/group");
    // The name resolved to the right id: a client whose group it is gets in.
    assert_admitted(&relay, &at, BIG_GROUP_MEMBER, b"in biggroup");
}

#[test]
fn allow_uid_names_a_user_whose_record_is_over_64_kib() {
    if skip_without_a_private("/etc/passwd") {
        return;
    }
    let files = TempDir::new();
    let passwd = passwd_file_with_a_big_user(&files);
    let at = SharedSocket::new("big-user.sock");
    let args = at.allowlist_args("--allow-uid", "biguser");
    let relay = start_with_private_file(&args, &passwd, "/etc/passwd");
    assert_admitted(&relay, &at, BIG_USER, b"i am biguser");
}
