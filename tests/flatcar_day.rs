//! "A Flatcar user's day" (issue 15): commands from Flatcar's documentation, run unchanged over
//! ssh as `core` on a provisioned machine, each output and exit status checked against what the
//! documentation says. Part of the first-boot test in `boot.rs`, which has the ssh key and the
//! booted machine already.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use wellcar_test_support::tools::{self, run};

/// The tag `docker load` reports for the image [`busybox_image`] writes.
pub const BUSYBOX_TAG: &str = "busybox:wellcar-test";

/// Writes a `docker save` tarball (manifest.json, an image config, one layer) of the host's
/// static busybox with `sh` and `echo` links, tagged
/// [`BUSYBOX_TAG`]: an image `docker load` takes without any registry.
pub fn busybox_image(dir: &Path) -> PathBuf {
    // Debian's busybox-static (the e2e workload image uses the same file).
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: install busybox-static"
    );
    let layer_root = dir.join("layer-root");
    let bin = layer_root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let image = dir.join("image");
    std::fs::create_dir_all(image.join("layer")).unwrap();
    let layer = image.join("layer/layer.tar");
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&layer_root)
        .arg("-cf")
        .arg(&layer)
        .arg("bin"));
    let diff_id = hex::encode(Sha256::digest(std::fs::read(&layer).unwrap()));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    let config_text = config.to_string();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(&config_text)));
    std::fs::write(image.join(&config_name), config_text).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [BUSYBOX_TAG],
        "Layers": ["layer/layer.tar"],
    }]);
    std::fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
    let tarball = dir.join("busybox.tar");
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&image)
        .arg("-cf")
        .arg(&tarball)
        .args(["manifest.json", &config_name, "layer"]));
    tarball
}

/// The machine as `core` reaches it over ssh with the Ignition key.
pub struct CoreSsh<'a> {
    /// The forwarded ssh port on the host.
    pub port: u16,
    /// The private key whose public half Ignition installed.
    pub key: &'a Path,
}

