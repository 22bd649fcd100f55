//! More faults of the hostile probe (issue 18), each kept as a test:
//! special files in granted directories that blocked the shared blocking
//! pool (item 6), and a process memory limit too small for the worker
//! itself, which ended as a crash (SIGABRT) rather than as that limit
//! (item 9). The scenarios are `isola_tests::probe`'s, shared with the
//! `make reliability` report.

use isola::{ByteSize, Limit, Outcome};
use isola_tests::matrix::Row;
use isola_tests::{KINDS, Target, probe, runner};

/// Fails with every row that is not ok.
fn assert_rows(rows: &[Row]) {
    assert!(!rows.is_empty(), "no rows");
    let failures: Vec<&Row> = rows.iter().filter(|r| !r.ok).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A guest that opens a FIFO with no writer (to read), or with no reader
/// (to write), in a granted directory is refused at once with "not
/// supported", at both isolation levels and for both guest kinds. It used
/// to block in `open(2)` until its timeout. A regular file beside the FIFO
/// still reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_in_a_granted_directory_is_refused_at_once() {
    assert_rows(&probe::fifo_in_a_granted_directory(&runner()).await);
}

/// Three times as many thread tasks as the blocking pool has threads each
/// open a FIFO in a granted directory; each ends within its 500 ms
/// timeout, and afterwards an unrelated task (module and component) reads
/// a regular file at once. Each blocked `open` used to keep its pool
/// thread after its task ended, until the pool was full and every other
/// task's file access waited forever (600 tasks against Tokio's default
/// 512 threads; here 48 against 16).
#[test]
fn fifo_opens_leave_the_blocking_pool_to_everyone_else() {
    assert_rows(&probe::fifo_tasks_leave_the_blocking_pool_free(48, 16));
}

/// A process memory limit below what a worker holds before it runs
/// anything (about 6 MiB) is reported as that limit, for both kinds, every
/// time: the worker's first allocation under it used to fail in Rust's
/// allocator, which aborts (crashed: killed by signal 6), or, a little
/// higher, in a typed call (the limit), depending on where it fell.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_memory_limit_too_small_for_the_worker_is_that_limit() {
    let runner = runner();
    for kind in KINDS {
        for max in [
            ByteSize::kib(64),
            ByteSize::mib(1),
            ByteSize::mib(2),
            ByteSize::mib(4),
        ] {
            // Three times each: the old verdict depended on where the first
            // failing allocation fell.
            for attempt in 0..3 {
                let mut spec = Target {
                    kind,
                    isolation: isola::Isolation::Process,
                }
                .spec("hello");
                spec.limits.process_memory = Some(max);
                let report = runner.run(spec).await.expect("the task starts");
                assert_eq!(
                    report.outcome,
                    Outcome::LimitExceeded {
                        limit: Limit::ProcessMemory { max }
                    },
                    "{kind:?}, process_memory {max}, attempt {attempt}"
                );
            }
        }
    }
}
