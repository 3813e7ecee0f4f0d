//! The upstream pool: picks an upstream, bounds the query by one deadline, and retries on
//! another upstream when one fails, so that an evicted CoreDNS pod is invisible to the client.
//!
//! One query is a race of attempts. The first attempt goes to a random upstream. Another is
//! launched, on the next upstream in turn, as soon as an attempt fails (port closed, TCP
//! reset, SERVFAIL, REFUSED, malformed answer) or when the attempt timeout passes without
//! an answer; earlier attempts keep listening, so a slow answer still wins if it comes
//! first. An upstream that answered with a failure code is not asked again for this query.
//! The query ends with the first good answer, when attempts run out, or at the deadline.
//!
//! Each attempt is UDP first; a truncated UDP answer is asked again over TCP, of the same
//! upstream (a state of [`attempt`], not a flag), and a truncated TCP answer is a failure.

mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::answer::Answer;
use crate::error::UpstreamError;
use crate::query::Key;

/// How the pool behaves; see the builder for the defaults and their reasons.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) attempt_timeout: Duration,
    pub(crate) deadline: Duration,
    pub(crate) max_attempts: usize,
    pub(crate) tcp_connections: usize,
    pub(crate) tcp_idle_timeout: Duration,
}

/// One upstream server and its TCP connections.
struct Upstream {
    addr: SocketAddr,
    tcp: tcp::TcpPool,
}

/// The upstream servers.
pub(crate) struct Pool {
    upstreams: Box<[Arc<Upstream>]>,
    config: PoolConfig,
}

impl Pool {
    pub(crate) fn new(addrs: &[SocketAddr], config: PoolConfig) -> Self {
        let upstreams = addrs
            .iter()
            .map(|&addr| {
                Arc::new(Upstream {
                    addr,
                    tcp: tcp::TcpPool::new(addr, config.tcp_connections, config.tcp_idle_timeout),
                })
            })
            .collect();
        Self { upstreams, config }
    }

    /// Asks the upstreams for `key` until one gives an answer (NOERROR or NXDOMAIN).
    pub(crate) async fn query(&self, key: &Arc<[u8]>) -> Result<Answer, UpstreamError> {
        let n = self.upstreams.len();
        let deadline = Instant::now() + self.config.deadline;
        let first = rand::random_range(0..n.max(1));
        // Upstreams that answered with a failure code: asking them again gives the same.
        let mut gave_up = vec![false; n];
        let mut attempts = JoinSet::new();
        let mut launched = 0usize;
        let mut next_launch = Instant::now();
        let mut last_error = None;

        loop {
            let now = Instant::now();
            let candidate = (launched < self.config.max_attempts)
                .then(|| {
                    (0..n)
                        .map(|k| (first + launched + k) % n)
                        .find(|&i| !gave_up[i])
                })
                .flatten();
            if let Some(i) = candidate
                && (attempts.is_empty() || now >= next_launch)
            {
                let upstream = Arc::clone(&self.upstreams[i]);
                attempts.spawn(attempt(upstream, Arc::clone(key), i));
                launched += 1;
                next_launch = now + self.config.attempt_timeout;
                continue;
            }
            if attempts.is_empty() {
                break;
            }
            tokio::select! {
                done = attempts.join_next() => {
                    let Some(Ok((i, result))) = done else { continue };
                    match result {
                        Ok(answer) if answer.is_answer() => return Ok(answer),
                        Ok(answer) => {
                            gave_up[i] = true;
                            last_error = Some(UpstreamError::Rcode {
                                addr: self.upstreams[i].addr,
                                rcode: answer.rcode,
                            });
                        }
                        Err(err) => {
                            if matches!(err, UpstreamError::TruncatedOverTcp(_)) {
                                gave_up[i] = true;
                            }
                            last_error = Some(err);
                        }
                    }
                    if let Some(err) = &last_error {
                        tracing::debug!(%err, "upstream attempt failed");
                    }
                }
                () = sleep_until(next_launch), if candidate.is_some() => {}
                () = sleep_until(deadline) => {
                    let addr = self.upstreams[(first + launched.saturating_sub(1)) % n].addr;
                    last_error = Some(UpstreamError::Timeout(addr));
                    break;
                }
            }
        }
        Err(last_error.unwrap_or(UpstreamError::Timeout(self.upstreams[first % n].addr)))
    }
}

/// One attempt at one upstream: UDP, then TCP if the UDP answer was truncated.
async fn attempt(
    upstream: Arc<Upstream>,
    key: Arc<[u8]>,
    index: usize,
) -> (usize, Result<Answer, UpstreamError>) {
    let key = Key(&key);
    let result = match udp::exchange(upstream.addr, key).await {
        Ok(udp::Reply::Answer(answer)) if !answer.truncated() => Ok(answer),
        Ok(udp::Reply::Answer(_) | udp::Reply::TooLarge) => {
            match upstream.tcp.exchange(key).await {
                Ok(answer) if answer.truncated() => {
                    Err(UpstreamError::TruncatedOverTcp(upstream.addr))
                }
                other => other,
            }
        }
        Err(err) => Err(err),
    };
    (index, result)
}
