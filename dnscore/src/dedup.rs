//! In-flight deduplication: concurrent identical queries share one upstream query.
//!
//! The first caller for a key starts a *flight* and runs it in its own task (most misses
//! have no other caller, and a task of the flight's own would cost a spawn and a wake-up
//! per miss); if that caller is dropped first, the flight is spawned as a task of its own
//! to finish for the others, so that cancelling one caller never cancels the query. The
//! other callers wait on the flight's `watch` channel. The flight leaves the map when it
//! ends (or is dropped with its runtime, in which case its waiters get
//! [`Error::Shutdown`]).
//!
//! Both the number of flights and the number of callers waiting on one flight are bounded
//! (a DNSBomb-style flood of one slow name must not pile up answers to send at once); past
//! a bound the caller gets [`Error::Overloaded`] at once.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::watch;

use crate::cache::Entry;
use crate::error::Error;

/// The outcome of one flight, shared by all its callers.
pub(crate) type FlightResult = Result<(Arc<Entry>, SocketAddr), Error>;

/// One flight: its outcome channel and how many callers wait on it.
struct Flight {
    rx: watch::Receiver<Option<FlightResult>>,
    waiters: Arc<AtomicUsize>,
}

type Flights = HashMap<Arc<[u8]>, Flight>;

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
        let (role, waiters) = {
            let mut flights = Self::lock(&self.flights);
            if let Some(flight) = flights.get(key) {
                if flight.waiters.fetch_add(1, Ordering::AcqRel) >= self.max_waiters {
                    flight.waiters.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::Overloaded);
                }
                (Err(flight.rx.clone()), Arc::clone(&flight.waiters))
            } else {
                if flights.len() >= self.max_flights {
                    return Err(Error::Overloaded);
                }
                let key: Arc<[u8]> = key.into();
                let (tx, rx) = watch::channel(None);
                let waiters = Arc::new(AtomicUsize::new(1));
                let flight = Flight {
                    rx,
                    waiters: Arc::clone(&waiters),
                };
                flights.insert(Arc::clone(&key), flight);
                let work = start(Arc::clone(&key));
                let leave = Leave {
                    flights: Arc::clone(&self.flights),
                    key,
                };
                let flight = Box::pin(async move {
                    let result = work.await;
                    // Leave first: a caller arriving now finds the answer in the cache.
                    drop(leave);
                    let _ = tx.send(Some(result.clone()));
                    result
                });
                (Ok(flight), waiters)
            }
        };
        let _waiting = Waiting(waiters);
        match role {
            Ok(flight) => {
                on_role(Role::Started);
                Detachable(Some(flight)).await
            }
            Err(mut rx) => {
                on_role(Role::Joined);
                match rx.wait_for(Option::is_some).await {
                    Ok(result) => result.clone().unwrap_or(Err(Error::Shutdown)),
                    Err(_) => Err(Error::Shutdown),
                }
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
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
