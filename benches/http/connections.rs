//! New HTTP connections per second through reqwest, each request on a new connection (so
//! each one resolves the name), with four resolvers in the same run:
//!
//! - `dnscore`: dnscore's reqwest adapter, the resolver in-process, pointed at the test
//!   upstream;
//! - `getaddrinfo`: reqwest's default resolver (glibc's getaddrinfo on tokio's blocking
//!   pool) asking the nameserver of `/etc/resolv.conf`;
//! - `hickory`: reqwest's `hickory-dns` resolver, reading the same `/etc/resolv.conf`;
//! - `no DNS`: reqwest's `resolve` override (a fixed address), the ceiling: what a
//!   connection costs without any lookup.
//!
//! It also times the lookups alone (one at a time, after a warm-up), to tell how much of a
//! connection's time is DNS.
//!
//! Run it through `benches/http/run.sh` (root): there `/etc/resolv.conf` is a private one
//! naming a dnscore sidecar on 127.0.0.1:53, in a network namespace of its own. It refuses
//! to run with a resolv.conf naming any nameserver outside 127.0.0.0/8.
//!
//! Usage: `http-connections UPSTREAM [--secs S] [--rounds N] [--concurrency C[,C...]]`,
//! UPSTREAM being the test upstream (`test-upstream web.test.=127.0.0.1`) the sidecar asks.

use std::error::Error;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use dnscore::Resolver;
use dnscore_testkit::TestHttpServer;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use tower::ServiceExt;

/// The name the test upstream serves at 127.0.0.1.
const NAME: &str = "web.test";
const BODY: &str = "hello from web.test";
/// Bounds each request; a request that fails or times out is counted as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the lookups alone are timed, per resolver.
const LOOKUP_TIME: Duration = Duration::from_secs(1);

type BoxError = Box<dyn Error + Send + Sync>;

struct Args {
    upstream: SocketAddr,
    secs: f64,
    rounds: usize,
    concurrency: Vec<usize>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: http-connections UPSTREAM [--secs S] [--rounds N] [--concurrency C[,C...]]";
    let upstream = args.next().ok_or(usage)?.parse()?;
    let mut parsed = Args {
        upstream,
        secs: 3.0,
        rounds: 3,
        concurrency: vec![1, 16],
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--secs" => parsed.secs = value.parse()?,
            "--rounds" => parsed.rounds = value.parse()?,
            "--concurrency" => {
                parsed.concurrency = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            _ => return Err(usage.into()),
        }
    }
    if !(0.1..=60.0).contains(&parsed.secs) || !(1..=10).contains(&parsed.rounds) {
        return Err("--secs must be 0.1..=60 and --rounds 1..=10".into());
    }
    if parsed.concurrency.iter().any(|c| !(1..=256).contains(c)) {
        return Err("--concurrency must be 1..=256".into());
    }
    Ok(parsed)
}

/// Refuses a resolv.conf that would send the system resolvers' queries off this machine.
fn check_resolv_conf() -> Result<(), BoxError> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")?;
    let servers: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let loopback = |s: &&str| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if servers.is_empty() || !servers.iter().all(loopback) {
        return Err(format!(
            "/etc/resolv.conf names {servers:?}: run this through benches/http/run.sh, \
             which gives it a private resolv.conf naming 127.0.0.1"
        )
        .into());
    }
    Ok(())
}

