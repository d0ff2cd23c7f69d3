//! The OS version: what `wellcar build` stamps into an image and every crate after it reads.
//!
//! Contract: an OS version is `MAJOR.MINOR.PATCH`, three unsigned decimal numbers that fit in
//! 64 bits, without leading zeros (a lone `0` is fine), optionally followed by `+` and build
//! metadata: dot-separated, non-empty identifiers of `[0-9A-Za-z-]`. Flatcar's `3815.2.0` and
//! `4799.0.0+nightly-20260821-2100` are OS versions; `1.2`, `1.2.3.4`, `v1.2.3` (leading `v`),
//! `1.0.0-rc1` (pre-release), `01.2.3` (leading zero), `1.2.3+` (empty build metadata) and any
//! text with whitespace are not. The whole text is at most [`MAX_VERSION_LEN`] (40) bytes, the
//! space the GRUB boot-state environment block reserves for a slot's version.
//!
//! Versions compare by the three numbers only, numerically (`3815.2.10` > `3815.2.9`); build
//! metadata does not take part (as in semver precedence), so `1.2.3+a == 1.2.3+b`. The text is
//! kept as given: [`OsVersion::as_str`] and `Display` return it unchanged.
//!
//! Who uses it: the image definition and `--version` override (`wellcar-image`), the payload
//! manifest and apply policy (`wellcar-payload`), the boot state (`wellcar-bootstate`), the
//! update server's packages and Omaha requests (`wellcar-server`) and the update agent's offers
//! (`wellcar-agent`).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// The longest OS version text, in bytes (the boot-state environment block's limit).
pub const MAX_VERSION_LEN: usize = 40;

/// An OS version that follows the contract in the [module documentation](self).
#[derive(Debug, Clone)]
pub struct OsVersion {
    major: u64,
    minor: u64,
    patch: u64,
    /// Length of `MAJOR.MINOR.PATCH` in `text`; the build metadata (if any) follows a `+`.
    core_len: usize,
    text: String,
}

/// Why a text is not an [`OsVersion`]. Each message starts with the offending text, quoted, so a
/// caller prefixes the field it came from: `os.version: "1.2" has 2 dot-separated components...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The text is empty.
    #[error("empty; an OS version is MAJOR.MINOR.PATCH like 3815.2.0")]
    Empty,
    /// The text is longer than [`MAX_VERSION_LEN`] bytes.
    #[error("{start:?}... is {len} bytes; an OS version is at most {MAX_VERSION_LEN}")]
    TooLong {
        /// The first bytes of the text (up to a character boundary near the limit).
        start: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The part before `+` is not three dot-separated components.
    #[error("{text:?} has {found} dot-separated component(s); an OS version has three, MAJOR.MINOR.PATCH like 3815.2.0")]
    ComponentCount {
        /// The text.
        text: String,
        /// How many components it has.
        found: usize,
    },
    /// A component is not an unsigned decimal number that fits in 64 bits.
    #[error("{text:?}: component {component:?} is not an unsigned decimal number below 2^64 (an OS version has no leading `v` and no pre-release like `-rc1`)")]
    BadComponent {
        /// The text.
        text: String,
        /// The component.
        component: String,
    },
    /// A component has a leading zero.
    #[error("{text:?}: component {component:?} has a leading zero")]
    LeadingZero {
        /// The text.
        text: String,
        /// The component.
        component: String,
    },
    /// The build metadata after `+` is not dot-separated non-empty `[0-9A-Za-z-]` identifiers.
    #[error("{text:?}: build metadata {build:?} is not dot-separated non-empty identifiers of 0-9 A-Z a-z -")]
    BadBuild {
        /// The text.
        text: String,
        /// The build metadata (after the first `+`).
        build: String,
    },
}

