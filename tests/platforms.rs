//! Issue 13: first boots on the platforms Flatcar users run on, each in a VM that finds its
//! Ignition config the way that platform provides it. The services are fakes on the host's
//! loopback (`fake_web`), reached from the guest only through `guestfwd` relays at the
//! platform's well-known address; nothing else is reachable (`restrict=on`).
//!
//! - `metal`: `ignition.config.url=` over HTTP; the config trusts a test CA
//!   (`ignition.security.tls.certificateAuthorities`), merges a second config over HTTPS and
//!   writes a file from HTTPS with `verification.hash`. The first boot gets tampered contents:
//!   it stops in the emergency shell with the reason (the file's URL, the hash mismatch) on the
//!   console and keeps the first-boot flag; the server is fixed, the machine rebooted from the
//!   shell, and the next boot provisions and logs in.
//! - `aws` (IMDSv2 token), `gcp` (`Metadata-Flavor: Google`), `digitalocean` at
//!   `169.254.169.254:80`, and `openstack` from a config drive: each boot provisions user data
//!   plus the service's hostname and ssh key in the initramfs; the fakes check the headers a
//!   real service demands. The AWS machine boots on to its login and shows the hostname and the
//!   key applied; the others stop once `/init` has applied the config (the rest of a boot is
//!   the same for every platform and covered by the other VM tests).
//! - `qemu` (fw_cfg) is the platform of every other VM test.

mod fake_web;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fake_web::{FakeWeb, Rules};
use serde_json::json;
use sha2::{Digest, Sha512};
use wellcar_test_support::pki::TestPki;
use wellcar_test_support::tools;
use wellcar_test_support::vm::{logged_in, shell_status, tail, BOOT_TIMEOUT};
use wellcar_vmtests::{
    chain, image_v1, machine, test_dir, vm_slot, Firmware, Machine, MachineConfig,
};

/// Where the metal test's servers appear to the guest.
const CONFIG_SERVER: &str = "10.0.2.100:80";
const TLS_SERVER_IP: &str = "10.0.2.101";
/// The cloud platforms' metadata address, inside the user network `169.254.0.0/16`
/// (`wellcar_vm::LINK_LOCAL_NETWORK`).
const METADATA: &str = "169.254.169.254:80";

fn ok(vm: &mut Machine, command: &str) -> String {
    match shell_status(vm, command) {
        Ok((out, 0)) => out,
        Ok((out, rc)) => panic!("{command}: exit {rc}\n{out}\n{}", tail(vm)),
        Err(e) => panic!("{e}\n{}", tail(vm)),
    }
}

fn data_url(text: &str) -> String {
    use base64::Engine as _;
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

/// An ssh public key made by `ssh-keygen` in `dir`.
fn public_key(dir: &Path, comment: &str) -> String {
    let key = dir.join(format!("id-{comment}"));
    tools::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&key),
    );
    std::fs::read_to_string(key.with_extension("pub"))
        .expect("reading the public key")
        .trim()
        .to_owned()
}

