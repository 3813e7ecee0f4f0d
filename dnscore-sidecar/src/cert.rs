//! `dnscore-sidecar cert`: a CA and a serving certificate for the webhook's Service, for
//! clusters without cert-manager.
//!
//! kube-apiserver calls the webhook at `https://<service>.<namespace>.svc:443` and checks
//! its certificate against the `caBundle` of the MutatingWebhookConfiguration, so the
//! serving certificate names the Service's DNS names and the bundle is a CA of our own
//! (not the cluster's). Keys are ECDSA P-256. [`generate`] makes the files; [`write()`]
//! puts them in a directory, the key readable by its owner only.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

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

/// A fresh CA and a serving certificate it signed.
pub fn generate(request: &CertRequest) -> Result<CertFiles, CertError> {
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
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("dnscore webhook CA ({})", request.namespace),
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut serving = CertificateParams::new(request.dns_names())?;
    serving.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", request.service, request.namespace),
    );
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.use_authority_key_identifier_extension = true;
    (serving.not_before, serving.not_after) = (not_before, not_after);
    let key = KeyPair::generate()?;
    let cert = serving.signed_by(&key, &ca)?;

    let ca_cert = ca.pem();
    Ok(CertFiles {
        ca_bundle: base64::engine::general_purpose::STANDARD.encode(&ca_cert),
        ca_cert,
        tls_cert: cert.pem(),
        tls_key: key.serialize_pem(),
    })
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

/// Writes `ca.crt`, `tls.crt`, `tls.key` (mode 0600) and `ca-bundle-patch.yaml` into `dir`,
/// creating it; returns the paths written.
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
        ("tls.crt", files.tls_cert.as_str(), 0o644),
        ("tls.key", files.tls_key.as_str(), 0o600),
        ("ca-bundle-patch.yaml", patch.as_str(), 0o644),
    ] {
        let path = dir.join(name);
        // Replace, never write through: an old key file keeps no bytes of the new key.
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
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
            days: 30,
        }
    }

    #[test]
    fn the_serving_certificate_names_the_service() {
        let files = generate(&request()).unwrap();
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
            assert!(matches!(generate(&bad), Err(CertError::InvalidName { .. })));
        }
        let zero = CertRequest {
            days: 0,
            ..request()
        };
        assert!(matches!(generate(&zero), Err(CertError::InvalidDays)));
    }
}
