//! Byte sizes in serialized specs and outcomes: written as exact byte
//! counts, read from a count or from text like `"64MiB"`.
//!
//! `bytesize` writes sizes as rounded text (`"1.0 MiB"` for 1,100,000), which
//! would change a limit on its way to a worker process.

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Bytes(u64),
    Text(String),
}

impl Repr {
    fn size<E: serde::de::Error>(self) -> Result<ByteSize, E> {
        match self {
            Repr::Bytes(n) => Ok(ByteSize(n)),
            Repr::Text(text) => text.parse().map_err(E::custom),
        }
    }
}

/// `#[serde(with = "crate::size::exact")]` for `ByteSize` fields.
pub(crate) mod exact {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(size.as_u64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        Repr::deserialize(d)?.size()
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
        match Option::<Repr>::deserialize(d)? {
            Some(repr) => repr.size().map(Some),
            None => Ok(None),
        }
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
        assert!(serde_json::from_str::<Sizes>(r#"{"a":"lots"}"#).is_err());
    }
}
