//! Client identity: PROXY protocol headers (byte-exact, and understood by a
//! real haproxy), and the peer-credential allowlist on Unix listeners.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use common::*;

/// Connects over TCP to the relay, sends `data`, half-closes and returns
/// what came back (the echo backend returns the header and the data) along
/// with the client's own address.
fn tcp_round_trip(relay_address: &str, data: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut stream = TcpStream::connect(relay_address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let source = stream.local_addr().unwrap();
    stream.write_all(data).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    (out, source)
}

/// A relay from `listen` to `backend` that sends a PROXY header of `version`.
fn proxy_relay(version: &str, listen: &str, backend: &Backend) -> Relay {
    Relay::start(&["--proxy-protocol", version, listen, &backend.connect_arg])
}

fn v2_signature() -> Vec<u8> {
    b"\r\n\r\n\0\r\nQUIT\n".to_vec()
}

#[test]
fn v1_header_for_ipv4_client_comes_before_its_bytes() {
    let backend = Backend::tcp(echo);
    let relay = proxy_relay("v1", "127.0.0.1:0", &backend);
    let (out, source) = tcp_round_trip(relay.address(), b"hello");
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhello",
        source.port(),
        relay.port()
    );
    assert_eq!(String::from_utf8_lossy(&out), want);
}

#[test]
fn v1_header_for_ipv6_client() {
    if !has_ipv6_loopback() {
        skip("no IPv6 loopback on this machine");
        return;
    }
    let backend = Backend::tcp(echo);
    let relay = proxy_relay("v1", "[::1]:0", &backend);
    let (out, source) = tcp_round_trip(relay.address(), b"six");
    let want = format!(
        "PROXY TCP6 ::1 ::1 {} {}\r\nsix",
        source.port(),
        relay.port()
    );
    assert_eq!(String::from_utf8_lossy(&out), want);
}

#[test]
fn v2_header_for_ipv4_and_ipv6_clients() {
    let backend = Backend::tcp(echo);
    let relay = proxy_relay("v2", "127.0.0.1:0", &backend);
    let (out, source) = tcp_round_trip(relay.address(), b"payload");
    let mut want = v2_signature();
    want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    want.extend_from_slice(&source.port().to_be_bytes());
    want.extend_from_slice(&relay.port().to_be_bytes());
    want.extend_from_slice(b"payload");
    assert_eq!(out, want);

    if !has_ipv6_loopback() {
        skip("the IPv6 part: no IPv6 loopback on this machine");
        return;
    }
    let relay6 = proxy_relay("v2", "[::1]:0", &backend);
    let (out, source) = tcp_round_trip(relay6.address(), b"x");
    let mut want = v2_signature();
    want.extend_from_slice(&[0x21, 0x21, 0, 36]);
    want.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    want.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    want.extend_from_slice(&source.port().to_be_bytes());
    want.extend_from_slice(&relay6.port().to_be_bytes());
    want.push(b'x');
    assert_eq!(out, want);
}

#[test]
fn unix_clients_get_unknown_and_local() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    for (version, header) in [
        ("v1", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v2", {
            let mut h = v2_signature();
            h.extend_from_slice(&[0x20, 0x00, 0, 0]);
            h
        }),
    ] {
        let socket = dir.arg(&format!("{version}.sock"));
        let relay = Relay::start(&["--proxy-protocol", version, &socket, &backend.connect_arg]);
        let out = exchange(connect(relay.address()), b"unix bytes".to_vec());
        let mut want = header.clone();
        want.extend_from_slice(b"unix bytes");
        assert_eq!(out, want, "{version}");
    }
}

#[test]
fn header_is_sent_even_when_the_client_sends_nothing() {
    let backend = Backend::tcp(echo);
    let relay = proxy_relay("v1", "127.0.0.1:0", &backend);
    let (out, source) = tcp_round_trip(relay.address(), b"");
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            source.port(),
            relay.port()
        )
    );
}

#[test]
fn large_payload_after_header_is_byte_exact() {
    let backend = Backend::tcp(digest);
    let relay = proxy_relay("v2", "127.0.0.1:0", &backend);
    let data = payload(8 << 20, 77);
    let stream = TcpStream::connect(relay.address()).unwrap();
    let source = stream.local_addr().unwrap();
    let mut expected = v2_signature();
    expected.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&source.port().to_be_bytes());
    expected.extend_from_slice(&relay.port().to_be_bytes());
    expected.extend_from_slice(&data);
    let reply = exchange(Box::new(stream), data);
    assert_eq!(String::from_utf8_lossy(&reply), digest_of(&expected));
}

