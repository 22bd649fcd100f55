//! Faults from outside the guest: signals to worker processes at random
//! moments, the parent killed with workers running, and a compile cache
//! that is unwritable, full or damaged, and a config file that changes
//! while it is read. The scenarios live in `isola_tests::faults`, shared
//! with the `make reliability` report.

use std::process::{Command, Stdio};
use std::time::Duration;

use isola::Isolation;
use isola_tests::faults::{self, Damage};
use isola_tests::matrix::Row;
use isola_tests::procs::{children_of, is_alive, wait_until};
use isola_tests::{GuestKind, ISOLATIONS, Target, guest, isola_bin, runner, shared_cache};

fn assert_rows(rows: &[Row]) {
    assert!(!rows.is_empty());
    let failures: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_at_random_moments_end_only_their_own_tasks() {
    let seed = isola_tests::fuzz::clock_seed();
    eprintln!("signal storm seed {seed}");
    let rows = faults::signal_storm(&runner(), seed, 9, 12).await;
    assert_rows(&rows);
}

#[test]
fn killing_isola_up_leaves_no_worker_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = guest("hostile", GuestKind::Module);
    let mut toml = String::new();
    for i in 0..3 {
        toml += &format!(
            "[[task]]\nname = \"sleeper{i}\"\nwasm = \"{}\"\nisolation = \"process\"\nargs = [\"sleep\", \"60000\"]\n\n",
            wasm.display()
        );
    }
    let set = dir.path().join("tasks.toml");
    std::fs::write(&set, toml).expect("write tasks.toml");
    let mut parent = Command::new(isola_bin())
        .args(["up", "--jobs", "3"])
        .arg(&set)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn isola up");
    // Three running workers (plus any pre-started idle ones).
    let mut workers = Vec::new();
    let started = wait_until(Duration::from_secs(15), || {
        workers = children_of(parent.id());
        workers.len() >= 3
    });
    assert!(started, "the workers started: {workers:?}");
    std::thread::sleep(Duration::from_millis(200));
    let workers = children_of(parent.id());
    parent.kill().expect("SIGKILL isola up");
    parent.wait().expect("reap it");
    let gone = wait_until(Duration::from_secs(5), || {
        workers.iter().all(|&w| !is_alive(w))
    });
    assert!(gone, "workers outlived their parent: {workers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_or_full_cache_never_stops_a_task() {
    // Core modules (WAT, quick to compile) everywhere; the slow-to-compile
    // component on one isolation level per fault. `make reliability` runs
    // every combination.
    let module = |isolation| Target {
        kind: GuestKind::Module,
        isolation,
    };
    let component = |isolation| Target {
        kind: GuestKind::Component,
        isolation,
    };
    let rows = faults::unwritable_cache(|i| {
        let mut on = vec![module(Isolation::Thread), module(Isolation::Process)];
        on.push(component(ISOLATIONS[i % 2]));
        on
    })
    .await;
    assert_rows(&rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_artifacts_are_detected_and_recompiled_in_parent_and_worker() {
    // Every damage on modules at both levels (the parent's check and the
    // worker's), and one damage each for the component. `make reliability`
    // runs every combination.
    let mut cases = Vec::new();
    for isolation in ISOLATIONS {
        for damage in Damage::ALL {
            cases.push((
                Target {
                    kind: GuestKind::Module,
                    isolation,
                },
                damage,
            ));
        }
    }
    cases.push((
        Target {
            kind: GuestKind::Component,
            isolation: Isolation::Thread,
        },
        Damage::FlipByte,
    ));
    cases.push((
        Target {
            kind: GuestKind::Component,
            isolation: Isolation::Process,
        },
        Damage::Truncate,
    ));
    assert_rows(&faults::damaged_cache(&cases).await);
}

#[test]
fn a_config_rewritten_while_read_is_a_set_or_errors() {
    let row = faults::config_rewritten_while_read(Duration::from_secs(1));
    assert!(row.ok, "{row:#?}");
}
