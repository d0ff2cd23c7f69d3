//! Ignition's storage section and kernel arguments on a real machine (issue 16), folded into
//! the first-boot test of `boot.rs`, which adds [`extra_disks`] to the machine and
//! [`add_to_config`] to its config, then calls [`after_first_boot`] and, after its second boot,
//! [`after_second_boot`].
//!
//! The config asks for what a Flatcar user's config does with extra disks:
//! - a kernel argument ([`KERNEL_ARGUMENT`]): `/init` writes it to the OEM `grub.cfg` and reboots
//!   exactly once before provisioning goes on;
//! - `/dev/vdb` (serial `wellcar-docker`) gets a new GPT with two partitions: `docker`, an ext4
//!   filesystem for `/var/lib/docker`, and `secret`, a LUKS2 volume (key from a data URL, discard)
//!   holding an ext4 filesystem for `/srv/secret`;
//! - `/dev/vdc` and `/dev/vdd` get one partition each, `r1a` and `r1b`, mirrored as the RAID 1
//!   `data` holding an ext4 filesystem for `/srv/data`;
//! - a file on each filesystem, written while Ignition has it mounted;
//! - the user's own mount units for all three (Ignition leaves mounting at boot to the user).
//!
//! At every boot the booted system itself must bring the volumes back: systemd-cryptsetup opens
//! `secret` from the `/etc/crypttab` line Ignition wrote, udev's mdadm rules assemble `data`,
//! and the mount units mount them.

use std::path::Path;

use wellcar_test_support::tools;
use wellcar_vm::ExtraDisk;

/// The kernel argument the config asks for.
pub const KERNEL_ARGUMENT: &str = "wellcar.test=karg1";

/// What `/init` logs when it wrote kernel arguments and reboots for them.
const KARGS_REBOOT: &str = "kernelArguments written to the OEM grub.cfg: rebooting once";

/// The LUKS key (32 bytes), given inline as a data URL.
const LUKS_KEY: &str = "wellcar-test-luks-key-0123456789";

/// The blank disks the config partitions: `/dev/vdb` (1 GiB), `/dev/vdc` and `/dev/vdd`
/// (256 MiB each).
pub fn extra_disks() -> Vec<ExtraDisk> {
    vec![
        ExtraDisk::new("wellcar-docker", 1 << 30),
        ExtraDisk::new("wellcar-r1a", 256 << 20),
        ExtraDisk::new("wellcar-r1b", 256 << 20),
    ]
}

fn mount_unit(what: &str, where_: &str, description: &str) -> serde_json::Value {
    let name = format!("{}.mount", where_.trim_start_matches('/').replace('/', "-"));
    serde_json::json!({
        "name": name,
        "enabled": true,
        "contents": format!(
            "[Unit]\nDescription={description}\n[Mount]\nWhat={what}\nWhere={where_}\nType=ext4\n\
             [Install]\nWantedBy=local-fs.target\n"
        ),
    })
}

fn marker(path: &str, text: &str) -> serde_json::Value {
    serde_json::json!({
        "path": path,
        "mode": 0o644,
        "contents": {"source": format!("data:,{text}%0A")},
    })
}

