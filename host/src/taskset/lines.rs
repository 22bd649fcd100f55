//! Splitting a piped output stream into lines, so each line can be shown
//! with its task's name in front.

use std::borrow::Cow;

/// Longest line kept whole. A guest that writes megabytes without a newline
/// gets its output cut into lines of this size, so memory stays bounded.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Collects bytes and hands out complete lines (without `\n` or `\r\n`).
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Adds `chunk`, calling `emit` with each line it completes.
    pub(crate) fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&str)) {
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&chunk[..newline]);
            chunk = &chunk[newline + 1..];
            if self.partial.last() == Some(&b'\r') {
                self.partial.pop();
            }
            emit(&text(&self.partial));
            self.partial.clear();
        }
        self.partial.extend_from_slice(chunk);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            emit(&text(&self.partial));
            self.partial = rest;
        }
    }

    /// Whether a line has begun and not ended yet (a prompt, say).
    pub(crate) fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Emits what is left after the stream ended without a final newline,
    /// or a partial line that has waited long enough to be shown.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            emit(&text(&self.partial));
            self.partial.clear();
        }
    }
}

fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        for chunk in chunks {
            splitter.push(chunk, |l| lines.push(l.to_owned()));
        }
        splitter.finish(|l| lines.push(l.to_owned()));
        lines
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(&[b"one\ntw", b"o\r\n", b"\nthree"]),
            ["one", "two", "", "three"]
        );
        assert_eq!(split(&[b""]), Vec::<String>::new());
        assert_eq!(split(&[b"\xff\n"]), ["\u{fffd}"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = split(&[&long]);
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 5]);
    }
}
