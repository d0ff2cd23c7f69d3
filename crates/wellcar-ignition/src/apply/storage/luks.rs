//! `storage.luks`: LUKS2 volumes formatted (or reused), opened for the rest of provisioning,
//! and recorded in the target's `/etc/crypttab` so they unlock at every boot.
//!
//! Contract (Ignition's luks.go and files-stage crypttab entries):
//! - Key material: `keyFile` from any source the crate's fetcher handles, or, without one, a
//!   random key (64 hex characters from the OS RNG). A key shorter than [`MIN_KEY_BYTES`] or
//!   longer than [`MAX_KEY_BYTES`] (cryptsetup's key file limit) is refused naming
//!   `storage.luks.N.keyFile`. Every key is fetched and checked before any disk is touched
//!   ([`fetch_keys`]).
//! - `wipeVolume: false` and a LUKS header already there: reused when its `uuid`/`label` match
//!   (when given) and the key opens it; otherwise an error. Another signature without
//!   `wipeVolume` is an error; with it the signatures are wiped (`wipefs -a`).
//! - Format: `cryptsetup luksFormat --type luks2 --batch-mode --key-file K [--label] [--uuid]
//!   <options> DEV`. Open: `cryptsetup luksOpen DEV NAME --key-file K --persistent
//!   [--allow-discards] <openOptions>` (`--persistent` stores discard and the open options in
//!   the LUKS2 header, so crypttab need not repeat them). The mapping stays open, so filesystems
//!   can name `/dev/mapper/NAME` or `/dev/disk/by-id/dm-name-NAME`.
//! - Target: the key as `/etc/luks/NAME` (0600, directory 0700) and a line
//!   `NAME UUID=<luks uuid> /etc/luks/NAME luks` in `/etc/crypttab` (0600; a previous line for
//!   NAME is replaced), which systemd-cryptsetup reads at every boot.
//! - `clevis` (tang, tpm2, custom) and `cex` are refused naming the field: not implemented yet.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use wellcar_contract::{command, PathIoError};

use super::devices::wait_for_device;
use crate::apply::root::{write_atomic, TargetRoot};
use crate::apply::{ApplyError, Recorder};
use crate::model::{Config, Luks};

/// Shortest key accepted (128 bits).
pub const MIN_KEY_BYTES: usize = 16;
/// Longest key accepted (cryptsetup's default `--keyfile-size` limit, 8 MiB).
pub const MAX_KEY_BYTES: usize = 8 << 20;
const KEY_DIR: &str = "/etc/luks";
const CRYPTTAB: &str = "/etc/crypttab";

/// Refuses what is not implemented, then fetches (or generates) and checks every key.
pub(crate) fn fetch_keys(
    config: &Config,
    fetcher: &crate::fetch::Fetcher,
) -> Result<Vec<Vec<u8>>, ApplyError> {
    config
        .storage
        .luks
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let field = format!("storage.luks.{i}");
            let c = &l.clevis;
            let clevis = c.tpm2 == Some(true)
                || !c.tang.is_empty()
                || c.custom.pin.is_some()
                || c.custom.config.is_some();
            if clevis {
                return Err(ApplyError::Unsupported {
                    field: format!("{field}.clevis (tang/tpm2/custom binding)"),
                });
            }
            if l.cex.enabled == Some(true) {
                return Err(ApplyError::Unsupported {
                    field: format!("{field}.cex"),
                });
            }
            let key = match l.key_file.source.as_deref() {
                // cryptsetup reads at most 8 MiB of a key file.
                Some(_) => fetcher
                    .fetch_bytes(&l.key_file, 8 << 20)
                    .map_err(|source| ApplyError::Fetch {
                        field: format!("{field}.keyFile"),
                        url: super::super::short_source(&l.key_file),
                        source: Box::new(source),
                    })?
                    .unwrap_or_default(),
                None => random_key(&field)?,
            };
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
                return Err(ApplyError::KeyLength {
                    field: format!("{field}.keyFile"),
                    len: key.len(),
                });
            }
            Ok(key)
        })
        .collect()
}

fn random_key(field: &str) -> Result<Vec<u8>, ApplyError> {
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").map_err(|source| {
        ApplyError::Io(PathIoError::new(
            "opening",
            PathBuf::from("/dev/urandom"),
            source,
        ))
    })?;
    std::io::Read::read_exact(&mut f, &mut bytes).map_err(|source| {
        ApplyError::Io(PathIoError::new(
            "reading a key for",
            PathBuf::from(format!("/dev/urandom ({field})")),
            source,
        ))
    })?;
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

