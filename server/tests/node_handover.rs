//! What binary handover needs from the node, over real loopback sockets: a node starts on listeners bound before
//! it (and serves the connections already queued on them), uses every listener it is given, binds the ones it
//! lacks, refuses listeners on two addresses, and its drain answers an idle keep-alive connection's next request
//! (with `Connection: close`) instead of resetting it.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};

use common::{closed_by_server, read_response, request, READ_TIMEOUT};
use larder_server::node::NodeError;
use larder_server::{Node, ServeConfig};

fn config(root: &std::path::Path, cores: &str) -> ServeConfig {
    std::fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: cores.parse().unwrap(),
        root: root.to_path_buf(),
        ..ServeConfig::default()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

fn get_status(stream: &mut TcpStream) -> u16 {
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    read_response(stream, false).status
}

fn stop(node: Node) {
    node.shutdown();
    assert!(node.join().expect("node stops").fully_drained());
}

/// The handover at the node's level: the first node stops while a copy of its listener is held elsewhere;
/// connections made meanwhile wait in the accept queue and the second node, started on the copy, serves them.
#[test]
fn connections_queued_on_a_kept_listener_are_served_by_the_next_node() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path(), "1");
    let listeners = Node::bind(&config).expect("bind");
    let kept: Vec<TcpListener> = listeners.iter().map(|l| l.try_clone().unwrap()).collect();
    let first = Node::start_on(config.clone(), listeners).expect("first node");
    let addr = first.local_addr();
    assert_eq!(get_status(&mut connect(addr)), 200);
    stop(first);
    // Nobody accepts now, but the kept copy holds the socket: these connections queue instead of being refused.
    let mut queued: Vec<TcpStream> = (0..8).map(|_| connect(addr)).collect();
    let second = Node::start_on(config, kept).expect("second node");
    assert_eq!(second.local_addr(), addr);
    for stream in &mut queued {
        assert_eq!(get_status(stream), 200);
    }
    stop(second);
}

/// A node with fewer accepting shards than it was given listeners accepts on all of them: with two sockets in
/// the `SO_REUSEPORT` group and only one accepting, about half of these connections would never be answered.
#[test]
fn every_handed_listener_is_accepted_on() {
    let root = tempfile::tempdir().unwrap();
    let two = config(root.path(), "2");
    let listeners = Node::bind(&two).expect("bind two");
    assert_eq!(listeners.len(), 2);
    let node =
        Node::start_on(config(root.path(), "1"), listeners).expect("one shard, two listeners");
    for _ in 0..32 {
        assert_eq!(get_status(&mut connect(node.local_addr())), 200);
    }
    stop(node);
}

/// With fewer listeners than accepting shards, the missing ones are bound on the same address, so every shard
/// accepts (32 connections hashed over two sockets all landing on one: probability 2^-31).
#[test]
fn missing_listeners_are_bound_on_the_handed_address() {
    let root = tempfile::tempdir().unwrap();
    let one = config(root.path(), "1");
    let listeners = Node::bind(&one).expect("bind one");
    let addr = listeners[0].local_addr().unwrap();
    let node =
        Node::start_on(config(root.path(), "2"), listeners).expect("two shards, one listener");
    assert_eq!(node.local_addr(), addr);
    for _ in 0..32 {
        assert_eq!(get_status(&mut connect(addr)), 200);
    }
    let stats = node.stats();
    for shard in &stats.shards {
        assert!(shard.connections_accepted > 0, "{stats:?}");
    }
    stop(node);
}

#[test]
fn listeners_on_two_addresses_or_none_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path(), "1");
    let one = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let error = Node::start_on(config.clone(), vec![one, other])
        .err()
        .expect("refused");
    assert!(
        matches!(error, NodeError::ListenerAddresses { .. }),
        "{error}"
    );
    let error = Node::start_on(config, Vec::new()).err().expect("refused");
    assert!(matches!(error, NodeError::NoListener), "{error}");
}

/// Regression: shutdown closed an idle keep-alive connection at once, so a client that sent its next request
/// as the drain began (every closed-loop client between two requests) got a reset instead of an answer.
#[test]
fn an_idle_keep_alive_connection_is_answered_during_the_drain() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(config(root.path(), "1")).expect("node");
    let mut stream = connect(node.local_addr());
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    let first = read_response(&mut stream, false);
    assert_eq!(first.header("Connection"), Some("keep-alive"));
    node.shutdown();
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    let second = read_response(&mut stream, false);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut stream));
    assert!(node.join().expect("node stops").fully_drained());
}
