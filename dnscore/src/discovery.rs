//! Upstreams discovered by name: a headless Service that selects the CoreDNS pods lets the
//! resolver talk to the pods directly, without the Service IP's DNAT and its conntrack
//! entries, and follow them as they come and go.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Error;
use crate::resolver::Resolver;

impl Resolver {
    /// Keeps the upstream list equal to the addresses `name` resolves to, on `port`, asking
    /// every `interval` through this resolver itself (so through its current upstreams, and
    /// its cache: the record's TTL bounds how fresh the list is). Upstreams that leave the
    /// list are drained (their queries re-driven). When the name cannot be resolved, the list
    /// the resolver had when this started (the bootstrap, e.g. the kube-dns Service IP) is
    /// restored; an empty answer changes nothing.
    ///
    /// Runs until dropped: spawn it, e.g.
    /// `tokio::spawn(resolver.clone().follow_upstreams("coredns-headless.kube-system.svc.cluster.local".into(), 53, Duration::from_secs(5)))`.
    pub async fn follow_upstreams(self, name: String, port: u16, interval: Duration) {
        let bootstrap = self.upstream_addrs();
        loop {
            match self.lookup_ip(&name).await {
                Ok(ips) if !ips.is_empty() => {
                    let mut found: Vec<SocketAddr> = ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect();
                    found.sort();
                    found.dedup();
                    self.switch_to(&found);
                }
                Ok(_) | Err(Error::NxDomain) => {
                    tracing::warn!(%name, "upstream discovery found no address; list kept");
                }
                Err(err) => {
                    tracing::warn!(%name, %err, "upstream discovery failed; using the bootstrap list");
                    self.switch_to(&bootstrap);
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn switch_to(&self, addrs: &[SocketAddr]) {
        let mut current = self.upstream_addrs();
        current.sort();
        let mut next = addrs.to_vec();
        next.sort();
        if current != next && self.set_upstreams(addrs).is_ok() {
            tracing::info!(upstreams = ?addrs, "upstream list changed");
        }
    }
}
