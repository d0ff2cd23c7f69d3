//! Pinned installs: `flatcar-update --to-version V` and `--to-payload FILE` (also
//! `wellcar-update install`), carried out by the daemon with the same install code as every
//! other update.
//!
//! Contract:
//! - A client asks for a pinned install by writing the daemon's `check-request` file with a
//!   JSON [`CheckRequest`] (`{"id":…,"pin":{…}}`); a plain id (what `wellcar-update check` and
//!   D-Bus `AttemptUpdate` write) is an unpinned on-demand check. [`CheckRequest::parse`] reads
//!   either; an unreadable JSON request is answered as a failed check naming the problem.
//! - [`InstallPin::to_version`]: the Omaha request carries `targetversionprefix=V$` (exactly
//!   `V`, in the prefix grammar the Wellcar server honours) and the answer must offer exactly `V` ([`PinError::VersionNotOffered`] otherwise, nothing
//!   installed). The server, its signature check and the download are the configured ones.
//! - [`InstallPin::payload`]: no Omaha request. The file's head is read and authenticated with
//!   the image's trusted keys and checked against the running system before anything is
//!   written: [`LocalPayloadRefusal`] names a wrong key, an older-or-same version, another
//!   board or a version other than `to_version`. The payload then goes through the agent's
//!   install (read as a `file://` URL: [`crate::http::Http::get_range`]), so it is written to
//!   the inactive slot only, verified blob by blob and read back before it is staged, exactly
//!   as a downloaded one; events are queued and reported to the configured server, if any.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wellcar_payload::{ApplyError, ApplyPolicy, FormatError, PayloadHead, TrustedKeys};

/// What a pinned install must install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallPin {
    /// Exactly this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// This local payload file (absolute path, readable by the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PathBuf>,
}

/// The content of the daemon's `check-request` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Recorded as `handled_request` once the check is over.
    pub id: String,
    /// A pinned install; `None`: an ordinary on-demand check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<InstallPin>,
}

impl CheckRequest {
    /// The file's bytes: a plain id for an unpinned request (what older clients write), JSON
    /// otherwise.
    pub fn to_text(&self) -> String {
        match &self.pin {
            None => self.id.clone(),
            Some(_) => serde_json::to_string(self).expect("a request serializes"),
        }
    }

    /// Reads a request file: JSON (starting with `{`) or a plain id. A JSON request that does
    /// not parse keeps whatever id could be found, so the client still gets an answer.
    pub fn parse(text: &str) -> (Self, Option<String>) {
        let trimmed = text.trim();
        if !trimmed.starts_with('{') {
            return (
                Self {
                    id: trimmed.to_owned(),
                    pin: None,
                },
                None,
            );
        }
        match serde_json::from_str::<Self>(trimmed) {
            Ok(request) => (request, None),
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(trimmed)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                (
                    Self { id, pin: None },
                    Some(format!("unreadable install request: {e}")),
                )
            }
        }
    }
}

/// Why a local payload is refused before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum LocalPayloadRefusal {
    /// Not signed by a key the image trusts (or the signature does not match).
    #[error("wrong key: {0}")]
    WrongKey(String),
    /// Not newer than the booted version.
    #[error("older or same version: the payload is {payload}, the booted version is {booted}")]
    NotNewer {
        /// The payload's version.
        payload: String,
        /// The booted version.
        booted: String,
    },
    /// Built for another board.
    #[error("another board: the payload is for {payload}, this machine is {machine}")]
    OtherBoard {
        /// The payload's board.
        payload: String,
        /// This machine's board.
        machine: String,
    },
    /// `--to-version` names another version than the payload holds.
    #[error("other version: the payload is {payload}, --to-version asked for {wanted}")]
    OtherVersion {
        /// The payload's version.
        payload: String,
        /// The version asked for.
        wanted: String,
    },
    /// Anything else the payload's head or the policy refuses (unreadable, malformed, needs
    /// a newer running version).
    #[error("{0}")]
    Invalid(String),
}

