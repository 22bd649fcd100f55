//! A job worker: receives jobs `ID N` (text), posts `ID fib(N)` for each,
//! until the host closes the channel. A malformed job gets `ID error ...`.

fn fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

fn answer(job: &str) -> String {
    let mut parts = job.split_whitespace();
    let id = parts.next().unwrap_or("?");
    match parts.next().map(str::parse::<u64>) {
        Some(Ok(n)) => format!("{id} {}", fib(n)),
        _ => format!("{id} error: expected `ID N`, got `{job}`"),
    }
}

fn main() {
    while let Some(job) = isola_guest::recv() {
        let job = String::from_utf8_lossy(&job);
        isola_guest::post_str(&answer(&job));
    }
}
