//! Endpoints and listeners: every LISTEN and CONNECT form, the `listening
//! on` lines, inherited sockets (`fd:N`, `sd-listen`), and the socket files
//! the relay creates (mode, group, stale and live sockets, things that are
//! not sockets, missing directories, removal at exit).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::*;

/// A backend that reads until EOF, then answers `text`: tells backends apart.
fn answer(text: &'static str) -> impl Fn(Box<dyn Conn>) + Send + Sync {
    move |mut conn: Box<dyn Conn>| {
        let _ = Digest::of_stream(&mut *conn);
        let _ = conn.write_all(text.as_bytes());
    }
}

/// One round trip through the relay at `address` to an echo backend.
fn assert_echoes(address: &str) {
    let data = payload(70_000, address.len() as u64);
    assert!(
        exchange(connect(address), data.clone()) == data,
        "echo through {address}"
    );
}

fn stop(relay: &mut Relay) {
    relay.signal(Signal::TERM);
    let status = relay.wait_exit();
    assert!(status.success(), "{status:?}\n{}", relay.log());
}

#[test]
fn tcp_port_0_prints_the_real_port() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    assert!(
        relay.address().starts_with("127.0.0.1:"),
        "{}",
        relay.address()
    );
    assert_ne!(relay.port(), 0);
    assert_echoes(relay.address());
}

#[test]
fn tcp_to_tcp_and_unix_to_unix() {
    let dir = TempDir::new();
    let tcp_backend = Backend::tcp(echo);
    let tcp = Relay::start(&["127.0.0.1:0", &tcp_backend.connect_arg]);
    assert_echoes(tcp.address());
    let unix_backend = Backend::unix(&dir.join("backend.sock"), echo);
    let unix = Relay::start(&[&dir.arg("relay.sock"), &unix_backend.connect_arg]);
    assert_eq!(unix.address(), dir.arg("relay.sock"));
    assert_echoes(unix.address());
}

#[test]
fn ipv6_on_both_sides() {
    if !has_ipv6_loopback() {
        skip("this machine has no IPv6 loopback");
        return;
    }
    let backend = Backend::tcp_on(TcpListener::bind("[::1]:0").unwrap(), echo);
    for listen in ["[::1]:0", "tcp:[::1]:0"] {
        let relay = Relay::start(&[listen, &backend.connect_arg]);
        assert!(relay.address().starts_with("[::1]:"), "{}", relay.address());
        assert_echoes(relay.address());
    }
}

#[test]
fn empty_host_listens_on_all_interfaces_dual_stack() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&[":0", &backend.connect_arg]);
    let port = relay.port();
    assert_ne!(port, 0);
    assert_echoes(&format!("127.0.0.1:{port}"));
    if has_ipv6_loopback() {
        assert_echoes(&format!("[::1]:{port}"));
    } else {
        skip("the IPv6 part: this machine has no IPv6 loopback");
    }
}

#[test]
fn localhost_listens_on_every_address_it_resolves_to() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut cmd = command(&["localhost:0", &backend.connect_arg]);
    // Make localhost resolve to both loopback addresses where we can.
    std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").unwrap();
    let expected: BTreeSet<String> = if has_ipv6_loopback()
        && private_hosts(&mut cmd, &dir.join("hosts"))
    {
        ["127.0.0.1".to_string(), "[::1]".to_string()].into()
    } else {
        eprintln!(
            "no private /etc/hosts (needs root) or no IPv6: testing with the system's resolution of localhost"
        );
        ("localhost", 0)
            .to_socket_addrs()
            .unwrap()
            .map(|a| a.to_string().rsplit_once(':').unwrap().0.to_string())
            .collect()
    };
    let mut relay = Relay::start_command(cmd, expected.len());
    let hosts: BTreeSet<String> = relay
        .addresses
        .iter()
        .map(|a| a.rsplit_once(':').unwrap().0.to_string())
        .collect();
    assert_eq!(hosts, expected, "one listener per address of localhost");
    let port = relay.port();
    assert_ne!(port, 0);
    for address in relay.addresses.clone() {
        assert_eq!(
            port_of(&address),
            port,
            "every listener has the same port: {:?}",
            relay.addresses
        );
        assert_echoes(&address);
    }
    stop(&mut relay);
    let (_, log) = relay.finish();
    assert_eq!(log.matches("listening on").count(), expected.len(), "{log}");
}

