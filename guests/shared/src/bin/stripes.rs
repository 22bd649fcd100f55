//! The shared-memory demo guest: N tasks transform stripes of one buffer in
//! place.
//!
//! `main` allocates a 64 MiB buffer and publishes it as the region `image`;
//! the host fills it, then starts one task per stripe with the input
//! `START END`; each task inverts the bytes of its stripe in place and posts
//! the number of bytes it changed.

/// Size of the shared buffer.
const IMAGE: usize = 64 << 20;

fn stripe() {
    let input = isola_guest::input().unwrap_or_default();
    let text = String::from_utf8_lossy(&input);
    let mut bounds = text.split_whitespace().map(str::parse::<usize>);
    let (Some(Ok(start)), Some(Ok(end))) = (bounds.next(), bounds.next()) else {
        eprintln!("expected `START END`, got `{text}`");
        std::process::exit(2);
    };
    let end = end.min(IMAGE);
    let Some(image) = isola_guest::group::region::<u8>("image") else {
        eprintln!("no `image` region");
        std::process::exit(2);
    };
    // SAFETY: stripes are disjoint, so tasks never touch the same bytes,
    // and the host does not write while tasks run.
    let image = unsafe { image.as_mut_slice() };
    for byte in &mut image[start.min(end)..end] {
        *byte = !*byte;
    }
    isola_guest::post_str(&(end - start.min(end)).to_string());
}

fn main() {
    let image: &'static mut [u8] = vec![0u8; IMAGE].leak();
    isola_guest::group::publish("image", image);
    isola_guest::group::serve(stripe);
}
