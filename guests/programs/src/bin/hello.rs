//! Minimal guest: prints a greeting and exits 0. The "does anything run at all" check.

fn main() {
    println!("Hello from Isola!");
}
