//! Wellcar update payloads: signed, streamed, verified while streaming, resumable.
//!
//! A payload (`wellcar_update.bin`) carries one OS version for one board: the /usr region of a
//! USR slot (filesystem, zeros and dm-verity hash area), plus the slot's kernel and initramfs.
//! The format is in [`mod@format`] (the normative description, copied into ARCHITECTURE.md).
//!
//! Who calls what:
//! - the image builder: [`create_payload`] (or [`create_payload_with`]) with a key from
//!   [`load_signing_key`] or [`dev_signing_key`];
//! - the update agent: [`PayloadHead::read`] + [`PayloadHead::authenticate`], then
//!   [`Installer`] (`new` or `resume`, `write_from_with_progress`, `finish`), or the one-shot
//!   [`apply()`];
//! - `wellcar payload verify`: [`verify_payload`]; `wellcar key generate`:
//!   [`generate_keypair`].
//!
//! Guarantees: nothing is written before the signature verifies and board, version and target
//! size are checked; every blob is hashed before it is decompressed; apply succeeds only after
//! the written images are read back and match the signed sha256s and dm-verity root; memory is
//! bounded (one blob and one chunk, plus 32 bytes of verity state per 4 KiB of /usr).

#![deny(missing_docs)]

pub mod apply;
pub mod create;
pub mod format;
mod fsutil;
pub mod info;
pub mod keys;
pub mod patch;

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod round_trip_tests;
#[cfg(test)]
mod test_fixture;

pub use apply::{
    apply, partial_path, verify_payload, ApplyError, ApplyPolicy, Checkpoint, InstallReport,
    InstallTargets, Installer, SourceReader, UsrPartition, UsrTarget, VerifyReport,
};
pub use create::{
    create_payload, create_payload_with, CreateError, CreateOptions, PayloadSummary,
    PAYLOAD_FILE_NAME,
};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use format::{FormatError, Manifest, PayloadHead, Sha256Digest, SourceSlot, VerifiedHead};
pub use info::PayloadInfo;
pub use keys::{
    dev_signing_key, dev_signing_key_in, generate_keypair, load_signing_key, load_verifying_key,
    public_key_path, KeyError, KeyPairFiles, TrustedKeys, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE,
    SYSTEM_TRUSTED_KEYS_DIR,
};
