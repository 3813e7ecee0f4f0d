//! In-flight deduplication: concurrent identical queries share one upstream query.
//!
//! The first caller for a key starts a *flight* and runs it in its own task (most misses
//! have no other caller, and a task of the flight's own would cost a spawn and a wake-up
//! per miss); if that caller is dropped first, the flight is spawned as a task of its own
//! to finish for the others, so that cancelling one caller never cancels the query. The
//! other callers wait on the flight's shared outcome. The flight leaves the map when it
//! ends (or is dropped with its runtime, in which case its waiters get
//! [`Error::Shutdown`]). A flight nobody joined publishes nothing: it costs one allocation
//! for what its callers share, not a `watch` channel's two and the eight wake-up lists its
//! sender walks when it is dropped.
//!
//! Both the number of flights and the number of callers waiting on one flight are bounded
//! (a DNSBomb-style flood of one slow name must not pile up answers to send at once); past
//! a bound the caller gets [`Error::Overloaded`] at once.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::Notify;

use crate::cache::Entry;
use crate::error::Error;

/// The outcome of one flight, shared by all its callers.
pub(crate) type FlightResult = Result<(Arc<Entry>, SocketAddr), Error>;

/// What the callers of one flight share: how many wait on it, and its outcome once it has
/// one (set only when someone joined).
struct Flight {
    waiters: AtomicUsize,
    /// Set (under the map's lock) by the first caller that joins.
    joined: AtomicBool,
    outcome: OnceLock<FlightResult>,
    /// Wakes the callers that joined when the outcome is set.
    landed: Notify,
}

/// Hashed with quick_cache's seeded hasher (foldhash), as the cache's keys are: SipHash
/// cost a miss a few hundred instructions per lookup.
type Flights = HashMap<Arc<[u8]>, Arc<Flight>, quick_cache::DefaultHashBuilder>;

/// The flights under way, by key.
pub(crate) struct Dedup {
    flights: Arc<Mutex<Flights>>,
    max_flights: usize,
    max_waiters: usize,
}

/// Whether a caller started the flight or joined one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Started,
    Joined,
}

impl Dedup {
    pub(crate) fn new(max_flights: usize, max_waiters: usize) -> Self {
        Self {
            flights: Arc::default(),
            max_flights,
            max_waiters,
        }
    }

    fn lock(flights: &Mutex<Flights>) -> MutexGuard<'_, Flights> {
        // Every critical section is a single get, insert or remove: a poisoned map is sound.
        flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, or starts one with `start` if there is none. `on_role`
    /// learns which, before the wait.
    pub(crate) async fn run<F, Fut>(
        &self,
        key: &[u8],
        start: F,
        on_role: impl FnOnce(Role),
    ) -> FlightResult
    where
        F: FnOnce(Arc<[u8]>) -> Fut,
        Fut: Future<Output = FlightResult> + Send + 'static,
    {
        let (role, shared) = {
            let mut flights = Self::lock(&self.flights);
            if let Some(flight) = flights.get(key) {
                if flight.waiters.fetch_add(1, Ordering::AcqRel) >= self.max_waiters {
                    flight.waiters.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::Overloaded);
                }
                flight.joined.store(true, Ordering::Relaxed);
                (None, Arc::clone(flight))
            } else {
                if flights.len() >= self.max_flights {
                    return Err(Error::Overloaded);
                }
                let key: Arc<[u8]> = key.into();
                let shared = Arc::new(Flight {
                    waiters: AtomicUsize::new(1),
                    joined: AtomicBool::new(false),
                    outcome: OnceLock::new(),
                    landed: Notify::new(),
                });
                flights.insert(Arc::clone(&key), Arc::clone(&shared));
                let work = start(Arc::clone(&key));
                let leave = Leave {
                    flights: Arc::clone(&self.flights),
                    key,
                };
                let publish = Publish(Arc::clone(&shared));
                let flight = Box::pin(async move {
                    let result = work.await;
                    // Leave first: a caller arriving now finds the answer in the cache.
                    drop(leave);
                    publish.outcome(&result);
                    result
                });
                (Some(flight), shared)
            }
        };
        let waiting = Waiting(shared);
        match role {
            Some(flight) => {
                on_role(Role::Started);
                Detachable(Some(flight)).await
            }
            None => {
                on_role(Role::Joined);
                waiting.outcome().await
            }
        }
    }

    /// How many flights are under way.
    pub(crate) fn len(&self) -> usize {
        Self::lock(&self.flights).len()
    }
}

/// A flight run by the caller that started it; dropped unfinished (the caller was
/// cancelled), it is spawned to finish for the others. Without a runtime to spawn on it
/// is dropped, and the others get [`Error::Shutdown`].
struct Detachable<F: Future<Output = FlightResult> + Send + 'static>(Option<Pin<Box<F>>>);

