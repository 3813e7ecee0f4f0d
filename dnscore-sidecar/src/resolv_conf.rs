//! Upstreams from `/etc/resolv.conf`, used when no `--upstream` is given, and the check that
//! they would not send queries back to ourselves.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Why the nameservers of a resolv.conf cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file lists no usable `nameserver` line.
    #[error("{0} lists no nameserver; pass --upstream IP:PORT")]
    Empty(PathBuf),
    /// A nameserver is our own listen address: we would forward every query to ourselves.
    #[error(
        "{path} names {server} as a nameserver, which is this sidecar's own listen address \
         ({listen}): queries would loop. Pass the cluster DNS service with --upstream IP:PORT \
         (e.g. --upstream 10.100.0.10:53)"
    )]
    Loop {
        /// The file.
        path: PathBuf,
        /// The offending nameserver.
        server: SocketAddr,
        /// Our listen address.
        listen: SocketAddr,
    },
}

/// Reads the `nameserver` lines of `path` (port 53) and refuses any that is `listen` itself.
pub fn upstreams(path: &Path, listen: SocketAddr) -> Result<Vec<SocketAddr>, ResolvConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResolvConfError::Read {
        path: path.to_owned(),
        source,
    })?;
    let servers = parse(&text);
    if servers.is_empty() {
        return Err(ResolvConfError::Empty(path.to_owned()));
    }
    if let Some(&server) = servers.iter().find(|s| is_self(**s, listen)) {
        return Err(ResolvConfError::Loop {
            path: path.to_owned(),
            server,
            listen,
        });
    }
    Ok(servers)
}

/// The nameservers of a resolv.conf text, as addresses on port 53.
pub fn parse(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            // An IPv6 address may carry a zone (`fe80::1%eth0`); we do not use link-local.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Whether `server` is `listen`: the same address, or any local address when we listen on
/// all of them.
fn is_self(server: SocketAddr, listen: SocketAddr) -> bool {
    server.port() == listen.port()
        && (server.ip() == listen.ip()
            || (listen.ip().is_unspecified() && server.ip().is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers_and_skips_the_rest() {
        let text = "# comment\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.100.0.10\nnameserver fd00::a\noptions ndots:5\nnameserver bogus\n";
        let got = parse(text);
        assert_eq!(
            got,
            vec![
                "10.100.0.10:53".parse().unwrap(),
                "[fd00::a]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn refuses_to_forward_to_itself() {
        let dir = std::env::temp_dir().join(format!("dnscore-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let err = upstreams(&path, "127.0.0.1:53".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ResolvConfError::Loop { .. }), "{err}");
        assert!(err.to_string().contains("--upstream"));
        let err = upstreams(&path, "0.0.0.0:53".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ResolvConfError::Loop { .. }));
        // another port is not a loop
        let ok = upstreams(&path, "127.0.0.1:5353".parse().unwrap()).unwrap();
        assert_eq!(ok, vec!["127.0.0.1:53".parse().unwrap()]);
        std::fs::write(&path, "search x\n").unwrap();
        assert!(matches!(
            upstreams(&path, "127.0.0.1:53".parse().unwrap()),
            Err(ResolvConfError::Empty(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
