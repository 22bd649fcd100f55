//! The reliability report and the soak run.
//!
//! - `make reliability` runs [`report`]: the whole hostile-guest matrix on
//!   every guest kind and isolation level, signals at random moments,
//!   cache and config faults, the faults a hostile probe found (issue 18:
//!   a bad WASI call, huge tables, a timeout over long host calls, paths
//!   that are not UTF-8, workers left behind, FIFOs in a granted directory
//!   and in the cache, `recv` under `isola up`), and a short soak, then
//!   prints one table (case, isolation/kind, expected outcome, got, time to
//!   stop) and fails if any row is wrong. `ISOLA_SOAK_TASKS` sets the
//!   soak's size (2,000).
//! - `make soak` runs [`soak`]: 100,000 tasks (`ISOLA_SOAK_TASKS`), mixed
//!   isolation and kinds, 10% hostile, 16 at a time.
//! - [`short_soak`] runs with `make test`: 1,000 tasks.
//!
//! A test binary of its own: the soak counts this process's file
//! descriptors and children, which other tests would disturb. Run the
//! ignored tests with `--test-threads=1` for the same reason.

use std::time::Duration;

use isola_tests::matrix::{self, Row};
use isola_tests::soak::{SoakConfig, soak as run_soak};
use isola_tests::{faults, probe, runner, targets};

/// Runs `scenario` (which blocks: it runs `isola` or a runtime of its own)
/// on the blocking pool and returns its rows.
async fn blocking(scenario: impl FnOnce() -> Vec<Row> + Send + 'static) -> Vec<Row> {
    tokio::task::spawn_blocking(scenario)
        .await
        .expect("a report scenario panicked")
}

fn soak_tasks(default: usize) -> usize {
    std::env::var("ISOLA_SOAK_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "the full report: run by `make reliability`"]
async fn report() {
    let runner = runner();
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(matrix::run_all(&runner, |_| true).await);
    rows.extend(matrix::many_memories_and_tables(&runner).await);
    for target in targets() {
        rows.push(matrix::exit_codes(&runner, target).await);
    }
    let seed = isola_tests::fuzz::clock_seed();
    rows.extend(faults::signal_storm(&runner, seed, 12, 12).await);
    rows.extend(faults::unwritable_cache(|_| targets()).await);
    rows.extend(faults::damaged_cache(&faults::all_damage()).await);
    rows.push(faults::config_rewritten_while_read(Duration::from_secs(2)));
    // Issue 18 (a bad WASI call and huge tables are in the matrix above).
    rows.extend(blocking(|| probe::timeout_over_long_host_calls(Duration::from_secs(3))).await);
    rows.extend(probe::paths_that_are_not_utf8().await);
    rows.extend(probe::fifo_in_a_granted_directory(&runner).await);
    rows.extend(blocking(|| probe::fifo_tasks_leave_the_blocking_pool_free(48, 16)).await);
    rows.extend(blocking(probe::fifo_in_the_cache).await);
    rows.extend(blocking(probe::recv_sees_closed_under_up).await);
    rows.extend(blocking(probe::no_zombies_after_a_runner_is_dropped).await);
    drop(runner);
    // Let the runner's idle workers exit, so the soak starts from a quiet
    // process.
    isola_tests::procs::wait_until(Duration::from_secs(10), || {
        isola_tests::procs::children_of(std::process::id()).is_empty()
    });
    let soak = run_soak(SoakConfig::new(soak_tasks(2_000))).await;
    rows.extend(soak.rows());

    println!();
    matrix::print_table(&rows);
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!(
        "\n{} rows, {failed} failed (signal storm seed {seed}, soak seed {})",
        rows.len(),
        soak.config.seed
    );
    assert_eq!(failed, 0, "some rows failed: see the table");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: run by `make soak`"]
async fn soak() {
    let config = SoakConfig::new(soak_tasks(100_000));
    let report = run_soak(config).await;
    matrix::print_table(&report.rows());
    println!("seed {}, {:?}", config.seed, report.elapsed);
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn short_soak() {
    let report = run_soak(SoakConfig::new(1_000)).await;
    assert!(report.ok(), "{report:#?}");
}
