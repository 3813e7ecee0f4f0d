//! `reqwest::dns::Resolve` for [`Resolver`] (feature `reqwest`).

use ::reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::resolver::Resolver;

/// reqwest's DNS hook: [`Resolver::lookup_ip`] for each new connection's host name. The
/// addresses carry port 0, which reqwest replaces with the URL's port (or the scheme's).
///
/// reqwest's own overrides (`ClientBuilder::resolve`) still apply on top. A failed lookup
/// is a reqwest error whose source chain holds the
/// [`ResolveError`](crate::adapters::ResolveError).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let resolver = dnscore::Resolver::builder()
///     .upstream("10.100.0.10:53".parse()?)
///     .build()?;
/// let client = reqwest::Client::builder()
///     .dns_resolver(resolver)
///     .build()?;
/// let body = client
///     .get("http://my-svc.my-ns.svc.cluster.local/")
///     .send()
///     .await?
///     .text()
///     .await?;
/// # Ok(()) }
/// ```
impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = super::socket_addrs(self.clone(), name.as_str().into());
        Box::pin(async move {
            let addrs: Addrs = Box::new(lookup.await?);
            Ok(addrs)
        })
    }
}
