//! Resource containers over real loopback sockets: a container over its `cpu_percent_max` is held back (its
//! budget runs out and it waits for the next period) while a container under its share beside it never is, and
//! every request of both is still answered 200. Also: a container's `send_rate_bytes_per_second` paces its
//! responses without changing their bytes.

mod common;

use std::io::Write;
use std::thread;

use common::{read_response, request, Served};
use larder_runtime::container::ContainerStats;
use larder_server::config::{ClassifyRule, ContainerConfig};

fn container(name: &str, cpu_percent_max: u32, send_rate_bytes_per_second: u64) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        shares: 100,
        tasks_max: 1_000,
        cpu_percent_max,
        send_rate_bytes_per_second,
    }
}

fn rule(container: &str, prefix: &str) -> ClassifyRule {
    ClassifyRule {
        container: container.into(),
        host: None,
        path_prefix: Some(prefix.into()),
        network: None,
    }
}

fn stats(served: &Served, name: &str) -> ContainerStats {
    served.node().runtime_stats()[0]
        .containers
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("container {name} on shard 0"))
}

/// `requests` keep-alive GETs of `path` on one connection; returns the statuses that were not 200.
fn keep_alive_gets(served: &Served, path: &str, requests: usize) -> Vec<u16> {
    let mut stream = served.connect();
    let mut failures = Vec::new();
    for _ in 0..requests {
        stream.write_all(request(path).as_bytes()).unwrap();
        let response = read_response(&mut stream, false);
        if response.status != 200 {
            failures.push(response.status);
        }
    }
    failures
}

#[test]
fn a_container_over_its_cpu_cap_waits_and_one_under_its_share_does_not() {
    let served = Served::start(|config| {
        config.containers = vec![
            container("default", 0, 0),
            container("capped", 10, 0),
            container("gold", 0, 0),
        ];
        config.classify = vec![rule("capped", "/capped/"), rule("gold", "/gold/")];
    });
    for dir in ["capped", "gold"] {
        std::fs::create_dir(served.path(dir)).unwrap();
        std::fs::write(served.path(dir).join("hello.txt"), b"hello world\n").unwrap();
    }
    let started = std::time::Instant::now();
    let failures: Vec<u16> = thread::scope(|scope| {
        let flood: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| keep_alive_gets(&served, "/capped/hello.txt", 500)))
            .collect();
        let gold = scope.spawn(|| {
            (0..100)
                .flat_map(|_| keep_alive_gets(&served, "/gold/hello.txt", 1))
                .collect::<Vec<_>>()
        });
        flood
            .into_iter()
            .chain([gold])
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    });
    let elapsed_ns = started.elapsed().as_nanos() as u64;
    assert_eq!(failures, Vec::<u16>::new(), "every request answered 200");
    // The shards publish container figures every 100 ms: wait for a snapshot that has all the polls.
    let capped = loop {
        let capped = stats(&served, "capped");
        if capped.tasks_completed >= 4 {
            break capped;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let gold = stats(&served, "gold");
    assert!(
        capped.throttles > 0,
        "4 saturating connections spent the capped container's 10% budget: {capped:?}"
    );
    assert_eq!(
        gold.throttles, 0,
        "gold has no cap and is never held back: {gold:?}"
    );
    // The cap is an upper bound on the container's charged CPU: 10% of the run, plus at most one period's
    // budget (1 ms) and one turn (1 ms) of overshoot, carried as debt.
    let bound_ns = elapsed_ns / 10 + 2_000_000 + 1_000_000;
    assert!(
        capped.cpu_ns <= bound_ns,
        "capped container charged {} ns in a {elapsed_ns} ns run (bound {bound_ns})",
        capped.cpu_ns
    );
}

#[test]
fn a_paced_container_sends_the_same_bytes() {
    let served = Served::start(|config| {
        config.containers = vec![container("default", 0, 0), container("slow", 0, 200_000)];
        config.classify = vec![rule("slow", "/slow/")];
    });
    std::fs::create_dir(served.path("slow")).unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(served.path("slow/body.bin"), &body).unwrap();
    let mut stream = served.connect();
    for _ in 0..2 {
        // Twice on one connection: a paced response leaves the connection ready for the next request.
        stream
            .write_all(request("/slow/body.bin").as_bytes())
            .unwrap();
        let response = read_response(&mut stream, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, body);
    }
    assert_eq!(stats(&served, "slow").send_rate_bytes_per_second, 200_000);
}