/// A fresh state directory (overlay, console log) for machine `name`, kept for inspection.
fn state_dir(name: &str) -> std::path::PathBuf {
    let dir = test_dir().join("platforms").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Waits for `/init` to finish provisioning, from console byte `from`, and prints how long
/// the provisioning step and the network for it took (`/init`'s own step timings).
fn provisioned(vm: &mut Machine, from: usize, what: &str) -> usize {
    let done = vm
        .wait_for_from(from, "wellcar-init: ignition done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {}\n{}", chain(&e), tail(vm)));
    // The step's line ends with its start time, `(t+… ms)`.
    let end = vm
        .wait_for_from(done, " ms)", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {}\n{}", chain(&e), tail(vm)));
    let console = vm.console();
    let line_at = |at: usize| console[at..].lines().next().unwrap_or("").trim().to_owned();
    let network = console[from..done]
        .rfind("wellcar-init: network: ")
        .map(|at| line_at(from + at))
        .unwrap_or_else(|| "no network".to_owned());
    let step = console[..end]
        .rfind("wellcar-init: ignition done")
        .map(line_at)
        .unwrap_or_default();
    eprintln!("{what}: {step} [{network}]");
    done
}

#[test]
fn metal_config_url_with_https_merge_and_a_hash_failure_then_fixed() {
    let b = image_v1();
    let pki = TestPki::generate("wellcar platform test CA", &[TLS_SERVER_IP]).expect("test CA");
    let config_server = FakeWeb::start(Rules::Open, None);
    let tls_server = FakeWeb::start(Rules::Open, Some(&pki));

    let remote = "contents from the https server\n";
    let config = json!({
        "ignition": {
            "version": "3.4.0",
            "config": {"merge": [{"source": format!("https://{TLS_SERVER_IP}/merge.ign")}]},
            "security": {"tls": {"certificateAuthorities": [{"source": data_url(&pki.ca_pem)}]}}
        },
        "storage": {"files": [{
            "path": "/etc/wellcar-remote.txt",
            "mode": 0o644,
            "contents": {
                "source": format!("https://{TLS_SERVER_IP}/remote.txt"),
                "verification": {"hash": format!("sha512-{}", sha512_hex(remote.as_bytes()))}
            }
        }]}
    });
    let merged = json!({
        "ignition": {"version": "3.4.0"},
        "storage": {"files": [{
            "path": "/etc/wellcar-merged.txt",
            "mode": 0o644,
            "contents": {"source": "data:,merged%20over%20https%0A"}
        }]}
    });
    config_server.route("/config.ign", 200, config.to_string());
    tls_server.route("/merge.ign", 200, merged.to_string());
    tls_server.route("/remote.txt", 200, "tampered on the way\n");

    let _slot = vm_slot();
    let mut cfg = machine(&b, Firmware::Bios);
    cfg.state_dir = Some(state_dir("metal"));
    cfg.guest_relays = vec![
        (CONFIG_SERVER.to_owned(), config_server.port()),
        (format!("{TLS_SERVER_IP}:443"), tls_server.port()),
    ];
    cfg.kernel_args = vec![
        "ignition.platform.id=metal".to_owned(),
        format!("ignition.config.url=http://{CONFIG_SERVER}/config.ign"),
    ];
    let mut vm = Machine::spawn(&cfg).expect("starting the machine");

    // First boot: the file's contents fail verification.hash.
    let failed = vm
        .wait_for("FIRST BOOT PROVISIONING FAILED", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), tail(&vm)));
    let at = vm
        .wait_for_from(failed, "Starting an emergency shell", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), tail(&vm)));
    let report = vm.console()[failed..at].to_string();
    for expected in [
        "failed: applying the Ignition config",
        &format!("source: http://{CONFIG_SERVER}/config.ign"),
        &format!("hash mismatch for https://{TLS_SERVER_IP}/remote.txt"),
    ] {
        assert!(
            report.contains(expected),
            "the report lacks {expected:?}:\n{report}"
        );
    }
    assert!(
        !vm.console()[at..].contains("Rebooting in"),
        "{}",
        tail(&vm)
    );
    // The emergency shell answers on the console and has the report; the file was not written.
    // Nothing of the config was applied: neither the failed file nor the merged one.
    let shell = emergency_command(
        &mut vm,
        at,
        "cat /run/wellcar-init/failure.txt; ls /etc/wellcar-remote.txt /etc/wellcar-merged.txt",
    );
    assert!(shell.contains("hash mismatch"), "{shell}");
    for absent in ["/etc/wellcar-remote.txt", "/etc/wellcar-merged.txt"] {
        assert!(
            shell.contains(&format!("cannot access '{absent}': No such file")),
            "{absent} was written:\n{shell}"
        );
    }

    // Fix the server and reboot from the shell: the kept first-boot flag provisions again.
    tls_server.route("/remote.txt", 200, remote);
    let before = vm.console().len();
    vm.send("echo b > /proc/sysrq-trigger\n").expect("typing");
    let detected = vm
        .wait_for_from(before, "wellcar.first_boot=detected", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), tail(&vm)));
    let done = provisioned(&mut vm, detected, "metal, fixed");
    // Public HTTPS would be checked against the verified /usr's CA bundle.
    assert!(
        vm.console()[detected..done].contains("HTTPS trusts the image's CA bundle"),
        "{}",
        tail(&vm)
    );
    logged_in(&mut vm, done);
    let files = ok(
        &mut vm,
        "cat /etc/wellcar-remote.txt /etc/wellcar-merged.txt",
    );
    assert!(
        files.contains("contents from the https server") && files.contains("merged over https"),
        "{files}"
    );
    // Both boots asked for the config; the HTTPS server served the merge and the file.
    assert_eq!(config_server.requests_for("/config.ign").len(), 2);
    assert!(tls_server
        .requests_for("/merge.ign")
        .iter()
        .any(|s| s.status == 200));
    assert!(tls_server
        .requests_for("/remote.txt")
        .iter()
        .any(|s| s.status == 200));
}

