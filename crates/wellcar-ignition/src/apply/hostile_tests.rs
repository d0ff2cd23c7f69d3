//! Regression tests for the review's confinement findings: configs and planted symlinks that
//! made the applier delete, read or write outside the target root, or inject account lines.
//! Each plants its trap in a temp root next to an `outside` directory and checks that nothing
//! outside changed, nothing from outside was copied in, and refusals name the JSON path.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use crate::corpus_tests::seed_root;
use crate::model::{PasswdUser, Systemd, Unit};
use crate::{apply, ApplyError, Config};

const SECRET: &str = "host secret: must never be copied into the root";

struct Trap {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn trap() -> Trap {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    seed_root(&root);
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), SECRET).unwrap();
    fs::write(outside.join("secret.json"), r#"{"secret":"host"}"#).unwrap();
    Trap {
        _tmp: tmp,
        root,
        outside,
    }
}

impl Trap {
    fn p(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Plants a symlink at in-root `path` pointing to the host path `target`.
    fn plant(&self, path: &str, target: &std::path::Path) {
        fs::create_dir_all(self.p(path).parent().unwrap()).unwrap();
        symlink(target, self.p(path)).unwrap();
    }

    /// No file anywhere in the root contains the host secret.
    fn assert_no_leak(&self) {
        fn walk(dir: &std::path::Path, leaks: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let ty = e.file_type().unwrap();
                if ty.is_dir() {
                    walk(&e.path(), leaks);
                } else if ty.is_file() {
                    let data = fs::read(e.path()).unwrap();
                    if String::from_utf8_lossy(&data).contains("secret") {
                        leaks.push(e.path());
                    }
                }
            }
        }
        let mut leaks = Vec::new();
        walk(&self.root, &mut leaks);
        assert!(
            leaks.is_empty(),
            "host file copied into the root: {leaks:?}"
        );
        assert_eq!(
            fs::read_to_string(self.outside.join("secret")).unwrap(),
            SECRET
        );
    }
}

fn units(units: Vec<Unit>) -> Config {
    Config {
        systemd: Systemd { units },
        ..Default::default()
    }
}

fn unit(name: &str, enabled: Option<bool>) -> Unit {
    Unit {
        name: name.into(),
        enabled,
        ..Default::default()
    }
}

#[test]
fn unit_name_with_dotdot_and_enabled_false_deletes_nothing_outside() {
    let t = trap();
    fs::create_dir_all(t.p("/etc/systemd/system/multi-user.target.wants")).unwrap();
    // x.wants/../../../../.. is the temp dir holding both the root and `outside`.
    symlink("secret", t.outside.join("victim.service")).unwrap();
    let name = "../../../../../outside/victim.service";
    let err = apply(&units(vec![unit(name, Some(false))]), &t.root).unwrap_err();
    assert!(
        matches!(&err, ApplyError::InvalidField { field, .. } if field == "systemd.units.0.name"),
        "{err}"
    );
    assert!(err.to_string().contains(name), "{err}");
    assert!(fs::symlink_metadata(t.outside.join("victim.service")).is_ok());
}

#[test]
fn planted_wants_symlink_to_outside_is_not_a_wants_directory() {
    let t = trap();
    symlink("secret", t.outside.join("a.service")).unwrap();
    t.plant("/etc/systemd/system/evil.wants", &t.outside);
    apply(&units(vec![unit("a.service", Some(false))]), &t.root).unwrap();
    assert!(
        fs::symlink_metadata(t.outside.join("a.service")).is_ok(),
        "a symlink outside the root was deleted"
    );
}

