//! A small fuzzing driver for property tests that run inside `cargo test`:
//! random inputs, fed through [`arbitrary::Unstructured`] so the same
//! generators could back a `cargo fuzz` target, for a time budget.
//!
//! - `ISOLA_FUZZ_SECS`: seconds per fuzz target (default 2, so CI stays
//!   fast; set e.g. 300 to fuzz for longer).
//! - `ISOLA_FUZZ_SEED`: the first case's seed (default: from the clock).
//!   A failing case prints its seed; setting it reproduces that case first.

use std::time::{Duration, Instant};

/// A seed from the clock, for runs that should differ each time.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Drives one fuzz target: hands out cases until its time is up.
pub struct Fuzz {
    name: &'static str,
    seed: u64,
    deadline: Instant,
    cases: u64,
    min_cases: u64,
    current: Option<u64>,
}

impl Fuzz {
    /// A driver for `name` that runs for `ISOLA_FUZZ_SECS` (2 s by
    /// default) times `scale`, and at least `min_cases` cases.
    pub fn new(name: &'static str, scale: f64, min_cases: u64) -> Fuzz {
        let secs: f64 = std::env::var("ISOLA_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0);
        let seed = std::env::var("ISOLA_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(clock_seed);
        eprintln!("fuzz {name}: seed {seed}, {:.1} s", secs * scale);
        Fuzz {
            name,
            seed,
            deadline: Instant::now() + Duration::from_secs_f64(secs * scale),
            cases: 0,
            min_cases,
            current: None,
        }
    }

    /// The next case's random bytes (`len` of them), or `None` when the
    /// budget is spent.
    pub fn next_case(&mut self, len: usize) -> Option<Vec<u8>> {
        if self.cases >= self.min_cases && Instant::now() >= self.deadline {
            eprintln!("fuzz {}: {} cases, no failure", self.name, self.cases);
            self.current = None;
            return None;
        }
        let seed = self.seed.wrapping_add(self.cases);
        self.cases += 1;
        self.current = Some(seed);
        let mut rng = fastrand::Rng::with_seed(seed);
        // Vary the length too: short inputs hit the "ran out of bytes"
        // defaults of `Unstructured`, long ones the rich structures.
        let len = rng.usize(0..=len);
        Some((0..len).map(|_| rng.u8(..)).collect())
    }

    /// Cases run so far.
    pub fn cases(&self) -> u64 {
        self.cases
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(seed) = self.current
        {
            eprintln!(
                "fuzz {}: the failing case has seed {seed}; reproduce with ISOLA_FUZZ_SEED={seed}",
                self.name
            );
        }
    }
}
