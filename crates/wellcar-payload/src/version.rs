//! Version ordering for "is this payload newer" and "minimum source version" checks.
//!
//! A version is dot-separated unsigned numbers (`3815.2.0`), optionally followed by `+build`
//! metadata, which is ignored when comparing, as in semver. Missing trailing components count
//! as 0 (`1.2` == `1.2.0`). Anything else is rejected rather than guessed at.

use std::cmp::Ordering;
use std::fmt;

/// A parsed version.
#[derive(Debug, Clone)]
pub struct Version {
    parts: Vec<u64>,
    text: String,
}

impl Version {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let core = text.split_once('+').map_or(text, |(core, _)| core);
        if core.is_empty() {
            return Err(format!("{text:?} is empty"));
        }
        let parts = core
            .split('.')
            .map(|part| {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "{text:?} is not dot-separated numbers (bad component {part:?})"
                    ));
                }
                part.parse::<u64>()
                    .map_err(|_| format!("{text:?} has a component too large: {part:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            parts,
            text: text.to_owned(),
        })
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.parts.len().max(other.parts.len());
        (0..len)
            .map(|i| {
                let a = self.parts.get(i).copied().unwrap_or(0);
                let b = other.parts.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(v("3815.2.10") > v("3815.2.9"));
        assert!(v("10.0.0") > v("9.99.99"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert_eq!(v("1.2.3+dev-abc"), v("1.2.3"));
        assert!(v("1.2.3.1") > v("1.2.3"));
    }

    #[test]
    fn rejects_non_numeric_versions_naming_the_component() {
        let err = Version::parse("1.x.3").unwrap_err();
        assert!(err.contains("\"x\""), "{err}");
        assert!(Version::parse("").is_err());
        assert!(Version::parse("1..2").is_err());
        assert!(Version::parse("-1").is_err());
    }
}