#[test]
fn connect_host_names_are_resolved_at_each_connect_trying_every_address() {
    let dir = TempDir::new();
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = first.local_addr().unwrap().port();
    let _first = Backend::tcp_on(first, answer("first\n"));
    let hosts = dir.join("hosts");
    // ::1 comes first and refuses: the relay must go on to 127.0.0.1.
    std::fs::write(&hosts, "::1 backend.test\n127.0.0.1 backend.test\n").unwrap();
    // localhost, from the system's own resolver configuration.
    let relay = Relay::start(&["127.0.0.1:0", &format!("localhost:{port}")]);
    assert_eq!(
        exchange(connect(relay.address()), b"?".to_vec()),
        b"first\n"
    );
    // A private /etc/hosts where the name's first address refuses.
    let target = format!("backend.test:{port}");
    let mut cmd = command(&["127.0.0.1:0", &target]);
    if !private_hosts(&mut cmd, &hosts) {
        skip("the part with a private /etc/hosts: needs root and mount namespaces");
        return;
    }
    let relay = Relay::start_command(cmd, 1);
    assert_eq!(
        exchange(connect(relay.address()), b"?".to_vec()),
        b"first\n"
    );
    // The name now points elsewhere (same file, rewritten in place): the
    // next connection must follow it.
    let second = match TcpListener::bind(("127.0.0.2", port)) {
        Ok(listener) => Backend::tcp_on(listener, answer("second\n")),
        Err(e) => {
            skip(&format!(
                "the part where the name moves: cannot bind 127.0.0.2:{port}: {e}"
            ));
            return;
        }
    };
    std::fs::write(&hosts, "127.0.0.2 backend.test\n").unwrap();
    assert_eq!(
        exchange(connect(relay.address()), b"?".to_vec()),
        b"second\n"
    );
    assert_eq!(second.connections(), 1);
}

#[test]
fn tcp_and_unix_prefixes() {
    let dir = TempDir::new();
    let unix_backend = Backend::unix(&dir.join("backend.sock"), echo);
    let relay = Relay::start(&[
        "tcp:127.0.0.1:0",
        &format!("unix:{}", unix_backend.connect_arg),
    ]);
    assert!(relay.address().starts_with("127.0.0.1:"));
    assert_echoes(relay.address());

    let tcp_backend = Backend::tcp(echo);
    let relay = Relay::start(&[
        &format!("unix:{}", dir.arg("relay.sock")),
        &format!("tcp:{}", tcp_backend.connect_arg),
    ]);
    assert_eq!(relay.address(), dir.arg("relay.sock"));
    assert_echoes(relay.address());

    let name = unique_name("prefixed");
    let abstract_backend = Backend::abstract_name(&unique_name("backend"), echo);
    let relay = Relay::start(&[
        &format!("unix:@{name}"),
        &format!("unix:{}", abstract_backend.connect_arg),
    ]);
    assert_eq!(relay.address(), format!("@{name}"));
    assert_echoes(relay.address());
}

#[test]
fn abstract_sockets_on_both_sides() {
    let name = unique_name("relay");
    let backend = Backend::abstract_name(&unique_name("backend"), echo);
    let mut relay = Relay::start(&[&format!("@{name}"), &backend.connect_arg]);
    assert_eq!(relay.address(), format!("@{name}"));
    assert_echoes(relay.address());
    // Also from TCP to an abstract backend.
    let tcp = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    assert_echoes(tcp.address());
    stop(&mut relay);
    assert!(
        try_connect(&format!("@{name}")).is_err(),
        "the abstract socket is gone after exit"
    );
}

#[test]
fn relative_socket_paths_are_in_the_current_directory() {
    let dir = TempDir::new();
    let _backend = Backend::unix(&dir.join("backend.sock"), echo);
    for (listen, connect_arg, file) in [
        ("./relay.sock", "./backend.sock", "relay.sock"),
        ("unix:other.sock", "unix:backend.sock", "other.sock"),
    ] {
        let mut cmd = command(&[listen, connect_arg]);
        cmd.current_dir(&dir.0);
        let mut relay = Relay::start_command(cmd, 1);
        let path = dir.arg(file);
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket(),
            "{path}"
        );
        assert_echoes(&path);
        stop(&mut relay);
        assert!(!dir.join(file).exists(), "{file} removed at exit");
    }
}

#[test]
fn tcp_port_in_use_is_a_startup_failure() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run_to_exit(&[&address, "127.0.0.1:9"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "a clear message: {stderr}");
    assert!(stderr.contains(&address), "naming the address: {stderr}");
}

