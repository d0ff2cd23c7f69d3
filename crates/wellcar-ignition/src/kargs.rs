//! `kernelArguments`: the OEM partition's `grub.cfg` edited as Flatcar does it.
//!
//! Contract: the kernel command line's extra arguments live in the OEM partition's `grub.cfg`
//! as `set linux_append="..."` (sourced by the ESP's grub.cfg after its defaults).
//! [`edit_grub_cfg`] is pure: given the file's text and the config's `kernelArguments` it
//! returns the new text and whether anything changed (then the caller writes it and reboots
//! once, before provisioning continues; on the next boot the same config changes nothing).
//!
//! - The last `set linux_append=...` line is edited in place (its value may be double-quoted,
//!   single-quoted or bare); without one, `set linux_append="$linux_append ARGS"` is appended
//!   so the value set before the OEM file is kept.
//! - Arguments are matched as whole space-separated sequences (an entry may hold several
//!   words, as in Ignition): a `shouldExist` entry missing from the value is appended; every
//!   occurrence of a `shouldNotExist` entry is removed. Whitespace in the value is normalised to
//!   single spaces only when something changes.
//! - Entries that would break out of the double-quoted GRUB string (`"`, `\`, `$`, a backtick,
//!   control characters) or are empty are refused naming `kernelArguments.<list>.<index>`.

use crate::model::KernelArguments;

/// A `kernelArguments` entry that cannot be written to `grub.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} cannot be written to grub.cfg's linux_append: {why}")]
pub struct KargsError {
    /// JSON path, e.g. `kernelArguments.shouldExist.2`.
    pub field: String,
    /// The entry.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The result of [`edit_grub_cfg`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubCfgEdit {
    /// The new `grub.cfg` text.
    pub text: String,
    /// Whether the text differs (write it and reboot once).
    pub reboot_needed: bool,
}

fn check(list: &str, i: usize, value: &str) -> Result<String, KargsError> {
    let fail = |why| KargsError {
        field: format!("kernelArguments.{list}.{i}"),
        value: value.to_string(),
        why,
    };
    if value
        .chars()
        .any(|c| matches!(c, '"' | '\\' | '$' | '`') || c.is_control() && c != '\t')
    {
        return Err(fail(
            "it contains a quote, backslash, dollar, backtick or control character",
        ));
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.is_empty() {
        return Err(fail("it is empty"));
    }
    Ok(words.join(" "))
}

/// Where the value of the last `set linux_append=` line sits: (line index, prefix, value, suffix).
fn find_append(lines: &[&str]) -> Option<(usize, String, String, String)> {
    lines.iter().enumerate().rev().find_map(|(i, line)| {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let rest = trimmed.strip_prefix("set")?;
        let rest = rest.trim_start().strip_prefix("linux_append=")?;
        let (value, tail) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end = rest[1..].find(q)? + 1;
                (rest[1..end].to_string(), rest[end + 1..].to_string())
            }
            _ => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (rest[..end].to_string(), rest[end..].to_string())
            }
        };
        Some((i, format!("{indent}set linux_append="), value, tail))
    })
}

