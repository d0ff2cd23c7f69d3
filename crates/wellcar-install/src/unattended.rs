//! The live system's unattended install, from its kernel command line (Fedora CoreOS's
//! `coreos.inst.*` arguments, as `wellcar.inst.*`; names in `wellcar_contract::live`):
//!
//! | argument | meaning |
//! |---|---|
//! | `wellcar.inst.install_dev=DEV` | the target; a bare name (`sda`) means `/dev/sda`. Without it nothing is installed |
//! | `wellcar.inst.image_url=URL` | the image (required with `install_dev`), as `--image-url` |
//! | `wellcar.inst.ignition_url=URL` | the installed system's `config.ign`, as `--ignition-url` |
//! | `wellcar.inst.platform_id=ID` | the installed system's OEM id (default `metal`) |
//! | `wellcar.inst.insecure` | accept an unsigned image, as `--insecure` |
//! | `wellcar.inst.skip_reboot` | stay in the live system afterwards |
//!
//! The command line is the one `/init` reads (`/proc/cmdline`, then QEMU's fw_cfg kernel
//! arguments): [`wellcar_platform::id::read_cmdline`].

use std::path::PathBuf;

use wellcar_contract::live::{
    INSTALL_DEV_PARAM, INSTALL_IGNITION_URL_PARAM, INSTALL_IMAGE_URL_PARAM, INSTALL_INSECURE_PARAM,
    INSTALL_PLATFORM_ID_PARAM, INSTALL_SKIP_REBOOT_PARAM,
};
use wellcar_platform::id::{cmdline_has, cmdline_value};

use crate::args::Args;
use crate::error::InstallError;
use crate::source::CURRENT_VERSION;

/// The platform an unattended install sets up when the command line names none: the live
/// system booted from a USB stick or over PXE runs on bare metal.
pub const DEFAULT_PLATFORM: &str = "metal";

/// An unattended install the command line asks for.
#[derive(Debug, Clone)]
pub struct Unattended {
    /// The installation, as `wellcar-install`'s options.
    pub args: Args,
    /// Reboot into the installed disk afterwards.
    pub reboot: bool,
}

/// The install `cmdline` asks for: `None` without `wellcar.inst.install_dev=`.
pub fn from_cmdline(cmdline: &str) -> Result<Option<Unattended>, InstallError> {
    let Some(device) = cmdline_value(cmdline, INSTALL_DEV_PARAM).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let image_url = cmdline_value(cmdline, INSTALL_IMAGE_URL_PARAM)
        .filter(|u| !u.is_empty())
        .ok_or(InstallError::MissingArgument {
            argument: INSTALL_IMAGE_URL_PARAM,
            because: INSTALL_DEV_PARAM,
        })?;
    let target = if device.starts_with('/') {
        PathBuf::from(device)
    } else {
        PathBuf::from("/dev").join(device)
    };
    let args = Args {
        target,
        ignition: None,
        ignition_url: cmdline_value(cmdline, INSTALL_IGNITION_URL_PARAM).filter(|u| !u.is_empty()),
        image: None,
        build: None,
        image_url: Some(image_url),
        server: None,
        channel: None,
        release_version: CURRENT_VERSION.into(),
        oem_id: Some(
            cmdline_value(cmdline, INSTALL_PLATFORM_ID_PARAM)
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| DEFAULT_PLATFORM.into()),
        ),
        kernel_args: Vec::new(),
        trust_keys: Vec::new(),
        insecure: cmdline_has(cmdline, INSTALL_INSECURE_PARAM),
    };
    Ok(Some(Unattended {
        args,
        reboot: !cmdline_has(cmdline, INSTALL_SKIP_REBOOT_PARAM),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_install_dev_means_no_install() {
        let line = "BOOT_IMAGE=/wellcar/vmlinuz wellcar.live wellcar.inst.image_url=http://x/i.img";
        assert!(from_cmdline(line).unwrap().is_none());
    }

    #[test]
    fn the_arguments_become_install_options_and_the_last_occurrence_wins() {
        let line = "wellcar.live wellcar.inst.install_dev=sda \
                    wellcar.inst.image_url=http://r/s/1/wellcar.img.zst \
                    wellcar.inst.ignition_url=https://c/config.ign wellcar.inst.skip_reboot \
                    wellcar.inst.install_dev=/dev/vda";
        let job = from_cmdline(line).unwrap().unwrap();
        assert_eq!(job.args.target, PathBuf::from("/dev/vda"));
        assert_eq!(
            job.args.image_url.as_deref(),
            Some("http://r/s/1/wellcar.img.zst")
        );
        assert_eq!(
            job.args.ignition_url.as_deref(),
            Some("https://c/config.ign")
        );
        assert_eq!(job.args.oem_id.as_deref(), Some(DEFAULT_PLATFORM));
        assert!(!job.reboot && !job.args.insecure);
        let bare = from_cmdline(
            "wellcar.inst.install_dev=nvme0n1 wellcar.inst.image_url=http://r/i.img \
             wellcar.inst.platform_id=vmware wellcar.inst.insecure",
        )
        .unwrap()
        .unwrap();
        assert_eq!(bare.args.target, PathBuf::from("/dev/nvme0n1"));
        assert_eq!(bare.args.oem_id.as_deref(), Some("vmware"));
        assert!(bare.reboot && bare.args.insecure);
    }

    #[test]
    fn an_install_dev_without_an_image_url_is_refused_by_name() {
        let err = from_cmdline("wellcar.inst.install_dev=vda").unwrap_err();
        assert_eq!(
            err.to_string(),
            "wellcar.inst.image_url= is missing: wellcar.inst.install_dev= asks for an install"
        );
    }
}
