//! Generates the large module of the compile-cache workload: a WASI-free
//! command module of tens of MiB, nearly all of it code, so that compiling
//! it takes seconds and the compile cache has something to save.
//!
//! Written as a minimal binary encoder (a few sections, LEB128) rather than
//! with the `wat` or `wasm-encoder` crates: adding either to this crate
//! could change the features cargo unifies for wasmtime's own copy and
//! rebuild it.

/// Straight-line operations per function: large enough that function
/// overhead is small, small enough that Cranelift compiles them in parallel
/// chunks.
const OPS_PER_FUNCTION: usize = 2_000;

fn uleb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut n: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    uleb(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// Body of function `seed`: `(param i32) (result i32)`, a chain of
/// `i32.const k; i32.add|xor|shl` on its parameter.
fn function_body(seed: u64) -> Vec<u8> {
    let mut code = vec![0x00]; // no locals besides the parameter
    code.extend_from_slice(&[0x20, 0x00]); // local.get 0
    for j in 0..OPS_PER_FUNCTION as u64 {
        let k = (seed.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) & 0xffff;
        code.push(0x41); // i32.const
        sleb(k as i64, &mut code);
        code.push(match j % 3 {
            0 => 0x6a, // i32.add
            1 => 0x73, // i32.xor
            _ => 0x74, // i32.shl
        });
    }
    code.push(0x0b); // end
    let mut body = Vec::with_capacity(code.len() + 5);
    uleb(code.len() as u64, &mut body);
    body.extend_from_slice(&code);
    body
}

/// A module of about `min_bytes` bytes whose `_start` calls the first
/// generated function and returns.
pub fn large_module(min_bytes: usize) -> Vec<u8> {
    let per_function = function_body(0).len();
    let functions = min_bytes.div_ceil(per_function).max(1);

    let mut out = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 = (i32) -> i32, 1 = () -> ().
    section(
        1,
        &[0x02, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x60, 0x00, 0x00],
        &mut out,
    );
    // Functions: the generated ones, then `_start`.
    let mut funcs = Vec::new();
    uleb(functions as u64 + 1, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions));
    funcs.push(1);
    section(3, &funcs, &mut out);
    // Exports: `_start`.
    let mut exports = vec![0x01, 0x06];
    exports.extend_from_slice(b"_start");
    exports.push(0x00);
    uleb(functions as u64, &mut exports);
    section(7, &exports, &mut out);
    // Code.
    let mut code = Vec::with_capacity(functions * per_function + 16);
    uleb(functions as u64 + 1, &mut code);
    for i in 0..functions {
        code.extend_from_slice(&function_body(i as u64));
    }
    // `_start`: drop(f0(7)).
    code.extend_from_slice(&[0x07, 0x00, 0x41, 0x07, 0x10, 0x00, 0x1a, 0x0b]);
    section(10, &code, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128() {
        let enc = |n: u64| {
            let mut v = Vec::new();
            uleb(n, &mut v);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        let senc = |n: i64| {
            let mut v = Vec::new();
            sleb(n, &mut v);
            v
        };
        assert_eq!(senc(63), [0x3f]);
        assert_eq!(senc(64), [0xc0, 0x00]);
        assert_eq!(senc(-1), [0x7f]);
    }

    #[test]
    fn module_is_valid_and_runs() {
        let bytes = large_module(64 * 1024);
        assert!(bytes.len() >= 64 * 1024);
        let path =
            std::env::temp_dir().join(format!("isola-bench-gen-{}.wasm", std::process::id()));
        std::fs::write(&path, &bytes).expect("write the module");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = runtime.block_on(async {
            let runner = isola::Runner::with_config(isola::RunnerConfig {
                max_live_tasks: 1,
                cache_dir: isola::CacheDir::Disabled,
                ..Default::default()
            })
            .expect("runner");
            runner
                .run(isola::TaskSpec::new(&path))
                .await
                .map(|r| r.outcome)
        });
        let _ = std::fs::remove_file(&path);
        assert_eq!(outcome.ok(), Some(isola::Outcome::Exited { code: 0 }));
    }
}
