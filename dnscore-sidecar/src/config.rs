//! The sidecar's configuration: one set of names, given as flags (`--cache-capacity`),
//! environment variables (`DNSCORE_CACHE_CAPACITY`) or keys of an optional TOML file
//! (`cache-capacity = 10000`). A flag wins over the environment, which wins over the file,
//! which wins over the default. The resolver's own settings (cache, TTLs, timeouts,
//! selection...) are not declared here: each setting of `dnscore::settings` becomes a flag,
//! a variable and a key of the same name. Durations are written `500ms`, `30s`, `2m`, `1h`
//! or as bare seconds. SIGHUP re-reads the file (and resolv.conf) and applies what
//! can change while serving: upstreams (unless --discover follows them), cache capacity,
//! log level; it names any other changed setting in a warning, to be applied at the next
//! restart.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Parser};
use dnscore::ResolverBuilder;
use dnscore::settings::{Kind, parse_duration, settings};
use ipnet::IpNet;
use serde::Deserialize;

/// Default `--listen`: the pod's loopback, port 53.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);
/// The port of `/metrics`, `/health` and `/ready` (CoreDNS's `prometheus` plugin's).
pub const METRICS_PORT: u16 = 9153;
/// Default `--metrics-listen`: loopback (`inject` binds the pod IP, for the kubelet).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), METRICS_PORT);
/// Default `--lameduck`: answers go on this long after SIGTERM while `/ready` says 503
/// (CoreDNS's `health` plugin's `lameduck`, as Kubernetes' CoreDNS Corefile sets it).
pub const DEFAULT_LAMEDUCK: Duration = Duration::from_secs(5);
/// Longest `--lameduck` accepted.
pub const MAX_LAMEDUCK: Duration = Duration::from_secs(3600);
/// Default `--startup-wait`: the longest `/ready` waits for an upstream's first answer.
pub const DEFAULT_STARTUP_WAIT: Duration = Duration::from_secs(10);
/// Default `--discover-interval`.
pub const DEFAULT_DISCOVER_INTERVAL: Duration = Duration::from_secs(5);

/// A DNS cache for one pod: answers on a loopback address, forwards misses UDP-first to the
/// upstreams, retries on another upstream when one fails. Every option is also an environment
/// variable (DNSCORE_ and the name in capitals, `-` as `_`) and a key of the --config file.
#[derive(Debug, Default, Parser)]
#[command(name = "dnscore-sidecar", version)]
pub struct Flags {
    /// Optional TOML file with the same names as these flags (e.g. `upstream = ["10.100.0.10:53"]`).
    #[arg(long, env = "DNSCORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration and exit: 0 if it is valid, 2 if not.
    #[arg(long)]
    pub check_config: bool,
    /// The settings given as flags or environment variables.
    #[command(flatten)]
    pub settings: Settings,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Reads Kubernetes YAML (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod, List;
    /// multi-document) and writes it back with the sidecar added as a native sidecar and the
    /// pod's DNS pointed at it: `dnscore-sidecar inject --upstream 10.100.0.10:53 < app.yaml |
    /// kubectl apply -f -`. Idempotent; other documents are copied unchanged.
    Inject(InjectFlags),
    /// Serves a mutating admission webhook (HTTPS) that injects the sidecar into new pods
    /// exactly as `inject` does: `POST /mutate` takes an AdmissionReview
    /// (admission.k8s.io/v1); `/health`, `/ready` and `/metrics` on the same port.
    Webhook(WebhookFlags),
    /// Writes a CA and a serving certificate for the webhook's Service, for clusters without
    /// cert-manager: ca.crt and ca.key (kept for renewals, which reuse the CA), tls.crt,
    /// tls.key and ca-bundle-patch.yaml (the caBundle for the MutatingWebhookConfiguration,
    /// as a kustomize patch).
    Cert(CertFlags),
    /// Reads a cluster's DNS setup (CoreDNS, NodeLocal DNSCache, kube-proxy, Karpenter, the
    /// VPC CNI, workloads) and says what will break: from files (`kubectl get ... -o yaml`)
    /// or, without -f, from the cluster of the kubeconfig (read-only). Exit 0: nothing is a
    /// warning or worse; 1: something is; 2: the input cannot be read.
    Doctor(DoctorFlags),
}

/// Flags of `dnscore-sidecar doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorFlags {
    /// A file of objects (one, a List, or many documents); `-` for standard input;
    /// repeatable. Without any, the cluster is read through the kubeconfig.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// The kubeconfig of the live mode [default: $KUBECONFIG, ~/.kube/config, or the pod's
    /// service account in a cluster].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DoctorFormat::Table)]
    pub format: DoctorFormat,
    /// A check not to run, by name (repeatable; see --list-checks).
    #[arg(long)]
    pub skip: Vec<String>,
    /// Print every check's name and what it looks at, and exit.
    #[arg(long)]
    pub list_checks: bool,
}

