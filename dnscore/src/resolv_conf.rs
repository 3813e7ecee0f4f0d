//! The system resolver's configuration file, `/etc/resolv.conf`, read as glibc reads it:
//! the one parser that [`ResolverBuilder::from_resolv_conf`] and the sidecar use.
//!
//! Read: `nameserver` (IPv4 or IPv6, port 53; an IPv6 zone such as `%eth0` is dropped),
//! `search` and `domain` (the last of them wins, as in glibc), and `options` `ndots:N`
//! (at most 15), `timeout:N` (seconds, at most 30), `attempts:N` (at most 5) and `rotate`.
//! Comments start with `#` or `;`. Lines that cannot be read and other options are
//! skipped, as glibc skips them; a file without a `nameserver` line means the local server,
//! 127.0.0.1:53, as in glibc. Not read: `sortlist`, the `RES_OPTIONS` and `LOCALDOMAIN`
//! environment variables, and, with no `search` line, the domain of the host name (glibc
//! falls back to it; a pod's resolv.conf always has a `search` line).
//!
//! [`ResolverBuilder::from_resolv_conf`]: crate::ResolverBuilder::from_resolv_conf

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// Where the system's resolver configuration lives.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where the system's hosts file lives.
pub const SYSTEM_HOSTS: &str = "/etc/hosts";

/// glibc's ceiling on `ndots` (`RES_MAXNDOTS`).
pub const MAX_NDOTS: u8 = 15;
/// glibc's ceiling on `timeout`, in seconds (`RES_MAXRETRANS`).
const MAX_TIMEOUT_SECS: u64 = 30;
/// glibc's ceiling on `attempts` (`RES_MAXRETRY`).
const MAX_ATTEMPTS: u32 = 5;
/// Largest resolv.conf read; a pod's is a few hundred bytes.
const MAX_FILE_LEN: u64 = 1 << 20;

/// What a resolv.conf says. Build one with [`ResolvConf::parse`] or [`ResolvConf::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvConf {
    /// The `nameserver` lines in order, on port 53. Empty when the file names none (see
    /// [`ResolvConf::nameservers_or_local`]).
    pub nameservers: Vec<SocketAddr>,
    /// The search list (`search`, or `domain` as a one-entry list), without trailing dots.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1): names with fewer dots go through the search list
    /// before they are tried as they are.
    pub ndots: u8,
    /// `options timeout:N`, when given: how long glibc waits for one nameserver (at least
    /// one second, at most 30).
    pub timeout: Option<Duration>,
    /// `options attempts:N`, when given: how many rounds over the nameservers glibc makes
    /// (at least 1, at most 5).
    pub attempts: Option<u32>,
    /// `options rotate`: spread queries over the nameservers instead of asking the first.
    pub rotate: bool,
}

impl Default for ResolvConf {
    /// What an empty file means.
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: None,
            attempts: None,
            rotate: false,
        }
    }
}

impl ResolvConf {
    /// Reads the file at `path`. Errors: [`Error::ReadFile`] when it cannot be read, or is
    /// larger than 1 MiB.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = read_small_file(path, MAX_FILE_LEN)?;
        Ok(Self::parse(&text))
    }

    /// Parses a resolv.conf text. Never fails: what cannot be read is skipped.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // An IPv6 address may carry a zone (`fe80::1%eth0`); it is dropped.
                    let addr = words.next().and_then(|w| w.split('%').next());
                    if let Some(ip) = addr.and_then(|a| a.parse::<IpAddr>().ok()) {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") => {
                    conf.search = words.filter_map(domain).collect();
                }
                Some("domain") => {
                    conf.search = words.next().and_then(domain).into_iter().collect();
                }
                Some("options") => words.for_each(|option| conf.option(option)),
                _ => {}
            }
        }
        conf
    }

    /// One `options` word.
    fn option(&mut self, option: &str) {
        let (name, value) = option.split_once(':').unwrap_or((option, ""));
        let number = || value.parse::<u64>().ok();
        match name {
            "ndots" => {
                if let Some(n) = number() {
                    self.ndots = n.min(u64::from(MAX_NDOTS)) as u8;
                }
            }
            "timeout" => {
                if let Some(n) = number() {
                    self.timeout = Some(Duration::from_secs(n.clamp(1, MAX_TIMEOUT_SECS)));
                }
            }
            "attempts" => {
                if let Some(n) = number() {
                    self.attempts = Some(n.clamp(1, u64::from(MAX_ATTEMPTS)) as u32);
                }
            }
            "rotate" => self.rotate = true,
            _ => {}
        }
    }

    /// The nameservers, or 127.0.0.1:53 when the file names none (glibc's rule).
    pub fn nameservers_or_local(&self) -> Vec<SocketAddr> {
        if self.nameservers.is_empty() {
            vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)]
        } else {
            self.nameservers.clone()
        }
    }
}