impl OsVersion {
    /// Parses `text`; the error says what is wrong and quotes it.
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        if text.is_empty() {
            return Err(VersionError::Empty);
        }
        if text.len() > MAX_VERSION_LEN {
            let mut end = MAX_VERSION_LEN;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            return Err(VersionError::TooLong {
                start: text[..end].to_owned(),
                len: text.len(),
            });
        }
        let (core, build) = match text.split_once('+') {
            Some((core, build)) => (core, Some(build)),
            None => (text, None),
        };
        let components: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = components[..] else {
            return Err(VersionError::ComponentCount {
                text: text.to_owned(),
                found: components.len(),
            });
        };
        let number = |component: &str| -> Result<u64, VersionError> {
            let bad = || VersionError::BadComponent {
                text: text.to_owned(),
                component: component.to_owned(),
            };
            if component.is_empty() || !component.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            if component.len() > 1 && component.starts_with('0') {
                return Err(VersionError::LeadingZero {
                    text: text.to_owned(),
                    component: component.to_owned(),
                });
            }
            component.parse::<u64>().map_err(|_| bad())
        };
        let (major, minor, patch) = (number(major)?, number(minor)?, number(patch)?);
        if let Some(build) = build {
            let identifier_ok = |id: &str| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !build.split('.').all(identifier_ok) {
                return Err(VersionError::BadBuild {
                    text: text.to_owned(),
                    build: build.to_owned(),
                });
            }
        }
        Ok(OsVersion {
            major,
            minor,
            patch,
            core_len: core.len(),
            text: text.to_owned(),
        })
    }

    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `MAJOR`.
    pub fn major(&self) -> u64 {
        self.major
    }

    /// `MINOR`.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// `PATCH`.
    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// The build metadata after `+`, if any (never empty).
    pub fn build(&self) -> Option<&str> {
        self.text.get(self.core_len + 1..)
    }

    fn key(&self) -> (u64, u64, u64) {
        (self.major, self.minor, self.patch)
    }
}

impl PartialEq for OsVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for OsVersion {}