/// How `doctor` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DoctorFormat {
    /// A readable report.
    Table,
    /// A JSON array of findings, for pipelines.
    Json,
}

/// Flags of `dnscore-sidecar inject` (no environment variables: those are the server's).
#[derive(Debug, clap::Args)]
pub struct InjectFlags {
    /// The manifest to read; `-` or nothing for standard input.
    pub file: Option<PathBuf>,
    /// Namespace of objects that name none [default: default].
    #[arg(long)]
    pub namespace: Option<String>,
    /// How to inject.
    #[command(flatten)]
    pub injection: InjectionFlags,
}

impl InjectFlags {
    /// The injector's options: these flags over its defaults.
    pub fn options(&self) -> crate::inject::InjectOptions {
        let mut o = self.injection.options();
        if let Some(ns) = &self.namespace {
            o.namespace = ns.clone();
        }
        o
    }
}

/// Flags of `dnscore-sidecar webhook`.
#[derive(Debug, clap::Args)]
pub struct WebhookFlags {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The serving certificate chain (PEM), re-read when it changes.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// The serving certificate's private key (PEM), re-read when it changes.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// After SIGTERM, how long to go on answering while /ready fails, so that
    /// kube-apiserver stops sending reviews before the port closes.
    #[arg(long, help = with_default("After SIGTERM, how long to go on answering while /ready fails", duration(crate::webhook::DEFAULT_SHUTDOWN_DELAY)))]
    pub shutdown_delay: Option<DurationArg>,
    /// How to inject (per-pod annotations override these).
    #[command(flatten)]
    pub injection: InjectionFlags,
}

/// Flags of `dnscore-sidecar cert`.
#[derive(Debug, clap::Args)]
pub struct CertFlags {
    /// The webhook's Service.
    #[arg(long, default_value = "dnscore-webhook")]
    pub service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "dnscore-system")]
    pub namespace: String,
    /// The cluster domain, for the Service's full name.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// The directory to write into (created if missing). A CA already there (ca.crt and
    /// ca.key, from an earlier run) signs the new certificate, so the caBundle stays.
    #[arg(long)]
    pub out: PathBuf,
    /// Make a new CA even if the directory holds one (the caBundle changes).
    #[arg(long)]
    pub new_ca: bool,
}

/// How `inject` and `webhook` build the sidecar.
#[derive(Debug, clap::Args)]
pub struct InjectionFlags {
    /// The cluster DNS the sidecar forwards to, IP:PORT (repeatable) [default: 10.100.0.10:53].
    #[arg(long = "upstream", value_delimiter = ',')]
    pub upstreams: Vec<SocketAddr>,
    /// A headless Service of the CoreDNS pods for the sidecar to follow.
    #[arg(long)]
    pub discover: Option<String>,
    /// The sidecar's image [default: ghcr.io/dnscore/dnscore-sidecar:0.1.0].
    #[arg(long)]
    pub image: Option<String>,
    /// The cluster domain [default: cluster.local].
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// Force this ndots option [default: keep the pod's, else 5].
    #[arg(long)]
    pub ndots: Option<u8>,
    /// How long the sidecar keeps answering after SIGTERM, up to 1h.
    #[arg(long, help = with_default("How long the sidecar keeps answering after SIGTERM, up to 1h", duration(DEFAULT_LAMEDUCK)))]
    pub lameduck: Option<DurationArg>,
    /// Address of the sidecar's metrics and probes; must be reachable by the kubelet.
    #[arg(long, help = with_default("Address of the sidecar's metrics and probes; must be reachable by the kubelet", format!("0.0.0.0:{METRICS_PORT}")))]
    pub metrics_listen: Option<SocketAddr>,
    /// The sidecar's cache capacity [default: the sidecar's].
    #[arg(long)]
    pub cache_capacity: Option<usize>,
    /// The sidecar's TTL floor for the cluster's names, whole seconds, 0 for none [default: the
    /// sidecar's, 30].
    #[arg(long, value_parser = whole_seconds)]
    pub cluster_min_ttl: Option<u32>,
    /// A nameserver after 127.0.0.1 in the pod's resolv.conf (the cluster DNS Service IP),
    /// for lookups while the sidecar restarts; off by default: musl (Alpine) would ask it for
    /// every name as well.
    #[arg(long)]
    pub fallback_nameserver: Option<IpAddr>,
    /// Do not set the pod sysctl net.ipv4.ip_unprivileged_port_start=53 (then the image must
    /// bind port 53 some other way).
    #[arg(long)]
    pub no_unprivileged_port_sysctl: bool,
}

