//! Omaha's `targetversionprefix`: an update check that pins the version it will accept
//! (`flatcar-update --to-version V` sends `<updatecheck targetversionprefix="V"/>`).
//!
//! Contract:
//! - Matching follows Omaha protocol v3: the prefix is a dotted tuple of exactly-matching
//!   components, not a lexical prefix, or a complete version followed by `$`. Here: after one
//!   trailing `.` is dropped (Chrome OS's `1412.` form), prefix `P` matches version `V` when
//!   `V == P` or `V` starts with `P` and the next character of `V` is `.` or `+` (a component
//!   boundary, build metadata counting as a component). So `1.2` matches `1.2.3` and
//!   `1.2.3+nightly-1`, never `1.20.0`; `4799.0.0` matches `4799.0.0+nightly-20260821-2100`.
//!   `P$` matches only the version text `P` exactly. Separators are significant (`1+2` does not
//!   match `1.2.0`).
//! - A prefix that cannot match any OS version ([`PrefixError`]: empty, characters other than
//!   `[0-9A-Za-z.+-]`, an empty component, `$` anywhere but last, over 40 bytes) is answered
//!   `noupdate`, as Omaha says a server should not offer what does not match.
//! - The candidate packages are those of the machine's app and architecture (its group's
//!   channel must exist for that architecture). If the channel's own package matches, it is
//!   offered; else the newest matching package ([`wellcar_contract::OsVersion`] order).
//! - No downgrades, no re-installs: a match not newer than the machine's version (or a machine
//!   version that is not an OS version) is `noupdate`, even in a group with `allow_downgrade`.
//! - Floors still hold: if the channel has a floor above the machine's version and below the
//!   match, the answer is `noupdate` (the floor does not match the pin, and Omaha forbids
//!   offering it); the operator sees why in the log, the machine pins the floor first.
//! - Everything after the choice is the normal path: the grant transaction applies the group's
//!   policy (paused, halted, windows, `max_updates_per_period`, `max_concurrent`, safe mode) and
//!   a pinned grant counts against the rollout limits like any grant, because it is an update.
//!   The instance's `granted_version` records the pinned version; the group's first grant of a
//!   version logs `rollout-started` naming the prefix.
//!
//! [`choose`] is the pure decision; [`pinned_hop`] reads candidates (only when the channel's
//! package does not match) and calls it.

use std::sync::Arc;

use wellcar_contract::{OsVersion, MAX_VERSION_LEN};

use crate::model::{Channel, Package};
use crate::server::ServerState;
use crate::StoreError;

/// The update check's non-empty `targetversionprefix`, if it sent one.
pub fn requested_prefix(app: &wellcar_omaha::AppRequest) -> Option<&str> {
    let check = app.update_check.as_ref()?;
    check
        .target_version_prefix
        .as_deref()
        .filter(|p| !p.is_empty())
}

/// A parsed `targetversionprefix` (see the module contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetVersion {
    /// Dotted components that must match exactly, then anything from a component boundary.
    Prefix(String),
    /// `V$`: exactly this version text.
    Exact(String),
}

/// Why a `targetversionprefix` can match no OS version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Nothing left after the trailing `.` or `$`.
    #[error("targetversionprefix {0:?} is empty")]
    Empty(String),
    /// Over [`MAX_VERSION_LEN`] bytes.
    #[error("targetversionprefix {0:?} is longer than an OS version ({MAX_VERSION_LEN} bytes)")]
    TooLong(String),
    /// A character no OS version has (`$` counts when not last).
    #[error("targetversionprefix {text:?} has {bad:?}; only 0-9 A-Z a-z . + - and a final $")]
    Character {
        /// The prefix.
        text: String,
        /// The first offending character.
        bad: char,
    },
    /// `..`, a leading separator or a separator next to `+`.
    #[error("targetversionprefix {0:?} has an empty component")]
    EmptyComponent(String),
}