/// A client that opens a new connection for every request.
fn client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, BoxError> {
    Ok(builder
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// One request: a new connection, the name resolved, the whole body read.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<(), BoxError> {
    let body = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    if body != BODY {
        return Err(format!("unexpected body {body:?}").into());
    }
    Ok(())
}

/// `concurrency` loops of requests for `secs`: (requests done, errors, elapsed).
async fn measure(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    secs: f64,
) -> (usize, usize, Duration) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while Instant::now() < deadline {
                    match fetch(&client, &url).await {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        match w.await {
            Ok((o, f)) => {
                ok += o;
                failed += f;
            }
            Err(_) => failed += 1,
        }
    }
    (ok, failed, start.elapsed())
}

/// Mean time of one lookup, one at a time for [`LOOKUP_TIME`] after 100 warm-up lookups.
async fn time_lookups<F, Fut>(mut lookup: F) -> Result<Duration, BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<SocketAddr>, BoxError>>,
{
    for _ in 0..100 {
        lookup().await?;
    }
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < LOOKUP_TIME {
        let addrs = lookup().await?;
        if !addrs.iter().any(|a| a.ip() == IpAddr::from([127, 0, 0, 1])) {
            return Err(format!("{NAME} resolved to {addrs:?}").into());
        }
        n += 1;
    }
    Ok(start.elapsed() / n)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    check_resolv_conf()?;
    let server = TestHttpServer::start(BODY).await?;
    let url = format!("http://{NAME}:{}/", server.addr().port());
    let dnscore = Resolver::builder().upstream(args.upstream).build()?;

    let setups: Vec<(&str, reqwest::Client)> = vec![
        (
            "dnscore",
            client(reqwest::Client::builder().dns_resolver(dnscore.clone()))?,
        ),
        // The hickory-dns feature is on in this build, which makes hickory reqwest's
        // default: ask for getaddrinfo explicitly.
        (
            "getaddrinfo",
            client(reqwest::Client::builder().no_hickory_dns())?,
        ),
        (
            "hickory",
            client(reqwest::Client::builder().hickory_dns(true))?,
        ),
        (
            "no DNS",
            client(
                reqwest::Client::builder()
                    .no_hickory_dns()
                    .resolve(NAME, SocketAddr::from(([127, 0, 0, 1], 0))),
            )?,
        ),
    ];
    // Warm-up: every setup must work (and fill its caches) before anything is measured; the
    // sidecar may still be starting.
    for (name, client) in &setups {
        let mut tries = 0;
        while let Err(e) = fetch(client, &url).await {
            tries += 1;
            if tries == 30 {
                return Err(format!("{name}: {e}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!("# lookups of {NAME} alone, one at a time (mean)");
    let reqwest_name = || reqwest::dns::Name::from_str(NAME);
    let dns = time_lookups(|| {
        let dnscore = dnscore.clone();
        async move {
            let name = reqwest_name()?;
            let addrs = reqwest::dns::Resolve::resolve(&dnscore, name).await?;
            Ok(addrs.collect())
        }
    })
    .await?;
    println!("dnscore      {:>8.1} µs", dns.as_secs_f64() * 1e6);
    // What reqwest's default resolver wraps: hyper-util's GaiResolver (getaddrinfo in
    // spawn_blocking).
    let gai = time_lookups(|| async {
        let name = hyper_util::client::legacy::connect::dns::Name::from_str(NAME)?;
        Ok(GaiResolver::new().oneshot(name).await?.collect())
    })
    .await?;
    println!("getaddrinfo  {:>8.1} µs", gai.as_secs_f64() * 1e6);
    // reqwest's hickory resolver as it builds it: the system configuration, A and AAAA.
    let mut builder = hickory_resolver::TokioResolver::builder_tokio()?;
    builder.options_mut().ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv6AndIpv4;
    let hickory = builder.build()?;
    let hick = time_lookups(|| async {
        let lookup = hickory.lookup_ip(NAME).await?;
        Ok(lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect())
    })
    .await?;
    println!("hickory      {:>8.1} µs", hick.as_secs_f64() * 1e6);

    let mut done = setups.len();
    for &concurrency in &args.concurrency {
        println!(
            "\n# new connections/s, {concurrency} concurrent, {} rounds of {} s",
            args.rounds, args.secs
        );
        let mut rates = vec![Vec::new(); setups.len()];
        let mut errors = vec![0; setups.len()];
        for round in 0..args.rounds {
            // Each round starts with another setup, so that none is always first.
            for k in 0..setups.len() {
                let i = (round + k) % setups.len();
                let client = &setups[i].1;
                let (ok, failed, elapsed) = measure(client, &url, concurrency, args.secs).await;
                rates[i].push(ok as f64 / elapsed.as_secs_f64());
                errors[i] += failed;
                done += ok;
            }
        }
        let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
        // µs/conn is the inverse of the rate: wall time per connection with `concurrency`
        // of them at once (with one, a connection's latency).
        println!(
            "{:<12} {:>40} {:>9} {:>9} {:>7}",
            "setup", "connections/s per round", "median", "µs/conn", "errors"
        );
        for (i, (name, _)) in setups.iter().enumerate() {
            let rounds: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "{name:<12} {:>40} {:>9.0} {:>9.1} {:>7}",
                rounds.join(" "),
                medians[i],
                1e6 / medians[i],
                errors[i]
            );
        }
        println!(
            "dnscore / getaddrinfo {:.2}x, dnscore / hickory {:.2}x, dnscore / no DNS {:.2}x",
            medians[0] / medians[1],
            medians[0] / medians[2],
            medians[0] / medians[3]
        );
    }
    // Every request counted above reached the server, over a connection of its own.
    println!(
        "\nserver: {} requests, {} counted here (warm-ups included)",
        server.requests(),
        done
    );
    if server.requests() < done {
        return Err("the server saw fewer requests than were counted".into());
    }
    Ok(())
}
