//! `ResolveDns` for [`Resolver`] (feature `aws`), the DNS hook of the AWS SDK's HTTP client.

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

use crate::resolver::Resolver;

/// The AWS SDK's DNS hook: each lookup is [`Resolver::lookup_ip`]. Give it to the SDK's
/// HTTP client with aws-smithy-http-client's `Builder::build_with_resolver(resolver)` (with
/// the TLS provider of your choice) and that client to the SDK config's `http_client`. A
/// failed lookup is a `ResolveDnsError` whose source is the
/// [`ResolveError`](crate::adapters::ResolveError).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use aws_smithy_runtime_api::client::dns::ResolveDns;
///
/// let resolver = dnscore::Resolver::builder()
///     .upstream("10.100.0.10:53".parse()?)
///     .build()?;
/// let ips = resolver.resolve_dns("sts.us-east-1.amazonaws.com").await?;
/// # Ok(()) }
/// ```
impl ResolveDns for Resolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            super::lookup(self, name)
                .await
                .map_err(ResolveDnsError::new)
        })
    }
}