impl Hash for OsVersion {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for OsVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OsVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for OsVersion {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl AsRef<str> for OsVersion {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl serde::Serialize for OsVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for OsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        OsVersion::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> OsVersion {
        match OsVersion::parse(text) {
            Ok(v) => v,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    fn refused(text: &str) -> VersionError {
        match OsVersion::parse(text) {
            Ok(v) => panic!("{text:?} should be refused, parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_flatcar_versions_and_keeps_the_text() {
        let stable = v("3815.2.0");
        assert_eq!(
            (stable.major(), stable.minor(), stable.patch()),
            (3815, 2, 0)
        );
        assert_eq!(stable.build(), None);
        assert_eq!(stable.as_str(), "3815.2.0");

        let nightly = v("4799.0.0+nightly-20260821-2100");
        assert_eq!(nightly.build(), Some("nightly-20260821-2100"));
        assert_eq!(nightly.to_string(), "4799.0.0+nightly-20260821-2100");
        assert_eq!(nightly.as_str(), "4799.0.0+nightly-20260821-2100");

        assert_eq!(v("0.0.0").key(), (0, 0, 0));
        assert_eq!(v("1.0.0+a.b-c.0.01").build(), Some("a.b-c.0.01"));
        let max = v("18446744073709551615.0.0");
        assert_eq!(max.major(), u64::MAX);
        assert_eq!("1.2.3".parse::<OsVersion>(), Ok(v("1.2.3")));
        let exactly_40 = format!("1.2.3+{}", "a".repeat(MAX_VERSION_LEN - 6));
        assert_eq!(exactly_40.len(), MAX_VERSION_LEN);
        assert_eq!(v(&exactly_40).as_str(), exactly_40);
    }

    #[test]
    fn refuses_empty() {
        assert_eq!(refused(""), VersionError::Empty);
    }

    #[test]
    fn refuses_too_long_quoting_the_start() {
        let long = format!("1.2.3+{}", "a".repeat(MAX_VERSION_LEN - 5));
        assert_eq!(long.len(), MAX_VERSION_LEN + 1);
        let err = refused(&long);
        assert_eq!(
            err,
            VersionError::TooLong {
                start: long[..MAX_VERSION_LEN].to_owned(),
                len: MAX_VERSION_LEN + 1,
            }
        );
        assert!(err.to_string().contains("41 bytes"), "{err}");
        // The quoted start ends on a character boundary.
        let wide = format!("1.2.3+{}", "é".repeat(30));
        match refused(&wide) {
            VersionError::TooLong { start, len } => {
                assert_eq!(len, wide.len());
                assert!(start.len() <= MAX_VERSION_LEN && wide.starts_with(&start));
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
    }

    #[test]
    fn refuses_other_component_counts() {
        for (text, found) in [
            ("1", 1),
            ("1.2", 2),
            ("1.2.3.4", 4),
            ("one", 1),
            ("1.2+b", 2),
        ] {
            assert_eq!(
                refused(text),
                VersionError::ComponentCount {
                    text: text.into(),
                    found
                },
                "{text}"
            );
        }
        assert!(refused("1.2").to_string().contains("\"1.2\""));
    }

    #[test]
    fn refuses_bad_components_naming_them() {
        for (text, component) in [
            ("v1.2.3", "v1"),
            ("1.0.0-rc1", "0-rc1"),
            ("1..3", ""),
            ("1.2.", ""),
            ("1.x.3", "x"),
            (" 1.2.3", " 1"),
            ("1.2.3 ", "3 "),
            ("1.2.3\n", "3\n"),
            ("1.-2.3", "-2"),
            ("1.2.18446744073709551616", "18446744073709551616"),
            ("1.٣.3", "٣"),
        ] {
            let err = refused(text);
            assert_eq!(
                err,
                VersionError::BadComponent {
                    text: text.into(),
                    component: component.into()
                },
                "{text}"
            );
            assert!(err.to_string().contains(&format!("{component:?}")), "{err}");
        }
    }

    #[test]
    fn refuses_leading_zeros() {
        for (text, component) in [("01.2.3", "01"), ("1.00.3", "00"), ("1.2.007", "007")] {
            assert_eq!(
                refused(text),
                VersionError::LeadingZero {
                    text: text.into(),
                    component: component.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_build_metadata() {
        for (text, build) in [
            ("1.2.3+", ""),
            ("1.2.3+a..b", "a..b"),
            ("1.2.3+.a", ".a"),
            ("1.2.3+a.", "a."),
            ("1.2.3+a+b", "a+b"),
            ("1.2.3+a_b", "a_b"),
            ("1.2.3+a b", "a b"),
        ] {
            assert_eq!(
                refused(text),
                VersionError::BadBuild {
                    text: text.into(),
                    build: build.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(v("3815.2.10") > v("3815.2.9"));
        assert!(v("10.0.0") > v("9.99.99"));
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("3815.2.0") > v("3760.2.0"));
        assert!(v("0.0.1") < v("0.1.0"));
        let mut list = [v("2.0.0"), v("10.0.0"), v("1.10.0"), v("1.9.9")];
        list.sort();
        let sorted: Vec<&str> = list.iter().map(OsVersion::as_str).collect();
        assert_eq!(sorted, ["1.9.9", "1.10.0", "2.0.0", "10.0.0"]);
    }

    #[test]
    fn build_metadata_does_not_take_part_in_comparing() {
        use std::collections::hash_map::DefaultHasher;
        let (a, b) = (v("1.2.3+a"), v("1.2.3+b"));
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a, v("1.2.3"));
        let hash = |x: &OsVersion| {
            let mut h = DefaultHasher::new();
            x.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
        // The text still tells them apart.
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn serde_is_the_text_and_deserializing_parses() {
        let nightly = v("4799.0.0+nightly-20260821-2100");
        let json = serde_json::to_string(&nightly).expect("serializes");
        assert_eq!(json, "\"4799.0.0+nightly-20260821-2100\"");
        let back: OsVersion = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.as_str(), nightly.as_str());
        let err = serde_json::from_str::<OsVersion>("\"1.2\"").expect_err("1.2 is refused");
        assert!(err.to_string().contains("MAJOR.MINOR.PATCH"), "{err}");
        assert!(serde_json::from_str::<OsVersion>("123").is_err());
    }
}
