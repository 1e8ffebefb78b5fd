//! Connection lifecycle through `sock/inet_sock_set_state` and refused connections through
//! `tcp/tcp_send_reset` (a reset with no socket answering a SYN; one answering a stray segment is
//! a reset sent).
use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
};

use moonfrp_tests::{Agent, free_port, raw::stray_ack};

#[test]
fn fifty_connections_open_then_close() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).unwrap();

    let clients: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let servers: Vec<TcpStream> = (0..50).map(|_| listener.accept().unwrap().0).collect();
    let m = agent.wait_snapshots(2);
    assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 50.0);
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[("tunnel", "web"), ("direction", "inbound")]
        ),
        Some(50.0)
    );
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[("tunnel", "web"), ("direction", "outbound")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connections_closed_total"),
        0.0
    );

    drop(clients);
    drop(servers);
    let m = agent.wait_for("50 closed connections", |m| {
        m.get(
            "moonfrp_tunnel_connections_closed_total",
            &[("tunnel", "web")],
        ) == Some(50.0)
    });
    assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 0.0);
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connection_duration_seconds_count"),
        50.0
    );
    let inf = m.get(
        "moonfrp_tunnel_connection_duration_seconds_bucket",
        &[("tunnel", "web"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(50.0));
    // They were held for at least the two snapshots above (> 1 s), so none is under 1 s.
    let under_1s = m
        .get(
            "moonfrp_tunnel_connection_duration_seconds_bucket",
            &[("tunnel", "web"), ("le", "1.024")],
        )
        .unwrap();
    assert_eq!(under_1s, 0.0);
    assert!(m.tunnel("web", "moonfrp_tunnel_connection_duration_seconds_sum") >= 50.0);
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connections_refused_total"),
        0.0
    );
}

#[test]
fn connection_from_a_watched_port_is_outbound() {
    let (local, remote) = (free_port(), free_port());
    let agent = Agent::start(&["-t", &format!("client={local}")]);
    let listener = moonfrp_tests::bind_tcp(remote);
    // A socket bound to the watched port connects out (an active open from that port).
    let s = socket_bound_to(local);
    connect_from(s, remote);
    let _peer = listener.accept().unwrap();
    let m = agent.wait_snapshots(2);
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[("tunnel", "client"), ("direction", "outbound")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[("tunnel", "client"), ("direction", "inbound")]
        ),
        Some(0.0)
    );
    assert_eq!(m.tunnel("client", "moonfrp_tunnel_connections_active"), 1.0);
    // SAFETY: closing the fd we created.
    unsafe { libc::close(s) };
}

fn socket_bound_to(port: u16) -> i32 {
    // SAFETY: plain socket calls on a zeroed sockaddr_in we fill in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let rc = libc::bind(fd, (&raw const sa).cast(), size_of_val(&sa) as u32);
        assert_eq!(rc, 0, "bind to {port}: {}", std::io::Error::last_os_error());
        fd
    }
}

fn connect_from(fd: i32, port: u16) {
    // SAFETY: as above.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let rc = libc::connect(fd, (&raw const sa).cast(), size_of_val(&sa) as u32);
        assert_eq!(
            rc,
            0,
            "connect to {port}: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn connect_without_listener_is_one_refusal_and_nothing_else() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("nobody={port}")]);
    let err = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let m = agent.wait_snapshots(2);
    assert_eq!(
        m.tunnel("nobody", "moonfrp_tunnel_connections_refused_total"),
        1.0
    );
    // Nothing listens there: the tunnel is down, and was from the start (no failure counted).
    assert_eq!(m.tunnel("nobody", "moonfrp_tunnel_up"), 0.0);
    for s in m.with_label("tunnel", "nobody") {
        let moved_ok =
            s.name == "moonfrp_tunnel_connections_refused_total" || s.name == "moonfrp_tunnel_info";
        if !moved_ok {
            assert_eq!(s.value, 0.0, "{s:?} moved on a refused connection");
        }
    }
}

/// The kernel answers any segment to a port nobody has with a reset; only a SYN's is a refused
/// connection. A stray segment (here a bare ACK) is a reset sent, as other resets are.
#[test]
fn a_stray_segment_to_a_port_nobody_has_is_a_reset_not_a_refusal() {
    let (port, from) = (free_port(), free_port());
    let agent = Agent::start(&["-t", &format!("gone={port}")]);
    for _ in 0..3 {
        stray_ack(Ipv4Addr::LOCALHOST, from, port);
    }
    let err = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    agent.wait_for("the refusal and the three resets", |m| {
        m.tunnel("gone", "moonfrp_tunnel_connections_refused_total") >= 1.0
            && m.tunnel("gone", "moonfrp_tunnel_resets_sent_total") >= 3.0
    });
    // One more snapshot: nothing else arrives late.
    let m = agent.wait_snapshots(1);
    assert_eq!(
        (
            m.tunnel("gone", "moonfrp_tunnel_connections_refused_total"),
            m.tunnel("gone", "moonfrp_tunnel_resets_sent_total"),
            m.tunnel("gone", "moonfrp_tunnel_resets_received_total"),
        ),
        (1.0, 3.0, 0.0)
    );
}

#[test]
fn connections_open_before_start_are_seeded() {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).unwrap();
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let servers: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();

    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let m = agent.metrics();
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connections_active"),
        3.0,
        "right from the first scrape"
    );
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[("tunnel", "web"), ("direction", "inbound")]
        ),
        Some(0.0)
    );

    drop(clients);
    drop(servers);
    let m = agent.wait_for("3 closed connections", |m| {
        m.get(
            "moonfrp_tunnel_connections_closed_total",
            &[("tunnel", "web")],
        ) == Some(3.0)
    });
    assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 0.0);
    // Their opens were not seen, so they have no duration.
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connection_duration_seconds_count"),
        0.0
    );
}
