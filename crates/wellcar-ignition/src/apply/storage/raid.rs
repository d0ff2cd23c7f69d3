//! `storage.raid`: md arrays created with mdadm, as Ignition's raid.go, and listed in the
//! target's `/etc/mdadm/mdadm.conf`.
//!
//! Contract:
//! - Member devices are waited for (by-* paths resolved like every device).
//! - `mdadm --create NAME --force --run --homehost any --level L --raid-devices N-S
//!   [--spare-devices S] <options> DEVICES...` (Ignition creates unconditionally; an array that
//!   already exists makes mdadm fail, naming the entry). The array appears as `/dev/md/NAME`.
//! - `spares` must leave at least one active device (checked before anything is written).
//! - The array's `mdadm --detail --brief` line replaces any line for the same device in the
//!   target's `/etc/mdadm/mdadm.conf` (0644), so the array assembles under its name at boot.

use std::process::Command;
use std::time::Duration;

use wellcar_contract::command;

use super::devices::{wait_for, wait_for_device};
use crate::apply::root::{write_atomic, TargetRoot};
use crate::apply::{ApplyError, Recorder};
use crate::model::{Config, Raid};

const MDADM_CONF: &str = "/etc/mdadm/mdadm.conf";

/// `/dev/md/NAME` (or NAME when it is already a /dev path).
pub(crate) fn array_path(name: &str) -> String {
    if name.starts_with("/dev") {
        name.to_string()
    } else {
        format!("/dev/md/{name}")
    }
}

/// Checks `spares` against the device count (before anything is written).
pub(crate) fn check(config: &Config) -> Result<(), ApplyError> {
    for (i, r) in config.storage.raid.iter().enumerate() {
        let spares = r.spares.unwrap_or(0);
        if spares < 0 || spares >= r.devices.len() as i64 {
            return Err(ApplyError::Partition {
                field: format!("storage.raid.{i}.spares"),
                device: array_path(&r.name),
                what: format!(
                    "{spares} spares leave no active device among {} devices",
                    r.devices.len()
                ),
            });
        }
    }
    Ok(())
}

/// mdadm's arguments for `r` over the resolved `devices`.
pub(crate) fn create_args(r: &Raid, devices: &[String]) -> Vec<String> {
    let spares = r.spares.unwrap_or(0).max(0) as usize;
    let mut args: Vec<String> = [
        "--create",
        &r.name,
        "--force",
        "--run",
        "--homehost",
        "any",
        "--level",
        r.level.as_deref().unwrap_or(""),
        "--raid-devices",
        &(devices.len() - spares).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if spares > 0 {
        args.extend(["--spare-devices".to_string(), spares.to_string()]);
    }
    args.extend(r.options.iter().cloned());
    args.extend(devices.iter().cloned());
    args
}

/// `mdadm.conf` text with the `ARRAY` line for the same device replaced by `line`.
pub(crate) fn mdadm_conf_with(existing: &str, line: &str) -> String {
    let device = line.split_whitespace().nth(1);
    let mut out: String = existing
        .lines()
        .filter(|l| !(l.starts_with("ARRAY") && l.split_whitespace().nth(1) == device))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(line.trim());
    out.push('\n');
    out
}

/// Creates every array and records it in the target.
pub(crate) fn apply_raid(
    root: &TargetRoot,
    config: &Config,
    device_wait: Duration,
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    for (i, r) in config.storage.raid.iter().enumerate() {
        let field = format!("storage.raid.{i}");
        let devices = r
            .devices
            .iter()
            .enumerate()
            .map(|(j, d)| wait_for_device(&format!("{field}.devices.{j}"), d, device_wait))
            .collect::<Result<Vec<_>, _>>()?;
        let run = |args: &[String]| {
            command::run(Command::new("mdadm").args(args)).map_err(|source| ApplyError::Command {
                field: field.clone(),
                source,
            })
        };
        run(&create_args(r, &devices))?;
        let path = array_path(&r.name);
        if !wait_for(device_wait, || std::path::Path::new(&path).exists()) {
            return Err(ApplyError::DeviceMissing {
                field: format!("{field}.name"),
                device: path,
                waited: device_wait,
            });
        }
        rec.action(format!(
            "created RAID {} ({}) over {}",
            path,
            r.level.as_deref().unwrap_or(""),
            devices.join(", ")
        ));
        let brief = run(&["--detail".into(), "--brief".into(), path.clone()])?;
        let line = String::from_utf8_lossy(&brief.stdout).trim().to_string();
        let host = root.prepare_parent(MDADM_CONF)?;
        let existing = match std::fs::symlink_metadata(&host) {
            Ok(m) if m.is_file() => std::fs::read_to_string(&host).unwrap_or_default(),
            _ => String::new(),
        };
        write_atomic(&host, mdadm_conf_with(&existing, &line).as_bytes(), 0o644)?;
        rec.action(format!("recorded {path} in {MDADM_CONF}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raid(json: &str) -> Config {
        crate::parse_config(
            format!(r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"raid":[{json}]}}}}"#)
                .as_bytes(),
        )
        .unwrap()
        .config
    }

    #[test]
    fn mdadm_gets_ignitions_arguments_with_spares_and_options() {
        let cfg = raid(
            r#"{"name":"data","level":"raid5","devices":["/dev/vdb","/dev/vdc","/dev/vdd","/dev/vde"],"spares":1,"options":["--chunk=256"]}"#,
        );
        let devices: Vec<String> = ["/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/vde"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            create_args(&cfg.storage.raid[0], &devices).join(" "),
            "--create data --force --run --homehost any --level raid5 --raid-devices 3 --spare-devices 1 --chunk=256 /dev/vdb /dev/vdc /dev/vdd /dev/vde"
        );
        assert_eq!(array_path("data"), "/dev/md/data");
        assert_eq!(array_path("/dev/md0"), "/dev/md0");
        check(&cfg).unwrap();
    }

    #[test]
    fn spares_that_leave_no_active_device_are_refused_naming_the_field() {
        let cfg =
            raid(r#"{"name":"m","level":"raid1","devices":["/dev/vdb","/dev/vdc"],"spares":2}"#);
        let err = check(&cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "storage.raid.0.spares: /dev/md/m: 2 spares leave no active device among 2 devices"
        );
    }

    #[test]
    fn the_array_line_replaces_the_one_for_the_same_device() {
        let conf = "HOMEHOST <system>\nARRAY /dev/md/data metadata=1.2 UUID=old\nARRAY /dev/md/other UUID=x\n";
        assert_eq!(
            mdadm_conf_with(conf, "ARRAY /dev/md/data metadata=1.2 name=any:data UUID=new\n"),
            "HOMEHOST <system>\nARRAY /dev/md/other UUID=x\nARRAY /dev/md/data metadata=1.2 name=any:data UUID=new\n"
        );
    }
}
