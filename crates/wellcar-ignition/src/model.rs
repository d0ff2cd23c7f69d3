//! The Ignition config model, in the shape of the newest supported spec (3.6.0).
//!
//! Every older spec (3.0.0-3.5.0) is translated into this shape by [`crate::parse_config`].
//! Optional scalars are `Option` so that "absent" stays distinct from `false`/`0`/`""`: merging
//! and several validation rules depend on that difference. Fields that Ignition models as plain
//! (non-pointer) values (`path`, `device`, `name`, partition `number`, header `name`, tang `url`)
//! are plain values here as well; absent means the zero value.

/// The newest spec version this crate speaks; parsed configs are translated to it.
pub const LATEST_SPEC: &str = "3.6.0";

/// A whole Ignition config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// `ignition`: version, references, TLS, proxy, timeouts.
    pub ignition: Ignition,
    /// `kernelArguments` (3.3+).
    pub kernel_arguments: KernelArguments,
    /// `passwd`: users and groups.
    pub passwd: Passwd,
    /// `storage`: disks, filesystems, files, directories, links.
    pub storage: Storage,
    /// `systemd`: units and drop-ins.
    pub systemd: Systemd,
}

#[cfg(test)]
impl Config {
    /// The paths of `storage.files`, in order (for tests).
    pub(crate) fn file_paths(&self) -> Vec<&str> {
        self.storage
            .files
            .iter()
            .map(|f| f.node.path.as_str())
            .collect()
    }
}

/// `ignition` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignition {
    /// `ignition.version`; after parsing always [`LATEST_SPEC`].
    pub version: String,
    /// `ignition.config`: merge and replace references.
    pub config: IgnitionConfig,
    /// `ignition.proxy` (3.1+).
    pub proxy: Proxy,
    /// `ignition.security`.
    pub security: Security,
    /// `ignition.timeouts`.
    pub timeouts: Timeouts,
}

/// `ignition.config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnitionConfig {
    /// Configs merged on top of this one, in order.
    pub merge: Vec<Resource>,
    /// A config that replaces this one entirely when its `source` is set.
    pub replace: Resource,
}

/// `ignition.proxy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxy {
    /// Proxy URL for `http` resources.
    pub http_proxy: Option<String>,
    /// Proxy URL for `https` resources.
    pub https_proxy: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Vec<String>,
}

/// `ignition.security`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `ignition.security.tls`.
    pub tls: Tls,
}

/// `ignition.security.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Extra PEM certificate authorities.
    pub certificate_authorities: Vec<Resource>,
}

/// `ignition.timeouts`, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Time to wait for HTTP response headers (default 10).
    pub http_response_headers: Option<i64>,
    /// Time for a whole HTTP fetch including retries (default 0 = unlimited).
    pub http_total: Option<i64>,
}

/// A fetchable resource: file contents, append fragments, config references, CAs, key files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    /// `""`/absent or `"gzip"`.
    pub compression: Option<String>,
    /// Extra headers for `http(s)` sources (3.1+).
    pub http_headers: Vec<HttpHeader>,
    /// The URL; absent means "no content".
    pub source: Option<String>,
    /// Hash of the decompressed data.
    pub verification: Verification,
}

/// One HTTP header of a [`Resource`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpHeader {
    /// Header name (merge key).
    pub name: String,
    /// Header value; `None` in a child config deletes the parent's header when merging.
    pub value: Option<String>,
}

/// `verification` of a [`Resource`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// `sha512-<hex>` or (3.1+) `sha256-<hex>`.
    pub hash: Option<String>,
}

/// `storage` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    /// `storage.directories`.
    pub directories: Vec<Directory>,
    /// `storage.disks`.
    pub disks: Vec<Disk>,
    /// `storage.files`.
    pub files: Vec<File>,
    /// `storage.filesystems`.
    pub filesystems: Vec<Filesystem>,
    /// `storage.links`.
    pub links: Vec<Link>,
    /// `storage.luks` (3.2+).
    pub luks: Vec<Luks>,
    /// `storage.raid`.
    pub raid: Vec<Raid>,
}

