//! `tower::Service<Name>` for [`Resolver`] (feature `hyper-util`), the resolver that
//! hyper-util's `HttpConnector` takes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use super::{ResolveError, SocketAddrs};
use crate::resolver::Resolver;

/// hyper-util's DNS hook: `HttpConnector::new_with_resolver(resolver)`, and so hyper-util's
/// legacy `Client` and tonic's `Endpoint::connect_with_connector`. Each lookup is
/// [`Resolver::lookup_ip`]; the addresses carry port 0, which the connector replaces with
/// the URI's port.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use hyper_util::client::legacy::Client;
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use hyper_util::rt::TokioExecutor;
///
/// let resolver = dnscore::Resolver::builder()
///     .upstream("10.100.0.10:53".parse()?)
///     .build()?;
/// let connector = HttpConnector::new_with_resolver(resolver);
/// let client: Client<_, http_body_util::Empty<hyper::body::Bytes>> =
///     Client::builder(TokioExecutor::new()).build(connector);
/// let response = client
///     .get("http://my-svc.my-ns.svc.cluster.local/".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
impl tower::Service<Name> for Resolver {
    type Response = SocketAddrs;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<SocketAddrs, ResolveError>> + Send>>;

    /// Always ready, as for wire queries.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(super::socket_addrs(self.clone(), name.as_str().into()))
    }
}
