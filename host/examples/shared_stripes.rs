//! Shared memory vs copied messages: invert a 64 MiB buffer with several
//! tasks, first in place in a shared memory group, then by sending each
//! task its stripe as a message and getting it back.
//!
//! ```text
//! make guests && cargo run --release --example shared_stripes
//! ```

use std::time::Instant;

use isola::{ByteSize, GroupSpec, Runner, TaskSpec};

const IMAGE: usize = 64 << 20;
const TASKS: usize = 8;

fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runner = Runner::new()?;
    let stripe = IMAGE / TASKS;
    let image: Vec<u8> = (0..IMAGE).map(pattern).collect();

    // In place: the tasks and the host share the group's memory.
    let stripes_wasm = "target/wasm32-wasip1-threads/guest/stripes.wasm";
    let group = runner
        .create_group(GroupSpec {
            name: "image".into(),
            wasm: stripes_wasm.into(),
            initial: None,
            maximum: ByteSize::mib(128),
        })
        .await?;
    let region = group
        .region("image")
        .ok_or_else(|| anyhow::anyhow!("the guest published no `image` region"))?;
    region.write(0, &image)?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..TASKS {
        let mut spec = TaskSpec::new(stripes_wasm);
        spec.shared_group = Some("image".into());
        spec.input = Some(format!("{} {}", i * stripe, (i + 1) * stripe).into_bytes());
        handles.push(runner.spawn(spec).await?);
    }
    for handle in handles {
        let report = handle.wait().await;
        anyhow::ensure!(
            report.outcome.is_success(),
            "stripe task: {}",
            report.outcome
        );
    }
    let in_place = started.elapsed();
    let result = region.to_vec();
    let shared_ok = result.iter().zip(&image).all(|(r, i)| *r == !*i);

    // Copied: each task gets its stripe as a message and sends it back.
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..TASKS {
        let mut handle = runner
            .spawn(TaskSpec::new("target/wasm32-wasip1/guest/invert.wasm"))
            .await?;
        handle
            .post(image[i * stripe..(i + 1) * stripe].to_vec())
            .await?;
        handle.close_channel();
        handles.push(handle);
    }
    let mut copied = Vec::with_capacity(IMAGE);
    for mut handle in handles {
        let stripe = handle
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("a stripe did not come back"))?;
        copied.extend_from_slice(&stripe);
        handle.wait().await;
    }
    let by_messages = started.elapsed();
    let copied_ok = copied.iter().zip(&image).all(|(r, i)| *r == !*i);

    println!("inverting {} with {TASKS} tasks", ByteSize(IMAGE as u64));
    println!("  in place, shared memory group: {in_place:>10.2?}  verified: {shared_ok}");
    println!("  copied through messages:       {by_messages:>10.2?}  verified: {copied_ok}");
    anyhow::ensure!(shared_ok && copied_ok, "a result was wrong");
    Ok(())
}
