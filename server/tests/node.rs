//! The node over real loopback sockets: every protocol item and bad input of the issue, routing between shards,
//! containers, timeouts, cache counts and graceful shutdown. Each test starts its own node on an ephemeral port.
//! Reads use a bounded timeout (10 s) so a broken server fails a test instead of hanging it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{closed_by_server, read_response, request, Served};
use larder_server::config::ContainerConfig;

#[test]
fn get_and_head_send_the_file_with_nginx_headers() {
    let served = Served::start(|_| {});
    let response = served.get(&request("/hello.txt"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello world\n");
    assert_eq!(response.header("Server"), Some("larder"));
    assert_eq!(response.header("Content-Type"), Some("text/plain"));
    assert_eq!(response.header("Content-Length"), Some("12"));
    assert_eq!(response.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(response.header("Date").map(str::len), Some(29));
    let modified = std::fs::metadata(served.path("hello.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let mtime_secs = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        response.header("ETag"),
        Some(format!("\"{mtime_secs:x}-c\"").as_str())
    );
    assert_eq!(
        response.header("Last-Modified"),
        Some(httpdate::fmt_http_date(modified).as_str())
    );
    let head = served.get("HEAD /hello.txt HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("12"));
    assert_eq!(
        served.get(&request("/page.html")).header("Content-Type"),
        Some("text/html")
    );
    assert_eq!(served.get(&request("/missing")).status, 404);
}

#[test]
fn keep_alive_rules_for_1_0_and_1_1() {
    let served = Served::start(|_| {});
    let mut stream = served.connect();
    for _ in 0..3 {
        stream.write_all(request("/hello.txt").as_bytes()).unwrap();
        let response = read_response(&mut stream, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }
    stream
        .write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut stream, false).header("Connection"),
        Some("close")
    );
    assert!(closed_by_server(&mut stream));

    let mut old = served.connect();
    old.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut old, false).header("Connection"),
        Some("close")
    );
    assert!(closed_by_server(&mut old));

    let mut old_keep = served.connect();
    for _ in 0..2 {
        old_keep
            .write_all(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut old_keep, false).status, 200);
    }
}

#[test]
fn keepalive_requests_max_closes_after_the_last_allowed_request() {
    let served = Served::start(|config| config.keepalive_requests_max = 2);
    let mut stream = served.connect();
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    assert_eq!(
        read_response(&mut stream, false).header("Connection"),
        Some("keep-alive")
    );
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    assert_eq!(
        read_response(&mut stream, false).header("Connection"),
        Some("close")
    );
    assert!(closed_by_server(&mut stream));
}

#[test]
fn pipelined_batch_is_answered_in_order() {
    let served = Served::start(|_| {});
    let mut stream = served.connect();
    let paths = [
        "/hello.txt",
        "/page.html",
        "/missing",
        "/dir/",
        "/hello.txt",
    ];
    let batch: String = paths.iter().map(|path| request(path)).collect();
    stream.write_all(batch.as_bytes()).unwrap();
    let bodies: Vec<(u16, Vec<u8>)> = paths
        .iter()
        .map(|_| {
            let response = read_response(&mut stream, false);
            (response.status, response.body)
        })
        .collect();
    assert_eq!(bodies[0], (200, b"hello world\n".to_vec()));
    assert_eq!(bodies[1], (200, b"<p>page</p>\n".to_vec()));
    assert_eq!(bodies[2].0, 404);
    assert_eq!(bodies[3], (200, b"<p>index</p>\n".to_vec()));
    assert_eq!(bodies[4], (200, b"hello world\n".to_vec()));
}

#[test]
fn absolute_form_targets_are_served() {
    let served = Served::start(|_| {});
    let response =
        served.get("GET http://example.org/hello.txt HTTP/1.1\r\nHost: example.org\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello world\n");
}

#[test]
fn bad_inputs_get_their_status_and_a_close_while_others_are_served() {
    let served = Served::start(|config| {
        config.uri_bytes_max = 1024;
        config.header_bytes_max = 4096;
    });
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(2000));
    let large_head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let cases: Vec<(String, u16)> = vec![
        ("GET / HTTP/1.1\r\nHost : t\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\n\r\n".into(), 400),
        (
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".into(),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n".into(),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            501,
        ),
        ("GE(T / HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400),
        ("GET / HTTP/9.9\r\nHost: t\r\n\r\n".into(), 400),
        ("\x01\x02garbage\r\n\r\n".into(), 400),
        (long_target, 414),
        (large_head, 431),
    ];
    for (input, status) in cases {
        let mut stream = served.connect();
        stream.write_all(input.as_bytes()).unwrap();
        let response = read_response(&mut stream, false);
        assert_eq!(
            response.status,
            status,
            "input {:?}",
            &input[..input.len().min(60)]
        );
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(
            closed_by_server(&mut stream),
            "connection left open after {status}"
        );
        assert_eq!(
            served.get(&request("/hello.txt")).status,
            200,
            "server still serves after {status}"
        );
    }
}

#[test]
fn other_methods_get_405_with_allow() {
    let served = Served::start(|_| {});
    let mut stream = served.connect();
    stream
        .write_all(b"DELETE /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream, false);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET, HEAD"));
    // Without a body the connection stays usable.
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream, false).status, 200);
}