impl TargetVersion {
    /// Parses the attribute's text.
    pub fn parse(text: &str) -> Result<Self, PrefixError> {
        let (body, exact) = match text.strip_suffix('$') {
            Some(b) => (b, true),
            None => (text.strip_suffix('.').unwrap_or(text), false),
        };
        if body.is_empty() {
            return Err(PrefixError::Empty(text.to_owned()));
        }
        if body.len() > MAX_VERSION_LEN {
            return Err(PrefixError::TooLong(text.to_owned()));
        }
        if let Some(bad) = body
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-')))
        {
            return Err(PrefixError::Character {
                text: text.to_owned(),
                bad,
            });
        }
        if body.split(['.', '+']).any(str::is_empty) {
            return Err(PrefixError::EmptyComponent(text.to_owned()));
        }
        Ok(if exact {
            TargetVersion::Exact(body.to_owned())
        } else {
            TargetVersion::Prefix(body.to_owned())
        })
    }

    /// The literal text every matching version starts with (for narrowing a query).
    pub fn leading_text(&self) -> &str {
        match self {
            TargetVersion::Prefix(p) | TargetVersion::Exact(p) => p,
        }
    }

    /// Whether `version` matches (see the module contract).
    pub fn matches(&self, version: &str) -> bool {
        match self {
            TargetVersion::Exact(v) => version == v,
            TargetVersion::Prefix(p) => match version.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with(['.', '+']),
                None => false,
            },
        }
    }
}

/// Why a pinned check gets `noupdate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPinnedOffer {
    /// No package of the app and arch matches.
    NoMatch,
    /// The machine's version is not an OS version.
    UnparseableCurrent,
    /// The newest match is not newer than the machine (no downgrades or re-installs here).
    NotNewer {
        /// The newest matching version.
        matched: String,
    },
    /// A channel floor lies between the machine and the match: it must be installed first.
    FloorFirst {
        /// The floor's version.
        floor: String,
        /// The newest matching version.
        matched: String,
    },
}

/// The pure decision: the package a machine at `current` on `channel` gets for `target`, chosen
/// among `candidates` (any packages of the app and arch; non-matching ones are ignored), with the
/// floor reason if the package is one of the channel's floors.
pub fn choose(
    target: &TargetVersion,
    current: &str,
    channel: &Channel,
    candidates: &[Package],
) -> Result<(Package, Option<String>), NoPinnedOffer> {
    let channel_match = channel
        .package
        .as_ref()
        .filter(|p| p.arch == channel.arch && target.matches(&p.version))
        .and_then(|p| Some((OsVersion::parse(&p.version).ok()?, p)));
    let newest = || {
        candidates
            .iter()
            .filter(|p| p.arch == channel.arch && target.matches(&p.version))
            .filter_map(|p| Some((OsVersion::parse(&p.version).ok()?, p)))
            .max_by(|a, b| a.0.cmp(&b.0))
    };
    let (version, package) = channel_match
        .or_else(newest)
        .ok_or(NoPinnedOffer::NoMatch)?;
    let current = OsVersion::parse(current).map_err(|_| NoPinnedOffer::UnparseableCurrent)?;
    if version <= current {
        return Err(NoPinnedOffer::NotNewer {
            matched: package.version.clone(),
        });
    }
    let floor_between = channel
        .floors
        .iter()
        .filter(|f| f.package.id != package.id)
        .filter_map(|f| Some((OsVersion::parse(&f.package.version).ok()?, f)))
        .filter(|(v, _)| *v > current && *v < version)
        .min_by(|a, b| a.0.cmp(&b.0));
    if let Some((_, floor)) = floor_between {
        return Err(NoPinnedOffer::FloorFirst {
            floor: floor.package.version.clone(),
            matched: package.version.clone(),
        });
    }
    let floor_reason = channel
        .floors
        .iter()
        .find(|f| f.package.id == package.id)
        .map(|f| f.reason.clone());
    Ok((package.clone(), floor_reason))
}

