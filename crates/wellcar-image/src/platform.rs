//! Platform images: one built raw disk image turned into what each platform imports, with the
//! platform's OEM id and kernel arguments in its OEM partition.
//!
//! Contract ([`write_platform_image`], a function over an existing raw image, so the build and
//! the tests share it): a sparse copy of the raw image gets the platform's OEM `grub.cfg` and
//! `oem-release` (written into the OEM ext4 without mounting, `wellcar_install::oem`), then
//! `qemu-img` converts it:
//!
//! | id | file | format |
//! |---|---|---|
//! | qemu | `wellcar_qemu.qcow2` | qcow2 |
//! | openstack | `wellcar_openstack.qcow2` | qcow2 |
//! | metal | `wellcar_metal.img` | raw (sparse) |
//! | aws | `wellcar_aws.img` | raw, for `ec2 import-snapshot` |
//! | vmware | `wellcar_vmware.ova` | tar: `wellcar_vmware.ovf` (OVF 1.0 descriptor) first, then a stream-optimized VMDK |
//! | azure | `wellcar_azure.vhd` | fixed VHD (`-O vpc -o subformat=fixed,force_size`), size a multiple of 1 MiB |
//! | gcp | `wellcar_gcp.tar.gz` | `disk.raw` in a gzip'd tar (GNU format, sparse), as GCE imports |
//!
//! Intermediate files go to a temporary directory inside the output directory; the result is
//! renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use wellcar_contract::command;
use wellcar_disk::PartitionKey;

/// A platform `wellcar build --platform` can make an image for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// QEMU/KVM.
    Qemu,
    /// Bare metal (raw image for `wellcar install` or `dd`).
    Metal,
    /// OpenStack.
    Openstack,
    /// VMware (OVA).
    Vmware,
    /// Microsoft Azure (fixed VHD).
    Azure,
    /// Amazon EC2 (raw, imported as a snapshot).
    Aws,
    /// Google Compute Engine.
    Gcp,
}

/// Why a platform image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Not a platform id.
    #[error("unknown platform {0:?} (one of qemu, metal, openstack, vmware, azure, aws, gcp)")]
    Unknown(String),
    /// I/O on a path failed.
    #[error(transparent)]
    Io(#[from] wellcar_contract::PathIoError),
    /// A tool failed.
    #[error(transparent)]
    Command(#[from] command::CommandError),
    /// The image has no OEM partition.
    #[error(transparent)]
    Disk(#[from] wellcar_disk::DiskError),
    /// Writing the OEM partition failed.
    #[error("writing the {platform} OEM settings into {}", image.display())]
    Oem {
        /// The platform.
        platform: &'static str,
        /// The image copy.
        image: PathBuf,
        /// The cause.
        #[source]
        source: Box<wellcar_install::InstallError>,
    },
    /// Azure needs a size that is a whole number of MiB.
    #[error("{} is {size} bytes; a VHD for Azure must be a multiple of 1 MiB", image.display())]
    VhdSize {
        /// The raw image.
        image: PathBuf,
        /// Its size.
        size: u64,
    },
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.id() == s)
            .ok_or_else(|| PlatformError::Unknown(s.into()))
    }
}

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 7] = [
        Platform::Qemu,
        Platform::Metal,
        Platform::Openstack,
        Platform::Vmware,
        Platform::Azure,
        Platform::Aws,
        Platform::Gcp,
    ];

    /// The OEM id (`wellcar.oem.id=`, Flatcar's names).
    pub fn id(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Metal => "metal",
            Platform::Openstack => "openstack",
            Platform::Vmware => "vmware",
            Platform::Azure => "azure",
            Platform::Aws => "ami",
            Platform::Gcp => "gce",
        }
    }

    /// Name in `oem-release`.
    fn name(self) -> &'static str {
        match self {
            Platform::Qemu => "QEMU",
            Platform::Metal => "Bare metal",
            Platform::Openstack => "OpenStack",
            Platform::Vmware => "VMware",
            Platform::Azure => "Microsoft Azure",
            Platform::Aws => "Amazon EC2",
            Platform::Gcp => "Google Compute Engine",
        }
    }

    /// Kernel arguments in the OEM `grub.cfg` (the serial consoles each platform logs).
    pub fn kernel_args(self) -> &'static str {
        match self {
            Platform::Qemu => "wellcar.autologin",
            Platform::Metal | Platform::Vmware => "",
            Platform::Openstack => "console=ttyS0,115200n8",
            Platform::Azure => "console=ttyS0,115200n8 earlyprintk=ttyS0,115200 rootdelay=300",
            Platform::Aws | Platform::Gcp => "console=ttyS0,115200n8",
        }
    }

    /// The file [`write_platform_image`] writes.
    pub fn file_name(self) -> String {
        let ext = match self {
            Platform::Qemu | Platform::Openstack => "qcow2",
            Platform::Metal | Platform::Aws => "img",
            Platform::Vmware => "ova",
            Platform::Azure => "vhd",
            Platform::Gcp => "tar.gz",
        };
        format!("wellcar_{}.{ext}", self.cli_name())
    }

    fn cli_name(self) -> &'static str {
        match self {
            Platform::Aws => "aws",
            Platform::Gcp => "gcp",
            other => other.id(),
        }
    }

    /// The OEM `grub.cfg`.
    pub fn oem_grub_cfg(self) -> String {
        format!(
            "# Platform settings for GRUB (Flatcar's OEM grub.cfg).\nset oem_id=\"{}\"\nset linux_append=\"{}\"\n",
            self.id(),
            self.kernel_args()
        )
    }
}

