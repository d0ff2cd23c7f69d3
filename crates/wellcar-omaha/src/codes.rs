//! Numeric codes of the Omaha protocol and Flatcar's `update_engine`: event types, event results,
//! status strings and `errorcode` decoding. Values are facts from the Omaha v3 spec and
//! `update_engine`'s `action_processor.h`.

/// `<event eventtype=…>` values used by Flatcar and Wellcar.
pub mod event_type {
    /// Unknown.
    pub const UNKNOWN: u32 = 0;
    /// Download complete.
    pub const DOWNLOAD_COMPLETE: u32 = 1;
    /// Install complete.
    pub const INSTALL_COMPLETE: u32 = 2;
    /// Update complete (3/1 applied before reboot, 3/2 after reboot, 3/0 failure).
    pub const UPDATE_COMPLETE: u32 = 3;
    /// Update download started.
    pub const UPDATE_DOWNLOAD_STARTED: u32 = 13;
    /// Update download finished.
    pub const UPDATE_DOWNLOAD_FINISHED: u32 = 14;
    /// Flatcar's "installed, completion prevented by instance".
    pub const INSTALLED_COMPLETION_PREVENTED: u32 = 800;
}

/// `<event eventresult=…>` values.
pub mod event_result {
    /// Error.
    pub const ERROR: u32 = 0;
    /// Success.
    pub const SUCCESS: u32 = 1;
    /// Success, rebooted (Flatcar's first check after booting the new version).
    pub const SUCCESS_REBOOT: u32 = 2;
    /// Cancelled.
    pub const CANCELLED: u32 = 4;
    /// Deferred (Flatcar: update deferred for backoff).
    pub const DEFERRED: u32 = 9;
}

/// Status strings used in responses.
pub mod status {
    /// Everything fine.
    pub const OK: &str = "ok";
    /// No update for this app.
    pub const NO_UPDATE: &str = "noupdate";
    /// Server-side failure of an update check.
    pub const ERROR_INTERNAL: &str = "error-internal";
    /// Spec-style status for an unknown application.
    pub const ERROR_UNKNOWN_APPLICATION: &str = "error-unknownApplication";
    /// Nebraska's app status for an unknown app or group.
    pub const ERROR_FAILED_TO_RETRIEVE: &str = "error-failedToRetrieveUpdatePackageInfo";
    /// Nebraska's app status for an unknown group (track).
    pub const ERROR_UNKNOWN_APPLICATION_OR_GROUP: &str = "error-unknownApplicationOrGroup";
}

/// An `update_engine` error code as sent in `<event errorcode=…>`, with its flag bits split off.
///
/// `update_engine` ORs flags into bits 28–31 (dev mode, resumed, test image, non-production server),
/// so `268435466` is code 10 (PayloadHashMismatch) with the "custom server" flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// The raw 32-bit value as sent.
    pub raw: u32,
}

impl ErrorCode {
    /// `RollbackError`: the machine booted back into its old version.
    pub const ROLLBACK: u32 = 44;
    /// Mask of the flag bits (28–31).
    pub const FLAG_MASK: u32 = 0xF000_0000;

    /// Parses a decimal `errorcode` attribute, accepting the negative form a set bit 31 prints as.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(v) = text.parse::<u32>() {
            return Some(Self { raw: v });
        }
        text.parse::<i32>().ok().map(|v| Self {
            raw: u32::from_ne_bytes(v.to_ne_bytes()),
        })
    }

    /// The code without flag bits.
    pub fn code(self) -> u32 {
        self.raw & !Self::FLAG_MASK
    }

    /// Whether this reports a rollback (code 44).
    pub fn is_rollback(self) -> bool {
        self.code() == Self::ROLLBACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_masks_flags_and_accepts_negative() {
        let c = ErrorCode::parse("268435466").unwrap();
        assert_eq!(c.code(), 10);
        let neg = ErrorCode::parse("-2147219440").unwrap();
        assert_eq!(neg.raw, 0x8004_0810);
        assert_eq!(neg.code(), 0x0004_0810);
        assert!(ErrorCode::parse("44").unwrap().is_rollback());
        assert!(ErrorCode::parse("x").is_none());
    }
}
