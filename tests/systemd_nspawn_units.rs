//! The real thing: the unit templates under systemd as PID 1 in
//! `systemd-nspawn`, used as the README shows (expose, re-expose,
//! socket-activated), with the container of `common::nspawn`.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::time::Instant;

use common::*;

/// The units under systemd as PID 1: foobar.service (TCP only, PrivateNetwork)
/// exposed at /run/foobar-unix/socket by the expose template, that socket
/// re-exposed on TCP 8081 and, socket-activated, on TCP 8082; a client in
/// the container reaches foobar through each, and not over TCP directly.
#[test]
fn units_under_systemd_in_nspawn() {
    let started = Instant::now();
    let Some((container, _stage)) = boot_with_units() else {
        return;
    };
    eprintln!("container running after {:.1?}", started.elapsed());

    // 1. Expose foobar.service at /run/foobar-unix/socket.
    let enabled = container
        .sh("systemctl enable simpletcpunixrelay-expose@foobar.service 2>&1")
        .stdout;
    assert!(enabled.contains("foobar.service.wants"), "{enabled}");
    // Starting foobar pulls the relay in (WantedBy=), ordered after it.
    container.ok("systemctl start foobar.service");
    container.ok("systemctl start simpletcpunixrelay-expose@foobar.service");
    let expose = "simpletcpunixrelay-expose@foobar.service";
    assert_eq!(
        container.ok("stat -c '%a %G' /run/foobar-unix /run/foobar-unix/socket"),
        "750 simpletcpunixrelay\n660 simpletcpunixrelay\n"
    );
    let greeting = "hello from foobar\n";
    let served = |reply: (i32, String, String), message: &str| {
        assert_eq!(reply.0, 0, "client failed: {}", reply.2);
        assert_eq!(reply.1, format!("{greeting}{message}"));
    };
    served(
        client(&container, "", "/run/foobar-unix/socket", "root"),
        "root",
    );
    // The relay really shares foobar's network namespace, not the host's.
    let foobar_netns = container.netns_of_unit("foobar.service");
    assert_eq!(container.netns_of_unit(expose), foobar_netns);
    assert_ne!(container.ok("readlink /proc/1/ns/net").trim(), foobar_netns);
    // foobar is not reachable over TCP from the container's network.
    let (code, _, stderr) = client(&container, "", "127.0.0.1:8080", "direct");
    assert_eq!(code, 3, "TCP to foobar must fail: {stderr}");
    // The socket is for the group: a member may connect, others may not.
    let gid = container.ok("getent group simpletcpunixrelay | cut -d: -f3");
    let member = format!("setpriv --reuid=4242 --regid=4242 --groups={}", gid.trim());
    served(
        client(&container, &member, "/run/foobar-unix/socket", "member"),
        "member",
    );
    let stranger = "setpriv --reuid=4243 --regid=4243 --clear-groups";
    let (code, _, stderr) = client(&container, stranger, "/run/foobar-unix/socket", "x");
    assert_eq!(code, 3, "a non-member must be refused");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // STATUS= reaches systemd.
    container.wait_for_output(
        &format!("systemctl show -p StatusText --value {expose} | grep -o '0 active, 2 total'"),
        "0 active, 2 total",
    );
    // The relay's own sandbox works within the unit's restrictions.
    let journal = container.ok(&format!("journalctl -o cat -u {expose}"));
    assert!(
        journal.contains("listening on /run/foobar-unix/socket"),
        "{journal}"
    );
    if kernel_has_landlock() {
        assert!(journal.contains("fully enforced"), "{journal}");
    }
    // Its own seccomp filter too, under the unit's (which lacks seccomp(2)).
    assert!(journal.contains(" system calls allowed"), "{journal}");
    // The system call filter still lets the relay raise its descriptor
    // limit to the hard one (glibc's setrlimit is prlimit64, not in
    // @resources).
    let limits = container.ok(&format!(
        "grep 'Max open files' /proc/$(systemctl show -p MainPID --value {expose})/limits"
    ));
    let limits: Vec<&str> = limits.split_whitespace().collect();
    assert_eq!(limits[3], limits[4], "soft and hard limit: {limits:?}");
    // A restart of foobar takes the relay along, into the new namespace.
    container.ok("systemctl restart foobar.service");
    container.wait_for_output(&format!("systemctl is-active {expose}"), "active");
    let foobar_netns = container.netns_of_unit("foobar.service");
    assert_eq!(container.netns_of_unit(expose), foobar_netns);
    served(
        client(&container, "", "/run/foobar-unix/socket", "again"),
        "again",
    );

    // 2. Re-expose the socket on TCP 127.0.0.1:8081.
    container.ok("systemctl enable --now simpletcpunixrelay-reexpose@foobar.service");
    served(
        client(&container, "", "127.0.0.1:8081", "reexposed"),
        "reexposed",
    );
    // Its listener is in systemd's file descriptor store: a restart, and a
    // crash (Restart=on-failure), adopt it instead of binding again, and
    // `systemctl stop` empties the store.
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    let stored = |c: &Container| {
        c.ok(&format!(
            "systemctl show -p NFileDescriptorStore --value {reexpose}"
        ))
    };
    assert_eq!(stored(&container), "1\n");
    container.ok(&format!("systemctl restart {reexpose}"));
    let adoptions = format!(
        "journalctl -o cat -u {reexpose} | grep -c 'adopted 127.0.0.1:8081 from the file descriptor store'"
    );
    container.wait_for_output(&adoptions, "1");
    served(
        client(&container, "", "127.0.0.1:8081", "restarted"),
        "restarted",
    );
    let pid = container.ok(&format!("systemctl show -p MainPID --value {reexpose}"));
    container.ok(&format!("kill -9 {}", pid.trim()));
    container.wait_for_output(&adoptions, "2");
    served(
        client(&container, "", "127.0.0.1:8081", "crashed"),
        "crashed",
    );
    assert_eq!(stored(&container), "1\n");
    container.ok(&format!("systemctl stop {reexpose}"));
    assert_eq!(
        stored(&container),
        "0\n",
        "stop leaves nothing in the store"
    );
    container.ok(&format!("systemctl start {reexpose}"));

    // 3. The same, socket-activated on 127.0.0.1:8082.
    let activated = "simpletcpunixrelay-activated@8082.service";
    container.ok("systemctl enable --now simpletcpunixrelay-activated@8082.socket");
    assert_eq!(
        container
            .sh(&format!("systemctl is-active {activated}"))
            .stdout
            .trim(),
        "inactive"
    );
    served(
        client(&container, "", "127.0.0.1:8082", "activated"),
        "activated",
    );
    assert_eq!(
        container
            .ok(&format!("systemctl is-active {activated}"))
            .trim(),
        "active"
    );
    // It needs no network of its own: systemd passed the TCP socket.
    assert_ne!(
        container.netns_of_unit(activated),
        container.ok("readlink /proc/1/ns/net").trim()
    );

    // No relay logged a warning or an error; no unit failed.
    for unit in [
        expose,
        "simpletcpunixrelay-reexpose@foobar.service",
        activated,
    ] {
        if kernel_has_landlock() {
            let warnings = container.ok(&format!("journalctl -o cat -p warning -u {unit}"));
            assert_eq!(warnings.trim(), "", "{unit}");
        }
    }
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");

    // An instance without its configuration refuses to start.
    let output = container.sh("systemctl start simpletcpunixrelay-reexpose@nothing.service");
    assert!(!output.status.success());

    // Stopping foobar stops its relay (BindsTo=); the runtime directory goes.
    container.ok("systemctl stop foobar.service");
    assert_eq!(
        container
            .sh(&format!("systemctl is-active {expose}"))
            .stdout
            .trim(),
        "inactive"
    );
    container.ok("test ! -e /run/foobar-unix");
    eprintln!("nspawn test took {:.1?}", started.elapsed());
}
