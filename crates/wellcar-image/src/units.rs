//! systemd units in the image: which are on, which are off, and the one ordering Wellcar
//! changes in a Debian unit.
//!
//! Contract:
//! - `usr/lib/systemd/system-preset/10-wellcar.preset` enables every unit of the definition's
//!   `[systemd] enable` and disables every unit of its `disable`, so systemd's first-boot
//!   `preset-all` keeps them so; the image's `/etc` already has them enabled and disabled, and
//!   the units of `mask` linked to `/dev/null`.
//! - every generator of `skip_generators` exists in `usr/lib/systemd/system-generators` and is
//!   masked by `etc/systemd/system-generators/<name> -> /dev/null` (see [`skip_generators`]).
//! - the units of [`NOT_BEFORE_SYSINIT`] are not ordered before `sysinit.target` (see
//!   [`start_after_sysinit`]); everything else in Debian's units is as Debian ships it.

use std::fs;
use std::path::Path;

use crate::definition::OsDefinition;
use crate::error::{BuildError, IoContext, Result};
use crate::tools::{self, SYSTEMCTL};

/// Debian units that upstream orders before `sysinit.target` and Wellcar starts in parallel
/// with it instead, relative to the root.
pub const NOT_BEFORE_SYSINIT: &[&str] = &[
    "usr/lib/systemd/system/systemd-resolved.service",
    "usr/lib/systemd/system/systemd-timesyncd.service",
    "usr/lib/systemd/system/systemd-update-utmp.service",
];

/// Writes the preset file and enables/disables the definition's units in `root`.
pub fn enable_units(root: &Path, def: &OsDefinition) -> Result<()> {
    let preset_dir = root.join("usr/lib/systemd/system-preset");
    fs::create_dir_all(&preset_dir).at("creating", &preset_dir)?;
    let units = &def.systemd;
    let preset: String = (units.enable.iter().map(|u| format!("enable {u}\n")))
        .chain(units.disable.iter().map(|u| format!("disable {u}\n")))
        .collect();
    let p = preset_dir.join("10-wellcar.preset");
    fs::write(
        &p,
        format!("# Units the Wellcar OS definition turns on and off.\n{preset}"),
    )
    .at("writing", &p)?;
    // SysV scripts are not consulted: the image boots systemd only, and systemctl would chroot
    // into the tree to run update-rc.d. The root must be canonical: systemctl resolves the
    // tree's absolute symlinks under it and rejects results that do not start with it.
    let root = root.canonicalize().at("resolving", root)?;
    let verbs = [
        ("enable", &units.enable),
        ("disable", &units.disable),
        ("mask", &units.mask),
    ];
    for (verb, list) in verbs {
        if list.is_empty() {
            continue;
        }
        tools::run(
            SYSTEMCTL
                .command()?
                .env("SYSTEMCTL_SKIP_SYSV", "1")
                .arg(format!("--root={}", root.display()))
                .arg(verb)
                .args(list),
        )?;
    }
    Ok(())
}

/// Where systemd looks for generators, and where a `/dev/null` link masks one.
const GENERATORS: &str = "usr/lib/systemd/system-generators";
const MASKED_GENERATORS: &str = "etc/systemd/system-generators";

/// Masks the definition's `skip_generators` in `root`.
///
/// systemd runs every generator before it loads a unit, and waits for all of them; on a slow
/// machine each costs a process start with `libsystemd-shared` to link. A name that is not a
/// generator in the tree fails the build, so a masked generator that systemd renames or drops
/// is noticed.
pub fn skip_generators(root: &Path, def: &OsDefinition) -> Result<()> {
    let masked = root.join(MASKED_GENERATORS);
    for name in &def.systemd.skip_generators {
        let generator = root.join(GENERATORS).join(name);
        if !generator.is_file() {
            return Err(BuildError::UnknownGenerator { path: generator });
        }
        fs::create_dir_all(&masked).at("creating", &masked)?;
        let link = masked.join(name);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).at("replacing", &link)?;
        }
        std::os::unix::fs::symlink("/dev/null", &link).at("linking to /dev/null", &link)?;
    }
    Ok(())
}