#[test]
fn a_get_body_is_skipped() {
    let served = Served::start(|_| {});
    let mut stream = served.connect();
    stream
        .write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nGET /")
        .unwrap();
    assert_eq!(read_response(&mut stream, false).status, 200);
    stream.write_all(request("/page.html").as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream, false).body, b"<p>page</p>\n");
}

#[test]
fn traversal_plain_and_encoded_never_leaves_root() {
    let served = Served::start(|_| {});
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), served.path("escape.txt"))
        .unwrap();
    std::os::unix::fs::symlink(served.path("hello.txt"), served.path("inside.txt")).unwrap();
    let cases = [
        ("/../etc/passwd", 400),
        ("/dir/../../etc/passwd", 400),
        ("/%2e%2e/etc/passwd", 400),
        ("/%2E%2E%2Fetc%2Fpasswd", 400),
        ("/dir/..%2f..%2fetc%2fpasswd", 400),
        ("/dir\\..\\hello.txt", 400),
        ("/dir%5c..%5chello.txt", 400),
        ("/hello.txt%00.html", 400),
        ("/.secret", 404),
        ("/%2esecret", 404),
        ("/escape.txt", 404),
    ];
    for (path, status) in cases {
        let response = served.get(&request(path));
        assert_eq!(response.status, status, "{path}");
        assert!(
            !response.body.starts_with(b"outside"),
            "{path} leaked a file outside ROOT"
        );
    }
    assert_eq!(served.get(&request("/inside.txt")).body, b"hello world\n");
    assert_eq!(
        served.get(&request("/dir/../hello.txt")).body,
        b"hello world\n"
    );
}

#[test]
fn relative_symlinks_resolve_inside_root_and_never_out() {
    let served = Served::start(|_| {});
    // A sibling of ROOT, reachable from it by a relative `..` link.
    let outside = tempfile::tempdir_in(served.path("..")).unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"outside").unwrap();
    let sibling = outside.path().file_name().unwrap().to_str().unwrap();
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, served.path(name)).unwrap();
    link(&format!("../{sibling}/secret.txt"), "up.txt");
    link(
        &format!("dir/../../{sibling}/secret.txt"),
        "down-then-up.txt",
    );
    link("dir/../hello.txt", "relative-inside.txt");
    link("dir", "linked-dir");
    link("/proc/self/environ", "magic.txt");
    let cases: [(&str, u16, &[u8]); 6] = [
        ("/up.txt", 404, b""),
        ("/down-then-up.txt", 404, b""),
        ("/linked-dir/../../etc/passwd", 400, b""),
        ("/magic.txt", 404, b""),
        ("/relative-inside.txt", 200, b"hello world\n"),
        ("/linked-dir/index.html", 200, b"<p>index</p>\n"),
    ];
    for (path, status, body) in cases {
        let response = served.get(&request(path));
        assert_eq!(response.status, status, "{path}");
        assert!(
            !response.body.starts_with(b"outside"),
            "{path} leaked a file outside ROOT"
        );
        if status == 200 {
            assert_eq!(response.body, body, "{path}");
        }
    }
}

