//! What ends a TIME_WAIT early, as the tracer reports it: the reason the
//! workloads never repeat a client port (`integration_tests::connect_from`).

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
};

use integration_tests::{settle, ss_time_wait, Subnet};
use socket2::{Domain, Socket, Type};
use tracer::{filter::FilterSpec, Tracer};

/// The server closes first, so the server holds the TIME_WAIT; the client's
/// socket is gone. A new connect from the same client address and port (the
/// same 4-tuple) is accepted by the kernel and replaces that TIME_WAIT at once.
/// The tracer counts the entry (it happened) and sock_diag no longer has it.
#[test]
fn a_syn_on_the_same_four_tuple_ends_the_peers_time_wait() {
    let net = Subnet::unique(40);
    let t = Tracer::start(
        FilterSpec {
            addr: Some(net.cidr().parse().unwrap()),
            ..Default::default()
        },
        false,
        4096,
    )
    .expect("attach");
    let listener = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
    let dst = listener.local_addr().unwrap();
    let connect_from_port = |port: u16| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(net.client(), port).into()).unwrap();
        s.connect(&dst.into()).unwrap();
        std::net::TcpStream::from(s)
    };

    let mut c = connect_from_port(0);
    let port = c.local_addr().unwrap().port();
    drop(listener.accept().unwrap().0); // the server closes first
    while c.read(&mut [0u8; 8]).unwrap() > 0 {}
    drop(c);
    let s = settle(&t, |s| s.time_wait.now.time_wait == 1);
    assert_eq!(s.time_wait.entered_by_side.passive_opened, 1);
    assert_eq!(s.time_wait.now.time_wait, 1);
    assert_eq!(ss_time_wait(&net.cidr()), 1);

    let _again = connect_from_port(port);
    let _accepted = listener.accept().unwrap();
    let s = settle(&t, |s| s.time_wait.now.time_wait == 0);
    assert_eq!(s.connects.established, 2);
    assert_eq!(s.accepts.established, 2);
    assert_eq!(
        s.time_wait.entered, 1,
        "the entry happened and stays counted"
    );
    assert_eq!(s.time_wait.now.time_wait, 0, "the new SYN ended it");
    assert_eq!(ss_time_wait(&net.cidr()), 0);
}
