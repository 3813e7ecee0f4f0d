//! `dnscore-sidecar cert`: a CA and a serving certificate for the webhook's Service, for
//! clusters without cert-manager.
//!
//! kube-apiserver calls the webhook at `https://<service>.<namespace>.svc:443` and checks
//! its certificate against the `caBundle` of the MutatingWebhookConfiguration, so the
//! serving certificate names the Service's DNS names and the bundle is a CA of our own
//! (not the cluster's). Keys are ECDSA P-256. [`generate`] makes the files; [`write()`]
//! puts them in a directory, the keys readable by their owner only.
//!
//! Renewal keeps the CA: given the CA of an earlier run (`ca.crt` and `ca.key` in the
//! output directory), only a new serving certificate is made, so the caBundle stays the
//! same and a renewal never leaves the API server unable to verify the webhook.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;

/// What the certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// The webhook's Service.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The cluster domain.
    pub cluster_domain: String,
    /// Days both certificates are valid, from now.
    pub days: u32,
}

/// The files `cert` writes, as text.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate (PEM).
    pub ca_cert: String,
    /// The CA's private key (PEM, PKCS#8): kept for renewals, never deployed.
    pub ca_key: String,
    /// The serving certificate (PEM).
    pub tls_cert: String,
    /// The serving certificate's private key (PEM, PKCS#8).
    pub tls_key: String,
    /// The CA certificate as the MutatingWebhookConfiguration's `caBundle` (base64 of the PEM).
    pub ca_bundle: String,
}

/// Why no certificate was made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// An input is not usable in a DNS name.
    #[error("invalid {field} {value:?}: must be a DNS label (a-z, 0-9, '-')")]
    InvalidName {
        /// `service` or `namespace`.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// `days` is zero.
    #[error("invalid days: must be at least 1")]
    InvalidDays,
    /// The CA given to sign with is not one of ours (or its key is not its key).
    #[error("the existing CA cannot be used: {0} (pass --new-ca to make a new one)")]
    ExistingCa(String),
    /// The certificate library refused.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

impl CertRequest {
    /// The names the serving certificate holds: the ones kube-apiserver and clients in
    /// the cluster use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service, &self.namespace);
        vec![
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{}", self.cluster_domain),
        ]
    }
}

/// The CA's name: the same for every run, so that a CA of an earlier run can sign again.
const CA_NAME: &str = "dnscore webhook CA";

/// A serving certificate signed by the CA of an earlier run (`existing_ca`: its
/// certificate and key, PEM), or by a fresh CA.
pub fn generate(
    request: &CertRequest,
    existing_ca: Option<(&str, &str)>,
) -> Result<CertFiles, CertError> {
    for (field, value) in [
        ("service", &request.service),
        ("namespace", &request.namespace),
    ] {
        let label_ok = !value.is_empty()
            && value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-')
            && !value.ends_with('-');
        if !label_ok {
            return Err(CertError::InvalidName {
                field,
                value: value.clone(),
            });
        }
    }
    if request.days == 0 {
        return Err(CertError::InvalidDays);
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind ours.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(request.days));

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, CA_NAME);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let (ca, ca_cert, ca_key, ca_expires) = match existing_ca {
        Some((cert, key)) => {
            let key = KeyPair::from_pem(key)
                .map_err(|e| CertError::ExistingCa(format!("ca.key: {e}")))?;
            let expires = check_existing_ca(cert, &key, now)?;
            let issuer = Issuer::from_ca_cert_pem(cert, key)
                .map_err(|e| CertError::ExistingCa(format!("ca.crt: {e}")))?;
            let ca_key = issuer.key().serialize_pem();
            (issuer, cert.to_owned(), ca_key, Some(expires))
        }
        None => {
            let key = KeyPair::generate()?;
            let cert = ca.self_signed(&key)?.pem();
            let ca_key = key.serialize_pem();
            (Issuer::new(ca, key), cert, ca_key, None)
        }
    };

    let mut serving = CertificateParams::new(request.dns_names())?;
    serving.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", request.service, request.namespace),
    );
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.use_authority_key_identifier_extension = true;
    // Never past the CA: a certificate its CA no longer vouches for fails every handshake.
    let not_after = ca_expires.map_or(not_after, |expires| not_after.min(expires));
    (serving.not_before, serving.not_after) = (not_before, not_after);
    let key = KeyPair::generate()?;
    let cert = serving.signed_by(&key, &ca)?;

    Ok(CertFiles {
        ca_bundle: base64::engine::general_purpose::STANDARD.encode(&ca_cert),
        ca_cert,
        ca_key,
        tls_cert: cert.pem(),
        tls_key: key.serialize_pem(),
    })
}

/// A renewal needs the CA for this long at least; a CA closer to its end is refused.
const MIN_CA_LEFT: time::Duration = time::Duration::days(30);

