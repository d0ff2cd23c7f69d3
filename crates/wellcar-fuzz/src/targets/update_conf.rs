//! `update.conf` ([`wellcar_agent::Config::parse`]): `KEY=VALUE` lines and the values of
//! Flatcar's and Wellcar's keys (durations, the reboot window, the reboot strategy). Root
//! writes it, but a malformed file must be an error naming its line, not a crashed agent.
//!
//! Inputs naming `SERVER_PUBLIC_KEY` are skipped: that key makes the parser read the file it
//! names, and the fuzzer must not read arbitrary paths (or `/dev/zero`) of the machine it runs on.

use std::path::Path;

use crate::Target;

/// `Config::parse` of one file's text.
pub const UPDATE_CONF: Target = Target {
    name: "update-conf",
    exercises: "wellcar_agent::Config::parse (update.conf lines + key values)",
    run: update_conf,
};

fn update_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("SERVER_PUBLIC_KEY") {
        return;
    }
    let _ = wellcar_agent::Config::parse(text, Path::new("/etc/wellcar/update.conf"));
}