/// A search domain as written, without its trailing dot; `None` for the root or an empty
/// word (which would make the candidate the name itself).
fn domain(word: &str) -> Option<String> {
    let d = word.trim_end_matches('.');
    (!d.is_empty()).then(|| d.to_owned())
}

/// The text of a configuration file of at most `max` bytes.
pub(crate) fn read_small_file(path: &Path, max: u64) -> Result<String, Error> {
    use std::io::Read;
    let failed = |source: std::io::Error| Error::ReadFile {
        path: Arc::from(path),
        source: Arc::new(source),
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(failed)?;
    if text.len() as u64 > max {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pods_resolv_conf() {
        let text = "# written by the kubelet\n\
                    search shop.svc.cluster.local svc.cluster.local cluster.local ec2.internal\n\
                    nameserver 10.100.0.10\n\
                    nameserver fd00::a%eth0 ; a zone is dropped\n\
                    nameserver bogus\n\
                    options ndots:5 timeout:2 attempts:3 rotate edns0 single-request\n";
        let conf = ResolvConf::parse(text);
        assert_eq!(
            conf.nameservers,
            vec![
                "10.100.0.10:53".parse().unwrap(),
                "[fd00::a]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            conf.search,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "ec2.internal"
            ]
        );
        assert_eq!(conf.ndots, 5);
        assert_eq!(conf.timeout, Some(Duration::from_secs(2)));
        assert_eq!(conf.attempts, Some(3));
        assert!(conf.rotate);
    }

    #[test]
    fn an_empty_file_means_the_local_server_and_glibc_defaults() {
        let conf = ResolvConf::parse("");
        assert_eq!(conf, ResolvConf::default());
        assert!(conf.nameservers.is_empty());
        assert_eq!(
            conf.nameservers_or_local(),
            vec!["127.0.0.1:53".parse().unwrap()]
        );
        assert_eq!(conf.ndots, 1);
        assert!(conf.search.is_empty());
    }

    #[test]
    fn the_last_of_search_and_domain_wins_and_values_are_clamped_as_glibc_does() {
        let conf = ResolvConf::parse(
            "search a.example b.example.\ndomain c.example\n\
             options ndots:40 timeout:0 attempts:9\noptions ndots:x timeout:",
        );
        assert_eq!(conf.search, ["c.example"]);
        assert_eq!(conf.ndots, 15);
        assert_eq!(conf.timeout, Some(Duration::from_secs(1)));
        assert_eq!(conf.attempts, Some(5));
        let conf = ResolvConf::parse("domain x.example\nsearch a.example. . b.example");
        assert_eq!(conf.search, ["a.example", "b.example"]);
        assert!(!conf.rotate);
    }

    #[test]
    fn unreadable_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("dnscore-resolvconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let err = ResolvConf::read(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; (MAX_FILE_LEN + 1) as usize]).unwrap();
        let err = ResolvConf::read(&big).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let ok = dir.join("ok");
        std::fs::write(&ok, "nameserver 10.0.0.1\n").unwrap();
        assert_eq!(
            ResolvConf::read(&ok).unwrap().nameservers,
            vec!["10.0.0.1:53".parse().unwrap()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
