//! `dnscore-sidecar`: serves the dnscore resolver on a loopback address inside a pod.
//!
//! This file only reads the configuration, binds, and runs the lifecycle: on SIGTERM (or
//! SIGINT) `/ready` turns 503 at once, answers continue for the lameduck period, then the
//! listeners close, the queries in flight finish and the process exits 0. SIGHUP re-reads the
//! configuration file.

#![forbid(unsafe_code)]

/// mimalloc rather than the C library's allocator: a miss allocates on the receive thread and
/// frees on a runtime worker, which glibc's arenas handle poorly (5% of a miss's CPU in a
/// profile, see benches/README.md), and the image is static musl, whose allocator is slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{CommandFactory, FromArgMatches};
use dnscore_sidecar::access::Access;
use dnscore_sidecar::admin::{Admin, serve_admin};
use dnscore_sidecar::config::{
    CertFlags, Command, Config, ConfigError, DoctorFlags, DoctorFormat, Flags, InjectFlags,
    LogFormat, Settings, WebhookFlags, source_of,
};
use dnscore_sidecar::metrics::Metrics;
use dnscore_sidecar::startup::{self, LoopProbe};
use dnscore_sidecar::{Context, serve_with};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

type LogHandle = reload::Handle<EnvFilter, Registry>;

