//! The real binary operated as Kubernetes operates it: metrics that move with traffic,
//! readiness that turns 503 on SIGTERM while answers go on for the lameduck period, SIGHUP
//! that swaps upstreams under load without a failed query.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dnscore::proto::op::{Message, ResponseCode};
use dnscore::proto::rr::rdata::A;
use dnscore::proto::rr::{RData, RecordType};
use dnscore_testkit::{Behavior, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};

fn query(id: u16, name: &str) -> Vec<u8> {
    dnscore_testkit::query(id, name, RecordType::A, None)
}

fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

async fn ask(server: SocketAddr, id: u16, name: &str) -> Option<ResponseCode> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&query(id, name), server).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_millis(2500), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..len])
        .ok()
        .map(|m| m.metadata.response_code)
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

struct Sidecar {
    child: Child,
    dns: SocketAddr,
    admin: SocketAddr,
}

impl Sidecar {
    async fn start(args: &[&str]) -> Self {
        let (dns_port, admin_port) = (free_port(), free_port());
        let dns: SocketAddr = ([127, 0, 0, 1], dns_port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let child = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
            .arg("--listen")
            .arg(dns.to_string())
            .arg("--metrics-listen")
            .arg(admin.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let sidecar = Self { child, dns, admin };
        for _ in 0..100 {
            if http_get(admin, "/health").await.is_some() {
                return sidecar;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the sidecar did not come up");
    }

    /// Polls `/ready` until it says 200, for at most `limit`.
    async fn ready_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if http_get(self.admin, "/ready").await.map(|r| r.0) == Some(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

/// Every PromQL expression of a Grafana dashboard: its targets' `expr` and its variables'
/// `definition`.
fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let up = TestUpstream::start().await.unwrap();
    let s = Sidecar::start(&["--upstream", &up.addr().to_string(), "--workers", "2"]).await;
    // Ready once the startup question (the loop probe) is answered: at once here.
    assert!(s.ready_within(Duration::from_secs(5)).await, "ready");
    let (status, ready) = http_get(s.admin, "/ready").await.unwrap();
    assert_eq!((status, ready.as_str()), (200, "ready\n"));
    for i in 0..20 {
        assert_eq!(ask(s.dns, i, "a.test.").await, Some(ResponseCode::NoError));
    }
    assert_eq!(
        ask(s.dns, 99, "nope.test.").await,
        Some(ResponseCode::NXDomain)
    );
    let (status, text) = http_get(s.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let a = metric(
        &text,
        r#"dnscore_queries_total{proto="udp",type="A",rcode="NOERROR"}"#,
    );
    assert_eq!(a, 20.0, "{text}");
    assert_eq!(
        metric(
            &text,
            r#"dnscore_queries_total{proto="udp",type="A",rcode="NXDOMAIN"}"#
        ),
        1.0
    );
    assert_eq!(metric(&text, "dnscore_cache_hits_total"), 19.0);
    // Two misses of the clients, and the sidecar's own startup question.
    assert_eq!(metric(&text, "dnscore_cache_misses_total"), 3.0);
    let upstream = up.addr().to_string();
    assert_eq!(
        metric(
            &text,
            &format!("dnscore_upstream_healthy{{upstream=\"{upstream}\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("dnscore_upstream_rtt_seconds_count{{upstream=\"{upstream}\"}}")
        ),
        3.0
    );
    assert_eq!(http_get(s.admin, "/nope").await.unwrap().0, 404);

    // CoreDNS's families, under CoreDNS's names and labels, moved by the traffic above.
    let server = format!("server=\"dns://{}\",zone=\".\",view=\"\"", s.dns);
    let cache = format!("server=\"dns://{}\",zones=\".\",view=\"\"", s.dns);
    let to = format!("to=\"{upstream}\"");
    for (series, at_least) in [
        (
            format!("coredns_dns_requests_total{{{server},proto=\"udp\",type=\"A\"}}"),
            21.0,
        ),
        (
            format!("coredns_dns_responses_total{{{server},rcode=\"NOERROR\",plugin=\"\"}}"),
            20.0,
        ),
        (
            format!("coredns_dns_responses_total{{{server},rcode=\"NXDOMAIN\",plugin=\"\"}}"),
            1.0,
        ),
        (
            format!("coredns_dns_request_duration_seconds_count{{{server}}}"),
            21.0,
        ),
        (format!("coredns_cache_entries{{{cache}}}"), 2.0),
        (format!("coredns_cache_hits_total{{{cache}}}"), 19.0),
        (format!("coredns_cache_misses_total{{{cache}}}"), 3.0),
        (format!("coredns_forward_requests_total{{{to}}}"), 3.0),
        (
            format!("coredns_forward_responses_total{{{to},rcode=\"NOERROR\"}}"),
            1.0,
        ),
        (
            format!("coredns_forward_request_duration_seconds_count{{{to}}}"),
            3.0,
        ),
    ] {
        assert!(
            metric(&text, &series) >= at_least,
            "{series} >= {at_least} in\n{text}"
        );
    }
    for family in [
        "coredns_cache_served_stale_total{",
        "coredns_cache_prefetch_total{",
        "coredns_forward_healthcheck_failures_total{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} in\n{text}"
        );
    }

    // Every metric the Grafana dashboard asks for is in this real scrape.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/dnscore.json")).unwrap();
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 16, "{} queries", queries.len());
    let mut names = std::collections::BTreeSet::new();
    for q in &queries {
        for (i, _) in q.match_indices(|c: char| c.is_ascii_alphabetic()) {
            let rest = &q[i..];
            if (i == 0 || !q[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
                && (rest.starts_with("coredns_") || rest.starts_with("dnscore_"))
            {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                names.insert(rest[..end].to_string());
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard's {name} is not in a real scrape"
        );
    }

    // Queries waiting for the upstream are in the in_flight gauge, over UDP and TCP alike.
    let delay = Behavior::Delay(Duration::from_millis(1000));
    up.set_behavior("slow-udp.test.", delay.clone());
    up.set_behavior("slow-tcp.test.", delay);
    let udp = tokio::spawn(ask(s.dns, 1, "slow-udp.test."));
    let mut tcp = TcpStream::connect(s.dns).await.unwrap();
    let q = query(2, "slow-tcp.test.");
    let mut frame = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    tcp.write_all(&frame).await.unwrap();
    let gauge = || async {
        let (_, text) = http_get(s.admin, "/metrics").await.unwrap();
        metric(&text, "dnscore_in_flight ")
    };
    let waited = Instant::now();
    while gauge().await != 2.0 {
        assert!(
            waited.elapsed() < Duration::from_millis(800),
            "never 2 in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(udp.await.unwrap(), Some(ResponseCode::NXDomain));
    let len = tcp.read_u16().await.unwrap();
    let mut answer = vec![0; usize::from(len)];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(Message::from_vec(&answer).unwrap().metadata.id, 2);
    assert_eq!(gauge().await, 0.0);
}

/// `/ready` at start: 503 until an upstream answers or `--startup-wait` passes, and then
/// 200 for good, whatever the upstreams do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_a_first_answer_or_the_startup_wait_then_holds() {
    // Only a dead upstream (a port nothing answers on): 503 until the startup wait, 200 after.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    let started = Instant::now();
    let s = Sidecar::start(&["--upstream", &dead_addr, "--startup-wait", "2s"]).await;
    let mut last_503 = None;
    while started.elapsed() < Duration::from_secs(4) {
        match http_get(s.admin, "/ready").await.map(|r| r.0) {
            Some(503) => last_503 = Some(started.elapsed()),
            Some(200) => break,
            other => panic!("/ready: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_503 = last_503.expect("503 before the startup wait");
    assert!(
        last_503 >= Duration::from_millis(1500),
        "503 until ~2 s: {last_503:?}"
    );
    assert_eq!(
        http_get(s.admin, "/ready").await.unwrap().0,
        200,
        "200 after it"
    );
    drop(dead);

    // A live one: 200 after its first answer, long before the startup wait (10 s default).
    let up = TestUpstream::start().await.unwrap();
    let started = Instant::now();
    let live = Sidecar::start(&["--upstream", &up.addr().to_string()]).await;
    assert!(live.ready_within(Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        up.total_queries() >= 1,
        "the startup question reached the upstream"
    );

    // Every upstream refuses (its port closed): still ready, for a minute (the sidecar
    // serves from its cache; its readiness counts for the pod). DNSCORE_QUICK shortens it.
    up.stop();
    let hold = if std::env::var_os("DNSCORE_QUICK").is_some() {
        5
    } else {
        60
    };
    let until = Instant::now() + Duration::from_secs(hold);
    let mut polls = 0;
    while Instant::now() < until {
        assert_eq!(
            http_get(live.admin, "/ready").await.unwrap().0,
            200,
            "after {polls} polls"
        );
        // Queries go on and fail: the upstream is known down, /ready does not follow it.
        let _ = ask(live.dns, polls, &format!("gone-{polls}.test.")).await;
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, text) = http_get(live.admin, "/metrics").await.unwrap();
    let upstream = up.addr().to_string();
    assert_eq!(
        metric(
            &text,
            &format!("dnscore_upstream_healthy{{upstream=\"{upstream}\"}}")
        ),
        0.0,
        "the upstream is marked down meanwhile"
    );
}

/// Idle, the sidecar sleeps: no thread wakes up to poll anything (one runs in every pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_does_not_wake_up() {
    let up = TestUpstream::start().await.unwrap();
    let s = Sidecar::start(&["--upstream", &up.addr().to_string(), "--workers", "2"]).await;
    assert!(s.ready_within(Duration::from_secs(5)).await);
    assert_eq!(ask(s.dns, 1, "a.test.").await, Some(ResponseCode::NoError));
    // Context switches of all its threads: each wake-up from a blocking call is one.
    let switches = || {
        let pid = s.child.id().unwrap();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks
            .map(|t| std::fs::read_to_string(t.unwrap().path().join("status")).unwrap())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum::<u64>()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = switches();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let woken = switches() - before;
    // Polling the stop flag every 100 ms, as the receive threads did, was ~60 here.
    assert!(woken <= 3, "{woken} wake-ups in 3 s of idleness");
}

/// The query log as JSON: one object per query with what an operator asks of it, and the
/// sampling rate honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_log_is_json_with_one_object_per_query() {
    let up = TestUpstream::start().await.unwrap();
    let run = |share: &str| {
        let port = free_port();
        let dns: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
            .args([
                "--listen",
                &dns.to_string(),
                "--upstream",
                &up.addr().to_string(),
            ])
            .args(["--metrics-listen", "127.0.0.1:0", "--lameduck", "0"])
            .args(["--log-format", "json", "--log-queries", share])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (child, dns)
    };
    let logged = |stderr: &str| -> Vec<serde_json::Value> {
        stderr
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
            .filter(|v| v["target"] == "dnscore::query")
            .collect()
    };
    let stop = |child: &Child| {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    };

    let (child, dns) = run("1");
    let mut answered = false;
    for _ in 0..50 {
        answered = ask(dns, 1, "a.test.").await == Some(ResponseCode::NoError);
        if answered {
            break;
        }
    }
    assert!(answered);
    assert_eq!(ask(dns, 2, "a.test.").await, Some(ResponseCode::NoError));
    assert_eq!(
        ask(dns, 3, "nope.test.").await,
        Some(ResponseCode::NXDomain)
    );
    // An answer that expires, then the upstream refuses it: served stale, logged so.
    up.add_record("short.test.", RData::A(A::new(192, 0, 2, 9)), 1);
    assert_eq!(
        ask(dns, 4, "short.test.").await,
        Some(ResponseCode::NoError)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    up.set_behavior("short.test.", Behavior::Refused);
    assert_eq!(
        ask(dns, 5, "short.test.").await,
        Some(ResponseCode::NoError)
    );
    stop(&child);
    let out = child.wait_with_output().await.unwrap();
    let lines = logged(&String::from_utf8_lossy(&out.stderr));
    let last = lines.len() - 1;
    let stale = &lines[last]["fields"];
    assert_eq!(stale["name"], "short.test.");
    assert_eq!(stale["cache"], "stale");
    let (hit, nx) = (&lines[last - 3]["fields"], &lines[last - 2]["fields"]);
    assert_eq!(hit["name"], "a.test.");
    assert_eq!(hit["qtype"], "A");
    assert_eq!(hit["rcode"], "NOERROR");
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["proto"], "udp");
    assert!(hit["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(hit["duration_us"].is_u64());
    assert_eq!(nx["name"], "nope.test.");
    assert_eq!(nx["rcode"], "NXDOMAIN");
    assert_eq!(nx["cache"], "miss");
    assert_eq!(
        nx["upstream"],
        up.addr().to_string(),
        "the upstream that answered"
    );
    assert_eq!(hit["upstream"], "", "none for a hit");

    // A quarter of 200 queries (hits): 50 expected, 20..80 is five standard deviations.
    let (child, dns) = run("0.25");
    for _ in 0..50 {
        if ask(dns, 1, "a.test.").await.is_some() {
            break;
        }
    }
    for id in 0..200 {
        assert_eq!(ask(dns, id, "a.test.").await, Some(ResponseCode::NoError));
    }
    stop(&child);
    let out = child.wait_with_output().await.unwrap();
    let sampled = logged(&String::from_utf8_lossy(&out.stderr)).len();
    assert!(
        (20..=80).contains(&sampled),
        "{sampled} of 200 logged at 0.25"
    );
}

/// Warm names are resolved before `/ready` says 200, and stay in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_names_are_cached_before_ready() {
    let up = TestUpstream::start().await.unwrap();
    // b.test answers after 700 ms: /ready waits for it.
    up.set_behavior("b.test.", Behavior::Delay(Duration::from_millis(700)));
    let started = Instant::now();
    let s = Sidecar::start(&[
        "--upstream",
        &up.addr().to_string(),
        "--warm",
        "a.test,b.test",
    ])
    .await;
    assert!(s.ready_within(Duration::from_secs(5)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "ready only once b.test is cached"
    );
    let before = up.total_queries();
    assert_eq!(ask(s.dns, 1, "a.test.").await, Some(ResponseCode::NoError));
    assert_eq!(ask(s.dns, 2, "b.test.").await, Some(ResponseCode::NoError));
    assert_eq!(up.total_queries(), before, "both answered from the cache");
}

/// A sidecar whose upstream forwards back to it (here: another sidecar forwarding to the
/// first) sees its own startup question come back and exits with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected_at_start() {
    let (a_port, b_port) = (free_port(), free_port());
    let a = format!("127.0.0.1:{a_port}");
    let b = format!("127.0.0.1:{b_port}");
    let spawn = |listen: &str, upstream: &str| {
        Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
            .args(["--listen", listen, "--upstream", upstream])
            .args(["--metrics-listen", "127.0.0.1:0", "--lameduck", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // Whichever sees its question come back first exits; the other then only meets a
    // closed port (and keeps trying), so one exit is what a loop shows.
    let (mut first, mut second) = (spawn(&a, &b), spawn(&b, &a));
    let exited = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::select! {
            status = first.wait() => (status, first),
            status = second.wait() => (status, second),
        }
    })
    .await
    .expect("one of them exits");
    let (status, child) = exited;
    assert!(!status.unwrap().success());
    let mut err = String::new();
    child
        .stderr
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(
        err.contains("forwarding loop") && err.contains("dnscore-loop.invalid"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_off_and_answers_through_the_lameduck() {
    let up = TestUpstream::start().await.unwrap();
    let mut s = Sidecar::start(&["--upstream", &up.addr().to_string(), "--lameduck", "1.5"]).await;
    assert!(s.ready_within(Duration::from_secs(5)).await);
    let term = Instant::now();
    s.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        http_get(s.admin, "/ready").await.unwrap().0,
        503,
        "not ready at once"
    );
    assert_eq!(
        http_get(s.admin, "/health").await.unwrap().0,
        200,
        "still alive"
    );
    let mut answered = 0;
    while term.elapsed() < Duration::from_millis(1200) {
        let name = format!("n{answered}.test.");
        assert_eq!(
            ask(s.dns, 1, &name).await,
            Some(ResponseCode::NXDomain),
            "answers go on"
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .expect("exits after the lameduck")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        term.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        term.elapsed()
    );
    assert!(answered >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_upstreams_under_load_without_a_failed_query() {
    let old = TestUpstream::start().await.unwrap();
    let new = TestUpstream::start_on([127, 0, 0, 5].into()).await.unwrap();
    let dir: PathBuf = std::env::temp_dir().join(format!("dnscore-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dnscore.toml");
    std::fs::write(&file, format!("upstream = [\"{}\"]\n", old.addr())).unwrap();
    let s = Sidecar::start(&["--config", file.to_str().unwrap()]).await;

    let dns = s.dns;
    let load = tokio::spawn(async move {
        let mut failures = 0;
        for i in 0..300u16 {
            let name = format!("hup-{i}.test.");
            if ask(dns, i, &name).await != Some(ResponseCode::NXDomain) {
                failures += 1;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        failures
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(
        &file,
        format!("upstream = [\"{}\"]\ncache-capacity = 500\n", new.addr()),
    )
    .unwrap();
    s.signal("HUP");
    let failures = load.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(failures, 0);
    assert!(
        old.total_queries() > 0 && new.total_queries() > 0,
        "both served a part"
    );
    let before = old.total_queries();
    assert_eq!(
        ask(s.dns, 1, "after.test.").await,
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(
        old.total_queries(),
        before,
        "the old upstream is no longer asked"
    );
    // The cache survived the reload.
    assert_eq!(
        ask(s.dns, 2, "hup-0.test.").await,
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(old.queries("hup-0.test.", dnscore_testkit::Proto::Udp), 1);
    assert_eq!(new.queries("hup-0.test.", dnscore_testkit::Proto::Udp), 0);
}

#[tokio::test]
async fn check_config_reports_and_rejects() {
    let ok = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["--upstream", "10.100.0.10:53", "--check-config"])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("10.100.0.10:53"));
    let bad = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args([
            "--upstream",
            "10.100.0.10:53",
            "--workers",
            "0",
            "--check-config",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("workers"));
    let help = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--lameduck",
        "--metrics-listen",
        "--allow",
        "--log-format",
        "DNSCORE_LISTEN",
        "while /ready says 503, up to 1h [default: 5s]",
        "--max-ttl <SECONDS>",
        "DNSCORE_NEGATIVE_MAX_TTL",
        "--selection <POLICY>",
    ] {
        assert!(help.contains(option), "--help documents {option}");
    }
    // The resolver's settings, by the same names as flags, variables and file keys, each
    // shown with where it came from.
    let dir = std::env::temp_dir().join(format!("dnscore-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dnscore.toml");
    std::fs::write(&file, "stale-answer-timeout = \"900ms\"\nlameduck = 30\n").unwrap();
    let shown = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["--upstream", "10.100.0.10:53", "--max-ttl", "30s"])
        .args(["--negative-max-ttl", "5s", "--check-config", "--config"])
        .arg(&file)
        .env("DNSCORE_PREFETCH", "off")
        .output()
        .await
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    for line in [
        "max-ttl = \"30\"  # flag",
        "negative-max-ttl = \"5\"  # flag",
        "prefetch = \"false\"  # environment",
        "stale-answer-timeout = \"900ms\"  # file",
        "lameduck = \"30s\"  # file",
        "min-ttl = \"0\"  # default",
        "upstream = \"10.100.0.10:53\"  # flag",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?} in:\n{shown}");
    }
    for (flag, value) in [
        ("--max-ttl", "1.5s"),
        ("--timeout", "soon"),
        ("--lameduck", "30x"),
    ] {
        let bad = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
            .args([
                "--upstream",
                "10.100.0.10:53",
                flag,
                value,
                "--check-config",
            ])
            .output()
            .await
            .unwrap();
        assert_eq!(bad.status.code(), Some(2), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains(value),
            "{flag} {value}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bound beyond loopback, the sidecar answers only the networks it was told to (`--allow`)
/// and refuses ANY. Runs in a network namespace the test creates (root only), with test
/// addresses that exist only inside it.
#[test]
fn beyond_loopback_only_allowed_clients_are_answered_and_any_is_refused() {
    use std::process::Command as Std;
    let root = Std::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let tools =
        Std::new("ip").arg("-V").output().is_ok() && Std::new("dig").arg("-v").output().is_ok();
    if !root || !tools {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with ip and dig"
        );
        eprintln!("skipped: needs root, iproute2 and dig (network namespace)");
        return;
    }
    let ns = format!("dnsc-test-{}", std::process::id());
    let run = |args: &[&str]| Std::new("ip").args(args).status().unwrap().success();
    assert!(run(&["netns", "add", &ns]));
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    assert!(run(&["-n", &ns, "link", "set", "lo", "up"]));
    assert!(run(&[
        "-n",
        &ns,
        "addr",
        "add",
        "198.18.0.1/32",
        "dev",
        "lo"
    ]));
    assert!(run(&[
        "-n",
        &ns,
        "addr",
        "add",
        "198.18.1.1/32",
        "dev",
        "lo"
    ]));
    let mut server = Std::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_dnscore-sidecar")])
        .args([
            "--listen",
            "0.0.0.0:53",
            "--upstream",
            "127.0.0.1:9",
            "--allow",
            "198.18.0.0/24",
        ])
        .args(["--metrics-listen", "127.0.0.1:9153", "--lameduck", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dig = |source: &str, args: &[&str]| {
        let out = Std::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "dig",
                "+time=1",
                "+tries=1",
                "-b",
                source,
                "@198.18.0.1",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut allowed = String::new();
    for _ in 0..50 {
        allowed = dig("198.18.0.1", &["ANY", "a.test"]);
        if allowed.contains("status:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let denied = dig("198.18.1.1", &["ANY", "a.test"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        allowed.contains("status: NOTIMP"),
        "allowed client, ANY refused: {allowed}"
    );
    assert!(
        !denied.contains("status:"),
        "a client outside --allow gets nothing: {denied}"
    );
}

#[tokio::test]
async fn inject_subcommand_is_idempotent_from_the_command_line() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/app.yaml");
    let first = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["inject", "--upstream", "10.100.0.10:53", fixture])
        .output()
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let once = String::from_utf8(first.stdout).unwrap();
    assert!(once.contains("restartPolicy: Always") && once.contains("127.0.0.1"));
    let mut again = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["inject", "--upstream", "10.100.0.10:53"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = again.stdin.take().unwrap();
    stdin.write_all(once.as_bytes()).await.unwrap();
    drop(stdin);
    let twice = again.wait_with_output().await.unwrap();
    assert!(twice.status.success());
    assert_eq!(
        String::from_utf8(twice.stdout).unwrap(),
        once,
        "injecting twice = once"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["inject", "--upstream", "127.0.0.1:53", fixture])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a loopback upstream would loop");
}
