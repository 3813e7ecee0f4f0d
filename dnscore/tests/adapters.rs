//! The HTTP-client adapters (features `reqwest`, `hyper-util`, `aws`) against the test
//! upstream and a real HTTP server, both on loopback: each client fetches a page from a name
//! only the test upstream knows, and a name it does not know fails with dnscore's error.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use aws_smithy_runtime_api::client::dns::ResolveDns;
use dnscore::adapters::ResolveError;
use dnscore::proto::rr::RData;
use dnscore::proto::rr::rdata::{A, TXT};
use dnscore::{Error, Resolver};
use dnscore_testkit::{Proto, TestHttpServer, TestUpstream};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const BODY: &str = "hello from web.test";
/// Bounds every request: a failure must come back as an error, never as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The test upstream with `web.test.` at 127.0.0.1 (and `text.test.`, which has a TXT
/// record only), the HTTP server, and a resolver asking that upstream.
async fn setup() -> (TestUpstream, TestHttpServer, Resolver) {
    let upstream = TestUpstream::start().await.unwrap();
    upstream.add_record("web.test.", RData::A(A::new(127, 0, 0, 1)), 60);
    upstream.add_record(
        "text.test.",
        RData::TXT(TXT::new(vec!["no address".into()])),
        60,
    );
    let server = TestHttpServer::start(BODY).await.unwrap();
    let resolver = Resolver::builder()
        .upstream(upstream.addr())
        .attempt_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    (upstream, server, resolver)
}

fn url(name: &str, server: &TestHttpServer) -> String {
    format!("http://{name}:{}/", server.addr().port())
}

/// The adapter's error somewhere in the source chain of a client's error.
fn resolve_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a ResolveError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<ResolveError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

fn reqwest_client(resolver: Resolver) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(resolver)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

#[tokio::test]
async fn reqwest_fetches_a_page_from_a_name_dnscore_resolves() {
    let (upstream, server, resolver) = setup().await;
    let client = reqwest_client(resolver);

    let response = client.get(url("web.test", &server)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.remote_addr().map(|a| a.ip()),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    assert_eq!(response.text().await.unwrap(), BODY);
    let host = format!("web.test:{}", server.addr().port());
    assert_eq!(server.last_host(), Some(host));
    assert!(upstream.queries("web.test", Proto::Udp) >= 1);

    // The server closed that connection: the next request opens another, and its lookup is
    // a cache hit.
    let asked = upstream.total_queries();
    let again = client.get(url("web.test", &server)).send().await.unwrap();
    assert_eq!(again.text().await.unwrap(), BODY);
    assert_eq!(server.requests(), 2);
    assert_eq!(
        upstream.total_queries(),
        asked,
        "the second lookup is a hit"
    );
}

#[tokio::test]
async fn reqwest_gets_an_error_for_a_name_the_upstream_does_not_know() {
    let (upstream, server, resolver) = setup().await;
    let client = reqwest_client(resolver);

    let sent = client.get(url("nowhere.test", &server)).send();
    let err = tokio::time::timeout(REQUEST_TIMEOUT, sent)
        .await
        .expect("an error, not a hang")
        .expect_err("no such name");
    assert!(err.is_connect(), "{err:?}");
    let found = resolve_error(&err).expect("the adapter's error is in the chain");
    assert_eq!(found.name(), "nowhere.test");
    assert!(
        matches!(found.lookup_error(), Some(Error::NxDomain)),
        "{found:?}"
    );
    assert!(upstream.queries("nowhere.test", Proto::Udp) >= 1);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn reqwest_sees_addresses_with_port_zero() {
    use reqwest::dns::{Name, Resolve};

    let (_upstream, _server, resolver) = setup().await;
    let addrs: Vec<SocketAddr> = Resolve::resolve(&resolver, Name::from_str("web.test").unwrap())
        .await
        .unwrap()
        .collect();
    assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
}

#[tokio::test]
async fn hyper_util_client_fetches_the_page_through_the_connector() {
    let (upstream, server, resolver) = setup().await;
    let connector = HttpConnector::new_with_resolver(resolver);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);

    let uri = url("web.test", &server).parse().unwrap();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.get(uri))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, BODY.as_bytes());
    let host = format!("web.test:{}", server.addr().port());
    assert_eq!(server.last_host(), Some(host));
    assert!(upstream.queries("web.test", Proto::Udp) >= 1);

    let uri = url("nowhere.test", &server).parse().unwrap();
    let err = tokio::time::timeout(REQUEST_TIMEOUT, client.get(uri))
        .await
        .expect("an error, not a hang")
        .expect_err("no such name");
    assert!(err.is_connect(), "{err:?}");
    let found = resolve_error(&err).expect("the adapter's error is in the chain");
    assert!(
        matches!(found.lookup_error(), Some(Error::NxDomain)),
        "{found:?}"
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn aws_resolve_dns_gives_the_address_and_errors_for_unknown_names() {
    let (upstream, _server, resolver) = setup().await;

    let ips = resolver.resolve_dns("web.test").await.unwrap();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    assert!(upstream.queries("web.test", Proto::Udp) >= 1);

    let err = resolver.resolve_dns("nowhere.test").await.unwrap_err();
    let found = resolve_error(&err).expect("the ResolveDnsError's source");
    assert_eq!(found.name(), "nowhere.test");
    assert!(
        matches!(found.lookup_error(), Some(Error::NxDomain)),
        "{found:?}"
    );

    // A name with records but no address is an error too, not an empty list.
    let err = resolver.resolve_dns("text.test").await.unwrap_err();
    let found = resolve_error(&err).expect("the ResolveDnsError's source");
    assert!(
        matches!(found, ResolveError::NoAddresses { name } if &**name == "text.test"),
        "{found:?}"
    );
}

#[tokio::test]
async fn reqwest_fetches_a_short_name_through_the_search_list() {
    let (upstream, server, _) = setup().await;
    upstream.add_record("orders.shop.svc.test.", RData::A(A::new(127, 0, 0, 1)), 60);
    // As a pod's resolv.conf would have it, with the test upstream as nameserver.
    let resolver = Resolver::builder()
        .upstream(upstream.addr())
        .search(["shop.svc.test", "svc.test", "test"])
        .ndots(5)
        .build()
        .unwrap();
    let client = reqwest_client(resolver);
    let response = client.get(url("orders", &server)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), BODY);
    assert!(upstream.queries("orders.shop.svc.test", Proto::Udp) >= 1);
    // `web` is found further down the list (web.test), after an NXDOMAIN on the way.
    let response = client.get(url("web", &server)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(upstream.queries("web.shop.svc.test", Proto::Udp) >= 1);
    assert!(upstream.queries("web.test", Proto::Udp) >= 1);
}