/// Drops `sysinit.target` from the `Before=` lines of the units of [`NOT_BEFORE_SYSINIT`].
///
/// Upstream orders the resolver and the time client before `sysinit.target` so that early units
/// can resolve names and see a clock restored from the last boot, and the boot record in wtmp
/// so that it comes first. Nothing before `sysinit.target` needs any of them on Wellcar, and
/// the seconds each takes to start on a slow machine held up every unit after
/// `sysinit.target`. They stay before `network.target`,
/// `nss-lookup.target` and `time-set.target`, so whatever resolves names or needs the time
/// still waits for them; they stay in `sysinit.target.wants`, which (a target without default
/// dependencies) does not wait for what it wants. A unit without that ordering fails the
/// build, so a systemd that changes these units is noticed.
pub fn start_after_sysinit(root: &Path) -> Result<()> {
    for unit in NOT_BEFORE_SYSINIT {
        let path = root.join(unit);
        let text = fs::read_to_string(&path).at("reading", &path)?;
        let edited =
            without_before(&text, "sysinit.target").ok_or_else(|| BuildError::UnitOrdering {
                path: path.clone(),
                target: "sysinit.target",
            })?;
        fs::write(&path, edited).at("writing", &path)?;
    }
    Ok(())
}

/// `unit` with `target` removed from its `Before=` lines, or `None` if no such line names it.
fn without_before(unit: &str, target: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(unit.len());
    for line in unit.lines() {
        match line.strip_prefix("Before=") {
            Some(list) if list.split_whitespace().any(|t| t == target) => {
                found = true;
                let kept: Vec<&str> = list.split_whitespace().filter(|t| *t != target).collect();
                if !kept.is_empty() {
                    out.push_str(&format!("Before={}\n", kept.join(" ")));
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_RESOLVED: &str = "[Unit]\nDescription=Network Name Resolution\n\
        DefaultDependencies=no\nAfter=systemd-sysctl.service systemd-sysusers.service\n\
        Before=sysinit.target network.target nss-lookup.target shutdown.target\n\
        Wants=nss-lookup.target\n\n[Install]\nWantedBy=sysinit.target\n";

    #[test]
    fn resolved_keeps_every_ordering_but_sysinit() {
        let edited = without_before(DEBIAN_RESOLVED, "sysinit.target").unwrap();
        assert!(edited.contains("\nBefore=network.target nss-lookup.target shutdown.target\n"));
        // The install section still enables it from sysinit.target.
        assert!(edited.contains("WantedBy=sysinit.target"));
        assert_eq!(
            edited.lines().count(),
            DEBIAN_RESOLVED.lines().count(),
            "{edited}"
        );
    }

    fn definition_skipping(generators: &[&str]) -> OsDefinition {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../os/wellcar.toml"),
        )
        .unwrap();
        let mut def: OsDefinition = toml::from_str(&text).unwrap();
        def.systemd.skip_generators = generators.iter().map(|g| g.to_string()).collect();
        def
    }

    #[test]
    fn skipped_generators_are_masked_and_unknown_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generators = dir.path().join(GENERATORS);
        fs::create_dir_all(&generators).unwrap();
        fs::write(generators.join("systemd-sysv-generator"), "").unwrap();
        skip_generators(
            dir.path(),
            &definition_skipping(&["systemd-sysv-generator"]),
        )
        .unwrap();
        let link = dir
            .path()
            .join(MASKED_GENERATORS)
            .join("systemd-sysv-generator");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("/dev/null"));
        // Twice is the same as once (a rebuild over the same tree).
        skip_generators(
            dir.path(),
            &definition_skipping(&["systemd-sysv-generator"]),
        )
        .unwrap();

        let err = skip_generators(
            dir.path(),
            &definition_skipping(&["systemd-gone-generator"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("systemd-gone-generator"), "{err}");
    }

    #[test]
    fn a_unit_without_the_ordering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for unit in NOT_BEFORE_SYSINIT {
            let unit = dir.path().join(unit);
            fs::create_dir_all(unit.parent().unwrap()).unwrap();
            fs::write(&unit, DEBIAN_RESOLVED).unwrap();
        }
        let timesyncd = dir.path().join(NOT_BEFORE_SYSINIT[1]);
        fs::write(&timesyncd, "[Unit]\nBefore=time-set.target\n").unwrap();
        let err = start_after_sysinit(dir.path()).unwrap_err();
        assert!(err.to_string().contains("sysinit.target"), "{err}");
        assert!(
            err.to_string().contains("systemd-timesyncd.service"),
            "{err}"
        );
        // The first unit was edited before the second was found wanting.
        let resolved = fs::read_to_string(dir.path().join(NOT_BEFORE_SYSINIT[0])).unwrap();
        assert!(
            !resolved.contains("sysinit.target network.target"),
            "{resolved}"
        );
    }

    #[test]
    fn a_lone_sysinit_ordering_leaves_no_empty_line() {
        let edited = without_before("[Unit]\nBefore=sysinit.target\n", "sysinit.target").unwrap();
        assert_eq!(edited, "[Unit]\n");
    }
}
