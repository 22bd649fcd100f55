//! Deliberately misbehaving guest for sandbox tests: burns CPU, floods output,
//! exhausts memory or stack, traps, or exits oddly, depending on MODE.
//!
//! Usage: `hostile MODE [ARG]`; see [`USAGE`]. Modes that never end ignore write
//! errors on purpose: a hostile guest keeps going until the host stops it.

use std::hint::black_box;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: hostile MODE [ARG]
  loop           spin the CPU forever
  tiny-writes    write and flush 1 byte to stdout, forever
  alloc-bomb     allocate and touch 1 MiB chunks, forever
  grow-bomb      grow linear memory until it fails (wasm only)
  recurse        recurse until the stack overflows
  flood          write 64 KiB chunks to stdout, forever
  flood-stderr   write 64 KiB chunks to stderr, forever
  unreachable    execute a wasm `unreachable` trap (abort natively)
  abort          std::process::abort()
  exit N         exit with code N
  sleep MS       sleep MS milliseconds, print `woke`, exit 0
  post-flood N   post numbered messages of N bytes to the host, forever
  huge-post MIB  post one message of MIB MiB
  wait-then-loop wait for one message from the host, then spin forever";

const MIB: usize = 1024 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    match args.as_slice() {
        ["loop"] => spin(),
        ["wait-then-loop"] => {
            let _ = isola_guest::recv();
            spin()
        }
        ["tiny-writes"] => tiny_writes(),
        ["alloc-bomb"] => alloc_bomb(),
        ["grow-bomb"] => grow_bomb(),
        ["recurse"] => {
            let depth = recurse(0);
            // Only reachable if the stack were infinite.
            println!("recursed {depth} frames");
            ExitCode::SUCCESS
        }
        ["flood"] => flood(io::stdout()),
        ["flood-stderr"] => flood(io::stderr()),
        ["unreachable"] => unreachable_trap(),
        ["abort"] => std::process::abort(),
        ["exit", code] => match code.parse::<i32>() {
            Ok(code) => std::process::exit(code),
            Err(_) => usage(),
        },
        ["post-flood", size] => match size.parse::<usize>() {
            Ok(size) => post_flood(size),
            Err(_) => usage(),
        },
        ["huge-post", mib] => match mib.parse::<usize>() {
            Ok(mib) => {
                isola_guest::post(&vec![b'x'; mib * MIB]);
                ExitCode::SUCCESS
            }
            Err(_) => usage(),
        },
        ["sleep", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                println!("woke");
                ExitCode::SUCCESS
            }
            Err(_) => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// Pure CPU loop; `black_box` stops the optimizer from deleting it.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter).wrapping_add(1);
    }
}

/// Spends nearly all its time inside host calls (one write + flush per byte).
fn tiny_writes() -> ! {
    let mut out = io::stdout().lock();
    loop {
        let _ = out.write_all(b".");
        let _ = out.flush();
    }
}

/// Allocates 1 MiB chunks, writes every byte, and keeps them all alive.
fn alloc_bomb() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(vec![0xA5; MIB]);
        black_box(&mut chunks);
    }
}

/// Grows linear memory 16 pages (1 MiB) at a time, bypassing the allocator,
/// until `memory.grow` reports failure.
#[cfg(target_arch = "wasm32")]
fn grow_bomb() -> ExitCode {
    while core::arch::wasm32::memory_grow(0, 16) != usize::MAX {}
    eprintln!("grow failed");
    ExitCode::SUCCESS
}

/// Native builds have no linear memory to grow.
#[cfg(not(target_arch = "wasm32"))]
fn grow_bomb() -> ExitCode {
    ExitCode::SUCCESS
}

/// Unbounded, non-tail recursion. Nothing in a frame has its address taken,
/// so frames live on the engine's call stack only (not on the guest's own
/// stack in linear memory), and overflowing it is a clean stack-overflow
/// trap. The opaque base case keeps rustc's `unconditional_recursion` lint
/// quiet; it is never true in practice.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    // Using the result after the call makes this a non-tail call.
    recurse(depth + 1).wrapping_add(black_box(depth))
}

/// Writes 64 KiB chunks (lines of 63 `x` and a newline) forever.
fn flood(mut out: impl Write) -> ! {
    let mut chunk = [b'x'; 64 * 1024];
    for line in chunk.chunks_mut(64) {
        line[63] = b'\n';
    }
    loop {
        let _ = out.write_all(&chunk);
    }
}

#[cfg(target_arch = "wasm32")]
fn unreachable_trap() -> ! {
    core::arch::wasm32::unreachable()
}

/// Natively there is no `unreachable` instruction; abort is the closest thing.
#[cfg(not(target_arch = "wasm32"))]
fn unreachable_trap() -> ! {
    std::process::abort()
}

/// Posts messages of `size` bytes forever, each starting with its sequence
/// number (8 bytes, little-endian), so the host can check order and loss.
fn post_flood(size: usize) -> ExitCode {
    let mut message = vec![0u8; size.max(8)];
    for seq in 0u64.. {
        message[..8].copy_from_slice(&seq.to_le_bytes());
        isola_guest::post(&message);
    }
    ExitCode::SUCCESS
}
