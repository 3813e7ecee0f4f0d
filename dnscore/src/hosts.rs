//! The hosts file (`/etc/hosts`), asked before DNS by [`Resolver::lookup_ip`] and by
//! [`Resolver::lookup`] for A and AAAA, and re-read when it changes.
//!
//! Each line is an address followed by names (the canonical name and its aliases); `#`
//! starts a comment; lines whose address does not parse are skipped. Names match without
//! regard to case and to a trailing dot. The file is checked for a change (its size,
//! modification time and inode) at most once a second, on a lookup; a file that disappears
//! empties the table, one that cannot be read keeps the table of the last good read.
//!
//! [`Resolver::lookup_ip`]: crate::Resolver::lookup_ip
//! [`Resolver::lookup`]: crate::Resolver::lookup

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::error::Error;
use crate::resolv_conf::read_small_file;

/// How often a lookup checks whether the file changed.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Largest hosts file read (bounded memory; a pod's is a few hundred bytes).
const MAX_FILE_LEN: u64 = 16 << 20;

/// Addresses by lower-case name without trailing dot, in the file's order.
type Table = HashMap<Box<str>, Vec<IpAddr>>;

/// A hosts file and what it said when last read. A lookup takes a read lock (shared by
/// concurrent lookups) and, once a second, one caller checks the file.
pub(crate) struct Hosts {
    path: PathBuf,
    table: RwLock<Table>,
    /// What identified the file when it was read (`None`: it did not exist); held by the
    /// one caller checking it.
    stamp: Mutex<Option<Stamp>>,
    /// The clock the next check is set on.
    opened: Instant,
    /// Milliseconds after `opened` when the file is next checked.
    next_check_ms: AtomicU64,
}

/// Size, modification time and inode: a change in any of them means a re-read.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts").field("path", &self.path).finish()
    }
}

impl Hosts {
    /// Reads `path` for the first time. Errors: [`Error::ReadFile`].
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let stamp = std::fs::metadata(path).map(|m| Stamp::of(&m)).ok();
        let table = parse(&read_small_file(path, MAX_FILE_LEN)?);
        Ok(Self {
            path: path.to_owned(),
            table: RwLock::new(table),
            stamp: Mutex::new(stamp),
            opened: Instant::now(),
            next_check_ms: AtomicU64::new(CHECK_INTERVAL.as_millis() as u64),
        })
    }

    /// The addresses the file gives `name`, in its order; `None` when it does not name it.
    pub(crate) fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.check_if_due();
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            table.get(name.to_ascii_lowercase().as_str()).cloned()
        } else {
            table.get(name).cloned()
        }
    }

    /// Re-reads the file if it changed, when a check is due (once a second); the caller
    /// that claims the check does it, the others go on with the table as it is.
    fn check_if_due(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_check_ms.load(Ordering::Relaxed);
        let next = now.saturating_add(CHECK_INTERVAL.as_millis() as u64);
        if now < due
            || self
                .next_check_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let mut stamp = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh(&mut stamp);
    }

    fn refresh(&self, old: &mut Option<Stamp>) {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot check the hosts file; keeping what it said");
                return;
            }
        };
        if stamp == *old {
            return;
        }
        let table = match stamp {
            None => Table::new(),
            Some(_) => match read_small_file(&self.path, MAX_FILE_LEN) {
                Ok(text) => parse(&text),
                Err(e) => {
                    tracing::warn!(error = %e, "keeping what the hosts file said");
                    return;
                }
            },
        };
        tracing::debug!(path = %self.path.display(), names = table.len(), "hosts file re-read");
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
        *old = stamp;
    }
}

/// The table of a hosts file's text.
fn parse(text: &str) -> Table {
    let mut table = Table::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words
            .next()
            .map(|w| w.split('%').next().unwrap_or(w).parse())
        else {
            continue;
        };
        for name in words {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            let addrs = table.entry(name.into_boxed_str()).or_default();
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kubelet_hosts_file() {
        let table = parse(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n\
             10.1.2.3\tshop-7d9f-abc\n10.9.9.9 db.internal DB.Internal. db # alias\n\
             10.9.9.10 db.internal\nnot-an-ip bogus\n\n",
        );
        let ips = |n: &str| table.get(n).cloned().unwrap_or_default();
        assert_eq!(
            ips("localhost"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            ips("db.internal"),
            vec![
                "10.9.9.9".parse::<IpAddr>().unwrap(),
                "10.9.9.10".parse().unwrap()
            ]
        );
        assert_eq!(ips("db").len(), 1);
        assert!(!table.contains_key("bogus") && !table.contains_key("alias"));
    }

    #[test]
    fn lookups_ignore_case_and_trailing_dot_and_see_the_file_change() {
        let dir = std::env::temp_dir().join(format!("dnscore-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "10.0.0.1 a.example\n").unwrap();
        let hosts = Hosts::open(&path).unwrap();
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        assert_eq!(hosts.lookup("A.Example."), Some(ip("10.0.0.1")));
        assert_eq!(hosts.lookup("b.example"), None);

        // A new file (another inode, as the kubelet's atomic rename makes) is seen once the
        // check interval has passed; the check is forced here by backdating it.
        let tmp = dir.join("hosts.new");
        std::fs::write(&tmp, "10.0.0.2 b.example\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            hosts.lookup("a.example"),
            Some(ip("10.0.0.1")),
            "not yet checked"
        );
        let backdate = |h: &Hosts| h.next_check_ms.store(0, Ordering::Relaxed);
        backdate(&hosts);
        assert_eq!(hosts.lookup("a.example"), None);
        assert_eq!(hosts.lookup("b.example"), Some(ip("10.0.0.2")));

        // Gone: empty; back: read again.
        std::fs::remove_file(&path).unwrap();
        backdate(&hosts);
        assert_eq!(hosts.lookup("b.example"), None);
        std::fs::write(&path, "10.0.0.3 c.example\n").unwrap();
        backdate(&hosts);
        assert_eq!(hosts.lookup("c.example"), Some(ip("10.0.0.3")));

        assert!(Hosts::open(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