/// Checks that `cert` is a CA certificate (its CA flag set) of `key` (its public key is the
/// key's) with at least [`MIN_CA_LEFT`] to live; returns when it expires.
fn check_existing_ca(
    cert: &str,
    key: &KeyPair,
    now: time::OffsetDateTime,
) -> Result<time::OffsetDateTime, CertError> {
    use rcgen::PublicKeyData;
    let bad = |what: String| CertError::ExistingCa(what);
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
        .map_err(|e| bad(format!("ca.crt: {e}")))?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| bad(format!("ca.crt: {e}")))?;
    let is_ca = x509
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|constraints| constraints.value.ca);
    if !is_ca {
        return Err(bad("ca.crt is not a CA certificate (no CA flag)".to_owned()));
    }
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(bad("ca.key is not the key of ca.crt".to_owned()));
    }
    let expires = x509.validity().not_after.to_datetime();
    if expires < now + MIN_CA_LEFT {
        return Err(bad(format!("the CA expires on {}", expires.date())));
    }
    Ok(expires)
}

/// The kustomize patch that sets `caBundle` on the two webhooks of
/// `deploy/webhook/base` (JSON6902, applied by the self-managed overlay).
pub fn ca_bundle_patch(ca_bundle: &str) -> String {
    let mut patch = String::from(
        "# Written by `dnscore-sidecar cert`: the CA that signed the webhook's certificate.\n",
    );
    for webhook in 0..2 {
        patch.push_str(&format!(
            "- op: add\n  path: /webhooks/{webhook}/clientConfig/caBundle\n  value: {ca_bundle}\n"
        ));
    }
    patch
}

/// Writes `ca.crt`, `ca.key` and `tls.key` (both mode 0600), `tls.crt` and
/// `ca-bundle-patch.yaml` into `dir`, creating it; returns the paths written.
pub fn write(dir: &Path, files: &CertFiles) -> Result<Vec<PathBuf>, CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    let patch = ca_bundle_patch(&files.ca_bundle);
    let mut written = Vec::new();
    for (name, text, mode) in [
        ("ca.crt", files.ca_cert.as_str(), 0o644),
        ("ca.key", files.ca_key.as_str(), 0o600),
        ("tls.crt", files.tls_cert.as_str(), 0o644),
        ("tls.key", files.tls_key.as_str(), 0o600),
        ("ca-bundle-patch.yaml", patch.as_str(), 0o644),
    ] {
        let path = dir.join(name);
        // Written aside, then renamed over the old file: a failure midway leaves the old
        // file whole (a CA key lost would mean a new CA), and no bytes of an old key stay.
        let staged = dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&staged);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staged)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&staged, &path))
            .map_err(failed(&path))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CertRequest {
        CertRequest {
            service: "dnscore-webhook".into(),
            namespace: "dnscore-system".into(),
            cluster_domain: "cluster.local".into(),
            days: 365,
        }
    }

    #[test]
    fn the_serving_certificate_names_the_service() {
        let files = generate(&request(), None).unwrap();
        assert!(files.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(files.tls_key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&files.ca_bundle)
            .unwrap();
        assert_eq!(decoded, files.ca_cert.as_bytes());
        assert!(
            request()
                .dns_names()
                .contains(&"dnscore-webhook.dnscore-system.svc".to_owned())
        );
        let patch = ca_bundle_patch(&files.ca_bundle);
        assert_eq!(patch.matches(&files.ca_bundle).count(), 2);
    }

    #[test]
    fn names_that_are_not_dns_labels_are_refused() {
        for service in ["", "Web", "a.b", "-x", &"a".repeat(64)] {
            let bad = CertRequest {
                service: service.to_owned(),
                ..request()
            };
            assert!(matches!(
                generate(&bad, None),
                Err(CertError::InvalidName { .. })
            ));
        }
        let zero = CertRequest {
            days: 0,
            ..request()
        };
        assert!(matches!(generate(&zero, None), Err(CertError::InvalidDays)));
    }

    #[test]
    fn a_renewal_keeps_the_ca_and_refuses_a_key_that_is_not_its_own() {
        let first = generate(&request(), None).unwrap();
        let second = generate(&request(), Some((&first.ca_cert, &first.ca_key))).unwrap();
        assert_eq!(second.ca_bundle, first.ca_bundle);
        assert_ne!(second.tls_cert, first.tls_cert);
        let other = generate(&request(), None).unwrap();
        assert!(matches!(
            generate(&request(), Some((&first.ca_cert, &other.ca_key))),
            Err(CertError::ExistingCa(_))
        ));
        // A serving certificate and key put where the CA goes: not a CA.
        assert!(matches!(
            generate(&request(), Some((&first.tls_cert, &first.tls_key))),
            Err(CertError::ExistingCa(_))
        ));
        // A renewal asking for longer than the CA lives ends with the CA.
        let longer = CertRequest {
            days: 40_000,
            ..request()
        };
        let renewed = generate(&longer, Some((&first.ca_cert, &first.ca_key))).unwrap();
        let not_after = |pem: &str| {
            let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            cert.validity().not_after.to_datetime()
        };
        assert_eq!(not_after(&renewed.tls_cert), not_after(&first.ca_cert));
    }
}