#[test]
fn socket_mode_sets_the_permissions_and_the_umask_applies_without_it() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    for (mode, umask, expected) in [
        (Some("0600"), 0o022, 0o600),
        (Some("0666"), 0o077, 0o666),
        (None, 0o027, 0o750),
    ] {
        let path = dir.arg("relay.sock");
        let mut args = vec![path.as_str(), &backend.connect_arg];
        if let Some(mode) = mode {
            args.extend(["--socket-mode", mode]);
        }
        let mut cmd = command(&args);
        set_umask(&mut cmd, umask);
        let mut relay = Relay::start_command(cmd, 1);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            expected,
            "--socket-mode {mode:?} with umask {umask:o}"
        );
        assert_echoes(&path);
        stop(&mut relay);
    }
}

#[test]
fn socket_group_by_number_and_by_name() {
    if !is_root() {
        skip("changing a file to another group needs root");
        return;
    }
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut cases = vec![("4242".to_string(), 4242)];
    match ["daemon", "nogroup", "users", "adm", "bin", "sys"]
        .iter()
        .find_map(|n| group_id(n).map(|g| (n, g)))
    {
        Some((name, gid)) if gid != 0 => cases.push((name.to_string(), gid)),
        _ => skip("the by-name part: no suitable group in /etc/group"),
    }
    for (group, gid) in cases {
        let path = dir.arg("relay.sock");
        let mut relay = Relay::start(&[
            "--socket-group",
            &group,
            "--socket-mode",
            "0660",
            &path,
            &backend.connect_arg,
        ]);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.gid(), gid, "--socket-group {group}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_echoes(&path);
        stop(&mut relay);
    }
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new();
    let path = dir.arg("relay.sock");
    drop(UnixListener::bind(&path).unwrap()); // left behind, as by a crash
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&[&path, &backend.connect_arg]);
    assert!(
        relay.log().contains("replaced stale socket"),
        "{}",
        relay.log()
    );
    assert_echoes(&path);
    stop(&mut relay);
    assert!(!dir.join("relay.sock").exists());
}

#[test]
fn a_live_socket_is_left_alone() {
    let dir = TempDir::new();
    let path = dir.join("relay.sock");
    let _other = Backend::unix(&path, answer("other process\n"));
    let inode = std::fs::metadata(&path).unwrap().ino();
    let backend = Backend::tcp(echo);
    let (status, stderr) = run_to_exit(&[path.to_str().unwrap(), &backend.connect_arg]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "the socket file is untouched"
    );
    let reply = exchange(connect(path.to_str().unwrap()), b"?".to_vec());
    assert_eq!(
        reply, b"other process\n",
        "the other process still serves it"
    );
    assert_eq!(backend.connections(), 0);
}

#[test]
fn what_is_not_a_socket_is_left_alone() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let file = dir.join("file");
    std::fs::write(&file, "precious data\n").unwrap();
    let (status, stderr) = run_to_exit(&[file.to_str().unwrap(), &backend.connect_arg]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious data\n");

    let directory = dir.join("directory");
    std::fs::create_dir(&directory).unwrap();
    std::fs::write(directory.join("inside"), "also precious\n").unwrap();
    let (status, stderr) = run_to_exit(&[directory.to_str().unwrap(), &backend.connect_arg]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(directory.to_str().unwrap()), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(directory.join("inside")).unwrap(),
        "also precious\n"
    );
    assert_eq!(dir.entries(), ["directory", "file"]);
}

#[test]
fn a_missing_parent_directory_is_a_startup_failure() {
    let dir = TempDir::new();
    let missing = dir.join("missing");
    let path = missing.join("relay.sock");
    let (status, stderr) = run_to_exit(&[path.to_str().unwrap(), "127.0.0.1:9"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(missing.to_str().unwrap()),
        "the message names the directory: {stderr}"
    );
    assert!(
        dir.entries().is_empty(),
        "nothing created: {:?}",
        dir.entries()
    );
}

#[test]
fn the_socket_file_is_removed_on_exit() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let path = dir.arg("relay.sock");
    let mut relay = Relay::start(&[&path, &backend.connect_arg]);
    assert_echoes(&path);
    stop(&mut relay);
    assert!(
        dir.entries().is_empty(),
        "removed after SIGTERM: {:?}",
        dir.entries()
    );

    let mut relay = Relay::start(&["--exit-idle-time", "100ms", &path, &backend.connect_arg]);
    assert!(relay.wait_exit().success());
    assert!(
        dir.entries().is_empty(),
        "removed after --exit-idle-time: {:?}",
        dir.entries()
    );
}

