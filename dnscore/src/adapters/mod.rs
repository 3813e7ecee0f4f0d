//! Drop-in DNS resolvers for HTTP clients, each behind the cargo feature of its client
//! (none is on by default):
//!
//! | feature | client | hook | what implements it |
//! |---|---|---|---|
//! | `reqwest` | reqwest 0.13 | `ClientBuilder::dns_resolver` | `reqwest::dns::Resolve` for [`Resolver`] |
//! | `hyper-util` | hyper-util's legacy client, and tonic through it | `HttpConnector::new_with_resolver` | `tower::Service<Name>` for [`Resolver`] |
//! | `aws` | the AWS SDK's HTTP client (aws-smithy-http-client) | `Builder::build_with_resolver` | `ResolveDns` for [`Resolver`] |
//!
//! Each is [`Resolver::lookup_ip`] and nothing more: the name as the client gives it, A and
//! AAAA asked together, the answer from the cache when there is one. A resolver built with
//! [`ResolverBuilder::from_system_conf`](crate::ResolverBuilder::from_system_conf) asks the
//! hosts file and applies the pod's search list and `ndots` first, so URLs with short
//! Kubernetes names (`http://orders/`, `http://orders.shop/`) work as with getaddrinfo. An IP literal comes back
//! as it is (the clients do not ask for those anyway). The addresses carry port 0, which the
//! clients replace with the URL's port (or the scheme's).
//!
//! A failed lookup is a [`ResolveError`], which the client wraps as the source of its own
//! connect error: [`ResolveError::Lookup`] keeps the resolver's [`Error`] as its source
//! (NXDOMAIN, no upstream answered, ...), and an answer without any address (NODATA for both
//! A and AAAA) is [`ResolveError::NoAddresses`] rather than an empty list, which the clients
//! would report as a failed connection. Each client's example is on its impl.
//!
//! The reqwest and hyper-util impls clone the resolver (one `Arc`) into each lookup's future,
//! which is `Send` and `'static` as the clients need.

use std::net::IpAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::resolver::Resolver;

#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "hyper-util")]
mod hyper;
#[cfg(feature = "reqwest")]
mod reqwest;

/// Why an adapter could not give a client any address for a name.
///
/// `Clone`, like [`Error`]; `Send + Sync + 'static`, so every client can box it as the
/// source of its connect error (walk [`std::error::Error::source`] to reach it).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The lookup failed; the resolver's error is the source and says what to do
    /// ([`Error::NxDomain`]: the name does not exist, do not retry; [`Error::NoAnswer`]: no
    /// upstream answered, retry later; ...).
    #[error("dnscore could not resolve {name:?}")]
    Lookup {
        /// The name the client asked for.
        name: Arc<str>,
        /// What the resolver returned.
        #[source]
        source: Error,
    },
    /// The name exists but has neither an A nor an AAAA record (NODATA for both).
    #[error("{name:?} has no IPv4 or IPv6 address")]
    NoAddresses {
        /// The name the client asked for.
        name: Arc<str>,
    },
}

impl ResolveError {
    /// The name the client asked for.
    pub fn name(&self) -> &str {
        match self {
            Self::Lookup { name, .. } | Self::NoAddresses { name } => name,
        }
    }

    /// The resolver's error, for [`ResolveError::Lookup`].
    pub fn lookup_error(&self) -> Option<&Error> {
        match self {
            Self::Lookup { source, .. } => Some(source),
            Self::NoAddresses { .. } => None,
        }
    }
}

/// The addresses of one lookup as socket addresses with port 0, which the client replaces
/// with the port it connects to; IPv4 first, then IPv6, in the order of the answers.
#[cfg(any(feature = "reqwest", feature = "hyper-util"))]
#[derive(Clone, Debug)]
pub struct SocketAddrs {
    ips: std::vec::IntoIter<IpAddr>,
}

#[cfg(any(feature = "reqwest", feature = "hyper-util"))]
impl Iterator for SocketAddrs {
    type Item = std::net::SocketAddr;

    fn next(&mut self) -> Option<Self::Item> {
        self.ips.next().map(|ip| std::net::SocketAddr::new(ip, 0))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ips.size_hint()
    }
}

#[cfg(any(feature = "reqwest", feature = "hyper-util"))]
impl ExactSizeIterator for SocketAddrs {}

/// The one lookup every adapter does: [`Resolver::lookup_ip`], with an empty answer made an
/// error.
async fn lookup(resolver: &Resolver, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
    match resolver.lookup_ip(name).await {
        Ok(ips) if ips.is_empty() => Err(ResolveError::NoAddresses {
            name: Arc::from(name),
        }),
        Ok(ips) => Ok(ips),
        Err(source) => Err(ResolveError::Lookup {
            name: Arc::from(name),
            source,
        }),
    }
}

/// [`lookup`] for the clients that take an owned, `'static` future and socket addresses.
#[cfg(any(feature = "reqwest", feature = "hyper-util"))]
async fn socket_addrs(resolver: Resolver, name: Box<str>) -> Result<SocketAddrs, ResolveError> {
    let ips = lookup(&resolver, &name).await?;
    Ok(SocketAddrs {
        ips: ips.into_iter(),
    })
}