/// Adds the kernel argument, disks, RAID, LUKS volume, filesystems, files on them and mount
/// units to `config` (a spec 3.4.0 config whose `storage` and `systemd.units` may already hold
/// entries).
pub fn add_to_config(config: &mut serde_json::Value) {
    config["kernelArguments"] = serde_json::json!({"shouldExist": [KERNEL_ARGUMENT]});
    let storage = &mut config["storage"];
    storage["disks"] = serde_json::json!([
        {"device": "/dev/vdb", "wipeTable": true, "partitions": [
            {"number": 1, "label": "docker", "sizeMiB": 512},
            {"number": 2, "label": "secret", "sizeMiB": 0}
        ]},
        {"device": "/dev/vdc", "wipeTable": true, "partitions": [
            {"number": 1, "label": "r1a", "sizeMiB": 0}
        ]},
        {"device": "/dev/vdd", "wipeTable": true, "partitions": [
            {"number": 1, "label": "r1b", "sizeMiB": 0}
        ]}
    ]);
    storage["raid"] = serde_json::json!([{
        "name": "data",
        "level": "raid1",
        "devices": ["/dev/disk/by-partlabel/r1a", "/dev/disk/by-partlabel/r1b"],
        // Both halves are blank: no resync competing with the boot for the emulated CPU.
        "options": ["--assume-clean"]
    }]);
    storage["luks"] = serde_json::json!([{
        "name": "secret",
        "device": "/dev/disk/by-partlabel/secret",
        "keyFile": {"source": format!("data:,{LUKS_KEY}")},
        "discard": true,
        // PBKDF2 at its minimum: Argon2's benchmark and memory cost take seconds and half the
        // guest's RAM under emulation, at format and again at every unlock.
        "options": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    }]);
    storage["filesystems"] = serde_json::json!([
        {"device": "/dev/disk/by-partlabel/docker", "format": "ext4", "label": "docker",
         "path": "/var/lib/docker", "wipeFilesystem": true},
        {"device": "/dev/mapper/secret", "format": "ext4", "label": "secret",
         "path": "/srv/secret", "wipeFilesystem": true},
        {"device": "/dev/md/data", "format": "ext4", "label": "data",
         "path": "/srv/data", "wipeFilesystem": true}
    ]);
    let files = storage["files"]
        .as_array_mut()
        .expect("storage.files is a list");
    files.push(marker("/var/lib/docker/wellcar-marker", "on-docker-disk"));
    files.push(marker("/srv/secret/wellcar-marker", "on-luks"));
    files.push(marker("/srv/data/wellcar-marker", "on-raid1"));
    let units = config["systemd"]["units"]
        .as_array_mut()
        .expect("systemd.units is a list");
    units.push(mount_unit(
        "/dev/disk/by-label/docker",
        "/var/lib/docker",
        "Docker's data on the second disk",
    ));
    units.push(mount_unit(
        "/dev/mapper/secret",
        "/srv/secret",
        "The LUKS volume",
    ));
    units.push(mount_unit("/dev/md/data", "/srv/data", "The RAID 1"));
}

/// `core` over ssh.
pub struct Ssh<'a> {
    /// The forwarded ssh port on the host.
    pub port: u16,
    /// The private key Ignition authorized.
    pub key: &'a Path,
}