#[test]
fn directories_redirect_and_serve_their_index() {
    let served = Served::start(|_| {});
    let redirect = served.get(&request("/dir?x=1"));
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("Location"), Some("/dir/?x=1"));
    let index = served.get(&request("/dir/"));
    assert_eq!(index.status, 200);
    assert_eq!(index.body, b"<p>index</p>\n");
    assert_eq!(index.header("Content-Type"), Some("text/html"));
    assert_eq!(served.get(&request("/empty/")).status, 403);
    assert_eq!(served.get(&request("/nothing/")).status, 404);
}

#[test]
fn conditional_requests_answer_304() {
    let served = Served::start(|_| {});
    let first = served.get(&request("/hello.txt"));
    let etag = first.header("ETag").unwrap().to_string();
    let modified = first.header("Last-Modified").unwrap().to_string();
    let by_etag = served.get(&format!(
        "GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"
    ));
    assert_eq!(by_etag.status, 304);
    assert_eq!(by_etag.header("ETag"), Some(etag.as_str()));
    let by_date = served.get(&format!(
        "GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: {modified}\r\n\r\n"
    ));
    assert_eq!(by_date.status, 304);
    let changed =
        served.get("GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"other\"\r\n\r\n");
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body, b"hello world\n");
}

#[test]
fn range_requests_single_multiple_and_unsatisfiable() {
    let served = Served::start(|_| {});
    let ranged = |range: &str| {
        served.get(&format!(
            "GET /digits.bin HTTP/1.1\r\nHost: t\r\nRange: {range}\r\n\r\n"
        ))
    };
    let single = ranged("bytes=10-19");
    assert_eq!(single.status, 206);
    assert_eq!(single.header("Content-Range"), Some("bytes 10-19/1000"));
    assert_eq!(single.body, b"0123456789");
    let suffix = ranged("bytes=-3");
    assert_eq!(suffix.body, b"789");
    let multiple = ranged("bytes=0-1,5-6");
    assert_eq!(multiple.status, 206);
    let content_type = multiple.header("Content-Type").unwrap().to_string();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    let expected = format!(
        "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-1/1000\r\n\r\n01\
         \r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 5-6/1000\r\n\r\n56\
         \r\n--{boundary}--\r\n"
    );
    assert_eq!(String::from_utf8(multiple.body).unwrap(), expected);
    let unsatisfiable = ranged("bytes=5000-");
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("Content-Range"), Some("bytes */1000"));
    let etag = served
        .get(&request("/digits.bin"))
        .header("ETag")
        .unwrap()
        .to_string();
    let if_range_ok = served.get(&format!(
        "GET /digits.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nIf-Range: {etag}\r\n\r\n"
    ));
    assert_eq!(if_range_ok.status, 206);
    let if_range_stale = served.get(
        "GET /digits.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nIf-Range: \"old\"\r\n\r\n",
    );
    assert_eq!(if_range_stale.status, 200);
    assert_eq!(if_range_stale.body.len(), 1000);
}

#[test]
fn slow_header_sender_gets_408_from_the_timer_wheel() {
    let served = Served::start(|config| config.header_timeout_ms = 200);
    let mut stream = served.connect();
    stream
        .write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // No more bytes: the server's header timer (200 ms) must answer; our read waits up to 10 s.
    let response = read_response(&mut stream, false);
    assert_eq!(response.status, 408);
    assert!(closed_by_server(&mut stream));
    assert_eq!(
        served.node().stats().total(|shard| shard.header_timeouts),
        1
    );
    assert_eq!(served.get(&request("/hello.txt")).status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let served = Served::start(|config| config.keepalive_timeout_ms = 100);
    let mut stream = served.connect();
    stream.write_all(request("/hello.txt").as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream, false).status, 200);
    assert!(
        closed_by_server(&mut stream),
        "idle connection was not closed by the keep-alive timer"
    );
}

