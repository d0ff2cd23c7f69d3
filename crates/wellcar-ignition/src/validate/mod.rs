//! Semantic validation with Ignition's rules and messages (coreos/ignition `config/v3_6/types`,
//! `config/validate`).
//!
//! Every finding names the JSON path of the offending field. Rules that changed between spec
//! versions (sha256 since 3.1, `gs://` since 3.2, `none` format and required link targets since
//! 3.3, `arn:` since 3.4) are checked against the version the config was written in.
//! Validation never fetches anything and never touches the filesystem.
//!
//! Findings come out in a fixed order: the `ignition`, `storage` and `systemd` sections (one
//! submodule each: `ignition`, `storage`, `units`), then the checks across sections: nodes
//! below links or on top of unit files (`conflicts`) and duplicate entries in every list
//! (`duplicates`). This module holds the entry points, the path and URL helpers other modules
//! share, and the `Validator` that collects the findings.

mod accounts;
mod conflicts;
mod duplicates;
mod ignition;
mod storage;
mod units;

pub(crate) use accounts::account_problems;
pub(crate) use units::{dropin_name_is_valid, unit_name_is_valid};

use crate::model::Config;
use crate::report::Entry;
use crate::version::Spec;

/// Validates a latest-spec config (e.g. the result of a merge) with the 3.6.0 rules.
pub fn validate(config: &Config) -> Vec<Entry> {
    validate_for_spec(config, Spec::V3_6)
}

/// Validates `config`, which was written in spec `spec` and translated to the latest model.
pub(crate) fn validate_for_spec(config: &Config, spec: Spec) -> Vec<Entry> {
    let mut v = Validator {
        spec,
        out: Vec::new(),
    };
    v.ignition(&config.ignition);
    v.storage(&config.storage);
    v.units(&config.systemd);
    v.accounts(&config.passwd);
    v.node_conflicts(config);
    v.duplicates(config);
    v.out
}

/// Collects the findings of one validation run; each section's checks are its methods, in the
/// submodule of that section.
struct Validator {
    spec: Spec,
    out: Vec<Entry>,
}

/// Go's `path.Clean` for the absolute paths Ignition checks.
pub(crate) fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Ignition's `validatePath`.
pub(crate) fn path_problem(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("path not specified")
    } else if !p.starts_with('/') {
        Some("path not absolute")
    } else if clean_path(p) != p {
        Some("path is not fully simplified")
    } else {
        None
    }
}

/// The scheme of a URL (text before the first `:`), if it looks like one.
pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))).then_some(scheme)
}

/// `foo@bar.service` → `foo@.service`; `None` for non-instances.
pub(crate) fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (instance, ext) = rest.rsplit_once('.')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{ext}"))
}

impl Validator {
    fn err(&mut self, path: String, msg: impl Into<String>) {
        self.out.push(Entry::error(path, msg));
    }

    fn warn(&mut self, path: String, msg: impl Into<String>) {
        self.out.push(Entry::warning(path, msg));
    }

    fn path(&mut self, at: String, p: &str) {
        if let Some(problem) = path_problem(p) {
            self.err(at, problem);
        }
    }
}

#[cfg(test)]
mod tests;