/// Applies `args` to the `grub.cfg` text `cfg`.
pub fn edit_grub_cfg(cfg: &str, args: &KernelArguments) -> Result<GrubCfgEdit, KargsError> {
    let should: Vec<String> = args
        .should_exist
        .iter()
        .enumerate()
        .map(|(i, v)| check("shouldExist", i, v))
        .collect::<Result<_, _>>()?;
    let should_not: Vec<String> = args
        .should_not_exist
        .iter()
        .enumerate()
        .map(|(i, v)| check("shouldNotExist", i, v))
        .collect::<Result<_, _>>()?;
    let lines: Vec<&str> = cfg.lines().collect();
    let found = find_append(&lines);
    let original = found
        .as_ref()
        .map(|f| f.2.clone())
        .unwrap_or_else(|| "$linux_append".into());
    // Padded with spaces so whole sequences match at either end.
    let mut padded = format!(
        " {} ",
        original.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let mut changed = false;
    for arg in &should_not {
        let needle = format!(" {arg} ");
        while padded.contains(&needle) {
            padded = padded.replacen(&needle, " ", 1);
            changed = true;
        }
    }
    for arg in &should {
        if !padded.contains(&format!(" {arg} ")) {
            padded.push_str(arg);
            padded.push(' ');
            changed = true;
        }
    }
    if !changed {
        return Ok(GrubCfgEdit {
            text: cfg.to_string(),
            reboot_needed: false,
        });
    }
    let value = padded.trim();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match found {
        Some((i, prefix, _, tail)) => out[i] = format!("{prefix}\"{value}\"{tail}"),
        None => out.push(format!("set linux_append=\"{value}\"")),
    }
    let mut text = out.join("\n");
    text.push('\n');
    Ok(GrubCfgEdit {
        text,
        reboot_needed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(should: &[&str], should_not: &[&str]) -> KernelArguments {
        KernelArguments {
            should_exist: should.iter().map(|s| s.to_string()).collect(),
            should_not_exist: should_not.iter().map(|s| s.to_string()).collect(),
        }
    }

    const QEMU_OEM: &str = "# Platform settings for GRUB (Flatcar's OEM grub.cfg).\nset oem_id=\"qemu\"\nset linux_append=\"wellcar.autologin\"\n";

    #[test]
    fn missing_arguments_are_appended_and_present_ones_removed_in_the_linux_append_line() {
        let edit = edit_grub_cfg(
            QEMU_OEM,
            &args(&["nosmt", "console=ttyS0,115200n8"], &["wellcar.autologin"]),
        )
        .unwrap();
        assert!(edit.reboot_needed);
        assert_eq!(
            edit.text,
            "# Platform settings for GRUB (Flatcar's OEM grub.cfg).\nset oem_id=\"qemu\"\nset linux_append=\"nosmt console=ttyS0,115200n8\"\n"
        );
        // The next boot sees the edited file: nothing to do, no second reboot.
        let again = edit_grub_cfg(
            &edit.text,
            &args(&["nosmt", "console=ttyS0,115200n8"], &["wellcar.autologin"]),
        )
        .unwrap();
        assert!(!again.reboot_needed);
        assert_eq!(again.text, edit.text);
    }

    #[test]
    fn entries_match_whole_word_sequences_not_substrings() {
        let cfg = "set linux_append='quiet foo=1 bar baz'\n";
        // "foo" is not "foo=1"; "bar baz" is a contiguous sequence.
        let edit = edit_grub_cfg(cfg, &args(&["foo", "bar baz"], &["foo=1", "qui"])).unwrap();
        assert_eq!(edit.text, "set linux_append=\"quiet bar baz foo\"\n");
        let removed = edit_grub_cfg(&edit.text, &args(&[], &["bar baz"])).unwrap();
        assert_eq!(removed.text, "set linux_append=\"quiet foo\"\n");
        let nothing = edit_grub_cfg(cfg, &args(&["quiet"], &["absent"])).unwrap();
        assert!(!nothing.reboot_needed);
        assert_eq!(nothing.text, cfg);
    }

    #[test]
    fn without_a_linux_append_line_one_extending_the_previous_value_is_appended() {
        let cfg = "set oem_id=\"metal\"";
        let edit = edit_grub_cfg(cfg, &args(&["mitigations=off"], &[])).unwrap();
        assert_eq!(
            edit.text,
            "set oem_id=\"metal\"\nset linux_append=\"$linux_append mitigations=off\"\n"
        );
        let again = edit_grub_cfg(&edit.text, &args(&["mitigations=off"], &[])).unwrap();
        assert!(!again.reboot_needed);
        // Removing from an absent line changes nothing.
        assert!(
            !edit_grub_cfg(cfg, &args(&[], &["quiet"]))
                .unwrap()
                .reboot_needed
        );
    }

    #[test]
    fn the_last_line_is_edited_and_its_indentation_and_comment_kept() {
        let cfg =
            "set linux_append=\"a\"\nif true; then\n  set linux_append=\"b\" # platform\nfi\n";
        let edit = edit_grub_cfg(cfg, &args(&["c"], &[])).unwrap();
        assert_eq!(
            edit.text,
            "set linux_append=\"a\"\nif true; then\n  set linux_append=\"b c\" # platform\nfi\n"
        );
    }

    #[test]
    fn arguments_that_would_escape_the_grub_string_are_refused_naming_the_entry() {
        let err = edit_grub_cfg(QEMU_OEM, &args(&["ok", "x\"; reboot; \""], &[])).unwrap_err();
        assert_eq!(err.field, "kernelArguments.shouldExist.1");
        assert!(
            err.to_string()
                .starts_with("kernelArguments.shouldExist.1: "),
            "{err}"
        );
        for bad in ["$(id)", "a\\b", "a\nset x=1", "`id`", "  "] {
            let err = edit_grub_cfg(QEMU_OEM, &args(&[], &[bad])).unwrap_err();
            assert_eq!(err.field, "kernelArguments.shouldNotExist.0", "{bad:?}");
        }
    }
}