#[test]
fn requests_are_routed_to_the_owning_shard_and_handed_off() {
    let served = Served::start(|config| {
        config.cores = "2".parse().unwrap();
        config.accept_shards = vec![0];
        config.policy = larder_lard::PolicyKind::ConsistentHash;
    });
    for index in 0..20 {
        std::fs::write(
            served.path(&format!("f{index}.txt")),
            format!("file {index}"),
        )
        .unwrap();
    }
    // One keep-alive connection, accepted by shard 0, asks for 20 targets: per-request distribution.
    let mut stream = served.connect();
    let mut served_by = [0u32; 2];
    for round in 0..2 {
        for index in 0..20 {
            stream
                .write_all(request(&format!("/f{index}.txt")).as_bytes())
                .unwrap();
            let response = read_response(&mut stream, false);
            assert_eq!(
                response.body,
                format!("file {index}").as_bytes(),
                "round {round}"
            );
            let shard: usize = response.header("X-Larder-Shard").unwrap().parse().unwrap();
            served_by[shard] += 1;
        }
    }
    assert!(
        served_by[1] > 0,
        "no request reached shard 1: {served_by:?}"
    );
    assert!(
        served_by[0] > 0,
        "no request stayed on shard 0: {served_by:?}"
    );
    let stats = served.node().stats();
    assert!(stats.shards[0].handoffs_out > 0, "{stats:?}");
    assert!(stats.shards[1].handoffs_in > 0, "{stats:?}");
    assert_eq!(
        stats.shards[1].requests,
        u64::from(served_by[1]),
        "{stats:?}"
    );
    // The same target is always served by the same shard: each shard caches only its own targets.
    let cached: u64 = stats.total(|shard| shard.cache_objects);
    assert_eq!(cached, 20, "{stats:?}");
}

#[test]
fn container_over_its_limit_answers_503_with_retry_after() {
    let served = Served::start(|config| {
        config.containers = vec![ContainerConfig {
            name: "default".into(),
            shares: 100,
            tasks_max: 1,
            cpu_percent_max: 0,
            send_rate_bytes_per_second: 0,
        }];
    });
    let mut first = served.connect();
    first.write_all(request("/hello.txt").as_bytes()).unwrap();
    assert_eq!(read_response(&mut first, false).status, 200);
    // `first` is idle but open: its task holds the container's only slot.
    let response = served.get(&request("/hello.txt"));
    assert_eq!(response.status, 503);
    assert_eq!(response.header("Retry-After"), Some("1"));
    assert_eq!(
        served
            .node()
            .stats()
            .total(|shard| shard.container_rejections),
        1
    );
    drop(first);
}

#[test]
fn cache_counts_hits_misses_and_evictions() {
    let served = Served::start(|config| config.cache_mb = 1);
    // 1 MiB budget: objects up to 128 KiB are cached; ten of 120 KiB cannot all stay.
    for index in 0..10 {
        std::fs::write(
            served.path(&format!("big{index}.bin")),
            vec![index as u8; 120 * 1024],
        )
        .unwrap();
    }
    served.get(&request("/hello.txt"));
    served.get(&request("/hello.txt"));
    let stats = served.node().stats();
    assert_eq!(
        (stats.shards[0].cache_misses, stats.shards[0].cache_hits),
        (1, 1),
        "{stats:?}"
    );
    for index in 0..10 {
        let response = served.get(&request(&format!("/big{index}.bin")));
        assert_eq!(response.body, vec![index as u8; 120 * 1024]);
    }
    let stats = served.node().stats();
    assert_eq!(stats.shards[0].cache_misses, 11, "{stats:?}");
    assert!(stats.shards[0].cache_evictions >= 2, "{stats:?}");
    assert!(stats.shards[0].cache_bytes <= 1 << 20, "{stats:?}");
}

#[test]
fn a_changed_file_is_revalidated_and_served_fresh() {
    let served = Served::start(|config| config.revalidate_interval_ms = 1);
    assert_eq!(served.get(&request("/hello.txt")).body, b"hello world\n");
    std::fs::write(served.path("hello.txt"), b"changed contents\n").unwrap();
    // The revalidation interval is 1 ms on the server's clock; 20 ms of real time is past it for certain.
    std::thread::sleep(Duration::from_millis(20));
    let fresh = served.get(&request("/hello.txt"));
    assert_eq!(fresh.body, b"changed contents\n");
    assert!(served.node().stats().shards[0].cache_stale_reloads >= 1);
}

