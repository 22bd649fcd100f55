//! Byte sizes in serialized specs and outcomes: written as exact byte
//! counts, read from a count or from text like `"64MiB"`.
//!
//! `bytesize` writes sizes as rounded text (`"1.0 MiB"` for 1,100,000), which
//! would change a limit on its way to a worker process.
//!
//! What is read is exactly what `tasks.toml` reads for a size: a
//! non-negative integer (bytes), or text read by [`crate::size_text::parse_size`]
//! (so `"1.5 KiB"` is 1536 bytes here as there, and a size past 64 bits is
//! *too large* rather than saturated as `bytesize`'s own parser does). The
//! `tasks.toml` parser relies on this: it tells a size-typed limit from the
//! others by what its serde form accepts.

use std::fmt;

use bytesize::ByteSize;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serializer};

/// A size read from a count of bytes or from text.
struct Exact(ByteSize);

/// Reads an [`Exact`] from an integer or a string.
struct ExactVisitor;

impl Visitor<'_> for ExactVisitor {
    type Value = Exact;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"64MiB\" or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<Exact, E> {
        Ok(Exact(ByteSize(bytes)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Exact, E> {
        // The `tasks.toml` reader's words for the same mistake.
        u64::try_from(n)
            .map(|bytes| Exact(ByteSize(bytes)))
            .map_err(|_| E::custom(format!("must not be negative, found {n}")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Exact, E> {
        crate::size_text::parse_size(text)
            .map(Exact)
            .map_err(|err| E::custom(format!("\"{text}\" is {err}")))
    }
}

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Exact, D::Error> {
        d.deserialize_any(ExactVisitor)
    }
}

/// `#[serde(with = "crate::size::exact")]` for `ByteSize` fields.
pub(crate) mod exact {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(size.as_u64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        Exact::deserialize(d).map(|Exact(size)| size)
    }
}

/// `#[serde(with = "crate::size::exact_opt")]` for `Option<ByteSize>` fields.
pub(crate) mod exact_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        size: &Option<ByteSize>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match size {
            Some(size) => s.serialize_some(&size.as_u64()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ByteSize>, D::Error> {
        Ok(Option::<Exact>::deserialize(d)?.map(|Exact(size)| size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sizes {
        #[serde(with = "exact")]
        a: ByteSize,
        #[serde(with = "exact_opt", default)]
        b: Option<ByteSize>,
    }

    #[test]
    fn exact_counts_round_trip_and_text_is_accepted() {
        let sizes = Sizes {
            a: ByteSize(1_100_000),
            b: Some(ByteSize(3)),
        };
        let json = serde_json::to_string(&sizes).expect("serialize");
        assert_eq!(json, r#"{"a":1100000,"b":3}"#);
        assert_eq!(serde_json::from_str::<Sizes>(&json).expect("parse"), sizes);
        let text: Sizes = serde_json::from_str(r#"{"a":"64MiB"}"#).expect("parse");
        assert_eq!(text.a, ByteSize::mib(64));
        assert_eq!(text.b, None);
        let null: Sizes = serde_json::from_str(r#"{"a":0,"b":null}"#).expect("parse");
        assert_eq!(null.b, None);
        assert!(serde_json::from_str::<Sizes>(r#"{"a":"lots"}"#).is_err());
    }

    /// Whatever `tasks.toml`'s reader (`config::parse_size`) makes of a
    /// text, serde makes the same; what it refuses, serde refuses.
    #[test]
    fn text_is_read_as_the_config_reads_it() {
        for text in [
            "0",
            "4096",
            "64MiB",
            " 8MiB ",
            "1.5 KiB",
            "0.5",
            "+64",
            "18446744073709551615",
            "lots",
            "-1",
            "12 parsecs",
            "99999999999999999999999",
            "16EiB",
        ] {
            let json = serde_json::json!({ "a": text, "b": text });
            let read = serde_json::from_value::<Sizes>(json).map(|s| (s.a, s.b));
            match crate::size_text::parse_size(text) {
                Ok(size) => assert_eq!(read.expect(text), (size, Some(size)), "{text:?}"),
                Err(_) => assert!(read.is_err(), "{text:?}"),
            }
        }
        let err = serde_json::from_str::<Sizes>(r#"{"a":"16EiB"}"#).expect_err("too large");
        assert!(err.to_string().contains("\"16EiB\" is too large"), "{err}");
    }

    #[test]
    fn only_non_negative_integers_and_text_are_sizes() {
        let err = serde_json::from_str::<Sizes>(r#"{"a":-1}"#).expect_err("negative");
        assert!(
            err.to_string().contains("must not be negative, found -1"),
            "{err}"
        );
        for bad in [
            r#"{"a":1.5}"#,
            r#"{"a":true}"#,
            r#"{"a":[1]}"#,
            r#"{"a":0,"b":-3}"#,
        ] {
            let err = serde_json::from_str::<Sizes>(bad).expect_err(bad);
            assert!(
                err.to_string().contains("a size such as") || err.to_string().contains("negative"),
                "{bad}: {err}"
            );
        }
        let max: Sizes = serde_json::from_str(r#"{"a":18446744073709551615}"#).expect("u64::MAX");
        assert_eq!(max.a, ByteSize(u64::MAX));
    }
}
