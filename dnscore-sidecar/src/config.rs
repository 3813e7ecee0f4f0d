//! The sidecar's configuration: one set of names, given as flags (`--cache-capacity`),
//! environment variables (`DNSCORE_CACHE_CAPACITY`) or keys of an optional TOML file
//! (`cache-capacity = 10000`). A flag wins over the environment, which wins over the file,
//! which wins over the default. SIGHUP re-reads the file (and resolv.conf) and applies what
//! can change while serving: upstreams (unless --discover follows them), cache capacity,
//! log level; it names any other changed setting in a warning, to be applied at the next
//! restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;

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
}

/// Flags of `dnscore-sidecar inject` (no environment variables: those are the server's).
#[derive(Debug, clap::Args)]
pub struct InjectFlags {
    /// The manifest to read; `-` or nothing for standard input.
    pub file: Option<PathBuf>,
    /// The cluster DNS the sidecar forwards to, IP:PORT (repeatable) [default: 10.100.0.10:53].
    #[arg(long = "upstream", value_delimiter = ',')]
    pub upstreams: Vec<SocketAddr>,
    /// A headless Service of the CoreDNS pods for the sidecar to follow.
    #[arg(long)]
    pub discover: Option<String>,
    /// The sidecar's image [default: ghcr.io/dnscore/dnscore-sidecar:0.1.0].
    #[arg(long)]
    pub image: Option<String>,
    /// Namespace of objects that name none [default: default].
    #[arg(long)]
    pub namespace: Option<String>,
    /// The cluster domain [default: cluster.local].
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// Force this ndots option [default: keep the pod's, else 5].
    #[arg(long)]
    pub ndots: Option<u8>,
    /// Seconds the sidecar keeps answering after SIGTERM, 0 to 3600 [default: 5].
    #[arg(long, value_parser = lameduck_seconds)]
    pub lameduck: Option<f64>,
    /// Address of the sidecar's metrics and probes; must be reachable by the kubelet
    /// [default: 0.0.0.0:9153].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// The sidecar's cache capacity [default: the sidecar's].
    #[arg(long)]
    pub cache_capacity: Option<usize>,
    /// Do not set the pod sysctl net.ipv4.ip_unprivileged_port_start=53 (then the image must
    /// bind port 53 some other way).
    #[arg(long)]
    pub no_unprivileged_port_sysctl: bool,
}

/// `--lameduck` of `inject`: the range the sidecar itself accepts (NaN is refused).
fn lameduck_seconds(arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(seconds) if (0.0..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err("seconds between 0 and 3600".into()),
    }
}

impl InjectFlags {
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
        if let Some(ns) = &self.namespace {
            o.namespace = ns.clone();
        }
        if let Some(domain) = &self.cluster_domain {
            o.cluster_domain = domain.clone();
        }
        if self.ndots.is_some() {
            o.ndots = self.ndots;
        }
        if let Some(seconds) = self.lameduck {
            o.lameduck = Duration::from_secs_f64(seconds);
        }
        if let Some(addr) = self.metrics_listen {
            o.metrics_listen = addr;
        }
        if self.cache_capacity.is_some() {
            o.cache_capacity = self.cache_capacity;
        }
        o.unprivileged_port_sysctl = !self.no_unprivileged_port_sysctl;
        o
    }
}

/// The settings, each optional so that the sources can be merged.
#[derive(Clone, Debug, Default, PartialEq, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Address to serve DNS on, UDP and TCP [default: 127.0.0.1:53].
    #[arg(long, env = "DNSCORE_LISTEN")]
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
    /// Seconds between two resolutions of --discover [default: 5].
    #[arg(long, env = "DNSCORE_DISCOVER_INTERVAL")]
    pub discover_interval: Option<u64>,
    /// Cached answers at most [default: 10000].
    #[arg(long, env = "DNSCORE_CACHE_CAPACITY")]
    pub cache_capacity: Option<usize>,
    /// Sticky UDP sockets per upstream, each carrying many queries (a conntrack entry each
    /// on the node); 0 for a fresh socket per upstream query [default: 4].
    #[arg(long, env = "DNSCORE_UPSTREAM_SOCKETS")]
    pub upstream_sockets: Option<usize>,
    /// Randomise the letter case of upstream queries (0x20) and require it echoed
    /// [default: false].
    #[arg(long, env = "DNSCORE_CASE_RANDOMIZATION", num_args = 0..=1, default_missing_value = "true")]
    pub case_randomization: Option<bool>,
    /// Address of /metrics, /health and /ready [default: 127.0.0.1:9153].
    #[arg(long, env = "DNSCORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds to keep answering after SIGTERM while /ready says 503 [default: 5].
    #[arg(long, env = "DNSCORE_LAMEDUCK")]
    pub lameduck: Option<f64>,
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
    /// Log filter, as RUST_LOG (e.g. "info", "dnscore=debug") [default: info].
    #[arg(long, env = "DNSCORE_LOG")]
    pub log: Option<String>,
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
    /// See [`Settings::cache_capacity`].
    pub cache_capacity: usize,
    /// See [`Settings::upstream_sockets`].
    pub upstream_sockets: usize,
    /// See [`Settings::case_randomization`].
    pub case_randomization: bool,
    /// See [`Settings::metrics_listen`].
    pub metrics_listen: SocketAddr,
    /// See [`Settings::lameduck`].
    pub lameduck: Duration,
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
}