impl InjectionFlags {
    /// The injector's options: these flags over its defaults.
    pub fn options(&self) -> crate::inject::InjectOptions {
        let mut o = crate::inject::InjectOptions::default();
        if !self.upstreams.is_empty() {
            o.upstreams = self.upstreams.clone();
        }
        if self.discover.is_some() {
            o.discover = self.discover.clone();
        }
        if let Some(image) = &self.image {
            o.image = image.clone();
        }
        if let Some(domain) = &self.cluster_domain {
            o.cluster_domain = domain.clone();
        }
        if self.ndots.is_some() {
            o.ndots = self.ndots;
        }
        if let Some(DurationArg(lameduck)) = self.lameduck {
            o.lameduck = lameduck.min(MAX_LAMEDUCK);
        }
        if let Some(addr) = self.metrics_listen {
            o.metrics_listen = addr;
        }
        if self.cache_capacity.is_some() {
            o.cache_capacity = self.cache_capacity;
        }
        if self.cluster_min_ttl.is_some() {
            o.cluster_min_ttl = self.cluster_min_ttl;
        }
        o.fallback_nameserver = self.fallback_nameserver;
        o.unprivileged_port_sysctl = !self.no_unprivileged_port_sysctl;
        o
    }
}

/// Whole seconds for a flag (`30`, `30s`, `1m`).
fn whole_seconds(text: &str) -> Result<u32, String> {
    crate::inject::parse_seconds(text)
        .ok_or_else(|| format!("{text:?} is not whole seconds (30, 30s, 1m)"))
}

