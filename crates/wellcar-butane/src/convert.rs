//! The generic half of translation: a YAML tree becomes Ignition-shaped JSON, key by key
//! (`wipe_table` → `wipeTable`, `size_mib` → `sizeMiB`), and every JSON path produced remembers
//! the YAML path and position it came from ([`Sources`]), so that every later finding, whether
//! from a sugar pass or from Ignition's own validation, points at the user's line and column.
//!
//! Scalars are typed by field: the integer fields (`mode`, `uid`, `size_mib`, …) read plain YAML
//! integers (`0644` and `0o644` are octal, `0x` hex), the boolean fields read plain
//! `true`/`false`; every other scalar is a string. A value of the wrong kind is kept as a string,
//! so that Ignition's type check reports it at its path. Butane keys are lower snake case: a key
//! with an upper-case letter is unknown.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use wellcar_ignition::Severity;

use crate::yaml::{Kind, Node, Pos};
use crate::Finding;

/// Where each JSON path came from in the YAML.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    map: BTreeMap<String, (String, Pos)>,
}

impl Sources {
    /// Records that `json_path` came from `yaml_path` at `pos`.
    pub fn record(&mut self, json_path: &str, yaml_path: &str, pos: Pos) {
        self.map
            .insert(json_path.to_string(), (yaml_path.to_string(), pos));
    }

    /// Records that generated `json_path` stands for the YAML of `from_json_path`.
    pub fn alias(&mut self, json_path: &str, from_json_path: &str) {
        if let (yaml, Some(pos)) = self.locate(from_json_path) {
            self.map.insert(json_path.to_string(), (yaml, pos));
        }
    }

    /// The YAML path and position of `json_path`, or of its nearest recorded ancestor.
    pub fn locate(&self, json_path: &str) -> (String, Option<Pos>) {
        let mut path = json_path;
        loop {
            if let Some((yaml, pos)) = self.map.get(path) {
                let rest = &json_path[path.len()..];
                return (format!("{yaml}{rest}"), Some(*pos));
            }
            match path.rfind('.') {
                Some(i) => path = &path[..i],
                None => return (json_path.to_string(), None),
            }
        }
    }

    /// A finding at `json_path`, located in the YAML.
    pub fn finding(
        &self,
        severity: Severity,
        json_path: &str,
        message: impl Into<String>,
    ) -> Finding {
        let (yaml_path, pos) = self.locate(json_path);
        Finding {
            severity,
            yaml_path,
            pos,
            message: message.into(),
        }
    }
}

/// Joins a path and a key or index (the root is the empty string).
pub fn join(parent: &str, child: impl std::fmt::Display) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

const INTEGER_FIELDS: &[&str] = &[
    "mode",
    "id",
    "uid",
    "gid",
    "number",
    "size_mib",
    "start_mib",
    "threshold",
    "http_response_headers",
    "http_total",
];

const BOOLEAN_FIELDS: &[&str] = &[
    "overwrite",
    "hard",
    "enabled",
    "mask",
    "wipe_table",
    "wipe_filesystem",
    "wipe_volume",
    "wipe_partition_entry",
    "should_exist",
    "resize",
    "no_create_home",
    "no_user_group",
    "no_log_init",
    "system",
    "tpm2",
    "discard",
    "needs_network",
    "with_mount_unit",
];

/// The Ignition spelling of a Butane key.
pub fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, word) in key.split('_').enumerate() {
        if i == 0 {
            out.push_str(word);
        } else if word == "mib" {
            out.push_str("MiB");
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        }
    }
    out
}

/// Reads a plain YAML integer the way Butane's YAML library does.
pub fn parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(digits, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()?
    };
    Some(if negative { -value } else { value })
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Converts a YAML tree to JSON; records sources and unknown-key warnings.
pub struct Converter<'s> {
    /// Where each JSON path came from.
    pub sources: &'s mut Sources,
    /// Warnings found (keys that cannot be Butane keys).
    pub findings: &'s mut Vec<Finding>,
}

impl Converter<'_> {
    /// Converts `node` found at `yaml_path`/`json_path`; `field` is its Butane key, if any.
    /// Returns `None` for a null.
    pub fn value(
        &mut self,
        node: &Node,
        yaml_path: &str,
        json_path: &str,
        field: Option<&str>,
    ) -> Option<Value> {
        self.sources.record(json_path, yaml_path, node.pos);
        if node.is_null() {
            return None;
        }
        Some(match &node.kind {
            Kind::Scalar { text, plain } => {
                let typed = match field {
                    Some(f) if *plain && INTEGER_FIELDS.contains(&f) => {
                        parse_int(text).map(Value::from)
                    }
                    Some(f) if *plain && BOOLEAN_FIELDS.contains(&f) => {
                        parse_bool(text).map(Value::Bool)
                    }
                    _ => None,
                };
                typed.unwrap_or_else(|| Value::String(text.clone()))
            }
            Kind::Seq(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.value(item, &join(yaml_path, i), &join(json_path, i), None)
                            .unwrap_or(Value::Null)
                    })
                    .collect(),
            ),
            Kind::Map(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    let key_yaml = join(yaml_path, &key.name);
                    let is_butane_key = !key.name.is_empty()
                        && key
                            .name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !is_butane_key {
                        self.findings.push(Finding {
                            severity: Severity::Warning,
                            yaml_path: key_yaml,
                            pos: Some(key.pos),
                            message: format!("unused key {}", key.name),
                        });
                        continue;
                    }
                    let name = camel(&key.name);
                    let key_json = join(json_path, &name);
                    if let Some(v) = self.value(value, &key_yaml, &key_json, Some(&key.name)) {
                        map.insert(name, v);
                    }
                    // The key's own position is more useful than the value's for messages.
                    self.sources.record(&key_json, &key_yaml, key.pos);
                }
                Value::Object(map)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_ignition_spelling() {
        assert_eq!(camel("size_mib"), "sizeMiB");
        assert_eq!(camel("wipe_partition_entry"), "wipePartitionEntry");
        assert_eq!(camel("ssh_authorized_keys"), "sshAuthorizedKeys");
        assert_eq!(camel("path"), "path");
    }

    #[test]
    fn integers_read_like_yaml() {
        assert_eq!(parse_int("0644"), Some(420));
        assert_eq!(parse_int("0o755"), Some(493));
        assert_eq!(parse_int("644"), Some(644));
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("089"), None);
        assert_eq!(parse_int("12a"), None);
    }
}
