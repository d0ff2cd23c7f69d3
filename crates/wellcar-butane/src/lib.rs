//! Butane for Wellcar: YAML configs (variants `flatcar` 1.0.0–1.1.0 and `fcos` 1.0.0–1.6.0)
//! translated to Ignition JSON of the exact spec version each variant version targets.
//!
//! Contract:
//! - [`translate`] reads one YAML document with `variant` and `version`, renames keys to
//!   Ignition's spelling, expands the sugar (`inline`/`local` resources, `storage.trees`,
//!   `contents_local`, `ssh_authorized_keys_local`, `with_mount_unit`, `boot_device`), sets
//!   `ignition.version`, and validates the result with `wellcar-ignition` at that spec.
//! - Every finding carries the YAML path and `line:column` of what caused it.
//! - Unknown keys (and sugar the variant version does not have) are warnings, dropped from the
//!   output; with [`Options::strict`] any warning makes the translation fail.
//! - `local` paths are relative to [`Options::files_dir`] and may not leave it.
//! - Nothing is printed; the caller prints the warnings.

pub mod boot_device;
pub mod convert;
pub mod mount_unit;
pub mod resource;
pub mod sugar;
pub mod tree;
pub mod variant;
pub mod yaml;

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;
pub use wellcar_ignition::Severity;

use convert::{Converter, Sources};
use variant::Flavor;
use yaml::{Kind, Pos};

/// How to translate.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directory that `local`, `contents_local`, `ssh_authorized_keys_local` and trees are read
    /// from (`--files-dir`); without it any local reference is an error.
    pub files_dir: Option<PathBuf>,
    /// Fail on warnings (`--strict`).
    pub strict: bool,
}

/// One error or warning, located in the YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The YAML path (`storage.files.0.mode`; `$` for the document).
    pub yaml_path: String,
    /// Where in the YAML text, when known.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
}

impl Finding {
    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let path = if self.yaml_path.is_empty() {
            "$"
        } else {
            &self.yaml_path
        };
        match self.pos {
            Some(pos) => write!(f, "{pos}: {kind} at $.{path}: {}", self.message),
            None => write!(f, "{kind} at $.{path}: {}", self.message),
        }
    }
}

/// Why a Butane config was not translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ButaneError {
    /// The text is not YAML (or not UTF-8).
    #[error("YAML syntax error at {pos}: {message}")]
    Syntax {
        /// Where.
        pos: Pos,
        /// The parser's message.
        message: String,
    },
    /// Errors, or warnings under `--strict`; all findings are listed.
    #[error("{}", first_problem(.findings, *.strict))]
    Invalid {
        /// All findings.
        findings: Vec<Finding>,
        /// Whether warnings counted as failures.
        strict: bool,
    },
}

fn first_problem(findings: &[Finding], strict: bool) -> String {
    let failing: Vec<&Finding> = findings.iter().filter(|f| strict || f.is_error()).collect();
    match failing.len() {
        0 => "no errors".to_string(),
        1 => failing[0].to_string(),
        n => format!("{} (and {} more)", failing[0], n - 1),
    }
}

/// A translated config.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The Ignition config.
    pub config: Value,
    /// The variant and version it came from.
    pub flavor: Flavor,
    /// Warnings (never errors).
    pub warnings: Vec<Finding>,
}

impl Translated {
    /// The config as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.config).expect("JSON values serialize");
        text.push('\n');
        text
    }
}

