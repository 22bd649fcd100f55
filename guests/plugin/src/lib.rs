//! An example plugin, built as a `cdylib` for `wasm32-wasip1` (a core
//! module) and `wasm32-wasip2` (a component).
//!
//! `run` takes text:
//! - an integer `n` → `n + 1` (the trivial task of the throughput bench);
//! - `count` → how many times this instance's `run` was called, which
//!   shows whether the host reused the instance;
//! - `fail` → an error;
//! - `spin` → never returns (for timeouts and abandoned calls);
//! - anything else → an error naming the input.

use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let text = String::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
    let text = text.trim();
    if text == "count" {
        return Ok(calls.to_string().into_bytes());
    }
    if text == "fail" {
        return Err("asked to fail".into());
    }
    if text == "spin" {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n).wrapping_add(1);
        }
    }
    match text.parse::<i64>() {
        Ok(n) => Ok(n.wrapping_add(1).to_string().into_bytes()),
        Err(_) => Err(format!("not an integer: `{text}`")),
    }
}

isola_guest::export_run!(run);
