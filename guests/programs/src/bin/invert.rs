//! Inverts every byte of each message it receives and posts the result:
//! the copy-through-messages half of the shared-memory demo.

fn main() {
    while let Some(mut message) = isola_guest::recv() {
        for byte in &mut message {
            *byte = !*byte;
        }
        isola_guest::post(&message);
    }
}
