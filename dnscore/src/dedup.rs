//! In-flight deduplication: concurrent identical queries share one upstream query.
//!
//! The first caller for a key starts a *flight*, a spawned task, so that cancelling that
//! caller does not cancel the query for the others. Every caller, the first included, waits
//! on the flight's `watch` channel. The flight leaves the map when it ends (or is dropped
//! with its runtime, in which case its waiters get [`Error::Shutdown`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::answer::Answer;
use crate::error::Error;

/// The outcome of one flight, shared by all its callers.
pub(crate) type FlightResult = Result<Arc<Answer>, Error>;

type Flights = HashMap<Arc<[u8]>, watch::Receiver<Option<FlightResult>>>;

/// The flights under way, by key.
#[derive(Default)]
pub(crate) struct Dedup {
    flights: Arc<Mutex<Flights>>,
}

impl Dedup {
    fn lock(flights: &Mutex<Flights>) -> MutexGuard<'_, Flights> {
        // Every critical section is a single get, insert or remove: a poisoned map is sound.
        flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, or starts one with `start` if there is none.
    pub(crate) async fn run<F, Fut>(&self, key: &[u8], start: F) -> FlightResult
    where
        F: FnOnce(Arc<[u8]>) -> Fut,
        Fut: Future<Output = FlightResult> + Send + 'static,
    {
        let mut rx = {
            let mut flights = Self::lock(&self.flights);
            if let Some(rx) = flights.get(key) {
                rx.clone()
            } else {
                let key: Arc<[u8]> = key.into();
                let (tx, rx) = watch::channel(None);
                flights.insert(Arc::clone(&key), rx.clone());
                let flight = start(Arc::clone(&key));
                let leave = Leave {
                    flights: Arc::clone(&self.flights),
                    key,
                };
                tokio::spawn(async move {
                    let result = flight.await;
                    // Leave first: a caller arriving now finds the answer in the cache.
                    drop(leave);
                    let _ = tx.send(Some(result));
                });
                rx
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Err(Error::Shutdown)),
            Err(_) => Err(Error::Shutdown),
        }
    }

    /// How many flights are under way.
    pub(crate) fn len(&self) -> usize {
        Self::lock(&self.flights).len()
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
