//! Test support (feature `test-util`): a real HTTPS client for the webhook, and
//! AdmissionReviews in the shape kube-apiserver sends. Used by the tests and by the load
//! benchmark in `benches/`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// Any failure of a request, as text.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The name kube-apiserver connects to (the Service's), which the certificate must hold.
pub const SERVICE_NAME: &str = "dnscore-webhook.dnscore-system.svc";

/// What a TLS handshake showed, and the answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: Vec<u8>,
    /// The protocol agreed by ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The server's certificate (DER).
    pub peer: Vec<u8>,
}

/// A client that trusts the CAs it was given and connects to [`SERVICE_NAME`].
#[derive(Clone, Debug)]
pub struct Client {
    http2: Arc<rustls::ClientConfig>,
    http1: Arc<rustls::ClientConfig>,
}

/// An HTTP/2 connection, for many requests at once (as kube-apiserver keeps one).
#[derive(Clone, Debug)]
pub struct Connection(hyper::client::conn::http2::SendRequest<Full<Bytes>>);

impl Client {
    /// Trusts the certificates in these PEM files.
    pub fn trusting(cas: &[&Path]) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
        }
        let config = |alpn: &[u8]| -> Result<_, Error> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Self {
            http2: config(b"h2")?,
            http1: config(b"http/1.1")?,
        })
    }

    async fn tls(
        &self,
        addr: SocketAddr,
        http2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Error> {
        let config = if http2 { &self.http2 } else { &self.http1 };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from(SERVICE_NAME)?;
        Ok(tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?)
    }

    /// One request on a new connection.
    pub async fn request(
        &self,
        addr: SocketAddr,
        http2: bool,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Answer, Error> {
        let tls = self.tls(addr, http2).await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .unwrap_or_default();
        let request = http_request(method, path, body)?;
        let response = if http2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await?;
            tokio::spawn(connection);
            sender.send_request(request).await?
        } else {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            sender.send_request(request).await?
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok(Answer {
            status,
            body,
            alpn,
            peer,
        })
    }

    /// An HTTP/2 connection for [`Connection::request`].
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, Error> {
        let tls = self.tls(addr, true).await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(Connection(sender))
    }
}

impl Connection {
    /// One request as a stream of this connection: the status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), Error> {
        let mut sender = self.0.clone();
        sender.ready().await?;
        let response = sender
            .send_request(http_request(method, path, body)?)
            .await?;
        let status = response.status().as_u16();
        Ok((
            status,
            response.into_body().collect().await?.to_bytes().to_vec(),
        ))
    }
}

fn http_request(
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<hyper::Request<Full<Bytes>>, Error> {
    Ok(hyper::Request::builder()
        .method(method)
        .uri(format!("https://{SERVICE_NAME}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?)
}

/// An AdmissionReview as kube-apiserver sends it for `object`, in namespace `shop`.
pub fn admission_review(object: Value, operation: &str) -> Value {
    let kind = object["kind"].as_str().unwrap_or("Pod").to_owned();
    let group = match kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps",
        _ => "",
    };
    let resource = format!("{}s", kind.to_lowercase());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": "shop",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "b4a6d6cb-8c3e-4b1f-a0bd-0c2f4c1a7a11",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated"
                ]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// A pod as a ReplicaSet creates it: no name yet, no namespace in its metadata, the fields
/// kube-apiserver has defaulted, and an init container of its own.
pub fn replica_set_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c5f6-",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c5f6"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c5f6",
                "uid": "0b7c3f3e-3c49-4bd2-9d83-2b8f6d5f3a10", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "initContainers": [{"name": "migrate", "image": "shop/migrate:3"}],
            "containers": [{
                "name": "web", "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0
        }
    })
}
