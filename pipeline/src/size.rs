//! Sizes in bytes as tally's flags and config file write them.

/// A size that is not `<number><unit>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size must be a number with a unit (B, KiB, MiB, GiB), got {0:?}")]
    Number(String),
    #[error("size unit must be one of B, KiB, MiB, GiB (or K, M, G); got {0:?}")]
    Unit(String),
}

/// Parses `512MiB`, `64M`, `2GiB`, `4096` (a bare number is bytes). Units
/// are powers of 1024.
pub fn parse_size(s: &str) -> Result<usize, SizeError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| SizeError::Number(s.to_string()))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => return Err(SizeError::Unit(other.to_string())),
    };
    n.checked_mul(1usize << shift)
        .ok_or_else(|| SizeError::Number(s.to_string()))
}

/// A size as the flags take it: the largest unit that divides it.
pub fn show_size(bytes: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes > 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// `#[serde(with = "tally_pipeline::size::opt")]` for an `Option<usize>`
/// written as `"512MiB"` in a config file.
pub mod opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&super::show_size(*b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_size(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(show_size(512 << 20), "512MiB");
        assert_eq!(show_size(1000), "1000B");
        assert_eq!(
            parse_size("5TB").unwrap_err().to_string(),
            "size unit must be one of B, KiB, MiB, GiB (or K, M, G); got \"TB\""
        );
        assert!(matches!(parse_size("lots"), Err(SizeError::Number(_))));
    }
}