/// The settings, each optional so that the sources can be merged.
#[derive(Clone, Debug, Default, PartialEq, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Address to serve DNS on, UDP and TCP.
    #[arg(long, env = "DNSCORE_LISTEN", help = with_default("Address to serve DNS on, UDP and TCP", DEFAULT_LISTEN))]
    pub listen: Option<SocketAddr>,
    /// Upstream server IP:PORT (repeatable, or comma-separated) [default: the nameservers of --resolv-conf].
    #[arg(long = "upstream", env = "DNSCORE_UPSTREAM", value_delimiter = ',')]
    #[serde(default)]
    pub upstream: Vec<SocketAddr>,
    /// Where to find nameservers when no --upstream is given [default: /etc/resolv.conf].
    #[arg(long, env = "DNSCORE_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// Follow the upstreams this name resolves to (a headless Service selecting the CoreDNS
    /// pods), asked through the --upstream servers, which remain the fallback.
    #[arg(long, env = "DNSCORE_DISCOVER")]
    pub discover: Option<String>,
    /// Port of the discovered upstreams [default: 53].
    #[arg(long, env = "DNSCORE_DISCOVER_PORT")]
    pub discover_port: Option<u16>,
    /// Time between two resolutions of --discover, at least 1s.
    #[arg(long, env = "DNSCORE_DISCOVER_INTERVAL", help = with_default("Time between two resolutions of --discover, at least 1s", duration(DEFAULT_DISCOVER_INTERVAL)))]
    pub discover_interval: Option<DurationArg>,
    /// Address of /metrics, /health and /ready.
    #[arg(long, env = "DNSCORE_METRICS_LISTEN", help = with_default("Address of /metrics, /health and /ready", DEFAULT_METRICS_LISTEN))]
    pub metrics_listen: Option<SocketAddr>,
    /// How long to keep answering after SIGTERM while /ready says 503, up to 1h.
    #[arg(long, env = "DNSCORE_LAMEDUCK", help = with_default("How long to keep answering after SIGTERM while /ready says 503, up to 1h", duration(DEFAULT_LAMEDUCK)))]
    pub lameduck: Option<DurationArg>,
    /// /ready says 503 until an upstream has answered and the --warm names are cached, or
    /// this long at most, so that a pod created while CoreDNS is down still starts.
    #[arg(long, env = "DNSCORE_STARTUP_WAIT", help = with_default("/ready says 503 until an upstream has answered and the --warm names are cached, or this long at most, so that a pod created while CoreDNS is down still starts", duration(DEFAULT_STARTUP_WAIT)))]
    pub startup_wait: Option<DurationArg>,
    /// Names (A and AAAA) resolved before /ready turns 200 and kept fresh while serving,
    /// for the few an application cannot start without (repeatable, or comma-separated).
    #[arg(long = "warm", env = "DNSCORE_WARM", value_delimiter = ',')]
    #[serde(default)]
    pub warm: Vec<String>,
    /// Receive loops, one UDP socket each (SO_REUSEPORT) [default: the CPUs the container may use].
    #[arg(long, env = "DNSCORE_WORKERS")]
    pub workers: Option<usize>,
    /// Networks allowed to ask besides loopback (repeatable, CIDR) [default: none].
    #[arg(long = "allow", env = "DNSCORE_ALLOW", value_delimiter = ',')]
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Queries per second per client IP over UDP, for a sidecar bound beyond loopback
    /// (approximate: per receive thread) [default: no limit].
    #[arg(long, env = "DNSCORE_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "DNSCORE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Write this share of the queries to the log, one line (or JSON object) each: client,
    /// name, type, response code, hit or miss, duration; 1 (or the flag alone) for every
    /// query [default: none].
    #[arg(long, env = "DNSCORE_LOG_QUERIES", num_args = 0..=1, default_missing_value = "1")]
    pub log_queries: Option<f64>,
    /// Log filter, as RUST_LOG (e.g. "info", "dnscore=debug") [default: info].
    #[arg(long, env = "DNSCORE_LOG")]
    pub log: Option<String>,
    /// The resolver's settings (`dnscore::settings`), by name.
    #[command(flatten)]
    #[serde(skip)]
    pub resolver: ResolverSettings,
}

