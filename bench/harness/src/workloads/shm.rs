//! Workload 7: shared memory. Two tasks invert a 64 MiB buffer in place,
//! each its half, against the same work through copied messages.
//!
//! Isola in place: a shared memory group of the `stripes` guest
//! (`wasm32-wasip1-threads`), whose coordinator publishes the 64 MiB region
//! `image`; each pass spawns 2 group tasks (`START END` as their input) and
//! waits for both. Isola copied: each pass spawns 2 `invert` tasks, posts
//! each its half (copied out of the host's buffer), and copies the inverted
//! halves back in. Node: the same with a `SharedArrayBuffer` across 2
//! workers, and with halves cloned in and out of 2 workers. A pass is timed
//! from spawning (or posting to) the tasks to both halves being done.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use isola::{ByteSize, GroupSpec, Program, Runner, RunnerConfig, SharedGroup, TaskSpec};

use super::{load, micros};
use crate::Ctx;
use crate::figure::{Figure, Series, Unit, rotation};
use crate::peers::node_samples;

const METRIC: &str = "64 MiB inverted by 2 tasks, one pass";
const IMAGE: usize = 64 << 20;
const TASKS: usize = 2;

#[derive(Clone, Copy, PartialEq)]
enum System {
    Shared,
    Copied,
    NodeShared,
    NodeCopied,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Shared => "Isola shared memory group (in place)",
            System::Copied => "Isola thread, copied messages",
            System::NodeShared => "Node worker_threads, SharedArrayBuffer",
            System::NodeCopied => "Node worker_threads, copied messages",
        }
    }
}

/// The bytes the host starts from.
fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8
}

/// One in-place pass: 2 group tasks, each inverting its half.
async fn shared_pass(runner: &Runner, group: &SharedGroup, program: &Program) -> Result<f64> {
    let stripe = IMAGE / TASKS;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let mut spec = TaskSpec::new(program.path());
        spec.shared_group = Some(group.name().to_owned());
        spec.input = Some(format!("{} {}", i * stripe, (i + 1) * stripe).into_bytes());
        handles.push(runner.spawn_program(program, spec).await?);
    }
    for handle in handles {
        let report = handle.wait().await;
        ensure!(
            report.outcome.is_success(),
            "stripe task: {}",
            report.outcome
        );
    }
    Ok(micros(start.elapsed()))
}

/// One copied pass: each half copied to an `invert` task and back.
async fn copied_pass(runner: &Runner, program: &Program, image: &mut [u8]) -> Result<f64> {
    let stripe = IMAGE / TASKS;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let mut spec = TaskSpec::new(program.path());
        // A half is 32 MiB, past the default 16 MiB message limit.
        spec.limits.max_message_size = ByteSize::mib(64);
        let mut handle = runner.spawn_program(program, spec).await?;
        handle
            .post(image[i * stripe..(i + 1) * stripe].to_vec())
            .await?;
        handle.close_channel();
        handles.push(handle);
    }
    for (i, mut handle) in handles.into_iter().enumerate() {
        let half = handle.recv().await.context("a half did not come back")?;
        image[i * stripe..(i + 1) * stripe].copy_from_slice(&half);
        let report = handle.wait().await;
        ensure!(
            report.outcome.is_success(),
            "invert task: {}",
            report.outcome
        );
    }
    Ok(micros(start.elapsed()))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let rounds = ctx.scale(3, 1);
    let passes = ctx.scale(5, 2);
    let runner = ctx.runner(RunnerConfig::default())?;
    let stripes_wasm = ctx
        .root
        .join("target/wasm32-wasip1-threads/guest/stripes.wasm");
    let stripes = load(&runner, &stripes_wasm).await?;
    let invert = load(&runner, &ctx.guest_p1("invert")).await?;
    let group = runner
        .create_group(GroupSpec {
            name: "bench-image".into(),
            wasm: stripes_wasm.clone(),
            initial: None,
            maximum: ByteSize::mib(128),
        })
        .await?;
    let region = group
        .region("image")
        .context("the stripes guest published no `image` region")?;
    let original: Vec<u8> = (0..IMAGE).map(pattern).collect();
    region.write(0, &original)?;
    let mut image = original.clone();
    let (mut shared_passes, mut copied_passes) = (0, 0);

    // Warm-up: one pass each.
    shared_pass(&runner, &group, &stripes).await?;
    copied_pass(&runner, &invert, &mut image).await?;
    shared_passes += 1;
    copied_passes += 1;

    let systems = [
        System::Shared,
        System::Copied,
        System::NodeShared,
        System::NodeCopied,
    ];
    let mut series = Series::default();
    let n = passes.to_string();
    for round in 0..rounds {
        for system in rotation(&systems, round) {
            let samples = match system {
                System::Shared => {
                    let mut v = Vec::with_capacity(passes);
                    for _ in 0..passes {
                        v.push(shared_pass(&runner, &group, &stripes).await?);
                        shared_passes += 1;
                    }
                    v
                }
                System::Copied => {
                    let mut v = Vec::with_capacity(passes);
                    for _ in 0..passes {
                        v.push(copied_pass(&runner, &invert, &mut image).await?);
                        copied_passes += 1;
                    }
                    v
                }
                System::NodeShared | System::NodeCopied => {
                    let mode = if system == System::NodeShared {
                        "shared"
                    } else {
                        "copied"
                    };
                    node_samples(
                        ctx,
                        "shm.mjs",
                        &["--mode", mode, "--n", &n, "--warmup", "1"],
                    )
                    .await?
                }
            };
            series.add(system.name(), samples);
        }
    }
    // Every pass inverts: an even number of them gives the original back.
    let expect = |passes: usize, got: &[u8]| {
        got.iter().zip(&original).all(|(g, o)| {
            if passes.is_multiple_of(2) {
                g == o
            } else {
                *g == !*o
            }
        })
    };
    ensure!(
        expect(shared_passes, &region.to_vec()),
        "the shared image is wrong"
    );
    ensure!(expect(copied_passes, &image), "the copied image is wrong");
    runner.close_group(group.name());

    Ok(systems
        .iter()
        .map(|s| {
            let f = Figure::new(7, METRIC, s.name(), Unit::Micros)
                .samples(series.take(s.name()))
                .runs(format!("{rounds} × {passes} passes"));
            match s {
                System::Shared => f.note("2 group tasks of the `stripes` guest, p1-threads"),
                System::Copied => f.note("2 `invert` tasks, halves posted and received"),
                _ => f.note("inverts 32-bit words (faster in JS than bytes, as the guest does)"),
            }
        })
        .collect())
}
