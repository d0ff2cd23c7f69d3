use super::*;
use crate::{parse_config, ParseError};

/// A typical Flatcar 2.x config as the Container Linux Config Transpiler wrote them: a
/// networkd unit with a drop-in, files on the `root` filesystem (one appended), a
/// directory, a link, a unit with the deprecated `enable`, a user, a disk in sectors.
const FLATCAR_2_2: &str = r#"{
  "ignition": {"version": "2.2.0", "config": {"append": [{"source": "data:,%7B%7D", "verification": {}}]}},
  "networkd": {"units": [{"name": "00-eth0.network", "contents": "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.2/24\n",
                          "dropins": [{"name": "mtu.conf", "contents": "[Link]\nMTUBytes=9000\n"}]}]},
  "storage": {
    "disks": [{"device": "/dev/sdb", "wipeTable": true, "partitions": [{"label": "data", "number": 1, "size": 2097152, "start": 2048}]}],
    "filesystems": [{"name": "root", "path": "/sysroot"},
                    {"name": "data", "mount": {"device": "/dev/disk/by-partlabel/data", "format": "ext4", "wipeFilesystem": true}, "path": "/sysroot/var/lib/data"}],
    "files": [{"filesystem": "root", "path": "/etc/hostname", "mode": 420, "contents": {"source": "data:,node1"}},
              {"filesystem": "root", "path": "/etc/motd", "append": true, "mode": 420, "contents": {"source": "data:,hello"}},
              {"filesystem": "data", "path": "/marker", "contents": {"source": "data:,x"}}],
    "directories": [{"filesystem": "root", "path": "/opt/app", "mode": 493}],
    "links": [{"filesystem": "root", "path": "/etc/localtime", "target": "/usr/share/zoneinfo/UTC"}]
  },
  "systemd": {"units": [{"name": "app.service", "enable": true, "contents": "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"},
                        {"name": "off.service", "enable": true, "enabled": false, "contents": "[Service]\nExecStart=/bin/true\n"}]},
  "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA core"], "groups": ["docker"]}]}
}"#;

#[test]
fn flatcar_2_2_config_translates_like_ign_converter() {
    let parsed = parse_config(FLATCAR_2_2.as_bytes()).unwrap();
    let c = &parsed.config;
    assert!(parsed.warnings.iter().all(|w| !w.is_error()));
    // networkd → files under /etc/systemd/network
    let network = c
        .storage
        .files
        .iter()
        .find(|f| f.node.path == "/etc/systemd/network/00-eth0.network")
        .expect("networkd unit became a file");
    assert_eq!(network.mode, Some(0o644));
    assert!(network
        .contents
        .source
        .as_deref()
        .unwrap()
        .starts_with("data:,%5BMatch%5D"));
    assert!(c
        .file_paths()
        .contains(&"/etc/systemd/network/00-eth0.network.d/mtu.conf"));
    // root filesystem: plain paths, 2.x overwrite default
    let hostname = c
        .storage
        .files
        .iter()
        .find(|f| f.node.path == "/etc/hostname")
        .unwrap();
    assert_eq!(hostname.node.overwrite, Some(true));
    // append → append list, overwrite false
    let motd = c
        .storage
        .files
        .iter()
        .find(|f| f.node.path == "/etc/motd")
        .unwrap();
    assert_eq!(motd.node.overwrite, Some(false));
    assert_eq!(motd.append.len(), 1);
    assert!(motd.contents.source.is_none());
    // named filesystem → path prefix; the filesystem gains its path; root is dropped
    assert!(c.file_paths().contains(&"/var/lib/data/marker"));
    assert_eq!(c.storage.filesystems.len(), 1);
    assert_eq!(
        c.storage.filesystems[0].path.as_deref(),
        Some("/var/lib/data")
    );
    // sectors → MiB
    let part = &c.storage.disks[0].partitions[0];
    assert_eq!((part.size_mib, part.start_mib), (Some(1024), Some(1)));
    // append → merge; enable → enabled; explicit enabled:false wins
    assert_eq!(c.ignition.config.merge.len(), 1);
    let app = c
        .systemd
        .units
        .iter()
        .find(|u| u.name == "app.service")
        .unwrap();
    assert_eq!(app.enabled, Some(true));
    let off = c
        .systemd
        .units
        .iter()
        .find(|u| u.name == "off.service")
        .unwrap();
    assert_eq!(off.enabled, Some(false));
    assert_eq!(c.passwd.users[0].groups, ["docker"]);
}

fn errors_of(json: &str) -> Vec<(String, String)> {
    match parse_config(json.as_bytes()) {
        Err(ParseError::Invalid { entries }) => entries
            .into_iter()
            .filter(Entry::is_error)
            .map(|e| (e.path, e.message))
            .collect(),
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn untranslatable_2x_fields_are_errors_naming_their_path() {
    let errors = errors_of(
        r#"{"ignition":{"version":"2.0.0"},"storage":{"filesystems":[{"name":"old","mount":{"device":"/dev/sdb","format":"ext4","create":{"force":true}}}]}}"#,
    );
    assert_eq!(
        errors[0].0, "storage.filesystems.0.mount.create",
        "{errors:?}"
    );

    let errors = errors_of(
        r#"{"ignition":{"version":"2.3.0"},"storage":{"filesystems":[{"name":"data","mount":{"device":"/dev/sdb","format":"ext4"}}],"files":[{"filesystem":"data","path":"/x"}]}}"#,
    );
    assert_eq!(errors[0].0, "storage.files.0.filesystem", "{errors:?}");
    assert!(errors[0].1.contains("\"data\""), "{errors:?}");

    let errors = errors_of(
        r#"{"ignition":{"version":"2.1.0"},"storage":{"disks":[{"device":"/dev/sdb","partitions":[{"number":1,"size":1000}]}]}}"#,
    );
    assert_eq!(
        errors[0].0, "storage.disks.0.partitions.0.size",
        "{errors:?}"
    );

    let errors = errors_of(
        r#"{"ignition":{"version":"2.0.0"},"passwd":{"users":[{"name":"u","create":{"uid":1001}}]}}"#,
    );
    assert_eq!(errors[0].0, "passwd.users.0.create", "{errors:?}");
}

#[test]
fn unknown_2x_keys_are_warnings_and_other_versions_stay_unsupported() {
    let parsed = parse_config(
        br#"{"ignition":{"version":"2.3.0"},"storage":{"files":[{"path":"/a","bogus":1}]}}"#,
    )
    .unwrap();
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.path == "storage.files.0.bogus"),
        "{:?}",
        parsed.warnings
    );
    for v in ["2.4.0", "2.5.0-experimental", "1.0.0"] {
        let json = format!(r#"{{"ignition":{{"version":"{v}"}}}}"#);
        assert!(
            matches!(
                parse_config(json.as_bytes()),
                Err(ParseError::UnsupportedVersion { .. })
            ),
            "{v}"
        );
    }
}

#[test]
fn the_corpus_2x_config_translates() {
    let dir = std::env::var_os("WELLCAR_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    let bytes = std::fs::read(dir.join("ignition/003-version-2_2_0.json"))
        .expect("corpus (set WELLCAR_CORPUS)");
    let parsed = parse_config(&bytes).unwrap();
    assert_eq!(parsed.config.ignition.version, crate::LATEST_SPEC);
}
