//! Compile once: in memory within a runner, on disk across runners and
//! processes, and never trusting a damaged artifact.

use isola::{Outcome, TaskSpec};
use isola_tests::{GuestKind, KINDS, guest, runner_with_cache};

#[tokio::test(flavor = "multi_thread")]
async fn second_runner_loads_from_disk_without_compiling() {
    let cache = tempfile::tempdir().expect("tempdir");
    for kind in KINDS {
        let first = runner_with_cache(cache.path());
        let report = first
            .run(TaskSpec::new(guest("hello", kind)))
            .await
            .expect("run");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 });
        assert_eq!(
            first.cache_stats().compiled,
            1,
            "{kind:?}: first run compiles"
        );
        first
            .run(TaskSpec::new(guest("hello", kind)))
            .await
            .expect("run");
        let stats = first.cache_stats();
        assert_eq!(
            (stats.compiled, stats.memory_hits),
            (1, 1),
            "{kind:?}: then reuses"
        );

        let second = runner_with_cache(cache.path());
        let report = second
            .run(TaskSpec::new(guest("hello", kind)))
            .await
            .expect("run");
        assert_eq!(report.stdout.text(), "Hello from Isola!\n");
        let stats = second.cache_stats();
        assert_eq!(
            (stats.compiled, stats.disk_hits),
            (0, 1),
            "{kind:?}: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_artifacts_are_recompiled_not_loaded() {
    let cache = tempfile::tempdir().expect("tempdir");
    let wasm = guest("hello", GuestKind::Module);
    runner_with_cache(cache.path())
        .run(TaskSpec::new(&wasm))
        .await
        .expect("run");
    let artifacts: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");

    for damage in [Damage::FlipByte, Damage::Truncate] {
        let bytes = std::fs::read(&artifacts[0]).unwrap_or_default();
        match damage {
            Damage::FlipByte => {
                let mut bytes = bytes;
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                std::fs::write(&artifacts[0], bytes).expect("tamper");
            }
            Damage::Truncate => {
                std::fs::write(&artifacts[0], &bytes[..bytes.len() / 3]).expect("truncate");
            }
        }
        let runner = runner_with_cache(cache.path());
        let report = runner.run(TaskSpec::new(&wasm)).await.expect("run");
        assert_eq!(report.stdout.text(), "Hello from Isola!\n", "{damage:?}");
        let stats = runner.cache_stats();
        assert_eq!(
            (stats.compiled, stats.disk_hits),
            (1, 0),
            "{damage:?}: recompiled"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipByte,
    Truncate,
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_changed_in_place_is_loaded_again() {
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("task.wasm");
    std::fs::copy(guest("hello", GuestKind::Module), &path).expect("copy");
    let runner = runner_with_cache(cache.path());
    let report = runner.run(TaskSpec::new(&path)).await.expect("run");
    assert_eq!(report.stdout.text(), "Hello from Isola!\n");
    runner.run(TaskSpec::new(&path)).await.expect("run");
    assert_eq!(
        runner.cache_stats().memory_hits,
        1,
        "unchanged: not compiled again"
    );

    // Replaced by another program at the same path: that one runs.
    std::fs::copy(guest("echo_cli", GuestKind::Module), &path).expect("copy");
    let mut spec = TaskSpec::new(&path);
    spec.args = vec!["args".into(), "replaced".into()];
    let report = runner.run(spec).await.expect("run");
    assert_eq!(report.stdout.text(), "replaced\n");
    assert_eq!(runner.cache_stats().compiled, 2);
}
