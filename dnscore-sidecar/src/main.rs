//! `dnscore-sidecar`: serves the dnscore resolver on a loopback address inside a pod.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// A DNS cache for one pod: answers on a loopback address, forwards misses UDP-first to the
/// upstreams, retries on another upstream when one fails.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve DNS on, UDP and TCP.
    #[arg(long, env = "DNSCORE_LISTEN", default_value = "127.0.0.1:53")]
    listen: SocketAddr,
    /// Upstream server IP:PORT (repeatable). Default: the nameservers of --resolv-conf.
    #[arg(long = "upstream", env = "DNSCORE_UPSTREAM", value_delimiter = ',')]
    upstreams: Vec<SocketAddr>,
    /// Where to find nameservers when no --upstream is given.
    #[arg(long, env = "DNSCORE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Cached answers at most.
    #[arg(long, env = "DNSCORE_CACHE_CAPACITY", default_value_t = dnscore::DEFAULT_CACHE_CAPACITY)]
    cache_capacity: usize,
    /// Follow the upstreams this name resolves to (a headless Service selecting the CoreDNS
    /// pods, e.g. kube-dns-headless.kube-system.svc.cluster.local), asked through the
    /// --upstream servers, which remain the fallback.
    #[arg(long, env = "DNSCORE_DISCOVER")]
    discover: Option<String>,
    /// Port of the discovered upstreams.
    #[arg(long, env = "DNSCORE_DISCOVER_PORT", default_value_t = 53)]
    discover_port: u16,
    /// Seconds between two resolutions of --discover.
    #[arg(long, env = "DNSCORE_DISCOVER_INTERVAL", default_value_t = 5)]
    discover_interval: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("dnscore-sidecar: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let upstreams = if args.upstreams.is_empty() {
        dnscore_sidecar::resolv_conf::upstreams(&args.resolv_conf, args.listen)?
    } else {
        args.upstreams
    };
    let resolver = dnscore::Resolver::builder()
        .upstreams(upstreams.iter().copied())
        .cache_capacity(args.cache_capacity)
        .build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (udp, tcp) =
            bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        tracing::info!(listen = %args.listen, upstreams = ?upstreams, "serving");
        if let Some(name) = args.discover {
            let interval = std::time::Duration::from_secs(args.discover_interval.max(1));
            tokio::spawn(
                resolver
                    .clone()
                    .follow_upstreams(name, args.discover_port, interval),
            );
        }
        dnscore_sidecar::serve(udp, tcp, resolver, shutdown_signal()).await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds UDP and TCP on `addr` (SO_REUSEADDR on TCP, so a restart does not wait out
/// TIME_WAIT).
fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let udp = std::net::UdpSocket::bind(addr)?;
    udp.set_nonblocking(true)?;
    let tcp = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    Ok((
        UdpSocket::from_std(udp)?,
        TcpListener::from_std(tcp.into())?,
    ))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