/// The package to offer a machine at `current` that sent `targetversionprefix=prefix`, or
/// `None` (`noupdate`, the reason logged). Reads the app's matching packages only when the
/// channel's own package does not match.
pub async fn pinned_hop(
    state: &Arc<ServerState>,
    channel: &Channel,
    machine_id: &str,
    current: &str,
    prefix: &str,
) -> Result<Option<(Package, Option<String>)>, StoreError> {
    let target = match TargetVersion::parse(prefix) {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(machine = %machine_id, "pinned check refused: {e}");
            return Ok(None);
        }
    };
    let channel_matches = channel
        .package
        .as_ref()
        .is_some_and(|p| target.matches(&p.version));
    let candidates = if channel_matches {
        Vec::new()
    } else {
        let (app, arch, t) = (channel.app_id.clone(), channel.arch.clone(), target.clone());
        state
            .db
            .read(move |c| crate::store::packages_matching(c, &app, &arch, &t))
            .await?
    };
    match choose(&target, current, channel, &candidates) {
        Ok(hop) => Ok(Some(hop)),
        Err(why) => {
            tracing::info!(machine = %machine_id, prefix, ?why, "pinned check answered noupdate");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Floor;

    fn package(version: &str, arch: &str) -> Package {
        Package {
            id: format!("{version}-{arch}"),
            app_id: "app".into(),
            version: version.into(),
            arch: arch.into(),
            filename: "u.gz".into(),
            url: String::new(),
            size: 1,
            sha256_hex: String::new(),
            sha1_base64: String::new(),
            sha256_base64: String::new(),
        }
    }

    fn channel(target: Option<&str>, floors: &[&str]) -> Channel {
        Channel {
            id: "c".into(),
            app_id: "app".into(),
            name: "stable".into(),
            arch: "amd64".into(),
            package: target.map(|v| package(v, "amd64")),
            floors: floors
                .iter()
                .map(|v| Floor {
                    package: package(v, "amd64"),
                    reason: format!("floor {v}"),
                })
                .collect(),
        }
    }

    #[test]
    fn prefixes_match_on_component_boundaries() {
        let cases: &[(&str, &str, bool)] = &[
            ("1.2", "1.2.3", true),
            ("1.2", "1.20.0", false),
            ("1.2.", "1.2.3", true),
            ("1.1", "1.10.0", false),
            ("1.1", "1.1.0", true),
            ("1", "1.0.0", true),
            ("1", "10.0.0", false),
            ("1.2.3", "1.2.3", true),
            ("1.2.3", "1.2.34", false),
            ("4799.0.0", "4799.0.0+nightly-20260821-2100", true),
            ("4799.0.0+nightly", "4799.0.0+nightly-20260821-2100", false),
            ("4799.0.0+nightly", "4799.0.0+nightly.2", true),
            ("1+2", "1.2.0", false),
            ("1.2.3$", "1.2.3", true),
            ("1.2.3$", "1.2.3+b", false),
            ("1.2$", "1.2.3", false),
        ];
        for (prefix, version, want) in cases {
            let t = TargetVersion::parse(prefix).unwrap();
            assert_eq!(t.matches(version), *want, "{prefix:?} vs {version:?}");
        }
    }

    #[test]
    fn prefixes_that_match_nothing_are_named() {
        let cases: &[(&str, PrefixError)] = &[
            ("$", PrefixError::Empty("$".into())),
            (".", PrefixError::Empty(".".into())),
            ("1..2", PrefixError::EmptyComponent("1..2".into())),
            (".1", PrefixError::EmptyComponent(".1".into())),
            (
                "1.$2",
                PrefixError::Character {
                    text: "1.$2".into(),
                    bad: '$',
                },
            ),
            (
                "1.2 ",
                PrefixError::Character {
                    text: "1.2 ".into(),
                    bad: ' ',
                },
            ),
            (
                "1%",
                PrefixError::Character {
                    text: "1%".into(),
                    bad: '%',
                },
            ),
        ];
        for (prefix, want) in cases {
            assert_eq!(
                TargetVersion::parse(prefix).as_ref(),
                Err(want),
                "{prefix:?}"
            );
        }
        let long = "1".repeat(MAX_VERSION_LEN + 1);
        assert_eq!(
            TargetVersion::parse(&long),
            Err(PrefixError::TooLong(long.clone()))
        );
        assert!(PrefixError::EmptyComponent("1..2".into())
            .to_string()
            .contains("\"1..2\" has an empty component"));
    }

    #[test]
    fn choice_table() {
        let all = [
            package("0.9.0", "amd64"),
            package("1.1.0", "amd64"),
            package("1.1.5", "amd64"),
            package("1.10.0", "amd64"),
            package("1.2.0", "arm64"),
            package("2.0.0", "amd64"),
        ];
        let v = |r: Result<(Package, Option<String>), NoPinnedOffer>| {
            r.map(|(p, floor)| (p.version, floor))
        };
        let ok = |s: &str| Ok((s.to_owned(), None));
        struct Case {
            prefix: &'static str,
            current: &'static str,
            target: Option<&'static str>,
            floors: &'static [&'static str],
            want: Result<(String, Option<String>), NoPinnedOffer>,
        }
        let cases = [
            // The newest match, not the channel's (non-matching) target.
            Case {
                prefix: "1.1",
                current: "1.0.0",
                target: Some("1.0.0"),
                floors: &[],
                want: ok("1.1.5"),
            },
            // The component boundary: 1.10.0 does not match "1.1".
            Case {
                prefix: "1.10",
                current: "1.0.0",
                target: Some("1.0.0"),
                floors: &[],
                want: ok("1.10.0"),
            },
            Case {
                prefix: "1.1.0$",
                current: "1.0.0",
                target: None,
                floors: &[],
                want: ok("1.1.0"),
            },
            // The channel's own package wins when it matches, even if a newer one matches too.
            Case {
                prefix: "1",
                current: "0.9.0",
                target: Some("1.1.0"),
                floors: &[],
                want: ok("1.1.0"),
            },
            // Only the machine's arch.
            Case {
                prefix: "1.2",
                current: "1.0.0",
                target: Some("1.0.0"),
                floors: &[],
                want: Err(NoPinnedOffer::NoMatch),
            },
            Case {
                prefix: "3",
                current: "1.0.0",
                target: Some("1.0.0"),
                floors: &[],
                want: Err(NoPinnedOffer::NoMatch),
            },
            // No downgrade, no re-install.
            Case {
                prefix: "0.9",
                current: "1.0.0",
                target: Some("1.0.0"),
                floors: &[],
                want: Err(NoPinnedOffer::NotNewer {
                    matched: "0.9.0".into(),
                }),
            },
            Case {
                prefix: "2.0.0",
                current: "2.0.0",
                target: Some("1.0.0"),
                floors: &[],
                want: Err(NoPinnedOffer::NotNewer {
                    matched: "2.0.0".into(),
                }),
            },
            Case {
                prefix: "2",
                current: "garbage",
                target: Some("1.0.0"),
                floors: &[],
                want: Err(NoPinnedOffer::UnparseableCurrent),
            },
            // A floor between machine and match must come first; a floor that is the match is marked.
            Case {
                prefix: "2",
                current: "1.0.0",
                target: Some("1.0.0"),
                floors: &["1.1.0"],
                want: Err(NoPinnedOffer::FloorFirst {
                    floor: "1.1.0".into(),
                    matched: "2.0.0".into(),
                }),
            },
            Case {
                prefix: "2",
                current: "1.1.0",
                target: Some("1.0.0"),
                floors: &["1.1.0"],
                want: ok("2.0.0"),
            },
            Case {
                prefix: "1.1.0",
                current: "1.0.0",
                target: Some("2.0.0"),
                floors: &["1.1.0"],
                want: Ok(("1.1.0".into(), Some("floor 1.1.0".into()))),
            },
        ];
        for c in cases {
            let t = TargetVersion::parse(c.prefix).unwrap();
            let got = v(choose(&t, c.current, &channel(c.target, c.floors), &all));
            assert_eq!(got, c.want, "prefix {:?} at {}", c.prefix, c.current);
        }
    }
}
