//! Upstreams from `/etc/resolv.conf` (read by the core's parser,
//! [`dnscore::resolv_conf`]), used when no `--upstream` is given, and the check that they
//! would not send queries back to ourselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dnscore::resolv_conf::ResolvConf;

/// Why the nameservers of a resolv.conf cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    /// The file could not be read.
    #[error(transparent)]
    Read(dnscore::Error),
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
    // Unlike glibc (and the library's builder), no nameserver is an error: 127.0.0.1:53 is
    // most likely this sidecar itself.
    let servers = ResolvConf::read(path)
        .map_err(ResolvConfError::Read)?
        .nameservers;
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
        let err = upstreams(&dir.join("missing"), "127.0.0.1:53".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ResolvConfError::Read(_)));
        assert!(err.to_string().contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
