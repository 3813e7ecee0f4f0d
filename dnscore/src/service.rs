//! The resolver as a `tower::Service`, so callers can layer their own middleware (timeouts,
//! rate limits, metrics) around it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Error;
use crate::resolver::Resolver;

impl tower::Service<Vec<u8>> for Resolver {
    type Response = Vec<u8>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u8>, Error>> + Send>>;

    /// Always ready: back-pressure is the caller's to add (e.g. `tower::limit`).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    /// Same as [`Resolver::resolve`], for an owned wire-format query.
    fn call(&mut self, query: Vec<u8>) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.resolve(&query).await })
    }
}