/// Translates Butane YAML to an Ignition config.
pub fn translate(text: &str, options: &Options) -> Result<Translated, ButaneError> {
    let document = yaml::parse(text).map_err(|e| ButaneError::Syntax {
        pos: e.pos,
        message: e.message,
    })?;
    let invalid = |findings: Vec<Finding>| ButaneError::Invalid {
        findings,
        strict: options.strict,
    };
    let error_at = |path: &str, pos: Pos, message: String| Finding {
        severity: Severity::Error,
        yaml_path: path.to_string(),
        pos: Some(pos),
        message,
    };
    let Kind::Map(entries) = &document.kind else {
        return Err(invalid(vec![error_at(
            "",
            document.pos,
            "a Butane config must be a mapping".into(),
        )]));
    };
    let variant = document
        .get("variant")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let version = document
        .get("version")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let version_pos = document.get("version").map_or(document.pos, |n| n.pos);
    let variant_pos = document.get("variant").map_or(document.pos, |n| n.pos);
    let flavor = Flavor::new(variant, version).map_err(|message| {
        let (path, pos) = if variant.is_empty() || !["fcos", "flatcar"].contains(&variant) {
            ("variant", variant_pos)
        } else {
            ("version", version_pos)
        };
        invalid(vec![error_at(path, pos, message)])
    })?;

    let mut sources = Sources::default();
    let mut findings = Vec::new();
    let mut root = serde_json::Map::new();
    {
        let mut converter = Converter {
            sources: &mut sources,
            findings: &mut findings,
        };
        for (key, node) in entries {
            if key.name == "variant" || key.name == "version" {
                continue;
            }
            let doc = yaml::Node {
                pos: document.pos,
                kind: Kind::Map(vec![(key.clone(), node.clone())]),
            };
            if let Some(Value::Object(one)) = converter.value(&doc, "", "", None) {
                root.extend(one);
            }
        }
    }
    let mut root = Value::Object(root);
    // The version is the variant's, never the user's.
    if root
        .get("ignition")
        .and_then(|i| i.get("version"))
        .is_some()
    {
        let finding = sources.finding(Severity::Warning, "ignition.version", "unused key version");
        findings.push(finding);
        if let Some(i) = root.get_mut("ignition").and_then(Value::as_object_mut) {
            i.remove("version");
        }
    }
    let ignition = root
        .as_object_mut()
        .expect("root is an object")
        .entry("ignition")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(ignition) = ignition {
        ignition.insert(
            "version".into(),
            Value::String(flavor.ignition_version().into()),
        );
    }

    let mut ctx = sugar::Ctx {
        flavor,
        files_dir: options.files_dir.as_deref(),
        sources: &mut sources,
        findings: Vec::new(),
    };
    sugar::expand(&mut root, &mut ctx);
    tree::expand(&mut root, &mut ctx);
    mount_unit::expand(&mut root, &mut ctx);
    boot_device::expand(&mut root, &mut ctx);
    findings.extend(std::mem::take(&mut ctx.findings));
    if findings.iter().any(Finding::is_error) {
        return Err(invalid(findings));
    }

    // Ignition's own decoding and validation, at the target spec.
    let bytes = serde_json::to_vec(&root).expect("JSON values serialize");
    let entries = match wellcar_ignition::parse_config(&bytes) {
        Ok(parsed) => parsed.warnings,
        Err(wellcar_ignition::ParseError::Invalid { entries }) => entries,
        Err(other) => {
            return Err(invalid(vec![sources.finding(
                Severity::Error,
                "",
                other.to_string(),
            )]))
        }
    };
    for entry in entries {
        if let Some(key) = entry.message.strip_prefix("unused key ") {
            remove_path(&mut root, &entry.path);
            let (yaml_path, pos) = sources.locate(&entry.path);
            // Report the Butane spelling of the key.
            let yaml_key = yaml_path.rsplit('.').next().unwrap_or(key).to_string();
            findings.push(Finding {
                severity: Severity::Warning,
                yaml_path,
                pos,
                message: format!("unused key {yaml_key}"),
            });
            continue;
        }
        let path = if entry.path == "$" {
            ""
        } else {
            entry.path.as_str()
        };
        findings.push(sources.finding(entry.severity, path, entry.message));
    }
    if findings
        .iter()
        .any(|f| f.is_error() || (options.strict && f.severity == Severity::Warning))
    {
        return Err(invalid(findings));
    }
    Ok(Translated {
        config: root,
        flavor,
        warnings: findings,
    })
}

/// Removes the value at a dotted JSON path (no-op when absent).
fn remove_path(root: &mut Value, path: &str) {
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    let mut node = root;
    if !parent.is_empty() {
        for part in parent.split('.') {
            node = match node {
                Value::Object(map) => match map.get_mut(part) {
                    Some(next) => next,
                    None => return,
                },
                Value::Array(items) => {
                    match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                        Some(next) => next,
                        None => return,
                    }
                }
                _ => return,
            };
        }
    }
    if let Value::Object(map) = node {
        map.remove(last);
    }
}

/// Whether `path` names a Butane file (by extension `.bu`, `.yaml`, `.yml`).
pub fn is_butane_path(path: &std::path::Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("bu" | "yaml" | "yml")
    )
}

#[cfg(test)]
mod tests;