/// Owner of a node: by numeric id or by name (resolved in the target's passwd/group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOwner {
    /// Numeric uid/gid.
    pub id: Option<i64>,
    /// Name looked up in the target's `/etc/passwd` or `/etc/group`.
    pub name: Option<String>,
}

/// Fields shared by files, directories and links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Absolute path inside the target root (merge key shared by files, directories, links).
    pub path: String,
    /// Remove whatever exists at `path` first (default false).
    pub overwrite: Option<bool>,
    /// Owning user.
    pub user: NodeOwner,
    /// Owning group.
    pub group: NodeOwner,
}

/// `storage.files` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct File {
    /// Path, overwrite and ownership.
    pub node: Node,
    /// Contents; absent source means "empty file if missing, keep if present".
    pub contents: Resource,
    /// Fragments appended in order.
    pub append: Vec<Resource>,
    /// Permission bits (decimal in JSON); default 0644 for new files.
    pub mode: Option<i64>,
}

/// `storage.directories` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// Path, overwrite and ownership.
    pub node: Node,
    /// Permission bits; default 0755.
    pub mode: Option<i64>,
}

/// `storage.links` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Path, overwrite and ownership.
    pub node: Node,
    /// What the link points to (required since 3.3).
    pub target: Option<String>,
    /// Hard link instead of a symbolic link.
    pub hard: Option<bool>,
}

/// `storage.disks` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disk {
    /// Block device path (merge key).
    pub device: String,
    /// Partitions to create, match or delete.
    pub partitions: Vec<Partition>,
    /// Wipe the partition table first.
    pub wipe_table: Option<bool>,
}

/// A GPT partition of a [`Disk`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    /// Unique partition GUID.
    pub guid: Option<String>,
    /// GPT partition name.
    pub label: Option<String>,
    /// Partition number; 0 = next free.
    pub number: i64,
    /// Grow/shrink an otherwise matching partition (3.2+).
    pub resize: Option<bool>,
    /// Default true; false deletes it.
    pub should_exist: Option<bool>,
    /// Size in MiB; 0 = largest free block.
    pub size_mib: Option<i64>,
    /// Start in MiB; 0 = start of the largest free block.
    pub start_mib: Option<i64>,
    /// GPT type GUID.
    pub type_guid: Option<String>,
    /// Allow deleting a mismatching partition.
    pub wipe_partition_entry: Option<bool>,
}

impl Partition {
    /// Merge/duplicate key: `number:<n>` when numbered, else `label:<label>`.
    pub fn key(&self) -> String {
        if self.number != 0 {
            format!("number:{}", self.number)
        } else {
            format!("label:{}", self.label.as_deref().unwrap_or(""))
        }
    }
}

/// `storage.filesystems` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filesystem {
    /// Block device (merge key).
    pub device: String,
    /// ext4, btrfs, xfs, vfat, swap, none.
    pub format: Option<String>,
    /// Filesystem label.
    pub label: Option<String>,
    /// Mount options used while provisioning (3.1+).
    pub mount_options: Vec<String>,
    /// mkfs arguments.
    pub options: Vec<String>,
    /// Mount point inside the target root.
    pub path: Option<String>,
    /// Filesystem UUID.
    pub uuid: Option<String>,
    /// Recreate even if a filesystem exists.
    pub wipe_filesystem: Option<bool>,
}

/// `storage.raid` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raid {
    /// Member devices.
    pub devices: Vec<String>,
    /// RAID level.
    pub level: Option<String>,
    /// md device name (merge key).
    pub name: String,
    /// mdadm arguments.
    pub options: Vec<String>,
    /// Number of spares.
    pub spares: Option<i64>,
}