/// Runs `command` in the emergency shell that started at console byte `from`, typing it again
/// until the shell answers (the prompt has no fixed text: it is the root's bash profile).
fn emergency_command(vm: &mut Machine, from: usize, command: &str) -> String {
    let mut seen = from;
    for attempt in 0..12 {
        let marker = format!("@done-{attempt}-{}@", 6 * 7);
        vm.send(&format!("{command}; echo @done-{attempt}-$((6*7))@\n"))
            .expect("typing");
        if let Ok(end) = vm.wait_for_from(seen, &marker, Duration::from_secs(10)) {
            return vm.console()[from..end].to_string();
        }
        seen = vm.console().len();
    }
    panic!("the emergency shell never answered\n{}", tail(vm));
}

/// One cloud platform's first boot.
struct Cloud {
    id: &'static str,
    rules: Rules,
    /// Routes of the metadata service: (path, body).
    routes: Vec<(String, String)>,
    /// A config drive instead of a metadata service.
    config_drive: bool,
}

fn user_data(id: &str) -> String {
    json!({
        "ignition": {"version": "3.4.0"},
        "storage": {"files": [{
            "path": "/etc/wellcar-platform",
            "mode": 0o644,
            "contents": {"source": format!("data:,{id}%0A")}
        }]}
    })
    .to_string()
}

fn clouds(key: &str) -> Vec<Cloud> {
    let host = |id: &str| format!("{id}-host");
    let aws = "/2009-04-04";
    let gcp = "/computeMetadata/v1";
    vec![
        Cloud {
            id: "aws",
            rules: Rules::AwsImdsV2,
            routes: vec![
                (format!("{aws}/user-data"), user_data("aws")),
                (format!("{aws}/meta-data/hostname"), host("aws")),
                (format!("{aws}/meta-data/public-keys"), "0=test-key".into()),
                (
                    format!("{aws}/meta-data/public-keys/0/openssh-key"),
                    key.into(),
                ),
            ],
            config_drive: false,
        },
        Cloud {
            id: "gcp",
            rules: Rules::Gcp,
            routes: vec![
                (
                    format!("{gcp}/instance/attributes/user-data"),
                    user_data("gcp"),
                ),
                (format!("{gcp}/instance/hostname"), host("gcp")),
                (
                    format!("{gcp}/instance/attributes/ssh-keys"),
                    format!("core:{key}"),
                ),
            ],
            config_drive: false,
        },
        Cloud {
            id: "digitalocean",
            rules: Rules::Open,
            routes: vec![
                ("/metadata/v1/user-data".into(), user_data("digitalocean")),
                (
                    "/metadata/v1.json".into(),
                    json!({"hostname": host("digitalocean"), "public_keys": [key]}).to_string(),
                ),
            ],
            config_drive: false,
        },
        Cloud {
            id: "openstack",
            rules: Rules::Open,
            routes: vec![
                ("openstack/latest/user_data".into(), user_data("openstack")),
                (
                    "openstack/latest/meta_data.json".into(),
                    json!({"hostname": host("openstack"), "public_keys": {"test-key": key}})
                        .to_string(),
                ),
            ],
            config_drive: true,
        },
    ]
}