impl<F: Future<Output = FlightResult> + Send + 'static> Future for Detachable<F> {
    type Output = FlightResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FlightResult> {
        let Some(flight) = self.0.as_mut() else {
            return Poll::Ready(Err(Error::Shutdown));
        };
        let result = std::task::ready!(flight.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(result)
    }
}

impl<F: Future<Output = FlightResult> + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        if let Some(flight) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(flight);
        }
    }
}

/// Counts a caller out of a flight's waiters, however its wait ends.
struct Waiting(Arc<Flight>);

impl Waiting {
    /// The flight's outcome, once it has one.
    async fn outcome(&self) -> FlightResult {
        let flight = &self.0;
        loop {
            let landed = flight.landed.notified();
            tokio::pin!(landed);
            // Registered before the look, so that an outcome set after it wakes this wait.
            landed.as_mut().enable();
            if let Some(result) = flight.outcome.get() {
                return result.clone();
            }
            landed.await;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The flight's side of what its callers share: sets the outcome if anyone joined, and
/// wakes them; dropped without one (the flight was dropped unfinished), it tells them
/// [`Error::Shutdown`].
struct Publish(Arc<Flight>);

impl Publish {
    /// Called once the flight has left the map: no caller can join it any more, and one
    /// that did set `joined` under the map's lock, which leaving took after it.
    fn outcome(self, result: &FlightResult) {
        if self.0.joined.load(Ordering::Relaxed) {
            let _ = self.0.outcome.set(result.clone());
        }
    }
}

impl Drop for Publish {
    fn drop(&mut self) {
        if self.0.joined.load(Ordering::Relaxed) {
            let _ = self.0.outcome.set(Err(Error::Shutdown));
            self.0.landed.notify_waiters();
        }
    }
}

/// Takes a flight out of the map when it ends, however it ends.
struct Leave {
    flights: Arc<Mutex<Flights>>,
    key: Arc<[u8]>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        Dedup::lock(&self.flights).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// A flight that ends with what `rx` brings (an error stands for any outcome).
    async fn waiting_on(rx: oneshot::Receiver<()>) -> FlightResult {
        let _ = rx.await;
        Err(Error::NxDomain)
    }

    #[tokio::test]
    async fn joiners_get_the_outcome_of_a_flight_whose_starter_was_cancelled() {
        let dedup = Arc::new(Dedup::new(8, 8));
        let (tx, rx) = oneshot::channel();
        let starter = {
            let dedup = Arc::clone(&dedup);
            tokio::spawn(async move { dedup.run(b"k", |_| waiting_on(rx), |_| {}).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(dedup.len(), 1);
        let (role_tx, role_rx) = oneshot::channel();
        let joiner = {
            let dedup = Arc::clone(&dedup);
            tokio::spawn(async move {
                let start = |_| async { Err(Error::Malformed) };
                dedup
                    .run(b"k", start, |role| {
                        let _ = role_tx.send(role);
                    })
                    .await
            })
        };
        assert_eq!(role_rx.await.ok(), Some(Role::Joined));
        starter.abort();
        assert!(starter.await.is_err_and(|e| e.is_cancelled()));
        tx.send(()).ok();
        let outcome = tokio::time::timeout(Duration::from_secs(5), joiner).await;
        assert!(
            matches!(outcome, Ok(Ok(Err(Error::NxDomain)))),
            "{outcome:?}"
        );
        assert_eq!(dedup.len(), 0);
    }

    #[test]
    fn joiners_of_a_flight_dropped_with_its_runtime_get_shutdown() {
        let dedup = Arc::new(Dedup::new(8, 8));
        let (_never, rx) = oneshot::channel::<()>();
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let flight = {
            let dedup = Arc::clone(&dedup);
            first.spawn(async move { dedup.run(b"k", |_| waiting_on(rx), |_| {}).await })
        };
        first.block_on(tokio::task::yield_now());
        assert_eq!(dedup.len(), 1);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let joiner = {
            let dedup = Arc::clone(&dedup);
            second.spawn(async move {
                dedup
                    .run(b"k", |_| async { Err(Error::Malformed) }, |_| {})
                    .await
            })
        };
        second.block_on(tokio::task::yield_now());
        drop(first);
        drop(flight);
        let outcome =
            second.block_on(async { tokio::time::timeout(Duration::from_secs(5), joiner).await });
        assert!(
            matches!(outcome, Ok(Ok(Err(Error::Shutdown)))),
            "{outcome:?}"
        );
        assert_eq!(dedup.len(), 0);
    }
}