/// A flag's help with its default, written from the constant that holds it.
fn with_default(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// A duration as flags take it.
fn duration(d: Duration) -> String {
    dnscore::settings::format_duration(d)
}

/// A duration as flags, variables and the file write it: `500ms`, `30s`, `2m`, `1h`, or
/// bare seconds (`5`, `1.5`; in TOML also a number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl std::str::FromStr for DurationArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is not a duration (500ms, 30s, 2m, 1h, or seconds)"))
    }
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(f64),
            Text(String),
        }
        let text = match Written::deserialize(d)? {
            Written::Seconds(seconds) => seconds.to_string(),
            Written::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The resolver's settings that were given, by name, as text (checked when given, applied
/// in [`Config::builder`]). Every setting of [`dnscore::settings`] is a flag
/// (`--max-ttl 30s`), a variable (`DNSCORE_MAX_TTL`) and a key of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverSettings(pub BTreeMap<String, String>);

impl ResolverSettings {
    /// `self` where set, else `lower`.
    fn or(self, lower: Self) -> Self {
        let mut merged = lower.0;
        merged.extend(self.0);
        Self(merged)
    }

    /// Checks `value` for the setting `name`, as a flag value.
    fn check(name: &'static str, value: &str) -> Result<String, String> {
        ResolverBuilder::default()
            .set(name, value)
            .map(|_| value.to_string())
            .map_err(|e| e.to_string())
    }
}

impl clap::FromArgMatches for ResolverSettings {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = settings().iter().filter_map(|s| {
            let value = matches.get_one::<String>(s.name)?;
            Some((s.name.to_string(), value.clone()))
        });
        Ok(Self(given.collect()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?.or(std::mem::take(self));
        Ok(())
    }
}

impl clap::Args for ResolverSettings {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        settings().iter().fold(cmd, |cmd, s| {
            let name = s.name;
            let mut arg = Arg::new(name)
                .long(name)
                .env(s.env_var())
                .value_name(s.kind.placeholder())
                .help(format!("{} [default: {}]", s.help, s.default_value()))
                .value_parser(move |v: &str| Self::check(name, v));
            if s.kind == Kind::Flag {
                arg = arg.num_args(0..=1).default_missing_value("true");
            }
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// A `--warm` name is not a domain name.
    #[error("invalid configuration: --warm {0:?} is not a domain name")]
    Warm(String),
    /// A setting of the resolver is unknown, malformed or out of range.
    #[error("invalid configuration: {0}")]
    Resolver(String),
    /// The upstreams from resolv.conf cannot be used.
    #[error(transparent)]
    ResolvConf(#[from] crate::resolv_conf::ResolvConfError),
}

/// The configuration with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// See [`Settings::listen`].
    pub listen: SocketAddr,
    /// The upstreams, from the settings or resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// Discovery by name: (name, port, interval).
    pub discover: Option<(String, u16, Duration)>,
    /// The resolver's settings that were given (see [`Config::builder`]).
    pub resolver: ResolverSettings,
    /// See [`Settings::metrics_listen`].
    pub metrics_listen: SocketAddr,
    /// See [`Settings::lameduck`].
    pub lameduck: Duration,
    /// See [`Settings::startup_wait`].
    pub startup_wait: Duration,
    /// See [`Settings::warm`].
    pub warm: Vec<String>,
    /// See [`Settings::workers`].
    pub workers: usize,
    /// See [`Settings::allow`].
    pub allow: Vec<IpNet>,
    /// See [`Settings::rate_limit`].
    pub rate_limit: Option<u32>,
    /// See [`Settings::log_format`].
    pub log_format: LogFormat,
    /// See [`Settings::log`].
    pub log: String,
    /// See [`Settings::log_queries`]: the share, when above 0.
    pub log_queries: Option<f64>,
}

impl Config {
    /// The resolver this configuration asks for, not yet built.
    pub fn builder(&self) -> Result<ResolverBuilder, ConfigError> {
        let builder = dnscore::Resolver::builder().upstreams(self.upstreams.iter().copied());
        self.resolver
            .0
            .iter()
            .try_fold(builder, |b, (name, value)| b.set(name, value))
            .map_err(|e| ConfigError::Resolver(e.to_string()))
    }

    /// Every setting by its name, with its value written as it would be given: the
    /// sidecar's, then the resolver's (defaults included). `--check-config` prints these.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        fn list<T: std::fmt::Display>(items: &[T]) -> String {
            items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        let (discover, port, interval) = match &self.discover {
            Some((name, port, interval)) => (name.clone(), *port, *interval),
            None => (String::new(), 53, DEFAULT_DISCOVER_INTERVAL),
        };
        let duration = dnscore::settings::format_duration;
        let mut entries = vec![
            ("listen", self.listen.to_string()),
            ("upstream", list(&self.upstreams)),
            ("discover", discover),
            ("discover-port", port.to_string()),
            ("discover-interval", duration(interval)),
            ("metrics-listen", self.metrics_listen.to_string()),
            ("lameduck", duration(self.lameduck)),
            ("startup-wait", duration(self.startup_wait)),
            ("warm", list(&self.warm)),
            ("workers", self.workers.to_string()),
            ("allow", list(&self.allow)),
            (
                "rate-limit",
                self.rate_limit.map_or_else(String::new, |n| n.to_string()),
            ),
            (
                "log-format",
                format!("{:?}", self.log_format).to_lowercase(),
            ),
            ("log", self.log.clone()),
            (
                "log-queries",
                self.log_queries.map_or_else(String::new, |s| s.to_string()),
            ),
        ];
        let builder = self
            .builder()
            .unwrap_or_else(|_| dnscore::Resolver::builder());
        entries.extend(settings().iter().map(|s| (s.name, s.value(&builder))));
        entries
    }

    /// The settings that differ in `next` but change only on restart (a reload applies
    /// upstreams, cache capacity and the log filter), by their names. With `discover`,
    /// the upstream list is discovery's: the configured upstreams (its fallback) wait too.
    pub fn restart_only_changes(&self, next: &Self) -> Vec<&'static str> {
        let reloadable = |name: &str| match name {
            "upstream" => self.discover.is_none(),
            "cache-capacity" | "log" => true,
            _ => false,
        };
        self.entries()
            .into_iter()
            .zip(next.entries())
            .filter(|((name, old), (_, new))| old != new && !reloadable(name))
            .map(|((name, _), _)| name)
            .collect()
    }

    /// The cache capacity this configuration asks for.
    pub fn cache_capacity(&self) -> usize {
        self.resolver
            .0
            .get("cache-capacity")
            .and_then(|v| dnscore::settings::parse_count(v))
            .unwrap_or(dnscore::defaults::CACHE_CAPACITY)
    }
}

/// Where a setting's value came from, for `--check-config`: `flag`, `environment`, `file`
/// or `default`. `file` holds the keys of the configuration file.
pub fn source_of(matches: &ArgMatches, file: &BTreeMap<String, ()>, name: &str) -> &'static str {
    // Clap names the sidecar's own arguments by field (snake_case), the resolver's by name.
    let snake = name.replace('-', "_");
    let given = matches
        .ids()
        .find(|id| id.as_str() == snake || id.as_str() == name)
        .and_then(|id| matches.value_source(id.as_str()));
    match given {
        Some(ValueSource::CommandLine) => "flag",
        Some(ValueSource::EnvVariable) => "environment",
        _ if file.contains_key(name) => "file",
        _ => "default",
    }
}

impl Settings {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Reads TOML settings: the sidecar's own keys, and the resolver's by name (a string,
    /// or a number or boolean where that is the value).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut resolver = BTreeMap::new();
        for s in settings() {
            let Some(value) = table.remove(s.name) else {
                continue;
            };
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{}: expected a string or a number, found {}",
                        s.name,
                        other.type_str()
                    ));
                }
            };
            resolver.insert(s.name.to_string(), ResolverSettings::check(s.name, &text)?);
        }
        let mut own: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        own.resolver = ResolverSettings(resolver);
        Ok(own)
    }

    /// The keys a TOML file sets (for `--check-config`'s sources); empty if it cannot be read.
    pub fn file_keys(path: &Path) -> BTreeMap<String, ()> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .map(|table| table.keys().map(|k| (k.clone(), ())).collect())
            .unwrap_or_default()
    }

    /// `self` where set, else `lower`.
    pub fn or(self, lower: Self) -> Self {
        fn vec<T>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
            if a.is_empty() { b } else { a }
        }
        Self {
            listen: self.listen.or(lower.listen),
            upstream: vec(self.upstream, lower.upstream),
            resolv_conf: self.resolv_conf.or(lower.resolv_conf),
            discover: self.discover.or(lower.discover),
            discover_port: self.discover_port.or(lower.discover_port),
            discover_interval: self.discover_interval.or(lower.discover_interval),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            lameduck: self.lameduck.or(lower.lameduck),
            startup_wait: self.startup_wait.or(lower.startup_wait),
            warm: vec(self.warm, lower.warm),
            workers: self.workers.or(lower.workers),
            allow: vec(self.allow, lower.allow),
            rate_limit: self.rate_limit.or(lower.rate_limit),
            log_format: self.log_format.or(lower.log_format),
            log: self.log.or(lower.log),
            log_queries: self.log_queries.or(lower.log_queries),
            resolver: self.resolver.or(lower.resolver),
        }
    }

    /// Fills in the defaults and checks the values.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        let upstreams = if self.upstream.is_empty() {
            let path = self
                .resolv_conf
                .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
            crate::resolv_conf::upstreams(&path, listen)?
        } else {
            self.upstream
        };
        if upstreams.iter().any(|&up| forwards_to_itself(listen, up)) {
            return Err(ConfigError::Invalid(
                "an --upstream is the --listen address: the sidecar would forward to itself",
            ));
        }
        if let Some(bad) = self.warm.iter().find(|n| !is_name(n)) {
            return Err(ConfigError::Warm(bad.clone()));
        }
        let lameduck = self.lameduck.map_or(DEFAULT_LAMEDUCK, |d| d.0);
        if lameduck > MAX_LAMEDUCK {
            return Err(ConfigError::Invalid("lameduck must not exceed 1h"));
        }
        if self
            .log_queries
            .is_some_and(|share| !(0.0..=1.0).contains(&share))
        {
            return Err(ConfigError::Invalid("log-queries must be between 0 and 1"));
        }
        let workers = self.workers.unwrap_or_else(available_cpus);
        if workers == 0 || workers > 256 {
            return Err(ConfigError::Invalid("workers must be between 1 and 256"));
        }
        let config = Config {
            listen,
            upstreams,
            discover: self.discover.map(|name| {
                let interval = self
                    .discover_interval
                    .map_or(DEFAULT_DISCOVER_INTERVAL, |d| d.0)
                    .max(Duration::from_secs(1));
                (name, self.discover_port.unwrap_or(53), interval)
            }),
            resolver: self.resolver,
            metrics_listen: self.metrics_listen.unwrap_or(DEFAULT_METRICS_LISTEN),
            lameduck,
            startup_wait: self.startup_wait.map_or(DEFAULT_STARTUP_WAIT, |d| d.0),
            warm: self.warm,
            workers,
            allow: self.allow,
            rate_limit: self.rate_limit.filter(|&n| n > 0),
            log_format: self.log_format.unwrap_or_default(),
            log: self.log.unwrap_or_else(|| "info".to_string()),
            log_queries: self.log_queries.filter(|&share| share > 0.0),
        };
        config
            .builder()?
            .check()
            .map_err(|e| ConfigError::Resolver(e.to_string()))?;
        Ok(config)
    }
}