impl Ssh<'_> {
    /// Runs `command`; panics with its output unless it exits 0. Returns stdout.
    fn ok(&self, command: &str) -> String {
        let out = tools::output(wellcar_vm::core_ssh(self.port, self.key, 60).arg(command));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{command}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// The first boot's console (`console`, from power-on to the login): `/init` rebooted exactly
/// once for the kernel argument, then provisioned; the volumes are in place.
pub fn after_first_boot(ssh: &Ssh, console: &str) {
    let reboots = console.matches(KARGS_REBOOT).count();
    assert_eq!(reboots, 1, "reboots for kernelArguments:\n{console}");
    let after = &console[console.find(KARGS_REBOOT).unwrap()..];
    assert!(
        after.contains("wellcar.first_boot=detected") && after.contains("ignition done"),
        "provisioning did not go on after the kernelArguments reboot:\n{after}"
    );
    assert!(
        after.contains("storage modules loaded from /usr"),
        "no storage modules loaded:\n{after}"
    );
    // The extra disks carry their serials (udev's by-id links in the booted system).
    let by_id = ssh
        .ok("readlink -f /dev/disk/by-id/virtio-wellcar-docker /dev/disk/by-id/virtio-wellcar-r1a");
    assert_eq!(by_id, "/dev/vdb\n/dev/vdc\n", "{by_id}");
    // The new table on vdb, as configured.
    let table = ssh.ok("lsblk -rno NAME,PARTLABEL,SIZE /dev/vdb");
    assert!(table.contains("vdb1 docker 512M"), "{table}");
    assert!(table.contains("vdb2 secret"), "{table}");
    // Ignition wrote crypttab and the key, 0600 under a 0700 directory.
    let crypttab =
        ssh.ok("sudo cat /etc/crypttab; sudo stat -c '%a %n' /etc/luks /etc/luks/secret");
    assert!(crypttab.contains("secret UUID="), "{crypttab}");
    assert!(
        crypttab.contains("700 /etc/luks\n600 /etc/luks/secret"),
        "{crypttab}"
    );
    let mdadm_conf = ssh.ok("cat /etc/mdadm/mdadm.conf");
    assert!(mdadm_conf.contains("ARRAY /dev/md/data"), "{mdadm_conf}");
    volumes_are_back(ssh);
}

/// The second boot (no provisioning): the volumes come back through the booted system alone,
/// and the kernel argument is still on the command line.
pub fn after_second_boot(ssh: &Ssh) {
    volumes_are_back(ssh);
    // What the boot waited for longest, for the suite's time budget.
    eprintln!(
        "second boot, slowest units:\n{}",
        ssh.ok("systemd-analyze blame --no-pager | head -8; journalctl -b --no-pager -p warning | grep -i 'timed out\\|md\\|crypt' | head -20 || true")
    );
}

/// The checks both boots share.
fn volumes_are_back(ssh: &Ssh) {
    ssh.ok("systemctl is-system-running --wait || true");
    let cmdline = ssh.ok("cat /proc/cmdline");
    assert!(
        cmdline.split_whitespace().any(|a| a == KERNEL_ARGUMENT),
        "{cmdline}"
    );
    // The ext4 partition at /var/lib/docker, mounted by the user's unit, with Ignition's file.
    let docker = ssh.ok(
        "findmnt -no SOURCE,FSTYPE /var/lib/docker; systemctl is-active var-lib-docker.mount; \
         sudo cat /var/lib/docker/wellcar-marker",
    );
    assert_eq!(
        docker, "/dev/vdb1 ext4\nactive\non-docker-disk\n",
        "{docker}"
    );
    // The LUKS volume, opened by systemd-cryptsetup from /etc/crypttab at this boot, with the
    // discard flag persisted in its header.
    let luks = ssh.ok(
        "systemctl is-active systemd-cryptsetup@secret.service; lsblk -no TYPE /dev/mapper/secret; \
         sudo cryptsetup status secret; findmnt -no SOURCE,FSTYPE /srv/secret; \
         sudo cat /srv/secret/wellcar-marker",
    );
    assert!(luks.starts_with("active\ncrypt\n"), "{luks}");
    assert!(luks.contains("type:    LUKS2"), "{luks}");
    assert!(luks.contains("device:  /dev/vdb2"), "{luks}");
    assert!(luks.contains("discards"), "{luks}");
    assert!(luks.contains("/dev/mapper/secret ext4\n"), "{luks}");
    assert!(luks.ends_with("on-luks\n"), "{luks}");
    // The RAID 1, assembled by udev's mdadm rules, both halves in sync.
    let raid = ssh.ok(
        "cat /proc/mdstat; findmnt -no MAJ:MIN,FSTYPE /srv/data; sudo cat /srv/data/wellcar-marker",
    );
    let array = raid
        .lines()
        .find(|l| l.starts_with("md"))
        .unwrap_or_else(|| panic!("no array in /proc/mdstat:\n{raid}"));
    assert!(array.contains(": active raid1"), "{raid}");
    assert!(array.contains("vdc1[") && array.contains("vdd1["), "{raid}");
    assert!(raid.contains("[2/2] [UU]"), "{raid}");
    // /srv/data is the array's filesystem (by device number: the mount source is the
    // `/dev/md/data` the unit names).
    let md = array.split_whitespace().next().unwrap();
    let numbers = ssh.ok(&format!("cat /sys/block/{md}/dev; ls -l /dev/md/ || true"));
    let number = numbers.lines().next().unwrap_or_default();
    assert!(
        raid.ends_with(&format!("{number} ext4\non-raid1\n")),
        "{raid}\n{numbers}"
    );
}
