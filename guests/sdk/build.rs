//! Tells the SDK whether it is built for `wasm32-wasip1-threads`: stable
//! Rust exposes no `cfg` that says so (`target_feature = "atomics"` is not
//! reported), and shared memory groups exist only there.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(isola_threads)");
    if std::env::var("TARGET").is_ok_and(|t| t == "wasm32-wasip1-threads") {
        println!("cargo::rustc-cfg=isola_threads");
    }
}