/// Whether `upstream` is the address the sidecar listens on (the same, or the port of a
/// wildcard listen reached through loopback).
fn forwards_to_itself(listen: SocketAddr, upstream: SocketAddr) -> bool {
    listen == upstream
        || (listen.port() == upstream.port()
            && listen.ip().is_unspecified()
            && upstream.ip().is_loopback())
}

/// Whether `name` is a domain name as `--warm` takes it: labels of 1 to 63 letters, digits,
/// `-` or `_`, 253 characters at most, an optional final dot.
fn is_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The CPUs this process may use: the cgroup v2 CPU quota (`cpu.max`) when one is set,
/// else the CPUs it is allowed to run on. A container limited to 500m gets 1.
pub fn available_cpus() -> usize {
    let affinity = std::thread::available_parallelism().map_or(1, usize::from);
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .and_then(|text| cgroup_cpus(&text));
    quota.map_or(affinity, |q| q.min(affinity)).max(1)
}

/// CPUs from a cgroup v2 `cpu.max` line ("max 100000" or "QUOTA PERIOD"), rounded up.
pub fn cgroup_cpus(cpu_max: &str) -> Option<usize> {
    let mut words = cpu_max.split_whitespace();
    let quota: u64 = words.next()?.parse().ok()?;
    let period: u64 = words.next()?.parse().ok()?;
    (period > 0).then(|| quota.div_ceil(period).max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(pairs: &[(&str, &str)]) -> ResolverSettings {
        ResolverSettings(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file = Settings::from_toml(
            "upstream = [\"10.0.0.10:53\"]\ncache-capacity = 50\nmax-ttl = \"5m\"\n\
             lameduck = 30\nlog-format = \"json\"\nprefetch = false\n",
        )
        .unwrap();
        let flags = Settings {
            resolver: resolver(&[("cache-capacity", "70")]),
            lameduck: Some("1.5".parse().unwrap()),
            ..Settings::default()
        };
        let c = flags.or(file).resolve().unwrap();
        assert_eq!(c.cache_capacity(), 70);
        assert_eq!(c.upstreams, vec!["10.0.0.10:53".parse().unwrap()]);
        assert_eq!(c.lameduck, Duration::from_millis(1500));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN);
        let entries: BTreeMap<_, _> = c.entries().into_iter().collect();
        assert_eq!(entries["max-ttl"], "300");
        assert_eq!(entries["prefetch"], "false");
        assert_eq!(entries["negative-max-ttl"], "3600", "a default");
        assert_eq!(entries["lameduck"], "1.5s");
        assert_eq!(entries.len(), 15 + settings().len(), "every setting listed");
    }

    #[test]
    fn durations_are_written_as_in_manifests() {
        let s = Settings::from_toml("lameduck = \"30s\"\ndiscover-interval = \"2m\"\n").unwrap();
        assert_eq!(s.lameduck, Some(DurationArg(Duration::from_secs(30))));
        assert_eq!(
            s.discover_interval,
            Some(DurationArg(Duration::from_secs(120)))
        );
        assert_eq!(
            Settings::from_toml("lameduck = 2.5\n").unwrap().lameduck,
            Some(DurationArg(Duration::from_millis(2500)))
        );
        assert!("30x".parse::<DurationArg>().is_err());
        let too_long = Settings {
            upstream: vec!["10.0.0.10:53".parse().unwrap()],
            lameduck: Some("2h".parse().unwrap()),
            ..Settings::default()
        };
        assert!(matches!(too_long.resolve(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn a_reload_names_what_waits_for_a_restart() {
        let running = Settings {
            upstream: vec!["10.0.0.10:53".parse().unwrap()],
            ..Settings::default()
        }
        .resolve()
        .unwrap();
        let mut next = running.clone();
        next.upstreams = vec!["10.0.0.11:53".parse().unwrap()];
        next.resolver = resolver(&[("cache-capacity", "20000")]);
        next.log = "debug".into();
        assert!(running.restart_only_changes(&next).is_empty());
        next.allow = vec!["10.0.0.0/8".parse().unwrap()];
        next.rate_limit = Some(5);
        next.workers += 1;
        next.resolver = resolver(&[("cache-capacity", "20000"), ("max-ttl", "30")]);
        assert_eq!(
            running.restart_only_changes(&next),
            ["workers", "allow", "rate-limit", "max-ttl"]
        );
        // Discovery owns the live list; the configured one is only its fallback.
        let discovering = Config {
            discover: Some(("coredns.test".into(), 53, Duration::from_secs(5))),
            ..running.clone()
        };
        next.discover.clone_from(&discovering.discover);
        assert_eq!(discovering.restart_only_changes(&next)[0], "upstream");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Settings::from_toml("cache_size = 5\n").is_err());
        let err = Settings::from_toml("max-ttl = \"1.5s\"\n").unwrap_err();
        assert!(err.contains("max-ttl"), "{err}");
        assert!(Settings::from_toml("max-ttl = [30]\n").is_err());
        let bad = Settings {
            upstream: vec!["10.0.0.10:53".parse().unwrap()],
            workers: Some(0),
            ..Settings::default()
        };
        assert!(matches!(bad.resolve(), Err(ConfigError::Invalid(_))));
        // Each value is well-formed, the pair is not: the core's range check says so.
        let crossed = Settings {
            upstream: vec!["10.0.0.10:53".parse().unwrap()],
            resolver: resolver(&[("min-ttl", "60"), ("max-ttl", "30")]),
            ..Settings::default()
        };
        assert!(matches!(crossed.resolve(), Err(ConfigError::Resolver(_))));
    }

    #[test]
    fn forwarding_to_itself_and_bad_warm_names_are_refused() {
        let with = |listen: &str, upstream: &str, warm: &[&str]| Settings {
            listen: Some(listen.parse().unwrap()),
            upstream: vec![upstream.parse().unwrap()],
            warm: warm.iter().map(|w| w.to_string()).collect(),
            ..Settings::default()
        };
        assert!(matches!(
            with("127.0.0.1:53", "127.0.0.1:53", &[]).resolve(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            with("0.0.0.0:5353", "127.0.0.1:5353", &[]).resolve(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(with("127.0.0.1:53", "127.0.0.2:53", &[]).resolve().is_ok());
        let ok = with(
            "127.0.0.1:53",
            "10.0.0.10:53",
            &["api.example.com", "db.svc."],
        );
        assert_eq!(ok.resolve().unwrap().warm.len(), 2);
        for bad in ["", "a..b", "white space.com", "a/b", &"x".repeat(64)] {
            assert!(
                matches!(
                    with("127.0.0.1:53", "10.0.0.10:53", &[bad]).resolve(),
                    Err(ConfigError::Warm(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cgroup_quota_rounds_up() {
        assert_eq!(cgroup_cpus("max 100000\n"), None);
        assert_eq!(cgroup_cpus("50000 100000\n"), Some(1));
        assert_eq!(cgroup_cpus("150000 100000\n"), Some(2));
        assert_eq!(cgroup_cpus("400000 100000"), Some(4));
        // Never more than the CPUs this process may run on, whatever the cgroup says.
        let affinity = std::thread::available_parallelism().map_or(1, usize::from);
        assert!((1..=affinity).contains(&available_cpus()));
    }
}
