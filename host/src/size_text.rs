//! Byte sizes written by people (`"64MiB"`, `"1.5 GiB"`, `"4096"`), read
//! exactly and refused with a reason.
//!
//! One reader for `tasks.toml` and the CLI's size flags. It accepts what
//! `bytesize` accepts (a number, an optional fraction, optional spaces and
//! a unit, any case), but computes in integers, so no size is rounded
//! through a float, and a size past 64 bits is *too large* rather than
//! silently capped (`bytesize` saturates `"99999EiB"`) or misreported as
//! an unknown unit (which is what `bytesize` says for a number with more
//! digits than a `u64` holds).

use std::fmt;

use bytesize::ByteSize;

/// Why a text is not a size.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SizeError {
    /// Not a number followed by an optional unit.
    NotASize,
    /// A number followed by something that is not a unit.
    UnknownUnit(String),
    /// More bytes than 64 bits hold (just under 16 EiB).
    TooLarge,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::NotASize => f.write_str("not a size; use one like 64MiB, 512KiB or 1GiB"),
            SizeError::UnknownUnit(unit) => write!(
                f,
                "unknown unit `{unit}`; use B, KiB, MiB, GiB, TiB, PiB or EiB (or KB, MB, GB... \
                 for powers of 1000)"
            ),
            SizeError::TooLarge => write!(
                f,
                "too large: a size is at most {} bytes (just under 16 EiB)",
                u64::MAX
            ),
        }
    }
}

impl std::error::Error for SizeError {}

/// Digits of a fraction that are read; more cannot change the result by a
/// byte in a way that matters (the last kept digit is worth at most
/// 10⁻¹⁹ of an EiB, a tenth of a byte) and would overflow the arithmetic.
const FRACTION_DIGITS: usize = 19;

/// Reads a size: digits, an optional `.` and fraction, optional spaces,
/// and an optional unit (`B`, `K`/`KB`, `Ki`/`KiB` and so on up to `E`,
/// any case; no unit means bytes). A fraction of a byte is dropped.
///
/// # Errors
///
/// [`SizeError::NotASize`] without a number, [`SizeError::UnknownUnit`]
/// for an unknown unit, [`SizeError::TooLarge`] past `u64::MAX` bytes.
///
/// # Examples
///
/// ```
/// use isola::ByteSize;
/// use isola::config::{SizeError, parse_size};
///
/// assert_eq!(parse_size("64MiB"), Ok(ByteSize::mib(64)));
/// assert_eq!(parse_size("1.5 KiB"), Ok(ByteSize(1536)));
/// assert_eq!(parse_size("99999999999999999999999"), Err(SizeError::TooLarge));
/// ```
pub fn parse_size(text: &str) -> Result<ByteSize, SizeError> {
    let text = text.trim();
    // `bytesize` reads a bare `+64` (as Rust's integer parser does).
    let text = text.strip_prefix('+').unwrap_or(text);
    let number_len = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, rest) = text.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(SizeError::NotASize);
    }
    let unit = rest.trim_start();
    let factor = unit_factor(unit).ok_or_else(|| SizeError::UnknownUnit(unit.to_owned()))?;

    // Whole units: at most u64::MAX of them can count, and then times a
    // factor of at most 2^60, which fits in a u128.
    let mut units: u128 = 0;
    for digit in whole.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u128::from(digit - b'0')))
            .filter(|&u| u <= u128::from(u64::MAX))
            .ok_or(SizeError::TooLarge)?;
    }
    let mut bytes = units * u128::from(factor);

    // The fraction, exactly: its first FRACTION_DIGITS digits as an
    // integer, times the factor, over the matching power of ten.
    let kept = &fraction.as_bytes()[..fraction.len().min(FRACTION_DIGITS)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for &digit in kept {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    bytes += numerator * u128::from(factor) / denominator;

    u64::try_from(bytes)
        .map(ByteSize)
        .map_err(|_| SizeError::TooLarge)
}

/// Bytes per unit, for the units `bytesize` knows (any case), or `None`.
fn unit_factor(unit: &str) -> Option<u64> {
    const UNITS: &[(&[&str], u64)] = &[
        (&["", "b"], 1),
        (&["k", "kb"], 1_000),
        (&["m", "mb"], 1_000_000),
        (&["g", "gb"], 1_000_000_000),
        (&["t", "tb"], 1_000_000_000_000),
        (&["p", "pb"], 1_000_000_000_000_000),
        (&["e", "eb"], 1_000_000_000_000_000_000),
        (&["ki", "kib"], 1 << 10),
        (&["mi", "mib"], 1 << 20),
        (&["gi", "gib"], 1 << 30),
        (&["ti", "tib"], 1 << 40),
        (&["pi", "pib"], 1 << 50),
        (&["ei", "eib"], 1 << 60),
    ];
    UNITS
        .iter()
        .find(|(names, _)| names.iter().any(|name| unit.eq_ignore_ascii_case(name)))
        .map(|&(_, factor)| factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_bytesize_reads_reads_the_same() {
        for text in [
            "0",
            "1",
            "4096",
            "64MiB",
            "64 MiB",
            "64mib",
            "1GiB",
            "1 gb",
            "1.5GiB",
            "1.5 KiB",
            "512KiB",
            "3k",
            "2Mi",
            "7 B",
            "1PiB",
            "1EiB",
            ".5KiB",
            "5.KiB",
            " 8MiB ",
            "18446744073709551615",
            "18446744073709551615B",
            "+64",
        ] {
            let expected: ByteSize = text.trim().parse().expect("bytesize reads it");
            assert_eq!(parse_size(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn sizes_past_64_bits_are_too_large() {
        for text in [
            "99999999999999999999999",
            "18446744073709551616",
            "16EiB",
            "99999EiB",
            "18446744073709551615KiB",
            "20000000000 GB",
            "18446744073709551615.5KiB",
        ] {
            assert_eq!(parse_size(text), Err(SizeError::TooLarge), "{text:?}");
        }
        assert_eq!(
            SizeError::TooLarge.to_string(),
            "too large: a size is at most 18446744073709551615 bytes (just under 16 EiB)"
        );
        // Just under the edge is fine, and exact (no float rounding).
        assert_eq!(
            parse_size("15.999EiB"),
            Ok(ByteSize(18_445_591_152_204_944_769))
        );
        assert_eq!(
            parse_size("9007199254740993B"),
            Ok(ByteSize(9_007_199_254_740_993))
        );
    }

    #[test]
    fn a_fraction_of_bytes_is_read_and_rounded_down() {
        // `bytesize` refuses a fraction without a unit; it is bytes here.
        assert_eq!(parse_size("0.5"), Ok(ByteSize(0)));
        assert_eq!(parse_size("0.9KB"), Ok(ByteSize(900)));
        assert_eq!(parse_size("0.1KiB"), Ok(ByteSize(102)));
    }

    #[test]
    fn other_text_is_not_a_size() {
        for text in ["", "lots", "-1", "MiB", ".", "1.2.3", "--5"] {
            assert_eq!(parse_size(text), Err(SizeError::NotASize), "{text:?}");
        }
        assert_eq!(
            parse_size("12 parsecs"),
            Err(SizeError::UnknownUnit("parsecs".into()))
        );
        assert_eq!(parse_size("1e3"), Err(SizeError::UnknownUnit("e3".into())));
    }
}