/// A haproxy that accepts the PROXY protocol on a Unix socket and answers
/// each HTTP request with the client address it saw.
struct Haproxy {
    child: Child,
    socket: String,
    _dir: TempDir,
}

impl Haproxy {
    fn start() -> Option<Haproxy> {
        if Command::new("haproxy").arg("-v").output().is_err() {
            skip("haproxy is not installed (apt-get install haproxy)");
            return None;
        }
        let dir = TempDir::new();
        let socket = dir.arg("haproxy.sock");
        let config = format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\n\
             frontend echo_client\n  bind unix@{socket} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port]\\n\"\n"
        );
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy {
            child,
            socket,
            _dir: dir,
        };
        let path = haproxy.socket.clone();
        wait_until("haproxy accepts on its socket", || {
            assert!(
                haproxy.child.try_wait().unwrap().is_none(),
                "haproxy exited"
            );
            UnixStream::connect(&path).is_ok()
        });
        Some(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn haproxy_sees_the_real_client_address() {
    let Some(haproxy) = Haproxy::start() else {
        return;
    };
    for version in ["v1", "v2"] {
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            if listen.starts_with('[') && !has_ipv6_loopback() {
                skip(&format!("{listen}: no IPv6 loopback"));
                continue;
            }
            let relay = Relay::start(&[
                "--proxy-protocol",
                version,
                listen,
                &format!("unix:{}", haproxy.socket),
            ]);
            let (reply, source) = tcp_round_trip(relay.address(), b"GET / HTTP/1.0\r\n\r\n");
            let reply = String::from_utf8_lossy(&reply);
            assert!(
                reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
                "{reply}"
            );
            let body = reply.rsplit("\r\n\r\n").next().unwrap().trim();
            assert_eq!(
                body,
                format!("{}:{}", source.ip(), source.port()),
                "{version} {listen}: {reply}"
            );
        }
    }
}

/// Runs `socat` as the user and group `nobody` to send `data` through the
/// Unix socket at `path`; returns what came back.
fn as_nobody(path: &str, data: &[u8]) -> Option<Vec<u8>> {
    if !is_root() {
        skip("needs root to run a client as nobody");
        return None;
    }
    if Command::new("socat").arg("-V").output().is_err() {
        skip("socat is not installed (apt-get install socat)");
        return None;
    }
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "socat",
            "-t5",
            "-",
            &format!("UNIX-CONNECT:{path}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run setpriv");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    wait_exit(&mut child, DEADLINE).expect("socat exits");
    Some(out)
}

#[test]
fn allowlist_admits_the_owner_and_closes_others_before_connecting() {
    let at = SharedSocket::new("only-root.sock");
    let mut relay = Relay::start(&at.allowlist_args("--allow-uid", "0"));
    if is_root() {
        assert_eq!(
            exchange(connect(&at.socket), b"root passes".to_vec()),
            b"root passes"
        );
        assert_eq!(at.backend.connections(), 1);
    }
    let Some(out) = as_nobody(&at.socket, b"let me in") else {
        return;
    };
    assert!(out.is_empty(), "nobody got {out:?}");
    let line = relay.wait_for_line("refused client");
    assert!(
        line.contains("uid 65534") && line.contains("gid 65534") && line.contains("pid "),
        "{line}"
    );
    assert_eq!(
        at.backend.connections(),
        1,
        "the backend must never see the refused client"
    );
}

#[test]
fn allowlist_by_group_admits_members() {
    let at = SharedSocket::new("nogroup.sock");
    let _relay = Relay::start(&at.allowlist_args("--allow-gid", "65534"));
    let Some(out) = as_nobody(&at.socket, b"member") else {
        return;
    };
    assert_eq!(out, b"member");
    assert_eq!(at.backend.connections(), 1);
}

#[test]
fn allowlist_on_tcp_is_a_usage_error() {
    let (status, stderr) = run_to_exit(&["--allow-uid", "0", "127.0.0.1:0", "127.0.0.1:9"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--allow-uid") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let (status, stderr) = run_to_exit(&["--proxy-protocol", "v9", "127.0.0.1:0", "127.0.0.1:9"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--proxy-protocol"), "{stderr}");
}
