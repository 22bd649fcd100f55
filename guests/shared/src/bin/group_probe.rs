//! A test guest for shared memory groups. `main` publishes two regions:
//! `data` (64 KiB of bytes) and `flags` (64 `u32` words for atomics). Each
//! task's input is a command:
//!
//! - `work N`: ordinary std work N times: allocate, format, recurse, hash;
//!   posts a checksum that depends only on N (so the host can check two
//!   concurrent tasks did not corrupt each other);
//! - `write AT BYTE`: writes BYTE at offset AT of `data`;
//! - `read AT`: posts the byte at offset AT of `data`;
//! - `wait I`: waits (on a condition variable, so in
//!   `memory.atomic.wait32`) until flag I is non-zero, then posts its value;
//! - `set I V`: stores V in flag I and wakes the waiters;
//! - `grow`: grows the memory until it fails, posts the pages it got;
//! - `spin`: loops forever; `trap`: executes `unreachable`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

static FLAGS: [AtomicU32; 64] = [const { AtomicU32::new(0) }; 64];
static mut DATA: usize = 0;

const DATA_LEN: usize = 64 * 1024;

fn data() -> &'static mut [u8] {
    // SAFETY: DATA is set by `main` before tasks start; tests coordinate
    // their accesses through the host.
    unsafe { std::slice::from_raw_parts_mut(DATA as *mut u8, DATA_LEN) }
}

#[inline(never)]
fn depth(n: u64) -> u64 {
    if std::hint::black_box(n) == 0 {
        0
    } else {
        depth(n - 1).wrapping_add(n)
    }
}

fn work(rounds: u64) -> u64 {
    let mut checksum = 0u64;
    for round in 0..rounds {
        let words: Vec<String> = (0..50).map(|i| format!("w{round}-{i}")).collect();
        let joined = words.join(",");
        checksum = checksum
            .wrapping_mul(31)
            .wrapping_add(joined.len() as u64)
            .wrapping_add(depth(2_000 + round % 100));
        let mut boxed: Vec<Box<[u64; 16]>> = (0..20).map(|i| Box::new([i; 16])).collect();
        boxed.reverse();
        checksum = checksum.wrapping_add(boxed.iter().map(|b| b[0]).sum::<u64>());
    }
    checksum
}

/// Guards the flags' changes for [`CHANGED`]; waiting on a condition
/// variable is `memory.atomic.wait32` underneath.
static LOCK: Mutex<()> = Mutex::new(());
static CHANGED: Condvar = Condvar::new();

fn wait(flag: &AtomicU32) -> u32 {
    let mut guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let value = flag.load(Ordering::SeqCst);
        if value != 0 {
            return value;
        }
        guard = CHANGED.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

fn set(flag: &AtomicU32, value: u32) {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    flag.store(value, Ordering::SeqCst);
    CHANGED.notify_all();
}

fn grow() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        let mut pages = 0;
        while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {
            pages += 1;
        }
        pages
    }
    #[cfg(not(target_arch = "wasm32"))]
    0
}

fn task() {
    let input = String::from_utf8(isola_guest::input().unwrap_or_default()).unwrap_or_default();
    let words: Vec<&str> = input.split_whitespace().collect();
    let num = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let reply = match words.first().copied() {
        Some("work") => {
            let checksum = work(num(1));
            println!("worked {} rounds", num(1));
            checksum.to_string()
        }
        Some("write") => {
            data()[num(1) as usize % DATA_LEN] = num(2) as u8;
            "ok".into()
        }
        Some("read") => data()[num(1) as usize % DATA_LEN].to_string(),
        Some("wait") => wait(&FLAGS[num(1) as usize % 64]).to_string(),
        Some("set") => {
            set(&FLAGS[num(1) as usize % 64], num(2) as u32);
            "ok".into()
        }
        Some("grow") => grow().to_string(),
        Some("spin") => loop {
            std::hint::black_box(());
        },
        Some("trap") => std::process::abort(),
        _ => format!("unknown command `{input}`"),
    };
    isola_guest::post_str(&reply);
}

fn main() {
    let data: &'static mut [u8] = vec![0u8; DATA_LEN].leak();
    // SAFETY: set before `serve` starts any task.
    unsafe { DATA = data.as_mut_ptr() as usize };
    isola_guest::group::publish("data", data);
    isola_guest::group::publish("flags", &FLAGS);
    isola_guest::group::serve(task);
}
