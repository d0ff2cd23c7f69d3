//! Ignition v3 provisioning for Wellcar: parse, validate, merge and apply the configs CoreOS and
//! Flatcar users already have.
//!
//! Pipeline, as the initramfs runs it:
//! 1. [`parse_config`]: any stable spec 3.0.0–3.6.0, translated to the 3.6.0 model
//!    ([`Config`]); Ignition's validation rules and messages, each naming its JSON path; unknown
//!    keys are warnings.
//! 2. [`merge()`]: base configs and the user config, child over parent.
//! 3. [`resolve_references_with`]: `ignition.config.replace` / `ignition.config.merge`, fetched
//!    with a [`fetch::Fetcher`] (http, https, tftp, data; each config level's `ignition` section
//!    sets the proxy, timeouts and CAs for its own references, as Ignition does), each capped at
//!    [`fetch::MAX_CONFIG_BYTES`], at most [`MAX_REFERENCE_DEPTH`] levels deep and
//!    [`MAX_REFERENCED_CONFIGS`] configs in all. [`resolve_references`] is the offline form
//!    (data: URLs only; remote URLs fail naming the URL).
//! 4. [`apply()`] / [`apply_with`]: partitions (GPT), RAID (mdadm), LUKS (cryptsetup, with
//!    `/etc/crypttab`), filesystems (mkfs + mount units) and, with them mounted below the
//!    target root, users and groups, files, directories, links, systemd units, ssh keys and the
//!    result record, written inside the target root without chroot or systemctl.
//! 5. [`kargs::edit_grub_cfg`]: `kernelArguments` into the OEM `grub.cfg`, done by the caller
//!    before [`apply_with`] (which refuses kernel arguments unless told they were applied).
//!
//! Not supported yet (parsed and validated, but refused naming the field): LUKS `clevis`
//! (tang, tpm2, custom) and `cex`.

pub mod apply;
pub mod fetch;
pub mod kargs;
pub mod merge;
pub mod model;
pub mod report;
pub mod unitfile;
pub mod v2;
pub mod validate;
pub mod version;

mod decode;

pub use apply::{apply, apply_with, ApplyError, ApplyOptions, ApplyReport};
pub use merge::merge;
pub use model::{Config, LATEST_SPEC};
pub use report::{Entry, Severity};
pub use validate::validate;

use fetch::FetchError;
use version::VersionProblem;

/// A successfully parsed config and its non-fatal findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The config, translated to the latest spec (`ignition.version` is [`LATEST_SPEC`]).
    pub config: Config,
    /// Warnings (unknown keys, ineffective settings); never fatal.
    pub warnings: Vec<Entry>,
}

/// Why bytes are not an acceptable Ignition config. Messages are Ignition's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Zero bytes.
    #[error("not a config (empty)")]
    Empty,
    /// Not JSON at all.
    #[error("config is not valid: {message} at line {line} column {column}")]
    Syntax {
        /// The JSON parser's message.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// `ignition.version` missing or not a version.
    #[error("invalid config version (couldn't parse): {version:?}")]
    InvalidVersion {
        /// The version string found ("" when missing).
        version: String,
    },
    /// A version this implementation does not speak (2.x, 3.7.0, experimentals).
    #[error("unsupported config version: {version:?} (supported: 3.0.0 to {latest})", latest = LATEST_SPEC)]
    UnsupportedVersion {
        /// The version string found.
        version: String,
    },
    /// Wrong JSON types or failed validation rules.
    #[error("config is not valid: {}", first_error(.entries))]
    Invalid {
        /// All findings, errors and warnings, each with its JSON path.
        entries: Vec<Entry>,
    },
}

fn first_error(entries: &[Entry]) -> String {
    let errors: Vec<String> = entries
        .iter()
        .filter(|e| e.is_error())
        .map(ToString::to_string)
        .collect();
    match errors.len() {
        0 => "no errors".to_string(),
        1 => errors[0].clone(),
        n => format!("{} (and {} more)", errors[0], n - 1),
    }
}

