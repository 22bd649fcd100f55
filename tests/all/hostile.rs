//! Guests that misbehave on purpose: each is stopped by the right limit or
//! ends with the right trap, and the runner stays responsive.

use std::time::Duration;

use isola::{ByteSize, Limit, Limits, Outcome, Output, Stream, TaskReport, TaskSpec, TrapKind};
use isola_tests::{Target, runner, targets};

/// One hostile mode, the limits it runs under, and how it must end.
struct Case {
    args: &'static [&'static str],
    limits: fn() -> Limits,
    expect: fn(&Outcome) -> bool,
}

fn limits_timeout() -> Limits {
    Limits {
        timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    }
}

fn limits_fuel() -> Limits {
    Limits {
        fuel: Some(5_000_000),
        ..Limits::default()
    }
}

fn limits_memory() -> Limits {
    Limits {
        max_memory: ByteSize::mib(64),
        ..Limits::default()
    }
}

fn limits_output() -> Limits {
    Limits {
        max_output: Some(ByteSize::mib(1)),
        ..Limits::default()
    }
}

const CASES: &[Case] = &[
    Case {
        args: &["loop"],
        limits: limits_timeout,
        expect: |o| matches!(o, Outcome::LimitExceeded { limit: Limit::Timeout { after } } if *after == Duration::from_millis(300)),
    },
    Case {
        args: &["loop"],
        limits: limits_fuel,
        expect: |o| {
            matches!(
                o,
                Outcome::LimitExceeded {
                    limit: Limit::Fuel { budget: 5_000_000 }
                }
            )
        },
    },
    Case {
        args: &["tiny-writes"],
        limits: limits_timeout,
        expect: |o| {
            matches!(
                o,
                Outcome::LimitExceeded {
                    limit: Limit::Timeout { .. }
                }
            )
        },
    },
    Case {
        args: &["sleep", "60000"],
        limits: limits_timeout,
        expect: |o| {
            matches!(
                o,
                Outcome::LimitExceeded {
                    limit: Limit::Timeout { .. }
                }
            )
        },
    },
    Case {
        args: &["alloc-bomb"],
        limits: limits_memory,
        expect: |o| matches!(o, Outcome::LimitExceeded { limit: Limit::Memory { max } } if *max == ByteSize::mib(64)),
    },
    Case {
        args: &["grow-bomb"],
        limits: limits_memory,
        expect: |o| {
            matches!(
                o,
                Outcome::LimitExceeded {
                    limit: Limit::Memory { .. }
                }
            )
        },
    },
    Case {
        args: &["recurse"],
        limits: Limits::default,
        expect: |o| matches!(o, Outcome::Trapped(t) if t.kind == TrapKind::StackOverflow),
    },
    Case {
        args: &["flood"],
        limits: limits_output,
        expect: |o| matches!(o, Outcome::LimitExceeded { limit: Limit::Output { stream: Stream::Stdout, max } } if *max == ByteSize::mib(1)),
    },
    Case {
        args: &["flood-stderr"],
        limits: limits_output,
        expect: |o| {
            matches!(
                o,
                Outcome::LimitExceeded {
                    limit: Limit::Output {
                        stream: Stream::Stderr,
                        ..
                    }
                }
            )
        },
    },
    Case {
        args: &["unreachable"],
        limits: Limits::default,
        expect: |o| matches!(o, Outcome::Trapped(t) if t.kind == TrapKind::Unreachable && !t.backtrace.is_empty()),
    },
    Case {
        args: &["abort"],
        limits: Limits::default,
        expect: |o| matches!(o, Outcome::Trapped(t) if t.kind == TrapKind::Unreachable),
    },
    Case {
        args: &["exit", "0"],
        limits: Limits::default,
        expect: |o| *o == Outcome::Exited { code: 0 },
    },
];

fn spec(t: Target, case: &Case) -> TaskSpec {
    let mut spec = t.spec("hostile");
    spec.args = case.args.iter().map(|s| s.to_string()).collect();
    spec.limits = (case.limits)();
    spec.stdout = Output::Discard;
    spec.stderr = Output::Discard;
    // Every case must end well within this, or the limit did not work.
    if spec.limits.timeout.is_none() {
        spec.limits.timeout = Some(Duration::from_secs(60));
    }
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_mode_ends_with_its_expected_outcome() {
    let runner = runner();
    for t in targets() {
        for case in CASES {
            let report: TaskReport = runner.run(spec(t, case)).await.expect("starts");
            assert!(
                (case.expect)(&report.outcome),
                "{t:?} {:?}: unexpected outcome {:?}",
                case.args,
                report.outcome
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tasks_do_not_disturb_well_behaved_ones() {
    let runner = runner();
    // All the hostile cases at once, with well-behaved tasks among them.
    let mut hostile = Vec::new();
    for t in targets() {
        for case in CASES {
            let handle = runner.spawn(spec(t, case)).await.expect("spawn");
            hostile.push((t, case.args, case.expect, handle));
        }
    }
    for t in targets() {
        for _ in 0..5 {
            let mut spec = t.spec("sha256");
            spec.args = vec!["1".into()];
            let report = runner.run(spec).await.expect("starts");
            assert_eq!(report.outcome, Outcome::Exited { code: 0 });
            assert_eq!(report.stdout.text(), format!("{}\n", sha256_of_pattern(1)));
        }
    }
    for (t, args, expect, handle) in hostile {
        let report = handle.wait().await;
        assert!(
            expect(&report.outcome),
            "{t:?} {args:?}: {:?}",
            report.outcome
        );
    }
}

/// The digest the sha256 guest must print for `mib` MiB of its pattern,
/// computed by the host.
pub fn sha256_of_pattern(mib: usize) -> String {
    use sha2::Digest;
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(7) as u8)
        .collect();
    hex::encode(sha2::Sha256::digest(&data))
}