/// `storage.luks` entry (3.2+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Luks {
    /// IBM CEX binding (3.5+).
    pub cex: Cex,
    /// Clevis binding.
    pub clevis: Clevis,
    /// Backing device.
    pub device: Option<String>,
    /// Pass discards through (3.4+).
    pub discard: Option<bool>,
    /// Key material.
    pub key_file: Resource,
    /// LUKS label.
    pub label: Option<String>,
    /// Mapper name (merge key).
    pub name: String,
    /// `cryptsetup luksOpen` options (3.4+).
    pub open_options: Vec<String>,
    /// `cryptsetup luksFormat` options.
    pub options: Vec<String>,
    /// LUKS UUID.
    pub uuid: Option<String>,
    /// Reformat even if a LUKS header exists.
    pub wipe_volume: Option<bool>,
}

/// `luks.cex`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cex {
    /// Use a CEX secure key.
    pub enabled: Option<bool>,
}

/// `luks.clevis`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clevis {
    /// Free-form clevis pin configuration.
    pub custom: ClevisCustom,
    /// Tang servers.
    pub tang: Vec<Tang>,
    /// sss threshold (default 1).
    pub threshold: Option<i64>,
    /// Bind to the TPM2.
    pub tpm2: Option<bool>,
}

/// `luks.clevis.custom`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClevisCustom {
    /// Pin configuration JSON.
    pub config: Option<String>,
    /// The pin needs the network.
    pub needs_network: Option<bool>,
    /// Pin name.
    pub pin: Option<String>,
}

/// A tang server of [`Clevis`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tang {
    /// Signed advertisement JSON (3.4+).
    pub advertisement: Option<String>,
    /// Key thumbprint.
    pub thumbprint: Option<String>,
    /// Server URL (merge key).
    pub url: String,
}

/// `systemd` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Systemd {
    /// `systemd.units`.
    pub units: Vec<Unit>,
}

/// `systemd.units` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    /// Unit file contents.
    pub contents: Option<String>,
    /// Drop-ins under `<name>.d/`.
    pub dropins: Vec<Dropin>,
    /// `Some(true)` enable, `Some(false)` disable, `None` leave alone.
    pub enabled: Option<bool>,
    /// Mask (symlink to /dev/null) or unmask.
    pub mask: Option<bool>,
    /// Unit name (merge key).
    pub name: String,
}

/// A drop-in of a [`Unit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropin {
    /// Drop-in contents.
    pub contents: Option<String>,
    /// File name ending in `.conf` (merge key).
    pub name: String,
}

/// `passwd` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passwd {
    /// `passwd.groups`.
    pub groups: Vec<PasswdGroup>,
    /// `passwd.users`.
    pub users: Vec<PasswdUser>,
}

/// `passwd.users` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswdUser {
    /// GECOS comment.
    pub gecos: Option<String>,
    /// Supplementary groups.
    pub groups: Vec<String>,
    /// Home directory (default `/home/<name>`).
    pub home_dir: Option<String>,
    /// User name (merge key).
    pub name: String,
    /// Do not create the home directory.
    pub no_create_home: Option<bool>,
    /// Do not add to lastlog/faillog.
    pub no_log_init: Option<bool>,
    /// Do not create a group named after the user.
    pub no_user_group: Option<bool>,
    /// crypt(3) hash for /etc/shadow.
    pub password_hash: Option<String>,
    /// Primary group name or gid.
    pub primary_group: Option<String>,
    /// Login shell.
    pub shell: Option<String>,
    /// Default true; false deletes the user (3.2+).
    pub should_exist: Option<bool>,
    /// SSH public keys.
    pub ssh_authorized_keys: Vec<String>,
    /// Allocate from the system uid range.
    pub system: Option<bool>,
    /// Numeric uid.
    pub uid: Option<i64>,
}

/// `passwd.groups` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswdGroup {
    /// Numeric gid.
    pub gid: Option<i64>,
    /// Group name (merge key).
    pub name: String,
    /// crypt(3) hash for /etc/gshadow.
    pub password_hash: Option<String>,
    /// Default true; false deletes the group (3.2+).
    pub should_exist: Option<bool>,
    /// Allocate from the system gid range.
    pub system: Option<bool>,
}

/// `kernelArguments` (3.3+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArguments {
    /// Arguments that must be present.
    pub should_exist: Vec<String>,
    /// Arguments that must be absent.
    pub should_not_exist: Vec<String>,
}