#[test]
fn planted_symlinked_unit_directory_keeps_links_inside_the_root() {
    let t = trap();
    // /etc/systemd/system itself is a link to the host's `outside`: every write and removal
    // lands in <root>/<host path of outside>, never in `outside`.
    fs::remove_dir_all(t.p("/etc/systemd/system")).unwrap();
    t.plant("/etc/systemd/system", &t.outside);
    symlink("secret", t.outside.join("b.service")).unwrap();
    let mut config = units(vec![unit("b.service", Some(false))]);
    config.systemd.units.push(Unit {
        name: "c.service".into(),
        contents: Some("[Service]\nExecStart=/bin/true\n".into()),
        mask: Some(true),
        ..Default::default()
    });
    apply(&config, &t.root).unwrap();
    let mut names: Vec<_> = fs::read_dir(&t.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b.service", "secret", "secret.json"]);
    let inside = t.root.join(t.outside.strip_prefix("/").unwrap());
    assert!(fs::read_link(inside.join("c.service")).is_ok());
}

#[test]
fn planted_authorized_keys_symlink_does_not_copy_a_host_file() {
    let t = trap();
    t.plant("/home/core/.ssh/authorized_keys", &t.outside.join("secret"));
    let config = Config {
        passwd: crate::model::Passwd {
            users: vec![PasswdUser {
                name: "core".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA key".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    apply(&config, &t.root).unwrap();
    t.assert_no_leak();
    let keys = fs::read_to_string(t.p("/home/core/.ssh/authorized_keys")).unwrap();
    assert!(keys.contains("ssh-ed25519 AAAA key"), "{keys}");
}

#[test]
fn planted_preset_file_symlink_does_not_copy_a_host_file() {
    let t = trap();
    t.plant(
        "/etc/systemd/system-preset/20-ignition.preset",
        &t.outside.join("secret"),
    );
    apply(&units(vec![unit("a.service", Some(true))]), &t.root).unwrap();
    t.assert_no_leak();
    let preset = fs::read_to_string(t.p("/etc/systemd/system-preset/20-ignition.preset")).unwrap();
    assert_eq!(preset, "enable a.service\n");
}

#[test]
fn planted_result_file_symlink_does_not_copy_a_host_file() {
    let t = trap();
    t.plant("/etc/.ignition-result.json", &t.outside.join("secret.json"));
    apply(&Config::default(), &t.root).unwrap();
    t.assert_no_leak();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(t.p("/etc/.ignition-result.json")).unwrap())
            .unwrap();
    assert!(record.get("previousReport").is_none(), "{record}");
    assert!(fs::read_to_string(t.outside.join("secret.json"))
        .unwrap()
        .contains("host"));
}

#[test]
fn result_file_symlink_inside_the_root_is_followed_inside_the_root() {
    let t = trap();
    fs::write(t.p("/etc/previous.json"), r#"{"provisioningDate":"then"}"#).unwrap();
    t.plant(
        "/etc/.ignition-result.json",
        std::path::Path::new("/etc/previous.json"),
    );
    apply(&Config::default(), &t.root).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(t.p("/etc/.ignition-result.json")).unwrap())
            .unwrap();
    assert_eq!(record["previousReport"]["provisioningDate"], "then");
}

#[test]
fn planted_fifo_preset_is_an_error_naming_the_path_not_a_hang() {
    let t = trap();
    fs::create_dir_all(t.p("/etc/systemd/system-preset")).unwrap();
    let dir = fs::File::open(t.p("/etc/systemd/system-preset")).unwrap();
    rustix::fs::mknodat(
        &dir,
        "20-ignition.preset",
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let err = apply(&units(vec![unit("a.service", Some(true))]), &t.root).unwrap_err();
    assert!(err.to_string().contains("20-ignition.preset"), "{err}");
}

#[test]
fn uid0_injection_through_account_fields_is_refused_before_writing() {
    let t = trap();
    let passwd_before = fs::read_to_string(t.p("/etc/passwd")).unwrap();
    let shadow_before = fs::read_to_string(t.p("/etc/shadow")).unwrap();
    type Hostile = fn(&mut PasswdUser);
    let cases: [(&str, Hostile); 4] = [
        ("passwd.users.0.name", |u| {
            u.name = "x:x:0:0::/root:/bin/sh\nevil".into()
        }),
        ("passwd.users.0.gecos", |u| {
            u.gecos = Some("x\nroot2:x:0:0::/root:/bin/sh".into())
        }),
        ("passwd.users.0.passwordHash", |u| {
            u.password_hash = Some("x\nroot2::19000:0:99999:7:::".into())
        }),
        ("passwd.users.0.uid", |u| u.uid = Some(4_294_967_295)),
    ];
    for (field, hostile) in cases {
        let mut user = PasswdUser {
            name: "evil".into(),
            ..Default::default()
        };
        hostile(&mut user);
        let config = Config {
            passwd: crate::model::Passwd {
                users: vec![user],
                ..Default::default()
            },
            ..Default::default()
        };
        let err = apply(&config, &t.root).unwrap_err();
        assert!(
            matches!(&err, ApplyError::InvalidField { field: f, .. } if f == field),
            "{field}: {err}"
        );
        // And the validator refuses the same config with the same path.
        let json = serde_json::json!({
            "ignition": {"version": "3.3.0"},
            "passwd": {"users": [serde_json::to_value(user_json(&config.passwd.users[0])).unwrap()]}
        });
        let refused = crate::parse_config(json.to_string().as_bytes()).unwrap_err();
        assert!(refused.to_string().contains(field), "{refused}");
    }
    assert_eq!(
        fs::read_to_string(t.p("/etc/passwd")).unwrap(),
        passwd_before
    );
    assert_eq!(
        fs::read_to_string(t.p("/etc/shadow")).unwrap(),
        shadow_before
    );
}

fn user_json(u: &PasswdUser) -> serde_json::Value {
    let mut v = serde_json::json!({ "name": u.name });
    if let Some(g) = &u.gecos {
        v["gecos"] = g.clone().into();
    }
    if let Some(h) = &u.password_hash {
        v["passwordHash"] = h.clone().into();
    }
    if let Some(id) = u.uid {
        v["uid"] = id.into();
    }
    v
}
