//! The real `webhook` binary on loopback, with a certificate from the real `cert` command,
//! asked over HTTPS (HTTP/2 as kube-apiserver asks, and HTTP/1.1) with AdmissionReviews in
//! the shape kube-apiserver sends. Patches are applied with a JSONPatch library and the
//! result must deserialise as k8s-openapi's `Pod`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use dnscore_sidecar::webhook::test_client::{Answer, Client, admission_review, replica_set_pod};
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_dnscore-sidecar");

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dnscore-webhook-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `dnscore-sidecar cert --out DIR`.
fn cert(dir: &Path) {
    let status = Command::new(BIN)
        .args(["cert", "--service", "dnscore-webhook", "--namespace"])
        .arg("dnscore-system")
        .arg("--out")
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cert failed");
}

/// The webhook process, killed on drop.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    certs: TempDir,
}

impl Webhook {
    fn start(args: &[&str]) -> Self {
        let certs = TempDir::new();
        cert(&certs.0);
        let mut child = Command::new(BIN)
            .arg("webhook")
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(certs.0.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.0.join("tls.key"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the webhook says where it listens")
            .parse()
            .unwrap();
        Self { child, addr, certs }
    }

    fn ca(&self) -> PathBuf {
        self.certs.0.join("ca.crt")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a new connection, trusting the CA in `ca`.
async fn request(
    addr: SocketAddr,
    ca: &Path,
    http2: bool,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Answer {
    Client::trusting(&[ca])
        .unwrap()
        .request(addr, http2, method, path, body)
        .await
        .unwrap()
}

fn pod() -> Value {
    replica_set_pod()
}

/// The response of one review, checked for the fields every response must have.
async fn review(webhook: &Webhook, object: Value, operation: &str) -> Value {
    let body = serde_json::to_vec(&admission_review(object, operation)).unwrap();
    let answer = request(webhook.addr, &webhook.ca(), true, "POST", "/mutate", body).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.alpn.as_deref(), Some(&b"h2"[..]));
    let review: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(review["response"]["allowed"], true, "never refuses a pod");
    review["response"].clone()
}

/// `object` with the response's patch applied (unchanged when there is none).
fn patched(object: &Value, response: &Value) -> Value {
    let mut object = object.clone();
    if let Some(patch) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
    }
    object
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_plain_pod_gets_the_sidecar_first_and_a_patched_pod_gets_no_patch() {
    let webhook = Webhook::start(&["--upstream", "10.96.0.10:53"]);
    let response = review(&webhook, pod(), "CREATE").await;
    assert!(response["patch"].is_string(), "{response}");
    let injected = patched(&pod(), &response);
    let typed: Pod = serde_json::from_value(injected.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(init[0].name, "dnscore");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        init[1].name, "migrate",
        "the pod's own init container stays"
    );
    let args = init[0].args.clone().unwrap();
    assert!(
        args.contains(&"--upstream=10.96.0.10:53".to_owned()),
        "{args:?}"
    );
    assert_eq!(spec.dns_policy.as_deref(), Some("None"));
    let dns = spec.dns_config.unwrap();
    assert_eq!(dns.nameservers.unwrap(), ["127.0.0.1"]);
    // The request's namespace, since a controller's pod has none in its metadata yet.
    assert_eq!(
        dns.searches.unwrap()[0],
        "shop.svc.cluster.local",
        "search list from the request's namespace"
    );
    let sysctls = spec.security_context.unwrap().sysctls.unwrap();
    assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(
        typed.metadata.annotations.unwrap()["dnscore.io/injected"],
        "true"
    );
    // Everything else is untouched.
    assert_eq!(injected["spec"]["containers"], pod()["spec"]["containers"]);
    assert_eq!(
        injected["metadata"]["ownerReferences"],
        pod()["metadata"]["ownerReferences"]
    );

    // Reinvoked (reinvocationPolicy IfNeeded) or sent again: no patch.
    let again = review(&webhook, injected.clone(), "CREATE").await;
    assert!(again.get("patch").is_none(), "{again}");

    // A later webhook put its init container in front: the sidecar goes first again.
    let mut reordered = injected.clone();
    let init = reordered["spec"]["initContainers"].as_array_mut().unwrap();
    init.insert(0, json!({"name": "istio-init", "image": "istio/proxyv2"}));
    let response = review(&webhook, reordered.clone(), "CREATE").await;
    let fixed = patched(&reordered, &response);
    let names: Vec<&str> = fixed["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dnscore", "istio-init", "migrate"]);
}

#[tokio::test]
async fn pods_that_must_not_change_and_other_requests_are_allowed_unchanged() {
    let webhook = Webhook::start(&[]);

    let mut opted_out = pod();
    opted_out["metadata"]["annotations"] = json!({"dnscore.io/inject": "disabled"});
    let response = review(&webhook, opted_out, "CREATE").await;
    assert!(response.get("patch").is_none(), "{response}");
    assert!(warnings(&response).is_empty(), "opting out is no surprise");

    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    let response = review(&webhook, host, "CREATE").await;
    assert!(response.get("patch").is_none());
    assert!(warnings(&response)[0].contains("hostNetwork"), "{response}");

    let mut own = pod();
    own["spec"]["dnsPolicy"] = json!("None");
    own["spec"]["dnsConfig"] = json!({"nameservers": ["10.0.0.2"]});
    let response = review(&webhook, own, "CREATE").await;
    assert!(response.get("patch").is_none());
    assert!(
        warnings(&response)[0].contains("own nameservers"),
        "{response}"
    );

    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    });
    let response = review(&webhook, deployment, "CREATE").await;
    assert!(response.get("patch").is_none(), "only Pods are mutated");

    let response = review(&webhook, pod(), "UPDATE").await;
    assert!(response.get("patch").is_none(), "only CREATE is mutated");

    // A malformed pod spec: allowed, with the reason.
    let mut malformed = pod();
    malformed["spec"]["initContainers"] = json!("not a list");
    let response = review(&webhook, malformed, "CREATE").await;
    assert!(response.get("patch").is_none());
    assert!(
        warnings(&response)[0].contains("not injected"),
        "{response}"
    );
}

#[tokio::test]
async fn annotations_change_the_sidecar_and_a_bad_one_is_a_warning() {
    let webhook = Webhook::start(&["--fallback-nameserver", "10.96.0.10"]);
    let mut tuned = pod();
    tuned["metadata"]["annotations"] = json!({
        "dnscore.io/upstream": "10.0.0.53,10.0.1.53:5353",
        "dnscore.io/cache-capacity": "2000",
        "dnscore.io/cluster-min-ttl": "0",
        "dnscore.io/ndots": "2",
        "dnscore.io/lameduck": "3s",
        "dnscore.io/image": "registry.internal/dnscore:0.1.0",
        "dnscore.io/discover": "coredns-pods",
        "dnscore.io/cache-capacty": "1"
    });
    let response = review(&webhook, tuned.clone(), "CREATE").await;
    let injected: Pod = serde_json::from_value(patched(&tuned, &response)).unwrap();
    let spec = injected.spec.unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.internal/dnscore:0.1.0")
    );
    let args = sidecar.args.clone().unwrap();
    for wanted in [
        "--upstream=10.0.0.53:53",
        "--upstream=10.0.1.53:5353",
        "--cache-capacity=2000",
        "--cluster-min-ttl=0",
        "--lameduck=3s",
        "--discover=coredns-pods",
    ] {
        assert!(args.contains(&wanted.to_owned()), "{wanted} in {args:?}");
    }
    let dns = spec.dns_config.unwrap();
    // The flag's fallback after the sidecar, with short timeouts.
    assert_eq!(dns.nameservers.unwrap(), ["127.0.0.1", "10.96.0.10"]);
    let options: Vec<(String, Option<String>)> = dns
        .options
        .unwrap()
        .into_iter()
        .map(|o| (o.name.unwrap(), o.value))
        .collect();
    for (name, value) in [("ndots", "2"), ("timeout", "1"), ("attempts", "2")] {
        assert!(
            options.contains(&(name.to_owned(), Some(value.to_owned()))),
            "{name}:{value} in {options:?}"
        );
    }
    assert!(
        warnings(&response)
            .iter()
            .any(|w| w.contains("dnscore.io/cache-capacty")),
        "a misspelt annotation is named: {response}"
    );

    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({"dnscore.io/upstream": "kube-dns.kube-system"});
    let response = review(&webhook, bad, "CREATE").await;
    assert!(response.get("patch").is_none(), "{response}");
    assert!(
        warnings(&response)[0].contains("dnscore.io/upstream"),
        "{response}"
    );
}

