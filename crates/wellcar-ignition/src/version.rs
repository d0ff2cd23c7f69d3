//! Ignition spec versions: which ones exist, and how a `ignition.version` string maps to one.

use std::fmt;

/// A stable Ignition spec version 3.minor.0 that this crate parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Spec {
    /// Minor version: 0 for 3.0.0 … 6 for 3.6.0.
    pub minor: u8,
}

impl Spec {
    /// 3.0.0
    pub const V3_0: Spec = Spec { minor: 0 };
    /// 3.1.0
    pub const V3_1: Spec = Spec { minor: 1 };
    /// 3.2.0
    pub const V3_2: Spec = Spec { minor: 2 };
    /// 3.3.0
    pub const V3_3: Spec = Spec { minor: 3 };
    /// 3.4.0
    pub const V3_4: Spec = Spec { minor: 4 };
    /// 3.5.0
    pub const V3_5: Spec = Spec { minor: 5 };
    /// 3.6.0, the newest stable spec.
    pub const V3_6: Spec = Spec { minor: 6 };
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "3.{}.0", self.minor)
    }
}

/// Why a version string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionProblem {
    /// Not a semver string (Ignition: `invalid config version (couldn't parse)`).
    Unparseable,
    /// A well-formed version that this implementation does not speak
    /// (Ignition: `unsupported config version`).
    Unsupported,
}

/// Maps an `ignition.version` string to a supported spec.
///
/// Accepts exactly 3.0.0 … 3.6.0. Everything else that is valid semver (2.x, 3.7.0, old or
/// current experimentals) is [`VersionProblem::Unsupported`]; anything else is
/// [`VersionProblem::Unparseable`].
pub fn classify(version: &str) -> Result<Spec, VersionProblem> {
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let core = core.split_once('+').map_or(core, |(c, _build)| c);
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return Err(VersionProblem::Unparseable);
    }
    if let Some(pre) = pre {
        if pre.is_empty()
            || !pre.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        {
            return Err(VersionProblem::Unparseable);
        }
        return Err(VersionProblem::Unsupported);
    }
    match (parts[0], parts[1], parts[2]) {
        ("3", minor, "0") => match minor.parse::<u8>() {
            Ok(m) if m <= Spec::V3_6.minor => Ok(Spec { minor: m }),
            _ => Err(VersionProblem::Unsupported),
        },
        _ => Err(VersionProblem::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_versions_are_accepted() {
        for m in 0..=6u8 {
            assert_eq!(classify(&format!("3.{m}.0")), Ok(Spec { minor: m }));
        }
    }

    #[test]
    fn other_versions_are_rejected_with_ignitions_distinction() {
        for v in [
            "2.2.0",
            "1.0.0",
            "3.7.0",
            "3.6.0-experimental",
            "3.7.0-experimental",
            "3.6.1",
            "4.0.0",
        ] {
            assert_eq!(classify(v), Err(VersionProblem::Unsupported), "{v}");
        }
        for v in ["", "invalid.semver", "3.6", "3.06.0", "v3.6.0", "3.6.0-"] {
            assert_eq!(classify(v), Err(VersionProblem::Unparseable), "{v}");
        }
    }
}
