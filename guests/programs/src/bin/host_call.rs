//! Calls host functions (`isola_guest::call`), for tests of host functions
//! at both isolation levels and the benchmark's round trip.
//!
//! Exit codes: 0 ok (each call's result printed), 2 usage, 3 a call's
//! error value (printed as `err: MESSAGE`).

use std::process::ExitCode;

const USAGE: &str = "\
usage: host_call <command>
  call NAME ARG        call NAME with the bytes of ARG; print `ok: RESULT` or `err: MESSAGE`
  calls N NAME ARG     call NAME N times; print the last result
  add N NAME           call NAME N times with the JSON {\"add\": 1}, each reply a JSON number;
                       print `ok: K` after the K-th successful call
  kv-inc N KEY         increment KEY in isola:kv N times; print `ok: VALUE` after each
  kv KEY               print KEY's value in isola:kv (`none` if absent), then set it to `seen`,
                       list the keys and delete it";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["call", name, arg] => report(isola_guest::call(name, arg.as_bytes())),
        ["calls", n, name, arg] => {
            let Ok(n) = n.parse::<u64>() else {
                return usage();
            };
            let mut last = Ok(Vec::new());
            for _ in 0..n {
                last = isola_guest::call(name, arg.as_bytes());
                if last.is_err() {
                    break;
                }
            }
            report(last)
        }
        ["add", n, name] => {
            let Ok(n) = n.parse::<u64>() else {
                return usage();
            };
            for k in 1..=n {
                let reply: Result<i64, String> = isola_guest::call_json(name, &serde_json_add());
                if let Err(error) = reply {
                    println!("err: {error}");
                    return ExitCode::from(3);
                }
                println!("ok: {k}");
            }
            ExitCode::SUCCESS
        }
        ["kv-inc", n, key] => {
            let Ok(n) = n.parse::<u64>() else {
                return usage();
            };
            for _ in 0..n {
                match isola_guest::kv::increment(key.as_bytes(), 1) {
                    Ok(value) => println!("ok: {value}"),
                    Err(error) => {
                        println!("err: {error}");
                        return ExitCode::from(3);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        ["kv", key] => {
            let key = key.as_bytes();
            let steps = || -> Result<(), String> {
                match isola_guest::kv::get(key)? {
                    Some(value) => println!("value: {}", String::from_utf8_lossy(&value)),
                    None => println!("value: none"),
                }
                isola_guest::kv::set(key, b"seen")?;
                let swapped =
                    isola_guest::kv::compare_and_swap(key, Some(b"seen"), Some(b"swapped"))?;
                println!("swapped: {swapped}");
                let keys = isola_guest::kv::list(b"")?;
                let keys: Vec<_> = keys.iter().map(|k| String::from_utf8_lossy(k)).collect();
                println!("keys: {}", keys.join(","));
                println!("deleted: {}", isola_guest::kv::delete(key)?);
                Ok(())
            };
            match steps() {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    println!("err: {error}");
                    ExitCode::from(3)
                }
            }
        }
        _ => usage(),
    }
}

/// The arguments of `add`, as a JSON value the SDK encodes.
fn serde_json_add() -> std::collections::BTreeMap<&'static str, i64> {
    std::collections::BTreeMap::from([("add", 1)])
}

fn report(result: Result<Vec<u8>, String>) -> ExitCode {
    match result {
        Ok(bytes) => {
            println!("ok: {}", String::from_utf8_lossy(&bytes));
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("err: {error}");
            ExitCode::from(3)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
