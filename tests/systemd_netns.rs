//! `PrivateNetwork=` emulated without systemd: the relay in a network
//! namespace of its own exposes a TCP-only backend there through a Unix
//! socket.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

/// What `PrivateNetwork=yes` + `JoinsNamespaceOf=` do, by hand: a TCP-only
/// backend on the loopback of its own network namespace, the relay inside
/// the same namespace listening on a Unix socket, and a client outside that
/// reaches the backend through the socket, and not over TCP.
#[test]
fn private_network_service_exposed_through_a_unix_socket() {
    if !is_root() {
        skip("needs root to create network namespaces");
        return;
    }
    if skip_if_missing(NETWORK_NAMESPACE_TOOLS, "util-linux iproute2") {
        return;
    }
    let namespace = NetworkNamespace::new();
    let greeting = b"hello from the namespace\n";
    let listener = namespace.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let backend = Backend::tcp_on(listener, move |mut conn: Box<dyn Conn>| {
        let _ = conn.write_all(greeting);
        echo(conn);
    });

    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let mut inside = namespace.command(relay_bin());
    inside.args([&socket, &backend.connect_arg]);
    let mut relay = Relay::start_command(inside, 1);
    assert_eq!(relay.address(), socket);
    assert_eq!(netns_of(relay.pid() as u32), namespace.id());

    let data = payload(500_000, 5);
    let reply = exchange(connect(&socket), data.clone());
    assert_eq!(&reply[..greeting.len()], greeting);
    assert!(reply[greeting.len()..] == data[..], "payload altered");
    assert_eq!(backend.connections(), 1);

    // From outside, the backend's port is nobody's, or someone else's.
    if let Ok(stranger) = try_connect(&backend.connect_arg) {
        drop(stranger);
    }
    assert_eq!(backend.connections(), 1, "the backend was reached over TCP");

    relay.signal(Signal::TERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    assert!(
        !Path::new(&socket).exists(),
        "the relay's socket is removed"
    );
}