/// The key in a private file for cryptsetup, removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn write(name: &str, key: &[u8]) -> Result<Self, ApplyError> {
        let path = std::env::temp_dir().join(format!(
            "wellcar-luks-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let io =
            |source| ApplyError::Io(PathIoError::new("writing key file", path.clone(), source));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(io)?;
        f.write_all(key).map_err(io)?;
        Ok(Self(path))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(field: &str, cmd: &mut Command) -> Result<std::process::Output, ApplyError> {
    tracing::debug!("exec: {cmd:?}");
    command::run(cmd).map_err(|source| ApplyError::Command {
        field: field.to_string(),
        source,
    })
}

fn mismatch(field: &str, device: &str, what: String) -> ApplyError {
    ApplyError::Partition {
        field: field.to_string(),
        device: device.to_string(),
        what,
    }
}

/// Formats `device` for `l`, or checks that the LUKS volume on it can be reused.
pub(crate) fn prepare(
    field: &str,
    l: &Luks,
    device: &str,
    key: &std::path::Path,
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    let is_luks = Command::new("cryptsetup")
        .args(["isLuks", device])
        .status()
        .map_err(|e| ApplyError::Command {
            field: field.to_string(),
            source: command::CommandError::spawn(&Command::new("cryptsetup"), e),
        })?
        .success();
    let wipe = l.wipe_volume == Some(true);
    if is_luks && !wipe {
        let uuid = String::from_utf8_lossy(
            &run(field, Command::new("cryptsetup").args(["luksUUID", device]))?.stdout,
        )
        .trim()
        .to_string();
        if let Some(want) = l.uuid.as_deref().filter(|u| !u.eq_ignore_ascii_case(&uuid)) {
            return Err(mismatch(
                &format!("{field}.uuid"),
                device,
                format!("LUKS volume has UUID {uuid}, not {want}, and wipeVolume is false"),
            ));
        }
        if let Some(want) = &l.label {
            let dump = String::from_utf8_lossy(
                &run(field, Command::new("cryptsetup").args(["luksDump", device]))?.stdout,
            )
            .into_owned();
            let label = dump
                .lines()
                .find_map(|line| line.strip_prefix("Label:"))
                .map(str::trim)
                .unwrap_or("");
            let label = if label == "(no label)" { "" } else { label };
            if label != want {
                return Err(mismatch(
                    &format!("{field}.label"),
                    device,
                    format!(
                        "LUKS volume has label {label:?}, not {want:?}, and wipeVolume is false"
                    ),
                ));
            }
        }
        run(
            field,
            Command::new("cryptsetup")
                .args(["open", "--test-passphrase", "--key-file"])
                .arg(key)
                .arg(device),
        )
        .map_err(|_| {
            mismatch(
                &format!("{field}.keyFile"),
                device,
                "the key does not open the existing LUKS volume, and wipeVolume is false".into(),
            )
        })?;
        rec.action(format!("reusing LUKS volume {} on {device}", l.name));
        return Ok(());
    }
    if !wipe {
        if let Some((ty, _, _)) = crate::apply::filesystems::probe(field, device)? {
            return Err(mismatch(
                &format!("{field}.wipeVolume"),
                device,
                format!("holds {ty}, not LUKS, and wipeVolume is false"),
            ));
        }
    } else {
        run(field, Command::new("wipefs").args(["-a", device]))?;
    }
    let mut cmd = Command::new("cryptsetup");
    cmd.args([
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--key-file",
    ])
    .arg(key);
    if let Some(label) = l.label.as_deref().filter(|s| !s.is_empty()) {
        cmd.args(["--label", label]);
    }
    if let Some(uuid) = l.uuid.as_deref().filter(|s| !s.is_empty()) {
        cmd.args(["--uuid", uuid]);
    }
    cmd.args(&l.options).arg(device);
    run(field, &mut cmd)?;
    rec.action(format!("formatted LUKS volume {} on {device}", l.name));
    Ok(())
}

/// `cryptsetup` arguments that open `l` (Ignition's `luksOpenArgs`).
pub(crate) fn open_args(l: &Luks, device: &str, key: &std::path::Path) -> Vec<String> {
    let mut args = vec![
        "luksOpen".to_string(),
        device.to_string(),
        l.name.clone(),
        "--key-file".into(),
        key.to_string_lossy().into_owned(),
        "--persistent".into(),
    ];
    if l.discard == Some(true) {
        args.push("--allow-discards".into());
    }
    args.extend(l.open_options.iter().cloned());
    args
}

/// The `/etc/crypttab` text with `name`'s line set to `line`.
pub(crate) fn crypttab_with(existing: &str, name: &str, line: &str) -> String {
    let mut out: String = existing
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(line);
    out.push('\n');
    out
}

/// Writes the key file and the crypttab line for `l` in the target.
pub(crate) fn record(
    root: &TargetRoot,
    l: &Luks,
    luks_uuid: &str,
    key: &[u8],
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    let dir = root.create_dir_all(KEY_DIR)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(
        |source| ApplyError::Io(PathIoError::new("setting mode of", dir.clone(), source)),
    )?;
    let key_path = format!("{KEY_DIR}/{}", l.name);
    write_atomic(&root.prepare_parent(&key_path)?, key, 0o600)?;
    let host = root.prepare_parent(CRYPTTAB)?;
    // A planted symlink is replaced, never read through.
    let existing = match std::fs::symlink_metadata(&host) {
        Ok(m) if m.is_file() => std::fs::read_to_string(&host)
            .map_err(|source| ApplyError::Io(PathIoError::new("reading", host.clone(), source)))?,
        _ => String::new(),
    };
    let line = format!("{} UUID={luks_uuid} {key_path} luks", l.name);
    write_atomic(
        &host,
        crypttab_with(&existing, &l.name, &line).as_bytes(),
        0o600,
    )?;
    rec.action(format!(
        "wrote {key_path} and the {CRYPTTAB} line for {}",
        l.name
    ));
    Ok(())
}

/// Formats/reuses, opens and records every LUKS volume (`keys` from [`fetch_keys`]).
pub(crate) fn apply_luks(
    root: &TargetRoot,
    config: &Config,
    keys: &[Vec<u8>],
    device_wait: Duration,
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    for (i, (l, key)) in config.storage.luks.iter().zip(keys).enumerate() {
        let field = format!("storage.luks.{i}");
        let device = wait_for_device(
            &format!("{field}.device"),
            l.device.as_deref().unwrap_or(""),
            device_wait,
        )?;
        let key_file = KeyFile::write(&l.name, key)?;
        prepare(&field, l, &device, &key_file.0, rec)?;
        if std::path::Path::new("/dev/mapper").join(&l.name).exists() {
            rec.action(format!("LUKS volume {} is already open", l.name));
        } else {
            run(
                &field,
                Command::new("cryptsetup").args(open_args(l, &device, &key_file.0)),
            )?;
            rec.action(format!("opened {device} as /dev/mapper/{}", l.name));
        }
        let uuid = String::from_utf8_lossy(
            &run(
                &field,
                Command::new("cryptsetup").args(["luksUUID", &device]),
            )?
            .stdout,
        )
        .trim()
        .to_string();
        record(root, l, &uuid, key, rec)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offline fetcher: key files here are data: URLs.
    fn fetch_keys(config: &Config) -> Result<Vec<Vec<u8>>, ApplyError> {
        super::fetch_keys(config, &crate::fetch::Fetcher::offline())
    }
    use crate::apply::storage::loopdev::LoopDisk;
    use crate::apply::ApplyReport;

    fn recorder() -> Recorder {
        Recorder {
            report: ApplyReport::default(),
        }
    }

    fn luks(json: &str) -> Config {
        crate::parse_config(
            format!(r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"luks":[{json}]}}}}"#)
                .as_bytes(),
        )
        .unwrap()
        .config
    }

    #[test]
    fn short_keys_clevis_and_cex_are_refused_before_anything_is_touched() {
        let err = fetch_keys(&luks(
            r#"{"name":"data","device":"/dev/vdb","keyFile":{"source":"data:,short"}}"#,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "storage.luks.0.keyFile: the key is 5 bytes; a LUKS key must be 16 bytes to 8 MiB"
        );
        let err = fetch_keys(&luks(
            r#"{"name":"data","device":"/dev/vdb","clevis":{"tpm2":true}}"#,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "storage.luks.0.clevis (tang/tpm2/custom binding): not supported yet"
        );
        let keys = fetch_keys(&luks(r#"{"name":"data","device":"/dev/vdb"},{"name":"b","device":"/dev/vdc","keyFile":{"source":"data:,0123456789abcdef"}}"#)).unwrap();
        assert_eq!(keys[0].len(), 64);
        assert!(keys[0].iter().all(u8::is_ascii_hexdigit));
        assert_eq!(keys[1], b"0123456789abcdef");
    }

    #[test]
    fn open_arguments_persist_discard_and_open_options() {
        let cfg = luks(
            r#"{"name":"data","device":"/dev/vdb","discard":true,"openOptions":["--perf-no_read_workqueue"]}"#,
        );
        assert_eq!(
            open_args(
                &cfg.storage.luks[0],
                "/dev/vdb",
                std::path::Path::new("/tmp/k")
            ),
            [
                "luksOpen",
                "/dev/vdb",
                "data",
                "--key-file",
                "/tmp/k",
                "--persistent",
                "--allow-discards",
                "--perf-no_read_workqueue"
            ]
        );
        assert_eq!(
            crypttab_with(
                "# c\nold UUID=1 none luks\ndata UUID=2 x luks\n",
                "data",
                "data UUID=3 /etc/luks/data luks"
            ),
            "# c\nold UUID=1 none luks\ndata UUID=3 /etc/luks/data luks\n"
        );
    }

    /// Formats a real loop device (cheap PBKDF through `options`), reuses it, refuses a wrong
    /// key, label or other signature, and records it in a target root.
    #[test]
    fn a_volume_is_formatted_reused_when_it_matches_and_recorded_in_crypttab() {
        let disk = LoopDisk::new(32);
        let uuid = "8a9fa6a4-5e3b-4d0c-9a1e-1f2e3d4c5b6a";
        let cfg = luks(&format!(
            r#"{{"name":"data","device":"{}","label":"secret","uuid":"{uuid}","keyFile":{{"source":"data:,0123456789abcdef-key"}},"options":["--pbkdf","pbkdf2","--pbkdf-force-iterations","1000"]}}"#,
            disk.device
        ));
        let l = &cfg.storage.luks[0];
        let keys = fetch_keys(&cfg).unwrap();
        let key = KeyFile::write("data", &keys[0]).unwrap();
        let mut rec = recorder();
        prepare("storage.luks.0", l, &disk.device, &key.0, &mut rec).unwrap();
        let blkid = String::from_utf8_lossy(
            &command::run(Command::new("blkid").args(["-p", &disk.device]))
                .unwrap()
                .stdout,
        )
        .into_owned();
        assert!(
            blkid.contains(r#"TYPE="crypto_LUKS""#)
                && blkid.contains(&format!(r#"UUID="{uuid}""#))
                && blkid.contains(r#"LABEL="secret""#),
            "{blkid}"
        );

        let before = disk.digest();
        prepare("storage.luks.0", l, &disk.device, &key.0, &mut rec).unwrap();
        assert!(rec
            .report
            .actions
            .last()
            .unwrap()
            .starts_with("reusing LUKS volume data"));
        let wrong = KeyFile::write("data", b"another-key-of-16+bytes").unwrap();
        let err = prepare("storage.luks.0", l, &disk.device, &wrong.0, &mut rec).unwrap_err();
        assert!(
            err.to_string().starts_with("storage.luks.0.keyFile: "),
            "{err}"
        );
        let relabeled = Luks {
            label: Some("other".into()),
            ..l.clone()
        };
        let err =
            prepare("storage.luks.0", &relabeled, &disk.device, &key.0, &mut rec).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"LUKS volume has label "secret", not "other""#),
            "{err}"
        );
        assert_eq!(disk.digest(), before, "a reuse check wrote to the disk");

        let root = tempfile::tempdir().unwrap();
        crate::corpus_tests::seed_root(root.path());
        let target = TargetRoot::new(root.path());
        record(&target, l, uuid, &keys[0], &mut rec).unwrap();
        let crypttab = std::fs::read_to_string(root.path().join("etc/crypttab")).unwrap();
        assert_eq!(crypttab, format!("data UUID={uuid} /etc/luks/data luks\n"));
        assert_eq!(
            std::fs::read(root.path().join("etc/luks/data")).unwrap(),
            keys[0]
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(root.path().join("etc/luks"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(root.path().join("etc/luks/data"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );

        // An ext4 filesystem on a device without wipeVolume is refused; with it, reformatted.
        let plain = LoopDisk::new(16);
        command::run(Command::new("mkfs.ext4").args(["-q", &plain.device])).unwrap();
        let other = Luks {
            device: Some(plain.device.clone()),
            uuid: None,
            ..l.clone()
        };
        let err = prepare("storage.luks.0", &other, &plain.device, &key.0, &mut rec).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds ext4, not LUKS, and wipeVolume is false"),
            "{err}"
        );
        let wiped = Luks {
            wipe_volume: Some(true),
            ..other
        };
        prepare("storage.luks.0", &wiped, &plain.device, &key.0, &mut rec).unwrap();
        assert!(Command::new("cryptsetup")
            .args(["isLuks", &plain.device])
            .status()
            .unwrap()
            .success());
    }
}