/// A pinned install could not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The local payload was refused.
    #[error("refusing payload {}: {refusal}", path.display())]
    LocalPayload {
        /// The file.
        path: PathBuf,
        /// Why.
        refusal: LocalPayloadRefusal,
    },
    /// The server did not offer the version asked for.
    #[error("the update server {server} does not offer version {wanted} to this machine ({})",
        offered.as_deref().map_or_else(|| "it offers no update".to_owned(), |v| format!("it offers {v}")))]
    VersionNotOffered {
        /// The server.
        server: String,
        /// The version asked for.
        wanted: String,
        /// What it offered instead.
        offered: Option<String>,
    },
    /// `--to-version` without a server (`SERVER=disabled`).
    #[error("--to-version {0}: updates are disabled (SERVER=disabled in update.conf); give the payload with --to-payload")]
    ServerDisabled(String),
    /// An update is staged and not booted yet.
    #[error("a previously downloaded update wasn't applied yet, you can discard it with 'update_engine_client -reset_status'")]
    AlreadyStaged,
}

/// What an authenticated local payload offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOffer {
    /// Its signed manifest's version.
    pub version: String,
    /// Its size in bytes.
    pub size: u64,
    /// `file://` URL the installer reads it from.
    pub url: String,
}

/// Reads `path`'s head, authenticates it with `trusted` and checks it against `policy` (board
/// and booted version) and `wanted` (if given). Writes nothing.
pub fn check_local_payload(
    path: &Path,
    trusted: &TrustedKeys,
    policy: &ApplyPolicy,
    wanted: Option<&str>,
) -> Result<LocalOffer, PinError> {
    let refuse = |refusal| PinError::LocalPayload {
        path: path.to_owned(),
        refusal,
    };
    let invalid = |e: &dyn std::fmt::Display| refuse(LocalPayloadRefusal::Invalid(e.to_string()));
    let mut file = std::fs::File::open(path).map_err(|e| invalid(&e))?;
    let size = file.metadata().map_err(|e| invalid(&e))?.len();
    let head = PayloadHead::read(&mut file)
        .map_err(|e| invalid(&e))?
        .authenticate(trusted)
        .map_err(|e| match e {
            FormatError::UntrustedSigner { .. } | FormatError::BadSignature { .. } => {
                refuse(LocalPayloadRefusal::WrongKey(e.to_string()))
            }
            other => invalid(&other),
        })?;
    let manifest = head.manifest();
    policy.check(manifest).map_err(|e| match e {
        ApplyError::WrongBoard { payload, expected } => refuse(LocalPayloadRefusal::OtherBoard {
            payload,
            machine: expected,
        }),
        ApplyError::NotNewer { payload, current } => refuse(LocalPayloadRefusal::NotNewer {
            payload,
            booted: current,
        }),
        other => invalid(&other),
    })?;
    if let Some(wanted) = wanted {
        if manifest.version != wanted {
            return Err(refuse(LocalPayloadRefusal::OtherVersion {
                payload: manifest.version.clone(),
                wanted: wanted.to_owned(),
            }));
        }
    }
    Ok(LocalOffer {
        version: manifest.version.clone(),
        size,
        url: file_url(path),
    })
}

/// The `file://` URL of an absolute path.
pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_plain_ids_stay_plain() {
        let plain = CheckRequest {
            id: "1-ab".into(),
            pin: None,
        };
        assert_eq!(plain.to_text(), "1-ab");
        assert_eq!(CheckRequest::parse("1-ab\n"), (plain, None));
        let pinned = CheckRequest {
            id: "2-cd".into(),
            pin: Some(InstallPin {
                to_version: Some("1.1.0".into()),
                payload: Some("/var/tmp/p.bin".into()),
            }),
        };
        assert_eq!(CheckRequest::parse(&pinned.to_text()), (pinned, None));
        let (broken, error) = CheckRequest::parse(r#"{"id":"3-ef","pin":{"to_version":7}}"#);
        assert_eq!(broken.id, "3-ef");
        assert!(error.unwrap().contains("unreadable install request"));
    }
}
