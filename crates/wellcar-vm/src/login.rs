//! Logging in to a VM over ssh when the user brings no Ignition config of their own.
//!
//! Contract: [`login_key`] keeps one ed25519 key pair, made by `ssh-keygen` the first time, at
//! `<dir>/id_ed25519` (`wellcar run` uses `~/.cache/wellcar/ssh`); [`authorized_keys`] adds the
//! user's own `~/.ssh/id_*.pub`, as Flatcar's `flatcar_production_qemu.sh` authorizes
//! `~/.ssh/id_*.pub` by default; [`core_login_config`] is the Ignition 3.4.0 config that
//! authorizes those keys for `core`, the user every Flatcar document logs in as.

use std::path::{Path, PathBuf};
use std::process::Command;
use wellcar_contract::PathIoError;

use crate::machine::VmError;

/// A key pair for logging in as `core`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginKey {
    /// The private key (`ssh -i`).
    pub private: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub public: String,
}

/// `~/.cache/wellcar` (or `$XDG_CACHE_HOME/wellcar`), where Wellcar keeps what it makes once.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wellcar"))
}

/// The key pair at `dir/id_ed25519`, made by `ssh-keygen` (no passphrase) if either half is
/// missing.
pub fn login_key(dir: &Path) -> Result<LoginKey, VmError> {
    let private = dir.join("id_ed25519");
    let public_path = dir.join("id_ed25519.pub");
    if !private.is_file() || !public_path.is_file() {
        std::fs::create_dir_all(dir).map_err(|source| {
            VmError::Io(PathIoError::new("creating", dir.to_path_buf(), source))
        })?;
        for stale in [&private, &public_path] {
            match std::fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(VmError::Io(PathIoError::new(
                        "removing",
                        stale.clone(),
                        source,
                    )))
                }
            }
        }
        crate::machine::run(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "core@wellcar-run",
                    "-f",
                ])
                .arg(&private),
        )?;
    }
    let public = std::fs::read_to_string(&public_path)
        .map_err(|source| VmError::Io(PathIoError::new("reading", public_path, source)))?;
    Ok(LoginKey {
        private,
        public: public.trim().to_owned(),
    })
}

/// `key` plus the public keys in `ssh_dir/id_*.pub` (the user's own `~/.ssh`), in name order,
/// without duplicates. A missing `ssh_dir` adds nothing.
pub fn authorized_keys(key: &LoginKey, ssh_dir: &Path) -> Result<Vec<String>, VmError> {
    let mut keys = vec![key.public.clone()];
    let entries = match std::fs::read_dir(ssh_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(source) => {
            return Err(VmError::Io(PathIoError::new(
                "listing",
                ssh_dir.to_path_buf(),
                source,
            )))
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("id_") && n.ends_with(".pub"))
        })
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|source| VmError::Io(PathIoError::new("reading", path.clone(), source)))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !keys.iter().any(|k| k == line) {
                keys.push(line.to_owned());
            }
        }
    }
    Ok(keys)
}

/// `ssh` to `core` on the forwarded `port` with `key`, ready for a remote command: no prompts
/// (`BatchMode`), no known-hosts check (every VM boots new host keys on the same port), and
/// `connect_timeout_secs` for the TCP connection.
pub fn core_ssh(port: u16, key: &Path, connect_timeout_secs: u32) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.args(["-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
        ])
        .arg(format!("ConnectTimeout={connect_timeout_secs}"))
        .arg("core@127.0.0.1");
    ssh
}

/// The Ignition config (spec 3.4.0) that authorizes `public_keys` for `core`.
pub fn core_login_config(public_keys: &[String]) -> String {
    serde_json::json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": public_keys}]}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_the_key_once_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = login_key(&dir.path().join("ssh")).unwrap();
        assert!(first.public.starts_with("ssh-ed25519 "), "{}", first.public);
        assert!(
            first.public.ends_with(" core@wellcar-run"),
            "{}",
            first.public
        );
        let again = login_key(&dir.path().join("ssh")).unwrap();
        assert_eq!(again, first, "a second call reuses the pair");
        // A lost public half makes a new pair, never a mismatched one.
        std::fs::remove_file(dir.path().join("ssh/id_ed25519.pub")).unwrap();
        let new = login_key(&dir.path().join("ssh")).unwrap();
        assert_ne!(new.public, first.public);
        let derived = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&new.private)
            .output()
            .unwrap();
        let derived = String::from_utf8(derived.stdout).unwrap();
        assert!(
            new.public.starts_with(derived.trim()),
            "{derived} / {}",
            new.public
        );
    }

    #[test]
    fn adds_the_users_own_public_keys_once_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let key = LoginKey {
            private: dir.path().join("k"),
            public: "ssh-ed25519 AAAAmine run".into(),
        };
        let ssh = dir.path().join(".ssh");
        assert_eq!(
            authorized_keys(&key, &ssh).unwrap(),
            vec![key.public.clone()]
        );
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(ssh.join("id_rsa.pub"), "ssh-rsa AAAArsa me@host\n").unwrap();
        std::fs::write(ssh.join("id_ed25519.pub"), "ssh-ed25519 AAAAmine run\n").unwrap();
        std::fs::write(
            ssh.join("id_ecdsa.pub"),
            "ecdsa-sha2-nistp256 AAAAec me@host\n",
        )
        .unwrap();
        std::fs::write(ssh.join("id_rsa"), "PRIVATE").unwrap();
        std::fs::write(ssh.join("authorized_keys"), "ssh-rsa AAAAother x\n").unwrap();
        assert_eq!(
            authorized_keys(&key, &ssh).unwrap(),
            vec![
                "ssh-ed25519 AAAAmine run".to_owned(),
                "ecdsa-sha2-nistp256 AAAAec me@host".to_owned(),
                "ssh-rsa AAAArsa me@host".to_owned(),
            ]
        );
    }

    #[test]
    fn core_ssh_never_prompts_nor_checks_known_hosts() {
        let ssh = core_ssh(2222, Path::new("/k/id"), 7);
        assert_eq!(ssh.get_program(), "ssh");
        let args: Vec<_> = ssh
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..4], ["-p", "2222", "-i", "/k/id"]);
        for option in [
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "ConnectTimeout=7",
        ] {
            let at = args.iter().position(|a| a == option).expect(option);
            assert_eq!(args[at - 1], "-o", "{option}");
        }
        assert_eq!(args.last().unwrap(), "core@127.0.0.1");
    }

    #[test]
    fn the_config_authorizes_the_keys_for_core() {
        let keys = vec!["ssh-ed25519 AAAA a".to_owned(), "ssh-rsa BBBB b".to_owned()];
        let config: serde_json::Value = serde_json::from_str(&core_login_config(&keys)).unwrap();
        assert_eq!(config["ignition"]["version"], "3.4.0");
        assert_eq!(config["passwd"]["users"][0]["name"], "core");
        assert_eq!(
            config["passwd"]["users"][0]["sshAuthorizedKeys"],
            serde_json::json!(keys)
        );
    }
}
