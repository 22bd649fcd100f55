//! The epoch ticker: one thread per runner that advances the engine's
//! epoch every tick while any task runs Wasm, and parks otherwise.
//!
//! Every store yields to the async runtime at each epoch deadline (see
//! the `store` module), so the tick is both the time slice of busy guests
//! and the latency of a timeout or cancel. Tasks waiting in a host call
//! (for a message) pause their share of the ticker, so idle tasks cost no
//! CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// Advances the engine's epoch every tick while any task is running, and
/// sleeps otherwise so an idle runner costs no CPU.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    running: AtomicUsize,
    stop: AtomicBool,
    /// Epochs advanced so far.
    ticks: AtomicU64,
}

/// Keeps the ticker going while alive: one per running task.
pub(crate) struct TickerGuard {
    ticker: TickerHandle,
}

/// Lets the ticker stop while alive: a task waiting in a host call (for a
/// message) runs no Wasm, so it needs no epoch to interrupt it.
pub(crate) struct TickerPause {
    ticker: TickerHandle,
}

/// A task's link to its runner's ticker.
#[derive(Clone)]
pub(crate) struct TickerHandle {
    shared: Arc<TickerShared>,
    thread: std::thread::Thread,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine, tick: Duration) -> EpochTicker {
        EpochTicker::start_with(engine, tick, || ())
    }

    /// [`EpochTicker::start`], running `setup` first on the ticker's thread
    /// and keeping what it returns until the thread ends (a worker uses it
    /// to lock that thread out of the file system before any task, so its
    /// sandbox need not reach the thread later).
    pub(crate) fn start_with<G: 'static>(
        engine: &Engine,
        tick: Duration,
        setup: impl FnOnce() -> G + Send + 'static,
    ) -> EpochTicker {
        let engine = engine.weak();
        let shared = Arc::new(TickerShared {
            running: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("isola-epoch".into())
            .spawn(move || {
                let _setup = setup();
                while !thread_shared.stop.load(Ordering::Acquire) {
                    if thread_shared.running.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(tick);
                    // Weak: a dropped runner frees its engine (and the
                    // instance pool's address space) at once, not when this
                    // detached thread next wakes.
                    let Some(engine) = engine.upgrade() else {
                        break;
                    };
                    engine.increment_epoch();
                    thread_shared.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!(
                "cannot start the epoch thread: timeouts will not interrupt busy guests"
            );
        }
        EpochTicker { shared, thread }
    }

    /// Epochs advanced so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }

    pub(crate) fn handle(&self) -> Option<TickerHandle> {
        Some(TickerHandle {
            shared: Arc::clone(&self.shared),
            thread: self.thread.as_ref()?.thread().clone(),
        })
    }
}

impl TickerHandle {
    fn up(&self) {
        if self.shared.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
    }

    fn down(&self) {
        // No unpark: the ticker notices on its next tick and parks.
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn activate(self) -> TickerGuard {
        self.up();
        TickerGuard { ticker: self }
    }

    /// Only while the task holds a [`TickerGuard`].
    pub(crate) fn pause(&self) -> TickerPause {
        self.down();
        TickerPause {
            ticker: self.clone(),
        }
    }
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.ticker.down();
    }
}

impl Drop for TickerPause {
    fn drop(&mut self) {
        self.ticker.up();
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Not joined: the thread may be inside a tick's sleep, and a
            // short-lived runner (a one-shot CLI run) would wait that out.
            // It sees `stop` when it wakes and exits on its own.
            thread.thread().unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Config;

    /// Epochs `ticker` advanced within `wait`.
    fn ticks_during(ticker: &EpochTicker, wait: Duration) -> u64 {
        let before = ticker.ticks();
        std::thread::sleep(wait);
        ticker.ticks() - before
    }

    #[test]
    fn the_ticker_runs_only_while_a_task_runs_wasm() {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let ticker = EpochTicker::start(&engine, Duration::from_millis(1));
        let wait = Duration::from_millis(100);
        let handle = ticker.handle().expect("ticker thread");

        assert_eq!(ticks_during(&ticker, wait), 0, "idle: no ticks");
        let running = handle.clone().activate();
        assert!(
            ticks_during(&ticker, wait) > 10,
            "a running task gets ticks"
        );
        let waiting = handle.pause();
        // The ticker parks at its next tick.
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(
            ticks_during(&ticker, wait),
            0,
            "a waiting task costs no ticks"
        );
        drop(waiting);
        assert!(
            ticks_during(&ticker, wait) > 10,
            "ticks resume after the wait"
        );
        drop(running);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(ticks_during(&ticker, wait), 0, "idle again");
    }
}
