//! A clock a test moves by hand, for code that takes its time source
//! (`Arc<dyn Fn() -> Instant + Send + Sync>`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts at the real now and moves only when told. Clones share it.
#[derive(Clone, Debug)]
pub struct FakeClock(Arc<Mutex<Instant>>);

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock(Arc::new(Mutex::new(Instant::now())))
    }
}

impl FakeClock {
    /// A clock at the real now.
    pub fn new() -> Self {
        FakeClock::default()
    }

    /// The time it shows.
    pub fn now(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves it forward.
    pub fn advance(&self, d: Duration) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += d;
    }

    /// A time source reading this clock.
    pub fn source(&self) -> Arc<dyn Fn() -> Instant + Send + Sync> {
        let c = self.clone();
        Arc::new(move || c.now())
    }
}
