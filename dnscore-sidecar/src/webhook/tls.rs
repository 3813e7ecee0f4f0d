//! The webhook's certificate, re-read when its files change.
//!
//! cert-manager (or a rotation by hand) replaces the Secret; the kubelet swaps the files of
//! the mounted volume (an atomic symlink switch). [`Certificates`] checks the two files'
//! metadata every [`RELOAD_INTERVAL`] and loads them again when it changed: every TLS
//! handshake after that presents the new certificate, connections open keep theirs. A pair
//! that does not load (a certificate written before its key, a typo) is logged and the old
//! one kept; it is tried again at every look until it loads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a certificate and key did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key is not one rustls can sign with, or does not match the certificate.
    #[error("{cert} and {key} do not make a usable pair: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's error.
        source: rustls::Error,
    },
}

/// What identifies the files' current contents without reading them.
type Stamp = [Option<(SystemTime, u64, u64)>; 2];

/// The serving certificate, for rustls, kept up to date with its files.
#[derive(Debug)]
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamp when they last loaded; `None` after a failed load.
    stamp: Mutex<Option<Stamp>>,
}

impl Certificates {
    /// Loads the pair; fails when it does not load (the webhook must not start without one).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamp = stamp(cert_path, key_path);
        let key = load_pair(cert_path, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(Some(stamp)),
        })
    }

    /// The rustls server configuration presenting the current certificate (HTTP/2 and
    /// HTTP/1.1 offered by ALPN, as kube-apiserver's client negotiates).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Loads the files again if their metadata changed since the last look; says whether a
    /// new certificate is now served. A pair that does not load leaves the old one served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert_path, &self.key_path);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(now) {
            return Ok(false);
        }
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                *last = Some(now);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                Ok(true)
            }
            Err(err) => {
                // Tried again at the next look, changed or not (a transient error, or a
                // rewrite that kept size and time).
                *last = None;
                Err(err)
            }
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`], for as long as the runtime runs.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A failure is retried every tick but logged once until it changes.
        let mut last_error = String::new();
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    last_error.clear();
                    tracing::info!(cert = %self.cert_path.display(), "certificate reloaded");
                }
                Ok(false) => {}
                Err(err) => {
                    let err = err.to_string();
                    if err != last_error {
                        tracing::warn!("certificate not reloaded, the old one is served: {err}");
                        last_error = err;
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|path| {
        // Follows symlinks: the kubelet's swap of `..data` changes the target's metadata.
        std::fs::metadata(path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            let modified = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            (modified, m.len(), m.ino())
        })
    })
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let pem_error = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(cert, format!("not a PEM certificate chain: {err}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "holds no certificate".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|err| pem_error(key, format!("not a PEM private key: {err}")))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CertRequest, generate};

    fn pair() -> crate::cert::CertFiles {
        let request = CertRequest {
            service: "dnscore-webhook".into(),
            namespace: "dnscore-system".into(),
            cluster_domain: "cluster.local".into(),
            days: 365,
        };
        generate(&request, None).unwrap()
    }

    fn served(certificates: &Certificates) -> Vec<u8> {
        certificates.current.read().unwrap().cert[0].to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_pair_that_does_not_load_keeps_the_old_one_and_is_tried_again() {
        let dir = std::env::temp_dir().join(format!("dnscore-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (first, second) = (pair(), pair());
        std::fs::write(&cert, &first.tls_cert).unwrap();
        std::fs::write(&key, &first.tls_key).unwrap();
        let certificates = Certificates::load(&cert, &key).unwrap();
        assert!(
            !certificates.reload_if_changed().unwrap(),
            "nothing changed"
        );

        // The new certificate is written before its key: that pair does not load.
        std::fs::write(&cert, &second.tls_cert).unwrap();
        assert!(matches!(
            certificates.reload_if_changed(),
            Err(TlsError::Pair { .. })
        ));
        assert_eq!(served(&certificates), der(&first.tls_cert));
        // Tried again at the next look even though nothing changed since.
        assert!(certificates.reload_if_changed().is_err());
        std::fs::write(&key, &second.tls_key).unwrap();
        assert!(certificates.reload_if_changed().unwrap());
        assert_eq!(served(&certificates), der(&second.tls_cert));

        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(
            certificates.reload_if_changed(),
            Err(TlsError::Pem { .. })
        ));
        assert_eq!(served(&certificates), der(&second.tls_cert));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