#[test]
fn cloud_platforms_provision_from_their_metadata() {
    let b = image_v1();
    let scratch = tempfile::tempdir().expect("temp dir");
    let key = public_key(scratch.path(), "platform-test");
    for cloud in clouds(&key) {
        let service = FakeWeb::start(cloud.rules, None);
        let mut cfg: MachineConfig = machine(&b, Firmware::Bios);
        cfg.kernel_args = vec![format!("ignition.platform.id={}", cloud.id)];
        cfg.state_dir = Some(state_dir(cloud.id));
        if cloud.config_drive {
            let drive = scratch.path().join(cloud.id);
            for (path, body) in &cloud.routes {
                let file = drive.join(path);
                std::fs::create_dir_all(file.parent().expect("a parent")).expect("config drive");
                std::fs::write(&file, body).expect("config drive file");
            }
            cfg.config_drive = Some(drive);
        } else {
            for (path, body) in &cloud.routes {
                service.route(path, 200, body.as_str());
            }
            cfg.network = Some(wellcar_vm::LINK_LOCAL_NETWORK.to_owned());
            cfg.guest_relays = vec![(METADATA.to_owned(), service.port())];
        }

        let _slot = vm_slot();
        let mut vm = Machine::spawn(&cfg).expect("starting the machine");
        let done = provisioned(&mut vm, 0, cloud.id);
        let boot = vm.console()[..done].to_string();
        for expected in [
            format!("platform {};", cloud.id),
            format!(
                "{} metadata: hostname Some(\"{}-host\"), 1 ssh key(s) for core",
                cloud.id, cloud.id
            ),
            "Ignition config from".to_owned(),
        ] {
            assert!(
                boot.contains(&expected),
                "{}: the boot log lacks {expected:?}\n{}",
                cloud.id,
                tail(&vm)
            );
        }
        check_requests(&cloud, &service);
        if cloud.id == "aws" {
            logged_in(&mut vm, done);
            let applied = ok(
                &mut vm,
                "hostname; cat /etc/wellcar-platform; cat /home/core/.ssh/authorized_keys.d/* /home/core/.ssh/authorized_keys 2>/dev/null",
            );
            assert!(applied.contains("aws-host"), "{applied}");
            assert!(
                applied.contains("aws\n") || applied.contains("aws\r\n"),
                "{applied}"
            );
            let key_body = key.split_whitespace().nth(1).expect("key body");
            assert!(applied.contains(key_body), "{applied}");
        }
        vm.kill();
    }
}

/// The guest asked the way the platform documents (the fakes refuse anything else, so a
/// refusal would already have failed the boot; this names what was sent).
fn check_requests(cloud: &Cloud, service: &FakeWeb) {
    let requests = service.requests();
    match cloud.id {
        "aws" => {
            let token = requests
                .iter()
                .find(|s| s.path == "/latest/api/token")
                .expect("an IMDSv2 token request");
            assert_eq!(token.method, "PUT", "{requests:?}");
            assert!(token
                .header("x-aws-ec2-metadata-token-ttl-seconds")
                .is_some());
            let data = service.requests_for("/2009-04-04/user-data");
            assert!(
                data.iter().any(|s| s.status == 200
                    && s.header("x-aws-ec2-metadata-token") == Some(fake_web::AWS_TOKEN)),
                "{requests:?}"
            );
        }
        "gcp" => {
            assert!(!requests.is_empty());
            assert!(
                requests
                    .iter()
                    .all(|s| s.header("metadata-flavor") == Some("Google") && s.status != 403),
                "{requests:?}"
            );
        }
        "digitalocean" => {
            assert!(
                service
                    .requests_for("/metadata/v1/user-data")
                    .iter()
                    .any(|s| s.status == 200),
                "{requests:?}"
            );
        }
        // The config drive needs no network: nothing may have been asked.
        _ => assert!(requests.is_empty(), "{requests:?}"),
    }
}
