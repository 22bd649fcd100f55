//! CPU and memory benchmark guest: hashes a deterministic buffer with SHA-256.
//!
//! Usage: `sha256 [MIB]` (default 64). Prints the lowercase hex digest.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::process::ExitCode;

const DEFAULT_MIB: usize = 64;

fn main() -> ExitCode {
    let mib = match std::env::args().nth(1) {
        None => DEFAULT_MIB,
        Some(arg) => match arg.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("usage: sha256 [MIB]   (got {arg:?})");
                return ExitCode::from(2);
            }
        },
    };

    let Some(len) = mib.checked_mul(1024 * 1024) else {
        eprintln!("sha256: {mib} MiB does not fit in the address space");
        return ExitCode::from(2);
    };
    let buf: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(7) as u8)
        .collect();

    let digest = Sha256::digest(&buf);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    println!("{hex}");
    ExitCode::SUCCESS
}