/// Parses and validates a config of any supported spec version.
///
/// Never panics, whatever the bytes.
pub fn parse_config(bytes: &[u8]) -> Result<Parsed, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ParseError::Syntax {
            message: e
                .to_string()
                .split(" at line")
                .next()
                .unwrap_or_default()
                .to_string(),
            line: e.line(),
            column: e.column(),
        })?;
    let mut version = value
        .get("ignition")
        .and_then(|i| i.get("version"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    // Spec 2.x: translated to 3.0.0 first (see `v2`), then decoded like any 3.0.0 config.
    let mut v2_warnings = Vec::new();
    let value = if v2::is_v2(&version) {
        let (translated, warnings) =
            v2::translate(&value).map_err(|entries| ParseError::Invalid { entries })?;
        v2_warnings = warnings;
        version = "3.0.0".to_string();
        translated
    } else {
        value
    };
    let spec = match version::classify(&version) {
        Ok(spec) => spec,
        Err(VersionProblem::Unparseable) => return Err(ParseError::InvalidVersion { version }),
        Err(VersionProblem::Unsupported) => return Err(ParseError::UnsupportedVersion { version }),
    };
    let (mut config, mut entries, type_error) = decode::decode(&value, spec);
    entries.splice(0..0, v2_warnings);
    if let Some(type_error) = type_error {
        entries.push(type_error);
        return Err(ParseError::Invalid { entries });
    }
    entries.extend(validate::validate_for_spec(&config, spec));
    if entries.iter().any(Entry::is_error) {
        return Err(ParseError::Invalid { entries });
    }
    config.ignition.version = LATEST_SPEC.to_string();
    Ok(Parsed {
        config,
        warnings: entries,
    })
}

/// Why `ignition.config.replace`/`merge` references could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A referenced config could not be fetched.
    #[error("fetching referenced config {field} from {url}")]
    Fetch {
        /// JSON path of the reference, e.g. `ignition.config.merge.0`.
        field: String,
        /// The source URL (shortened when long).
        url: String,
        /// The fetch failure (names the URL).
        #[source]
        source: Box<FetchError>,
    },
    /// A referenced config is not a valid config.
    #[error("parsing referenced config {field}")]
    Parse {
        /// JSON path of the reference.
        field: String,
        /// The parse failure.
        #[source]
        source: ParseError,
    },
    /// References nest deeper than [`MAX_REFERENCE_DEPTH`].
    #[error("config references nest deeper than {MAX_REFERENCE_DEPTH} levels at {field}")]
    TooDeep {
        /// JSON path of the reference that went too deep.
        field: String,
    },
    /// A config's `ignition` section (CAs, proxy, timeouts) could not be applied.
    #[error("applying the fetch settings of {config}")]
    Settings {
        /// Reference chain of the config whose settings failed (`ignition` for the top config).
        config: String,
        /// The failure (names the field and URL).
        #[source]
        source: Box<fetch::SettingsError>,
    },
    /// More configs referenced, over all levels, than [`MAX_REFERENCED_CONFIGS`].
    #[error("more than {MAX_REFERENCED_CONFIGS} configs referenced through ignition.config (counted over all levels) at {field}")]
    TooMany {
        /// JSON path chain of the reference over the budget.
        field: String,
    },
    /// The merged result breaks a validation rule.
    #[error("merging configs resulted in an invalid config: {}", first_error(.entries))]
    InvalidResult {
        /// The findings.
        entries: Vec<Entry>,
    },
}

/// How deep `ignition.config` references may nest.
pub const MAX_REFERENCE_DEPTH: usize = 10;

/// How many configs `ignition.config.replace`/`merge` may reference in total, over the whole
/// tree of references. Depth alone does not bound the work: 8 merges per level, 10 levels deep
/// is 8^10 fetches. Real configs reference a few (a base, a user config, a handful of
/// fragments); 64 leaves a wide margin while bounding the work to 64 fetch-parse-merge rounds,
/// each of a size-bounded source.
pub const MAX_REFERENCED_CONFIGS: usize = 64;

/// Renders `ignition.config.replace` and `ignition.config.merge` the way Ignition does: a set
/// replace source replaces the whole config (its merge list is ignored); otherwise each merge
/// reference is fetched, verified, parsed (any supported version), rendered recursively and
/// merged on top, in order. The result has no references left and is re-validated.
///
/// Offline: only `data:` references resolve; see [`resolve_references_with`].
pub fn resolve_references(config: Config) -> Result<Config, ResolveError> {
    resolve_references_with(config, &fetch::Fetcher::offline())
}

/// [`resolve_references`] fetching with `base` (proxy, timeouts, CAs and retry policy of the
/// platform), each config's own `ignition` section applied on top for its references.
pub fn resolve_references_with(
    config: Config,
    base: &fetch::Fetcher,
) -> Result<Config, ResolveError> {
    let mut referenced = 0;
    let rendered = render(config, 0, "", &mut referenced, base)?;
    let errors: Vec<Entry> = validate::validate(&rendered)
        .into_iter()
        .filter(Entry::is_error)
        .collect();
    if !errors.is_empty() {
        return Err(ResolveError::InvalidResult { entries: errors });
    }
    Ok(rendered)
}

fn fetch_config(
    fetcher: &fetch::Fetcher,
    resource: &model::Resource,
    field: &str,
    referenced: &mut usize,
) -> Result<Config, ResolveError> {
    *referenced += 1;
    if *referenced > MAX_REFERENCED_CONFIGS {
        return Err(ResolveError::TooMany {
            field: field.to_string(),
        });
    }
    let bytes = fetcher
        .fetch_bytes(resource, fetch::MAX_CONFIG_BYTES)
        .map_err(|source| ResolveError::Fetch {
            field: field.to_string(),
            url: fetch::short_url(resource.source.as_deref().unwrap_or("")),
            source: Box::new(source),
        })?
        .unwrap_or_default();
    let parsed = parse_config(&bytes).map_err(|source| ResolveError::Parse {
        field: field.to_string(),
        source,
    })?;
    for w in &parsed.warnings {
        tracing::warn!("{field}: {w}");
    }
    Ok(parsed.config)
}