impl Config {
    /// The settings that differ in `next` but change only on restart (a reload applies
    /// upstreams, cache capacity and the log filter), by their flag names. With `discover`,
    /// the upstream list is discovery's: the configured upstreams (its fallback) wait too.
    pub fn restart_only_changes(&self, next: &Self) -> Vec<&'static str> {
        [
            (
                "upstream",
                self.discover.is_some() && self.upstreams != next.upstreams,
            ),
            ("listen", self.listen != next.listen),
            ("metrics-listen", self.metrics_listen != next.metrics_listen),
            ("workers", self.workers != next.workers),
            (
                "upstream-sockets",
                self.upstream_sockets != next.upstream_sockets,
            ),
            (
                "case-randomization",
                self.case_randomization != next.case_randomization,
            ),
            ("discover", self.discover != next.discover),
            ("lameduck", self.lameduck != next.lameduck),
            ("allow", self.allow != next.allow),
            ("rate-limit", self.rate_limit != next.rate_limit),
            ("log-format", self.log_format != next.log_format),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

impl Settings {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
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
            cache_capacity: self.cache_capacity.or(lower.cache_capacity),
            upstream_sockets: self.upstream_sockets.or(lower.upstream_sockets),
            case_randomization: self.case_randomization.or(lower.case_randomization),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            lameduck: self.lameduck.or(lower.lameduck),
            workers: self.workers.or(lower.workers),
            allow: vec(self.allow, lower.allow),
            rate_limit: self.rate_limit.or(lower.rate_limit),
            log_format: self.log_format.or(lower.log_format),
            log: self.log.or(lower.log),
        }
    }

    /// Fills in the defaults and checks the values.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = self.listen.unwrap_or_else(|| ([127, 0, 0, 1], 53).into());
        let upstreams = if self.upstream.is_empty() {
            let path = self
                .resolv_conf
                .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
            crate::resolv_conf::upstreams(&path, listen)?
        } else {
            self.upstream
        };
        let lameduck = self.lameduck.unwrap_or(5.0);
        if !(0.0..=3600.0).contains(&lameduck) {
            return Err(ConfigError::Invalid(
                "lameduck must be between 0 and 3600 seconds",
            ));
        }
        let workers = self.workers.unwrap_or_else(available_cpus);
        if workers == 0 || workers > 256 {
            return Err(ConfigError::Invalid("workers must be between 1 and 256"));
        }
        let cache_capacity = self
            .cache_capacity
            .unwrap_or(dnscore::DEFAULT_CACHE_CAPACITY);
        if cache_capacity == 0 {
            return Err(ConfigError::Invalid("cache-capacity must be at least 1"));
        }
        let upstream_sockets = self
            .upstream_sockets
            .unwrap_or(dnscore::DEFAULT_UPSTREAM_SOCKETS);
        if upstream_sockets > 64 {
            return Err(ConfigError::Invalid(
                "upstream-sockets must be between 0 and 64",
            ));
        }
        Ok(Config {
            listen,
            upstreams,
            discover: self.discover.map(|name| {
                let interval = Duration::from_secs(self.discover_interval.unwrap_or(5).max(1));
                (name, self.discover_port.unwrap_or(53), interval)
            }),
            cache_capacity,
            upstream_sockets,
            case_randomization: self.case_randomization.unwrap_or(false),
            metrics_listen: self
                .metrics_listen
                .unwrap_or_else(|| ([127, 0, 0, 1], 9153).into()),
            lameduck: Duration::from_secs_f64(lameduck),
            workers,
            allow: self.allow,
            rate_limit: self.rate_limit.filter(|&n| n > 0),
            log_format: self.log_format.unwrap_or_default(),
            log: self.log.unwrap_or_else(|| "info".to_string()),
        })
    }
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

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file: Settings = toml::from_str(
            "upstream = [\"10.0.0.10:53\"]\ncache-capacity = 50\nlameduck = 30\nlog-format = \"json\"\n",
        )
        .unwrap();
        let flags = Settings {
            cache_capacity: Some(70),
            ..Settings::default()
        };
        let c = flags.or(file).resolve().unwrap();
        assert_eq!(c.cache_capacity, 70);
        assert_eq!(c.upstreams, vec!["10.0.0.10:53".parse().unwrap()]);
        assert_eq!(c.lameduck, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.listen, "127.0.0.1:53".parse().unwrap());
        assert_eq!(c.metrics_listen, "127.0.0.1:9153".parse().unwrap());
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
        next.cache_capacity += 1;
        next.log = "debug".into();
        assert!(running.restart_only_changes(&next).is_empty());
        next.allow = vec!["10.0.0.0/8".parse().unwrap()];
        next.rate_limit = Some(5);
        next.workers += 1;
        assert_eq!(
            running.restart_only_changes(&next),
            ["workers", "allow", "rate-limit"]
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
        assert!(toml::from_str::<Settings>("cache_size = 5\n").is_err());
        let bad = Settings {
            upstream: vec!["10.0.0.10:53".parse().unwrap()],
            workers: Some(0),
            ..Settings::default()
        };
        assert!(matches!(bad.resolve(), Err(ConfigError::Invalid(_))));
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
