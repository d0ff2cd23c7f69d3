//! Update signing keys: ed25519, stored as PEM (PKCS#8 private key, SPKI public key), so
//! `openssl pkey` reads them too.
//!
//! - [`generate_keypair`] writes `DIR/update-key` (mode 0600) and `DIR/update-key.pub`.
//! - [`dev_signing_key`] returns the per-user development key, creating it on first use at
//!   `$XDG_CONFIG_HOME/wellcar/dev-update-key` (or `~/.config/wellcar/dev-update-key`).
//! - [`TrustedKeys`] is the set of public keys a reader accepts, loaded from a directory of
//!   `*.pub` files (the image ships [`SYSTEM_TRUSTED_KEYS_DIR`]). Any one of them verifying is
//!   enough, which is how keys rotate: ship old and new public keys, sign with both, then drop
//!   the old one.
//!
//! Key files are written temp + fsync + link, so a crash leaves no half-written key and two
//! concurrent first uses of the dev key agree on one key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::format::key_fingerprint;
use wellcar_contract::atomic_file;

/// File name of the private key written by [`generate_keypair`].
pub const PRIVATE_KEY_FILE: &str = "update-key";
/// File name of the public key written by [`generate_keypair`].
pub const PUBLIC_KEY_FILE: &str = "update-key.pub";
/// Where the OS image keeps the public keys it trusts for updates.
pub const SYSTEM_TRUSTED_KEYS_DIR: &str = "/usr/share/wellcar/update-payload-keys";
/// File name of the development key under `<config dir>/wellcar/`.
pub const DEV_KEY_FILE: &str = "dev-update-key";

/// What went wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key file or directory failed.
    #[error("reading key {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a key file failed.
    #[error("writing key {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file already exists and replacing it was not asked for.
    #[error("key {path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a PEM ed25519 key of the expected kind.
    #[error("{path} is not a PEM ed25519 {kind} key: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// "private" or "public".
        kind: &'static str,
        /// Parser message.
        reason: String,
    },
    /// A trusted-keys directory holds no `*.pub` file.
    #[error("no *.pub public keys in {dir}")]
    NoTrustedKeys {
        /// The directory.
        dir: PathBuf,
    },
    /// Neither `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("cannot locate the config directory: neither XDG_CONFIG_HOME nor HOME is set")]
    NoConfigDir,
    /// The OS random number generator failed.
    #[error("reading random bytes for a new key: {reason}")]
    Random {
        /// The getrandom error.
        reason: String,
    },
}

/// Paths and fingerprint of a written keypair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// The private key (mode 0600).
    pub private_key: PathBuf,
    /// The public key.
    pub public_key: PathBuf,
    /// [`key_fingerprint`] of the public key.
    pub fingerprint: String,
}

/// A new random signing key.
pub fn new_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random {
        reason: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Generates a keypair into `dir` (created if missing) as `update-key` (0600) and
/// `update-key.pub`. Refuses to replace existing files unless `overwrite`.
pub fn generate_keypair(dir: &Path, overwrite: bool) -> Result<KeyPairFiles, KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let key = new_signing_key()?;
    write_keypair(&key, &dir.join(PRIVATE_KEY_FILE), overwrite)
}

/// Writes `key` to `private_path` (0600) and its public half to `private_path` + `.pub`.
pub fn write_keypair(
    key: &SigningKey,
    private_path: &Path,
    overwrite: bool,
) -> Result<KeyPairFiles, KeyError> {
    let public_path = public_key_path(private_path);
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path }
            } else {
                KeyError::Write { path, source }
            }
        }
    };
    // PKCS#8 v1 (no embedded public key): the form OpenSSL 3.0 reads.
    let private_pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| KeyError::Parse {
        path: private_path.to_owned(),
        kind: "private",
        reason: e.to_string(),
    })?;
    let public_pem = public_key_pem(&key.verifying_key());
    if !overwrite {
        for path in [private_path, &public_path] {
            if path.exists() {
                return Err(KeyError::Exists {
                    path: path.to_owned(),
                });
            }
        }
    }
    // Public first: a crash in between leaves a public key without its private key, which
    // is harmless, rather than a private key nobody can trust.
    let write = if overwrite {
        atomic_file::write
    } else {
        atomic_file::write_new
    };
    write(&public_path, public_pem.as_bytes(), 0o644).map_err(write_err(&public_path))?;
    write(private_path, private_pem.as_bytes(), 0o600).map_err(write_err(private_path))?;
    Ok(KeyPairFiles {
        private_key: private_path.to_owned(),
        public_key: public_path,
        fingerprint: key_fingerprint(key.verifying_key().as_bytes()),
    })
}

/// `path` with `.pub` appended.
pub fn public_key_path(private_path: &Path) -> PathBuf {
    let mut name = private_path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// PEM (SPKI) encoding of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("encoding a 32-byte ed25519 public key cannot fail")
}

/// Loads a PEM PKCS#8 ed25519 private key. Warns when the file is readable by others.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key is readable by group or others");
        }
    }
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Parse {
        path: path.to_owned(),
        kind: "private",
        reason: e.to_string(),
    })
}

