//! Ignition: [`wellcar_ignition::parse_config`] decodes any spec 3.0–3.6 config and validates
//! it. The initramfs runs it on first boot on a config from the hypervisor or the OEM
//! partition, before anything else is up, so a panic there is an unbootable machine.
//! A config that parses is also run through reference resolution (`data:` URLs only, no
//! network) like the initramfs does.

use crate::Target;

/// `parse_config`, then `resolve_references`.
pub const CONFIG: Target = Target {
    name: "ignition",
    exercises: "wellcar_ignition::parse_config (decode + validate) + resolve_references",
    run: config,
};

fn config(data: &[u8]) {
    if let Ok(parsed) = wellcar_ignition::parse_config(data) {
        let _ = wellcar_ignition::resolve_references(parsed.config);
    }
}