impl CoreSsh<'_> {
    /// Runs `command` as core; returns its output whatever the exit status.
    pub fn output(&self, command: &str) -> Output {
        tools::output(wellcar_vm::core_ssh(self.port, self.key, 60).arg(command))
    }

    /// Runs `command` as core and returns its stdout; panics with stderr unless it exits 0.
    pub fn ok(&self, command: &str) -> String {
        let out = self.output(command);
        assert!(
            out.status.success(),
            "`{command}` as core failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies a host file to `remote` on the machine.
    pub fn copy(&self, local: &Path, remote: &str) {
        let out = tools::output(
            Command::new("scp")
                .args(["-o", "StrictHostKeyChecking=no"])
                .args(["-o", "UserKnownHostsFile=/dev/null"])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=60", "-i"])
                .arg(self.key)
                .args(["-P", &self.port.to_string()])
                .arg(local)
                .arg(format!("core@127.0.0.1:{remote}")),
        );
        assert!(
            out.status.success(),
            "scp {} failed: {}",
            local.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Flatcar's documented commands, run as core; `version` is the booted build's.
pub fn flatcar_users_day(ssh: &CoreSsh, version: &str, scratch: &Path) {
    // The release file update_engine and scripts read (Flatcar docs: "cat /usr/share/flatcar/release").
    let release = ssh.ok("cat /usr/share/flatcar/release");
    assert!(
        release.contains(&format!("FLATCAR_RELEASE_VERSION={version}\n"))
            && release.contains("FLATCAR_RELEASE_BOARD=amd64-usr\n")
            && release.contains("FLATCAR_RELEASE_APPID={"),
        "{release}"
    );
    // Time zones exist for the reboot window and TZ=.
    let berlin = ssh.ok("TZ=Europe/Berlin date -d @0 +%H:%M");
    assert_eq!(berlin.trim(), "01:00", "zoneinfo: {berlin}");

    // Docker, socket-activated, usable by core through the docker group (gid 233 as on Flatcar).
    let group = ssh.ok("getent group docker; id -nG");
    assert!(group.starts_with("docker:x:233:"), "{group}");
    assert!(
        group
            .lines()
            .nth(1)
            .unwrap_or("")
            .split(' ')
            .any(|g| g == "docker"),
        "{group}"
    );
    let tarball = busybox_image(scratch);
    ssh.copy(&tarball, "/tmp/busybox.tar");
    let loaded = ssh.ok("docker load -i /tmp/busybox.tar");
    assert!(
        loaded.contains(&format!("Loaded image: {BUSYBOX_TAG}")),
        "{loaded}"
    );
    let hello = ssh.ok(&format!(
        "docker run --rm {BUSYBOX_TAG} echo hello-from-docker"
    ));
    assert_eq!(hello.trim(), "hello-from-docker");
    let sockets = ssh.ok("systemctl is-enabled docker.socket; systemctl is-active docker.service");
    assert_eq!(
        sockets, "enabled\nactive\n",
        "docker.service started by its socket"
    );

    // update_engine's unit name: a drop-in reaches the agent, and masking stops it.
    let agent_environment = "sudo cat /proc/$(systemctl show -p MainPID --value update-engine.service)/environ | tr '\\0' '\\n'";
    ssh.ok("sudo mkdir -p /etc/systemd/system/update-engine.service.d && printf '[Service]\\nEnvironment=HTTPS_PROXY=http://proxy.example:3128\\n' | sudo tee /etc/systemd/system/update-engine.service.d/proxy.conf && sudo systemctl daemon-reload && sudo systemctl restart update-engine.service");
    let environment = ssh.ok(agent_environment);
    assert!(
        environment.contains("HTTPS_PROXY=http://proxy.example:3128"),
        "the drop-in did not reach the agent: {environment}"
    );
    let masked = ssh.output(
        "sudo systemctl mask --now update-engine.service; systemctl is-enabled update-engine.service; systemctl is-active update-engine.service wellcar-update-agent.service",
    );
    let masked_out = String::from_utf8_lossy(&masked.stdout);
    assert_eq!(
        masked_out,
        "masked\ninactive\ninactive\n",
        "mask --now stops the agent under both names: {}",
        String::from_utf8_lossy(&masked.stderr)
    );
    let unmasked = ssh.ok("sudo systemctl unmask update-engine.service && sudo systemctl start update-engine.service && systemctl is-active update-engine.service");
    assert_eq!(unmasked.trim(), "active");

    // locksmith's unit name: the reboot manager runs beside the agent, and masking it (what
    // Flatcar's docs say to turn automatic reboots off) stops it.
    let locksmithd =
        ssh.ok("systemctl is-enabled locksmithd.service; systemctl is-active locksmithd.service");
    assert_eq!(locksmithd, "enabled\nactive\n", "locksmithd.service");
    let masked = ssh.output(
        "sudo systemctl mask --now locksmithd.service; systemctl is-enabled locksmithd.service; systemctl is-active locksmithd.service",
    );
    assert_eq!(
        String::from_utf8_lossy(&masked.stdout),
        "masked\ninactive\n",
        "mask --now stops locksmithd: {}",
        String::from_utf8_lossy(&masked.stderr)
    );
    let unmasked = ssh.ok("sudo systemctl unmask locksmithd.service && sudo systemctl start locksmithd.service && systemctl is-active locksmithd.service");
    assert_eq!(unmasked.trim(), "active");
    // A drop-in's environment reaches it: REBOOT_STRATEGY=off makes it exit, as locksmith.
    let off = ssh.output("sudo mkdir -p /etc/systemd/system/locksmithd.service.d && printf '[Service]\\nEnvironment=REBOOT_STRATEGY=off\\n' | sudo tee /etc/systemd/system/locksmithd.service.d/off.conf >/dev/null && sudo systemctl daemon-reload && sudo systemctl restart locksmithd.service; timeout 60 sh -c 'while systemctl is-active -q locksmithd.service; do sleep 0.2; done'; systemctl show -p ActiveState --value locksmithd.service; systemctl show -p Result --value locksmithd.service; timeout 30 sh -c 'until sudo journalctl -b -u locksmithd.service --no-pager -o cat | grep -q \"reboot strategy is .off., shutting down\"; do sleep 0.2; done' && echo logged");
    assert_eq!(
        String::from_utf8_lossy(&off.stdout),
        "inactive\nsuccess\nlogged\n",
        "REBOOT_STRATEGY=off from a drop-in: {}",
        String::from_utf8_lossy(&off.stderr)
    );
    let back = ssh.ok("sudo rm /etc/systemd/system/locksmithd.service.d/off.conf && sudo systemctl daemon-reload && sudo systemctl start locksmithd.service && systemctl is-active locksmithd.service");
    assert_eq!(back.trim(), "active");

    // update_engine_client as core (Flatcar docs: "update_engine_client -status").
    let status = ssh.ok("update_engine_client -status");
    for key in [
        "LAST_CHECKED_TIME=",
        "PROGRESS=",
        "CURRENT_OP=",
        "NEW_VERSION=",
        "NEW_SIZE=",
    ] {
        assert!(status.contains(key), "{key} missing: {status}");
    }

    let reset = ssh.output("update_engine_client -reset_status");
    assert!(
        reset.status.success(),
        "-reset_status when idle exits 0: {}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let check = ssh.output("update_engine_client -check_for_update");
    assert!(
        check.status.success(),
        "-check_for_update exits 0: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let unknown = ssh.output("update_engine_client -no_such_flag");
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "gflags' answer to an unknown flag"
    );
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("ERROR: unknown command line flag 'no_such_flag'"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // update_engine's D-Bus interface, as locksmith-, FLUO- and kured-style tools see it.
    let interface = ssh.ok(
        "sudo busctl introspect com.coreos.update1 /com/coreos/update1 com.coreos.update1.Manager",
    );
    for member in ["AttemptUpdate", "GetStatus", "ResetStatus", "StatusUpdate"] {
        assert!(interface.contains(member), "{member} missing: {interface}");
    }
    let status_call = ssh.ok(
        "busctl call com.coreos.update1 /com/coreos/update1 com.coreos.update1.Manager GetStatus",
    );
    assert!(
        status_call.starts_with("xdssx ") && status_call.contains("UPDATE_STATUS_"),
        "{status_call}"
    );

    // The OEM partition at /oem, with the platform's grub.cfg.
    let oem = ssh.ok("findmnt -no SOURCE,FSTYPE /oem; cat /oem/grub.cfg");
    assert!(oem.contains("ext4") && oem.contains("oem_id"), "{oem}");
}

/// The rest of the day, after the machine's second boot: `flatcar-update --to-payload` with the
/// agent masked, unmasking and starting it and refusing the booted version's own payload by
/// name (and `-A` disabling updates as Flatcar's does),
/// then `flatcar-reset` keeping named paths and the machine id, Flatcar's
/// `touch /boot/flatcar/first_boot`, and one reboot: the initramfs deletes the rest of ROOT and
/// Ignition runs again.
pub fn flatcar_update_and_reset(
    vm: &mut wellcar_vmtests::Machine,
    ssh: &CoreSsh,
    build: &wellcar_vmtests::Built,
    scratch: &Path,
) {
    use wellcar_test_support::vm::BOOT_TIMEOUT;
    let version = &build.manifest.version;
    // Only the payload's head goes over: the agent refuses before it reads any further (the
    // whole file is ~230 MiB; installing one is covered by the agent's tests on real slots).
    let payload = build.path(
        build
            .manifest
            .payload
            .as_deref()
            .expect("the build's payload"),
    );
    let head = scratch.join("flatcar_production_update.gz");
    {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        std::fs::File::open(&payload)
            .unwrap()
            .take(4 << 20)
            .read_to_end(&mut bytes)
            .unwrap();
        std::fs::write(&head, bytes).unwrap();
    }
    ssh.copy(&head, "/tmp/flatcar_production_update.gz");
    // Updates turned off the Flatcar way first: flatcar-update turns the agent back on.
    ssh.ok("sudo systemctl mask --now update-engine.service");
    let refused =
        ssh.output("sudo flatcar-update --to-payload /tmp/flatcar_production_update.gz -A");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "older or same version: the payload is {version}, the booted version is {version}"
        )),
        "{stderr}"
    );
    let conf = ssh.ok("cat /etc/flatcar/update.conf");
    assert!(conf.ends_with("SERVER=disabled\n"), "-A: {conf}");
    assert_eq!(
        ssh.ok(
            "systemctl is-enabled update-engine.service; systemctl is-active update-engine.service"
        ),
        "enabled\nactive\n",
        "flatcar-update unmasks and starts the agent"
    );

    // flatcar-reset as Flatcar documents it, plus the first-boot flag by hand.
    ssh.ok("sudo mkdir -p /var/log/reset-keep && echo kept | sudo tee /var/log/reset-keep/probe && echo gone | sudo tee /etc/reset-delete-probe");
    let staged = ssh.ok(
        "sudo flatcar-reset --keep-machine-id --keep-paths '/etc/ssh/ssh_host_.*' /var/log/reset-keep && sudo touch /boot/flatcar/first_boot",
    );
    assert!(staged.contains("Staged OS reset"), "{staged}");
    let preview = ssh.ok("sudo flatcar-reset --preview-keep");
    assert!(preview.contains("/var/log/reset-keep/probe"), "{preview}");
    let machine_id = ssh.ok("cat /etc/machine-id");

    let before = vm.console().len();
    vm.send("sudo systemctl reboot\n").unwrap();
    for line in [
        "wellcar.first_boot=detected",
        "wellcar-init: os-reset done",
        "wellcar-init: ignition done",
        "wellcar-init: switching root",
    ] {
        vm.wait_for_from(before, line, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{line}: {e}\n{}", vm.console()));
    }
    wellcar_test_support::wait::wait_until("ssh as core after the reset", BOOT_TIMEOUT, || {
        ssh.output("true").status.success().then_some(())
    });
    let after = ssh.ok(
        "cat /var/log/reset-keep/probe; test ! -e /etc/reset-delete-probe && echo probe-deleted; \
         cat /etc/wellcar-test.conf; cat /etc/machine-id; \
         test ! -e /boot/flatcar/first_boot && echo flag-gone; \
         sudo test ! -e /selective-os-reset && echo marker-gone; \
         test -e /etc/flatcar/update.conf || echo update-conf-reset",
    );
    assert_eq!(
        after,
        format!(
            "kept\nprobe-deleted\nprovisioned\n{machine_id}flag-gone\nmarker-gone\nupdate-conf-reset\n"
        ),
        "kept paths and machine id survive, the rest of ROOT is gone, Ignition ran again"
    );
}
