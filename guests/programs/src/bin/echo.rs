//! Answers each message from the host with the same bytes, until the host
//! closes the channel; then prints how many it answered and exits 0.
//! With start input, posts it first (so the host can see `workerData`).

fn main() {
    if let Some(input) = isola_guest::input() {
        isola_guest::post(&input);
    }
    let mut answered = 0u64;
    while let Some(message) = isola_guest::recv() {
        isola_guest::post(&message);
        answered += 1;
    }
    println!("answered {answered}");
}