/// The path of a reference inside the config referenced at `parent` (`""` for the top).
fn nested(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent} > {child}")
    }
}

/// Renders `config`, found at the reference chain `at`; `referenced` counts the configs fetched
/// so far over the whole tree.
fn render(
    mut config: Config,
    depth: usize,
    at: &str,
    referenced: &mut usize,
    base: &fetch::Fetcher,
) -> Result<Config, ResolveError> {
    if depth > MAX_REFERENCE_DEPTH {
        return Err(ResolveError::TooDeep {
            field: at.to_string(),
        });
    }
    if config.ignition.config.replace.source.is_none() && config.ignition.config.merge.is_empty() {
        return Ok(config);
    }
    // Ignition's UpdateHttpTimeoutsAndCAs: this config's settings fetch its references.
    let fetcher = base
        .with_config(&config.ignition)
        .map_err(|source| ResolveError::Settings {
            config: if at.is_empty() { "ignition" } else { at }.to_string(),
            source: Box::new(source),
        })?;
    let references = std::mem::take(&mut config.ignition.config);
    if references.replace.source.is_some() {
        let field = nested(at, "ignition.config.replace");
        tracing::info!("replacing config with {field}");
        let replacement = fetch_config(&fetcher, &references.replace, &field, referenced)?;
        return render(replacement, depth + 1, &field, referenced, base);
    }
    for (i, reference) in references.merge.iter().enumerate() {
        let field = nested(at, &format!("ignition.config.merge.{i}"));
        tracing::info!("merging {field}");
        let child = fetch_config(&fetcher, reference, &field, referenced)?;
        let child = render(child, depth + 1, &field, referenced, base)?;
        config = merge(config, child);
    }
    Ok(config)
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod reference_limits_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn data_url(json: &str) -> String {
        let encoded: String =
            percent_encoding::utf8_percent_encode(json, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        format!("data:,{encoded}")
    }

    #[test]
    fn unknown_and_version_gated_keys_are_warnings_with_paths() {
        let parsed = parse_config(br#"{"ignition":{"version":"3.0.0","proxy":{}},"storage":{"files":[{"path":"/a","Mode":420}]}}"#)
            .unwrap();
        let paths: Vec<&str> = parsed.warnings.iter().map(|w| w.path.as_str()).collect();
        assert!(paths.contains(&"ignition.proxy"), "{paths:?}");
        assert!(paths.contains(&"storage.files.0.Mode"), "{paths:?}");
        assert_eq!(
            parsed.config.storage.files[0].mode,
            Some(420),
            "case-insensitive key is still read"
        );
        assert_eq!(parsed.config.ignition.version, LATEST_SPEC);
    }

    #[test]
    fn type_errors_name_their_path() {
        let err = parse_config(br#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/a","mode":"0644"}]}}"#)
            .unwrap_err();
        let ParseError::Invalid { entries } = err else {
            panic!("wrong error {err:?}")
        };
        assert_eq!(entries.last().unwrap().path, "storage.files.0.mode");
    }

    #[test]
    fn replace_discards_original_and_merge_applies_in_order() {
        let child = r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/child","contents":{"source":"data:,c"}}]}}"#;
        let base = format!(
            r#"{{"ignition":{{"version":"3.6.0","config":{{"merge":[{{"source":"{}"}}]}}}},"storage":{{"files":[{{"path":"/base"}}]}}}}"#,
            data_url(child)
        );
        let merged = resolve_references(parse_config(base.as_bytes()).unwrap().config).unwrap();
        let paths = merged.file_paths();
        assert_eq!(paths, ["/base", "/child"]);
        assert!(merged.ignition.config.merge.is_empty());

        let replacing = format!(
            r#"{{"ignition":{{"version":"3.6.0","config":{{"replace":{{"source":"{}"}}}}}},"storage":{{"files":[{{"path":"/base"}}]}}}}"#,
            data_url(child)
        );
        let replaced =
            resolve_references(parse_config(replacing.as_bytes()).unwrap().config).unwrap();
        let paths = replaced.file_paths();
        assert_eq!(paths, ["/child"]);
    }

    #[test]
    fn remote_reference_fails_naming_the_url() {
        let cfg = parse_config(
            br#"{"ignition":{"version":"3.6.0","config":{"merge":[{"source":"https://example.com/cfg.ign"}]}}}"#,
        )
        .unwrap();
        let err = resolve_references(cfg.config).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("ignition.config.merge.0")
                && chain.contains("https://example.com/cfg.ign"),
            "{chain}"
        );
    }
}