/// Loads a PEM SPKI ed25519 public key.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let key = VerifyingKey::from_public_key_pem(&text).map_err(|e| KeyError::Parse {
        path: path.to_owned(),
        kind: "public",
        reason: e.to_string(),
    })?;
    if crate::format::verifying_key_from_bytes(key.as_bytes()).is_none() {
        return Err(KeyError::Parse {
            path: path.to_owned(),
            kind: "public",
            reason: "weak (small-order) key".into(),
        });
    }
    Ok(key)
}

/// The user's config directory: `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn user_config_dir() -> Result<PathBuf, KeyError> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Ok(PathBuf::from(xdg));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".config"))
        .ok_or(KeyError::NoConfigDir)
}

/// The development signing key under the user's config directory, created on first use.
/// Returns the key, its path, and whether it was created by this call.
pub fn dev_signing_key() -> Result<(SigningKey, PathBuf, bool), KeyError> {
    dev_signing_key_in(&user_config_dir()?)
}

/// [`dev_signing_key`] with an explicit config directory (`<config_dir>/wellcar/dev-update-key`).
pub fn dev_signing_key_in(config_dir: &Path) -> Result<(SigningKey, PathBuf, bool), KeyError> {
    let dir = config_dir.join("wellcar");
    let path = dir.join(DEV_KEY_FILE);
    if path.exists() {
        return Ok((load_signing_key(&path)?, path, false));
    }
    std::fs::create_dir_all(&dir).map_err(|source| KeyError::Write {
        path: dir.clone(),
        source,
    })?;
    let key = new_signing_key()?;
    match write_keypair(&key, &path, false) {
        Ok(_) => Ok((key, path, true)),
        // Another process created it between our check and our link: use theirs.
        Err(KeyError::Exists { .. }) => Ok((load_signing_key(&path)?, path, false)),
        Err(e) => Err(e),
    }
}

/// One key a reader trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Where it came from (file stem), for messages.
    pub name: String,
    /// The key.
    pub verifying_key: VerifyingKey,
}

impl TrustedKey {
    /// `name (fingerprint)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.name,
            key_fingerprint(self.verifying_key.as_bytes())
        )
    }
}

/// The public keys a payload reader accepts; any one verifying is enough.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// A set of explicit keys.
    pub fn new(keys: Vec<TrustedKey>) -> Self {
        Self { keys }
    }

    /// Every `*.pub` file in `dir`, in name order. Fails if there is none or one is invalid.
    pub fn from_dir(dir: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "pub") && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(KeyError::NoTrustedKeys {
                dir: dir.to_owned(),
            });
        }
        paths.sort();
        Self::from_paths(&paths)
    }

    /// Keys from files, or from directories of `*.pub` files.
    pub fn from_paths(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for path in paths {
            if path.is_dir() {
                keys.extend(Self::from_dir(path)?.keys);
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            keys.push(TrustedKey {
                name,
                verifying_key: load_verifying_key(path)?,
            });
        }
        Ok(Self { keys })
    }

    /// The keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Comma-separated [`TrustedKey::describe`] of every key, or "none".
    pub fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "none".into();
        }
        self.keys
            .iter()
            .map(TrustedKey::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_private_key_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_keypair(&dir.path().join("keys"), false).unwrap();
        let mode = std::fs::metadata(&files.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
        assert_eq!(files.private_key.file_name().unwrap(), PRIVATE_KEY_FILE);
        assert_eq!(files.public_key.file_name().unwrap(), PUBLIC_KEY_FILE);
        let private = load_signing_key(&files.private_key).unwrap();
        let public = load_verifying_key(&files.public_key).unwrap();
        assert_eq!(private.verifying_key(), public);
        let pem = std::fs::read_to_string(&files.private_key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    }

    #[test]
    fn generate_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate_keypair(dir.path(), false).unwrap();
        let before = std::fs::read(&first.private_key).unwrap();
        let err = generate_keypair(dir.path(), false).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&first.private_key).unwrap(), before);
        let second = generate_keypair(dir.path(), true).unwrap();
        assert_ne!(second.fingerprint, first.fingerprint);
    }

    #[test]
    fn dev_key_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, path, created) = dev_signing_key_in(dir.path()).unwrap();
        assert!(created);
        assert_eq!(path, dir.path().join("wellcar").join(DEV_KEY_FILE));
        assert!(public_key_path(&path).is_file());
        let (again, path2, created2) = dev_signing_key_in(dir.path()).unwrap();
        assert!(!created2);
        assert_eq!(path2, path);
        assert_eq!(again.to_bytes(), key.to_bytes());
    }

    #[test]
    fn trusted_dir_loads_every_pub_and_rejects_garbage_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = TrustedKeys::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::NoTrustedKeys { .. }), "{err}");
        for name in ["a", "b"] {
            write_keypair(&new_signing_key().unwrap(), &dir.path().join(name), false).unwrap();
        }
        let trusted = TrustedKeys::from_dir(dir.path()).unwrap();
        assert_eq!(trusted.keys().len(), 2);
        assert_eq!(trusted.keys()[0].name, "a");
        std::fs::write(dir.path().join("c.pub"), "not a key").unwrap();
        let err = TrustedKeys::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("c.pub") && err.contains("public"), "{err}");
    }
}