#[tokio::test]
async fn bad_requests_get_400_and_the_server_keeps_serving() {
    let webhook = Webhook::start(&[]);
    let full = serde_json::to_vec(&admission_review(pod(), "CREATE")).unwrap();
    let truncated = full[..full.len() / 2].to_vec();
    for (http2, body) in [
        (true, truncated.clone()),
        (false, truncated),
        (true, b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}".to_vec()),
        (
            true,
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview", "request": {"kind": {"kind": "Pod"}}}))
            .unwrap(),
        ),
        (true, Vec::new()),
    ] {
        let answer = request(webhook.addr, &webhook.ca(), http2, "POST", "/mutate", body).await;
        assert_eq!(
            answer.status,
            400,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(!answer.body.is_empty(), "the reason is in the body");
    }
    // Over HTTP/2, as kube-apiserver sends: the answer comes before the body is all sent
    // (over HTTP/1.1 the server closes the connection while a client still writes).
    let too_big = vec![b' '; dnscore_sidecar::webhook::MAX_BODY + 1];
    let answer = request(
        webhook.addr,
        &webhook.ca(),
        true,
        "POST",
        "/mutate",
        too_big,
    )
    .await;
    assert_eq!(answer.status, 413);

    // HTTP/1.1 works as well as HTTP/2, and the probes answer.
    let answer = request(webhook.addr, &webhook.ca(), false, "POST", "/mutate", full).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.alpn.as_deref(), Some(&b"http/1.1"[..]));
    for (method, path, status) in [
        ("GET", "/health", 200),
        ("GET", "/ready", 200),
        ("GET", "/mutate", 405),
        ("GET", "/nothing", 404),
    ] {
        let answer = request(webhook.addr, &webhook.ca(), true, method, path, Vec::new()).await;
        assert_eq!(answer.status, status, "{method} {path}");
    }
    let metrics = request(
        webhook.addr,
        &webhook.ca(),
        true,
        "GET",
        "/metrics",
        Vec::new(),
    )
    .await;
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(
        metrics.contains("dnscore_webhook_admission_requests_total{outcome=\"bad_request\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dnscore_webhook_admission_requests_total{outcome=\"injected\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let webhook = Webhook::start(&[]);
    let first = request(
        webhook.addr,
        &webhook.ca(),
        true,
        "GET",
        "/ready",
        Vec::new(),
    )
    .await;
    let old = CertificateDer::from_pem_file(webhook.certs.0.join("tls.crt")).unwrap();
    assert_eq!(first.peer, old.to_vec());

    // A new pair, swapped in the way the kubelet updates a Secret volume: renames.
    let next = TempDir::new();
    cert(&next.0);
    for file in ["tls.key", "tls.crt"] {
        let staged = webhook.certs.0.join(format!(".{file}.new"));
        std::fs::copy(next.0.join(file), &staged).unwrap();
        std::fs::rename(&staged, webhook.certs.0.join(file)).unwrap();
    }
    let new = CertificateDer::from_pem_file(next.0.join("tls.crt")).unwrap();
    assert_ne!(new, old);
    // Until the swap is seen the old certificate is served: trust both CAs meanwhile.
    let both = next.0.join("both-ca.crt");
    let mut cas = std::fs::read_to_string(webhook.ca()).unwrap();
    cas.push_str(&std::fs::read_to_string(next.0.join("ca.crt")).unwrap());
    std::fs::write(&both, cas).unwrap();
    wait_until_served(&webhook, &both, &new).await;
    // And a client that knows only the new CA connects.
    let answer = request(
        webhook.addr,
        &next.0.join("ca.crt"),
        true,
        "GET",
        "/ready",
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_renewal_by_cert_keeps_the_ca_so_clients_verify_the_new_certificate() {
    let webhook = Webhook::start(&[]);
    // The caBundle the API server has: the first run's CA, kept apart.
    let bundle = TempDir::new();
    let ca = bundle.0.join("ca.crt");
    std::fs::copy(webhook.ca(), &ca).unwrap();
    let old = CertificateDer::from_pem_file(webhook.certs.0.join("tls.crt")).unwrap();
    cert(&webhook.certs.0);
    let new = CertificateDer::from_pem_file(webhook.certs.0.join("tls.crt")).unwrap();
    assert_ne!(new, old);
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        std::fs::read(webhook.ca()).unwrap(),
        "the CA is kept"
    );
    wait_until_served(&webhook, &ca, &new).await;
}

/// Makes new connections, trusting `ca`, until the webhook presents `expected`.
async fn wait_until_served(webhook: &Webhook, ca: &Path, expected: &CertificateDer<'_>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut handshakes = 0;
    loop {
        handshakes += 1;
        let answer = request(webhook.addr, ca, true, "GET", "/ready", Vec::new()).await;
        if answer.peer == expected.to_vec() {
            assert_eq!(answer.status, 200);
            eprintln!("new certificate served after {handshakes} handshakes");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn after_sigterm_it_fails_ready_but_answers_for_the_delay_then_exits() {
    let mut webhook = Webhook::start(&["--shutdown-delay", "1s"]);
    let body = serde_json::to_vec(&admission_review(pod(), "CREATE")).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &webhook.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = request(
        webhook.addr,
        &webhook.ca(),
        true,
        "GET",
        "/ready",
        Vec::new(),
    )
    .await;
    assert_eq!(ready.status, 503, "not ready once SIGTERM arrived");
    let answer = request(webhook.addr, &webhook.ca(), true, "POST", "/mutate", body).await;
    assert_eq!(
        answer.status, 200,
        "reviews are still answered during the delay"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = webhook.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(webhook.addr).await.is_err(),
        "the port is closed"
    );
}

#[test]
fn the_webhook_refuses_to_start_without_a_usable_certificate() {
    let dir = TempDir::new();
    cert(&dir.0);
    // A key that is not the certificate's.
    let other = TempDir::new();
    cert(&other.0);
    let output = Command::new(BIN)
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.0.join("tls.crt"))
        .arg("--tls-key")
        .arg(other.0.join("tls.key"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("usable pair"), "{stderr}");
    let output = Command::new(BIN)
        .args(["webhook", "--tls-cert", "/nonexistent/tls.crt", "--tls-key"])
        .arg(dir.0.join("tls.key"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/tls.crt"));
}