#[test]
fn large_files_stream_completely() {
    let served = Served::start(|config| config.cache_mb = 1);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(served.path("large.bin"), &data).unwrap();
    let response = served.get(&request("/large.bin"));
    assert_eq!(response.status, 200);
    assert!(response.body == data, "streamed body differs");
    let ranged =
        served.get("GET /large.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1000000-1000009\r\n\r\n");
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, data[1_000_000..1_000_010].to_vec());
}

#[test]
fn graceful_shutdown_finishes_an_in_flight_response() {
    let mut served = Served::start(|config| config.cache_mb = 1);
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(served.path("large.bin"), &data).unwrap();
    let mut stream = served.connect();
    stream.write_all(request("/large.bin").as_bytes()).unwrap();
    // Read a little so the response is certainly in flight, then stop the node while 8 MB are still unsent.
    let mut first = [0u8; 1024];
    stream.read_exact(&mut first).unwrap();
    let node = served.node.take().unwrap();
    node.shutdown();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let head_end = all
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap()
        + 4;
    assert!(
        all[head_end..] == data[..],
        "in-flight response lost bytes: {} of {}",
        all.len() - head_end,
        data.len()
    );
    let report = node.join().expect("node stops cleanly");
    assert!(report.fully_drained());
    // Nobody accepts any more.
    assert!(TcpStream::connect(served.addr).is_err());
}

#[test]
fn access_log_lines_reach_the_file() {
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("access.log");
    let mut served = Served::start(|config| {
        config.access_log = Some(larder_server::config::AccessLogConfig {
            path: log_path.clone(),
            format: larder_server::config::LogFormat::Combined,
        });
    });
    served.get("GET /hello.txt HTTP/1.1\r\nHost: t\r\nUser-Agent: test-agent\r\n\r\n");
    served.get(&request("/missing"));
    let node = served.node.take().unwrap();
    node.shutdown();
    node.join().unwrap();
    let text = std::fs::read_to_string(log_path_for_shard(&log_path, 0)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("\"GET /hello.txt HTTP/1.1\" 200 12 \"-\" \"test-agent\""),
        "{text}"
    );
    assert!(
        lines[1].contains("\"GET /missing HTTP/1.1\" 404 "),
        "{text}"
    );
}

fn log_path_for_shard(path: &Path, shard: usize) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{shard}"));
    name.into()
}

/// Regression: a shard outside `accept_shards` once bound a listener in the SO_REUSEPORT group and closed it at
/// start, resetting the connections the kernel had hashed to it.
#[test]
fn r1_non_accepting_shards_hold_no_listener() {
    for _ in 0..5 {
        let served = Served::start(|config| {
            config.cores = "2".parse().unwrap();
            config.accept_shards = vec![0];
        });
        for _ in 0..20 {
            assert_eq!(served.get(&request("/hello.txt")).status, 200);
        }
        let stats = served.node().stats();
        assert_eq!(stats.shards[1].connections_accepted, 0, "{stats:?}");
        assert_eq!(stats.shards[0].connections_accepted, 20, "{stats:?}");
    }
}

#[test]
fn epoll_driver_serves_pipelines_and_hands_off() {
    let served = Served::start(|config| {
        config.io_driver = larder_server::config::IoDriver::Epoll;
        config.cores = "2".parse().unwrap();
        config.accept_shards = vec![0];
        config.policy = larder_lard::PolicyKind::ConsistentHash;
    });
    for index in 0..10 {
        std::fs::write(
            served.path(&format!("e{index}.txt")),
            format!("epoll {index}"),
        )
        .unwrap();
    }
    let mut stream = served.connect();
    let batch: String = (0..10)
        .map(|index| request(&format!("/e{index}.txt")))
        .collect();
    stream.write_all(batch.as_bytes()).unwrap();
    for index in 0..10 {
        assert_eq!(
            read_response(&mut stream, false).body,
            format!("epoll {index}").as_bytes()
        );
    }
    let stats = served.node().stats();
    assert!(stats.shards[1].handoffs_in > 0, "{stats:?}");
    let drivers: Vec<_> = served
        .node()
        .runtime_stats()
        .iter()
        .map(|shard| shard.driver)
        .collect();
    assert!(
        drivers
            .iter()
            .all(|driver| *driver == Some(larder_runtime::DriverKind::Epoll)),
        "{drivers:?}"
    );
}