fn main() -> ExitCode {
    let matches = Flags::command().get_matches();
    let flags = match Flags::from_arg_matches(&matches) {
        Ok(flags) => flags,
        Err(err) => err.exit(),
    };
    match &flags.command {
        Some(Command::Inject(inject)) => return run_inject(inject),
        Some(Command::Webhook(webhook)) => return run_webhook(webhook),
        Some(Command::Cert(cert)) => return run_cert(cert),
        Some(Command::Doctor(doctor)) => return run_doctor(doctor),
        None => {}
    }
    let config = match load(&flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("dnscore-sidecar: {err}");
            return ExitCode::from(2);
        }
    };
    if flags.check_config {
        let file = flags
            .config
            .as_deref()
            .map(Settings::file_keys)
            .unwrap_or_default();
        for (name, value) in config.entries() {
            let source = source_of(&matches, &file, name);
            println!("{name} = {value:?}  # {source}");
        }
        return ExitCode::SUCCESS;
    }
    let log = init_logging(&config);
    match run(flags, config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("dnscore-sidecar: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `dnscore-sidecar inject`: the manifest on stdout, a line per object on stderr.
fn run_inject(flags: &InjectFlags) -> ExitCode {
    use std::io::{Read, Write};
    let mut input = String::new();
    let read = match flags.file.as_deref() {
        None => std::io::stdin().read_to_string(&mut input).map(drop),
        Some(path) if path.as_os_str() == "-" => {
            std::io::stdin().read_to_string(&mut input).map(drop)
        }
        Some(path) => std::fs::read_to_string(path).map(|text| input = text),
    };
    if let Err(err) = read {
        eprintln!("dnscore-sidecar inject: cannot read the manifest: {err}");
        return ExitCode::from(2);
    }
    match dnscore_sidecar::inject::inject(&input, &flags.options()) {
        Ok(report) => {
            for object in &report.objects {
                eprintln!("{object}");
            }
            if std::io::stdout()
                .write_all(report.output.as_bytes())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dnscore-sidecar inject: {err}");
            ExitCode::from(2)
        }
    }
}

/// Logs of the subcommands: text on stderr, `RUST_LOG` or `default` as the filter (colours
/// only on a terminal).
fn init_plain_logging(default: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_owned());
    fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `dnscore-sidecar webhook`: serves until SIGTERM or SIGINT.
fn run_webhook(flags: &WebhookFlags) -> ExitCode {
    use dnscore_sidecar::webhook::{Webhook, serve, tls::Certificates};
    init_plain_logging("info");
    let fail = |err: &dyn std::fmt::Display| {
        eprintln!("dnscore-sidecar webhook: {err}");
        ExitCode::from(2)
    };
    let webhook = match Webhook::new(flags.injection.options()) {
        Ok(webhook) => {
            let delay = flags
                .shutdown_delay
                .map_or(dnscore_sidecar::webhook::DEFAULT_SHUTDOWN_DELAY, |d| d.0);
            Arc::new(webhook.with_shutdown_delay(delay))
        }
        Err(err) => return fail(&err),
    };
    let certificates = match Certificates::load(&flags.tls_cert, &flags.tls_key) {
        Ok(certificates) => Arc::new(certificates),
        Err(err) => return fail(&err),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err),
    };
    let served = runtime.block_on(async {
        let listener = TcpListener::bind(flags.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", flags.listen))?;
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => return Err(format!("cannot handle signals: {e}")),
        };
        let listen = listener.local_addr().unwrap_or(flags.listen);
        tracing::info!(%listen, "serving admission reviews on POST /mutate");
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down");
        };
        serve(listener, certificates, webhook, shutdown)
            .await
            .map_err(|e| format!("cannot set up TLS: {e}"))
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// `dnscore-sidecar doctor`: findings on stdout, notes on stderr.
fn run_doctor(flags: &DoctorFlags) -> ExitCode {
    use dnscore_sidecar::doctor::{self, CHECKS, Objects};
    use std::io::Read;
    if flags.list_checks {
        for (name, what) in CHECKS {
            println!("{name:<30} {what}");
        }
        return ExitCode::SUCCESS;
    }
    if let Some(unknown) = flags
        .skip
        .iter()
        .find(|s| !CHECKS.iter().any(|(name, _)| name == s))
    {
        eprintln!("dnscore-sidecar doctor: no check named {unknown:?} (see --list-checks)");
        return ExitCode::from(2);
    }
    // Warnings of the live mode's client (RUST_LOG=debug shows its requests).
    init_plain_logging("warn");
    let objects = if flags.files.is_empty() {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("dnscore-sidecar doctor: {err}");
                return ExitCode::from(2);
            }
        };
        let read = runtime.block_on(async {
            let client = doctor::live::client(flags.kubeconfig.as_deref()).await?;
            doctor::live::read(&client).await
        });
        match read {
            Ok(objects) => objects,
            Err(err) => {
                eprintln!("dnscore-sidecar doctor: {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        let mut objects = Objects::default();
        for path in &flags.files {
            let name = path.display().to_string();
            let mut text = String::new();
            let read = if name == "-" {
                std::io::stdin().read_to_string(&mut text).map(drop)
            } else {
                std::fs::read_to_string(path).map(|t| text = t)
            };
            let added = read
                .map_err(|error| doctor::InputError::Read {
                    source_name: name.clone(),
                    error,
                })
                .and_then(|()| objects.add_yaml(&name, &text));
            if let Err(err) = added {
                eprintln!("dnscore-sidecar doctor: {err}");
                return ExitCode::from(2);
            }
        }
        objects
    };
    let mut notes = objects.all_notes();
    let findings = doctor::check(&objects, &flags.skip, &mut notes);
    for note in &notes {
        eprintln!("note: {note}");
    }
    match flags.format {
        DoctorFormat::Table => print!("{}", doctor::table(&findings)),
        DoctorFormat::Json => println!("{}", doctor::json(&findings)),
    }
    ExitCode::from(doctor::exit_status(&findings))
}

/// `dnscore-sidecar cert`: writes the files and says what to do with them.
fn run_cert(flags: &CertFlags) -> ExitCode {
    use dnscore_sidecar::cert::{CertRequest, generate, write};
    let request = CertRequest {
        service: flags.service.clone(),
        namespace: flags.namespace.clone(),
        cluster_domain: flags.cluster_domain.clone(),
        days: flags.days,
    };
    let (ca_cert, ca_key) = (flags.out.join("ca.crt"), flags.out.join("ca.key"));
    let existing = match (flags.new_ca, ca_cert.exists(), ca_key.exists()) {
        (true, _, _) | (false, false, false) => None,
        (false, true, true) => match (
            std::fs::read_to_string(&ca_cert),
            std::fs::read_to_string(&ca_key),
        ) {
            (Ok(cert), Ok(key)) => Some((cert, key)),
            (Err(err), _) | (_, Err(err)) => {
                eprintln!("dnscore-sidecar cert: cannot read the existing CA: {err}");
                return ExitCode::from(2);
            }
        },
        (false, _, _) => {
            // Half a CA: making a new one would change the caBundle without saying so.
            eprintln!(
                "dnscore-sidecar cert: {} holds only one of ca.crt and ca.key: put the other \
                 back to renew with the same CA, or pass --new-ca",
                flags.out.display()
            );
            return ExitCode::from(2);
        }
    };
    if existing.is_some() {
        eprintln!(
            "signing with the existing CA in {} (the caBundle stays)",
            flags.out.display()
        );
    }
    let existing = existing.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
    match generate(&request, existing).and_then(|files| write(&flags.out, &files)) {
        Ok(paths) => {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
            eprintln!(
                "certificate for {} (valid {} days); the self-managed overlay reads these files",
                request.dns_names().join(", "),
                request.days
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dnscore-sidecar cert: {err}");
            ExitCode::from(2)
        }
    }
}

/// Flags over environment (both through clap) over the file over the defaults.
fn load(flags: &Flags) -> Result<Config, ConfigError> {
    let file = match &flags.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let mut settings = flags.settings.clone().or(file);
    if settings.log.is_none() {
        settings.log = std::env::var("RUST_LOG").ok();
    }
    settings.resolve()
}

fn init_logging(config: &Config) -> LogHandle {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    handle
}

fn run(flags: Flags, config: Config, log: LogHandle) -> Result<(), Box<dyn std::error::Error>> {
    let resolver = config.builder()?.build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (udp, tcp) = bind(config.listen, config.workers)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let admin_listener = TcpListener::bind(config.metrics_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.metrics_listen))?;
        let metrics = Arc::new(Metrics::for_server(config.listen));
        // Bound beyond loopback, refuse ANY: no amplification for whoever can reach us.
        let access = Access::new(config.allow.clone(), !config.listen.ip().is_loopback());
        let probe = Arc::new(LoopProbe::new());
        let ctx = Context {
            resolver: resolver.clone(),
            metrics: Arc::clone(&metrics),
            access: Arc::new(access),
            rate_limit: config.rate_limit,
            loop_probe: Some(Arc::clone(&probe)),
            query_log: config.log_queries,
        };
        let admin = Admin::new(resolver.clone(), metrics, config.startup_wait);
        tokio::spawn(serve_admin(admin_listener, Arc::clone(&admin)));
        if let Some((name, port, interval)) = config.discover.clone() {
            tokio::spawn(resolver.clone().follow_upstreams(name, port, interval));
        }
        tokio::spawn(startup::run(
            resolver.clone(),
            Arc::clone(&admin),
            Arc::clone(&probe),
            config.warm.clone(),
        ));
        tracing::info!(
            listen = %config.listen,
            metrics = %config.metrics_listen,
            upstreams = ?config.upstreams,
            workers = config.workers,
            "serving"
        );
        let looped = std::sync::atomic::AtomicBool::new(false);
        let lifecycle = async {
            tokio::select! {
                () = lifecycle(&flags, &config, &resolver, &admin, &log) => {}
                () = probe.came_back() => looped.store(true, Ordering::Release),
            }
        };
        serve_with(udp, tcp, ctx, lifecycle).await;
        if looped.load(Ordering::Acquire) {
            return Err(format!(
                "forwarding loop: a question for *.{} sent to the upstreams {:?} came back \
                 to {}; the upstreams forward to this sidecar (point --upstream at the \
                 cluster DNS, not at a resolver that uses this sidecar)",
                probe.suffix(),
                config.upstreams,
                config.listen
            )
            .into());
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes when the listeners should close: after SIGTERM or SIGINT and the lameduck
/// period, during which `/ready` says 503 and answers go on. SIGHUP reloads meanwhile.
async fn lifecycle(
    flags: &Flags,
    config: &Config,
    resolver: &dnscore::Resolver,
    admin: &Admin,
    log: &LogHandle,
) {
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload(flags, config, resolver, log),
        }
    }
    admin.ready.store(false, Ordering::Release);
    tracing::info!(lameduck = ?config.lameduck, "shutting down: not ready, still answering");
    tokio::time::sleep(config.lameduck).await;
}

/// Re-reads the configuration and applies what can change while serving.
fn reload(flags: &Flags, running: &Config, resolver: &dnscore::Resolver, log: &LogHandle) {
    let next = match load(flags) {
        Ok(next) => next,
        Err(err) => {
            tracing::error!(%err, "reload failed; configuration unchanged");
            return;
        }
    };
    // With --discover the live list is discovery's (restart_only_changes names it below).
    if running.discover.is_none()
        && let Err(err) = resolver.set_upstreams(&next.upstreams)
    {
        tracing::error!(%err, "reload: upstreams unchanged");
    }
    resolver.set_cache_capacity(next.cache_capacity());
    match EnvFilter::try_new(&next.log) {
        Ok(filter) => {
            let _ = log.reload(filter);
        }
        Err(err) => tracing::error!(%err, "reload: log filter unchanged"),
    }
    let ignored = running.restart_only_changes(&next);
    if !ignored.is_empty() {
        tracing::warn!(?ignored, "reload: these settings change only on restart");
    }
    let upstreams = resolver.upstream_addrs();
    tracing::info!(
        ?upstreams,
        cache_capacity = next.cache_capacity(),
        "reloaded"
    );
}

/// Binds one UDP socket per worker (SO_REUSEPORT: the kernel spreads clients over them) and
/// one TCP listener (SO_REUSEADDR, so a restart does not wait out TIME_WAIT).
fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<(Vec<UdpSocket>, TcpListener)> {
    let mut udp = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        udp.push(UdpSocket::from_std(socket.into())?);
    }
    let tcp = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    Ok((udp, TcpListener::from_std(tcp.into())?))
}