fn io<T>(
    result: std::io::Result<T>,
    action: &'static str,
    path: &Path,
) -> Result<T, PlatformError> {
    Ok(wellcar_contract::IoResultExt::at_path(
        result, action, path,
    )?)
}

fn qemu_img(args: &[&str], from: &Path, to: &Path) -> Result<(), PlatformError> {
    command::run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw"])
            .args(args)
            .arg(from)
            .arg(to),
    )?;
    Ok(())
}

/// Makes `platform`'s image from the raw disk image `raw` in `out_dir`; returns its path.
pub fn write_platform_image(
    raw: &Path,
    platform: Platform,
    out_dir: &Path,
) -> Result<PathBuf, PlatformError> {
    let work = io(
        tempfile::Builder::new()
            .prefix(".platform-")
            .tempdir_in(out_dir),
        "creating a temporary directory in",
        out_dir,
    )?;
    let disk = work.path().join("disk.raw");
    command::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(raw)
            .arg(&disk),
    )?;
    let size = io(std::fs::metadata(&disk), "inspecting", &disk)?.len();
    let oem = {
        let mut f = io(std::fs::File::open(&disk), "opening", &disk)?;
        wellcar_disk::find_partition(&mut f, &disk, PartitionKey::Label("OEM"))?
    };
    wellcar_install::oem::write_files(
        &disk,
        oem.offset,
        &[
            ("grub.cfg", platform.oem_grub_cfg().into_bytes()),
            (
                "oem-release",
                format!("ID={}\nNAME=\"{}\"\n", platform.id(), platform.name()).into_bytes(),
            ),
        ],
    )
    .map_err(|source| PlatformError::Oem {
        platform: platform.id(),
        image: disk.clone(),
        source: Box::new(source),
    })?;
    let out = work.path().join(platform.file_name());
    match platform {
        Platform::Qemu | Platform::Openstack => qemu_img(&["-O", "qcow2"], &disk, &out)?,
        Platform::Metal | Platform::Aws => io(std::fs::rename(&disk, &out), "renaming", &disk)?,
        Platform::Azure => {
            if size % (1 << 20) != 0 {
                return Err(PlatformError::VhdSize {
                    image: raw.into(),
                    size,
                });
            }
            qemu_img(
                &["-O", "vpc", "-o", "subformat=fixed,force_size"],
                &disk,
                &out,
            )?
        }
        Platform::Vmware => {
            let vmdk_name = "wellcar_vmware-disk1.vmdk";
            let vmdk = work.path().join(vmdk_name);
            qemu_img(
                &["-O", "vmdk", "-o", "subformat=streamOptimized"],
                &disk,
                &vmdk,
            )?;
            let vmdk_size = io(std::fs::metadata(&vmdk), "inspecting", &vmdk)?.len();
            let ovf_name = "wellcar_vmware.ovf";
            let ovf = work.path().join(ovf_name);
            io(
                std::fs::write(&ovf, ovf_descriptor(vmdk_name, vmdk_size, size)),
                "writing",
                &ovf,
            )?;
            // The OVA format requires the descriptor first.
            command::run(
                Command::new("tar")
                    .current_dir(work.path())
                    .args(["--format=ustar", "-cf"])
                    .arg(&out)
                    .args([ovf_name, vmdk_name]),
            )?;
        }
        Platform::Gcp => {
            command::run(
                Command::new("tar")
                    .current_dir(work.path())
                    .args(["--format=oldgnu", "-Sczf"])
                    .arg(&out)
                    .arg("disk.raw"),
            )?;
        }
    }
    let dest = out_dir.join(platform.file_name());
    io(std::fs::rename(&out, &dest), "renaming into place", &dest)?;
    Ok(dest)
}

/// A minimal OVF 1.0 envelope: one disk, one virtual machine with 2 CPUs, 2 GiB, EFI firmware
/// off (BIOS boots via GRUB's MBR code), a SCSI controller and a NAT network.
pub fn ovf_descriptor(vmdk_name: &str, vmdk_size: u64, capacity: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{vmdk_name}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="nat"><Description>The nat network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="wellcar">
    <Info>Wellcar Container Linux</Info>
    <Name>wellcar</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="other5xLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>wellcar</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>nat</rasd:Connection>
        <rasd:ElementName>Ethernet 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

#[cfg(test)]
mod tests;