#[test]
fn an_inherited_listening_socket_is_served_and_never_removed() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let path = dir.join("inherited.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let mut cmd = command(&["fd:3", &backend.connect_arg]);
    pass_fds(&mut cmd, &[unix.as_raw_fd()]);
    let mut relay = Relay::start_command(cmd, 1);
    assert_eq!(
        relay.address(),
        path.to_str().unwrap(),
        "the inherited socket's address"
    );
    assert_echoes(path.to_str().unwrap());
    stop(&mut relay);
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket(),
        "an inherited socket stays"
    );

    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = command(&["fd:3", &backend.connect_arg]);
    pass_fds(&mut cmd, &[tcp.as_raw_fd()]);
    let mut relay = Relay::start_command(cmd, 1);
    assert_eq!(relay.address(), tcp.local_addr().unwrap().to_string());
    assert_echoes(relay.address());
    stop(&mut relay);
}

#[test]
fn an_inherited_connection_is_relayed_once_then_the_relay_exits_0() {
    let backend = Backend::tcp(digest);
    // inetd / Accept=yes style: a connected TCP socket.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    // s6-ipcserver style: one end of a Unix socket pair.
    let (pair_client, pair_relay) = UnixStream::pair().unwrap();
    let cases: Vec<(Box<dyn Conn>, std::os::fd::OwnedFd)> = vec![
        (Box::new(client), accepted.into()),
        (Box::new(pair_client), pair_relay.into()),
    ];
    for (i, (client, inherited)) in cases.into_iter().enumerate() {
        let mut cmd = command(&["fd:3", &backend.connect_arg]);
        pass_fds(&mut cmd, &[inherited.as_raw_fd()]);
        let mut relay = Relay::start_command(cmd, 1);
        drop(inherited); // the relay holds the only other copy now
        client.set_read_timeout(Some(DEADLINE));
        let data = payload(300_000, 7);
        assert_eq!(
            exchange(client, data.clone()),
            digest_of(&data).into_bytes()
        );
        let status = relay.wait_exit();
        assert!(status.success(), "{status:?}\n{}", relay.log());
        assert_eq!(backend.connections(), i + 1, "exactly that one connection");
    }
}

#[test]
fn sd_listen_serves_every_passed_socket_and_never_removes_them() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.join("activated.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let cmd = socket_activated(
        &["sd-listen", &backend.connect_arg],
        &[tcp.as_raw_fd(), unix.as_raw_fd()],
        &["web", "admin"],
    );
    let mut relay = Relay::start_command(cmd, 2);
    let expected: BTreeSet<String> = [
        tcp.local_addr().unwrap().to_string(),
        path.to_str().unwrap().to_string(),
    ]
    .into();
    assert_eq!(
        relay.addresses.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    for address in relay.addresses.clone() {
        assert_echoes(&address);
    }
    stop(&mut relay);
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket(),
        "a passed socket stays"
    );
}

#[test]
fn sd_listen_name_serves_only_the_matching_sockets() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.join("activated.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let cmd = socket_activated(
        &["sd-listen:admin", &backend.connect_arg],
        &[tcp.as_raw_fd(), unix.as_raw_fd()],
        &["web", "admin"],
    );
    let mut relay = Relay::start_command(cmd, 1);
    assert_eq!(relay.addresses, [path.to_str().unwrap()]);
    assert_echoes(path.to_str().unwrap());
    assert_eq!(backend.connections(), 1);
    // The "web" socket is left alone: its client waits, unserved...
    let mut waiting = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    waiting.write_all(b"still here").unwrap();
    assert_silent(
        &mut waiting,
        Duration::from_millis(300),
        "a client of the socket not chosen",
    );
    assert_eq!(backend.connections(), 1);
    stop(&mut relay);
    assert_eq!(relay.log().matches("listening on").count(), 1);
    // ...and is still in the socket's queue for whoever owns it.
    let (mut accepted, _) = tcp.accept().unwrap();
    let mut got = [0u8; 10];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
}

#[test]
fn an_abstract_name_in_use_is_a_startup_failure() {
    let name = unique_name("taken");
    let _other = Backend::abstract_name(&name, answer("other process\n"));
    let (status, stderr) = run_to_exit(&[&format!("@{name}"), "127.0.0.1:9"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    let reply = exchange(connect(&format!("@{name}")), b"?".to_vec());
    assert_eq!(
        reply, b"other process\n",
        "the other process still serves it"
    );
}
