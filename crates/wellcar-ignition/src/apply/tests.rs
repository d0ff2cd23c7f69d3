//! Apply tests on temporary roots seeded with passwd/group/shadow fixtures, including hostile
//! symlinks and `..` paths that must not lead any write outside the root.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use crate::corpus_tests::seed_root;
use crate::{apply, parse_config, ApplyError, Config};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// A seeded root plus a sibling `outside` directory that must never change.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    seed_root(&root);
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), "untouched").unwrap();
    Fixture {
        _tmp: tmp,
        root,
        outside,
    }
}

impl Fixture {
    fn p(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        fs::read_to_string(self.p(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn apply_json(&self, json: &str) -> Result<crate::ApplyReport, ApplyError> {
        let parsed =
            parse_config(json.as_bytes()).unwrap_or_else(|e| panic!("config rejected: {e}"));
        apply(&parsed.config, &self.root)
    }

    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"], "something was written outside the root");
        assert_eq!(
            fs::read_to_string(self.outside.join("victim")).unwrap(),
            "untouched"
        );
    }
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn files_directories_and_links_with_owners_by_name() {
    let f = fixture();
    let report = f
        .apply_json(
            r#"{"ignition":{"version":"3.6.0"},"storage":{
            "files":[{"path":"/opt/app/conf","contents":{"source":"data:;base64,aGVsbG8K"},"mode":384,
                      "user":{"name":"core"},"group":{"name":"wheel"}}],
            "directories":[{"path":"/var/lib/app","mode":448,"user":{"id":500},"group":{"name":"core"}}],
            "links":[{"path":"/opt/app/current","target":"/opt/app/conf"},
                     {"path":"/opt/app/hard","target":"/opt/app/conf","hard":true}]}}"#,
        )
        .unwrap();
    assert_eq!(f.read("/opt/app/conf"), "hello\n");
    assert_eq!(
        (mode(&f.p("/opt/app/conf")), owner(&f.p("/opt/app/conf"))),
        (0o600, (500, 10))
    );
    assert_eq!(
        (mode(&f.p("/opt/app")), owner(&f.p("/opt/app"))),
        (0o755, (0, 0)),
        "parents are root 0755"
    );
    assert_eq!(
        (mode(&f.p("/var/lib/app")), owner(&f.p("/var/lib/app"))),
        (0o700, (500, 500))
    );
    assert_eq!(
        fs::read_link(f.p("/opt/app/current")).unwrap(),
        Path::new("/opt/app/conf")
    );
    let (a, b) = (
        fs::metadata(f.p("/opt/app/conf")).unwrap(),
        fs::metadata(f.p("/opt/app/hard")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard link shares the inode");
    assert!(report.actions.iter().any(|a| a.contains("/opt/app/hard")));
    assert!(f
        .read("/etc/.ignition-result.json")
        .contains("provisioningDate"));
    assert_eq!(mode(&f.p("/etc/.ignition-result.json")), 0o600);
}

#[test]
fn existing_file_is_not_replaced_without_overwrite_and_is_with_it() {
    let f = fixture();
    fs::write(f.p("/etc/motd"), "old").unwrap();
    let cfg = |overwrite: bool| {
        format!(
            r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"files":[{{"path":"/etc/motd","overwrite":{overwrite},"contents":{{"source":"data:,new"}}}}]}}}}"#
        )
    };
    let err = f.apply_json(&cfg(false)).unwrap_err();
    assert!(
        err.to_string()
            .contains("a file exists there already and overwrite is false"),
        "{err}"
    );
    assert_eq!(f.read("/etc/motd"), "old");
    f.apply_json(&cfg(true)).unwrap();
    assert_eq!(f.read("/etc/motd"), "new");
}

#[test]
fn unknown_owner_name_fails_naming_the_field() {
    let f = fixture();
    let err = f
        .apply_json(r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","user":{"name":"nobody-here"}}]}}"#)
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::UnknownUser { field, name } if field == "storage.files.0.user" && name == "nobody-here")
    );
}

#[test]
fn units_dropins_enable_mask_and_disable() {
    let f = fixture();
    fs::create_dir_all(f.p("/usr/lib/systemd/system")).unwrap();
    fs::write(
        f.p("/usr/lib/systemd/system/docker.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    fs::create_dir_all(f.p("/etc/systemd/system/sockets.target.wants")).unwrap();
    symlink(
        "/usr/lib/systemd/system/old.socket",
        f.p("/etc/systemd/system/sockets.target.wants/old.socket"),
    )
    .unwrap();
    f.apply_json(
        r#"{"ignition":{"version":"3.6.0"},"systemd":{"units":[
        {"name":"app.service","enabled":true,"contents":"[Service]\nExecStart=/bin/app\n[Install]\nWantedBy=multi-user.target\nRequiredBy=graphical.target\nAlias=application.service\n"},
        {"name":"docker.service","enabled":true,"dropins":[{"name":"10-env.conf","contents":"[Service]\nEnvironment=A=b\n"}]},
        {"name":"update-engine.service","mask":true},
        {"name":"old.socket","enabled":false}]}}"#,
    )
    .unwrap();
    let sys = "/etc/systemd/system";
    assert!(f
        .read(&format!("{sys}/app.service"))
        .contains("ExecStart=/bin/app"));
    let target = |p: &str| {
        fs::read_link(f.p(p))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(
        target(&format!("{sys}/multi-user.target.wants/app.service")),
        "/etc/systemd/system/app.service"
    );
    assert_eq!(
        target(&format!("{sys}/graphical.target.requires/app.service")),
        "/etc/systemd/system/app.service"
    );
    assert_eq!(
        target(&format!("{sys}/application.service")),
        "/etc/systemd/system/app.service"
    );
    assert_eq!(
        target(&format!("{sys}/multi-user.target.wants/docker.service")),
        "/usr/lib/systemd/system/docker.service"
    );
    assert_eq!(
        f.read(&format!("{sys}/docker.service.d/10-env.conf")),
        "[Service]\nEnvironment=A=b\n"
    );
    assert_eq!(target(&format!("{sys}/update-engine.service")), "/dev/null");
    assert!(fs::symlink_metadata(f.p(&format!("{sys}/sockets.target.wants/old.socket"))).is_err());
    assert_eq!(
        f.read("/etc/systemd/system-preset/20-ignition.preset"),
        "enable app.service\nenable docker.service\ndisable old.socket\n"
    );
}

#[test]
fn users_and_groups_are_created_and_modified() {
    let f = fixture();
    fs::create_dir_all(f.p("/etc/skel")).unwrap();
    fs::write(f.p("/etc/skel/.bashrc"), "# skel\n").unwrap();
    f.apply_json(
        r#"{"ignition":{"version":"3.6.0"},"passwd":{
        "groups":[{"name":"docker","system":true},{"name":"ops","gid":2000}],
        "users":[{"name":"alice","passwordHash":"$6$salt$hash","gecos":"Alice A","groups":["docker","ops"],
                  "sshAuthorizedKeys":["ssh-ed25519 AAAA alice@a","ssh-ed25519 BBBB alice@b"]},
                 {"name":"svc","system":true,"noCreateHome":true,"noUserGroup":true,"shell":"/sbin/nologin"},
                 {"name":"core","groups":["docker"],"sshAuthorizedKeys":["ssh-ed25519 CCCC core"]}]}}"#,
    )
    .unwrap();
    let passwd = f.read("/etc/passwd");
    assert!(
        passwd.contains("alice:x:1000:1000:Alice A:/home/alice:/bin/bash\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("svc:x:999:100::/home/svc:/sbin/nologin\n"),
        "{passwd}"
    );
    let group = f.read("/etc/group");
    assert!(group.contains("docker:x:999:alice,core\n"), "{group}");
    assert!(
        group.contains("ops:x:2000:alice\n") && group.contains("alice:x:1000:\n"),
        "{group}"
    );
    assert!(f.read("/etc/gshadow").contains("docker:*::alice,core\n"));
    assert!(f.read("/etc/shadow").contains("alice:$6$salt$hash:"));
    assert!(f.read("/etc/shadow").contains("svc:*:"));
    assert_eq!(mode(&f.p("/etc/shadow")), 0o640, "database modes are kept");
    assert!(!f.p("/home/svc").exists());
    assert_eq!(owner(&f.p("/home/alice")), (1000, 1000));
    assert_eq!(
        owner(&f.p("/home/alice/.bashrc")),
        (1000, 1000),
        "skel copied and chowned"
    );
    let frag = f.p("/home/alice/.ssh/authorized_keys.d/ignition");
    assert_eq!(
        fs::read_to_string(&frag).unwrap(),
        "ssh-ed25519 AAAA alice@a\nssh-ed25519 BBBB alice@b\n"
    );
    assert_eq!((mode(&frag), owner(&frag)), (0o600, (1000, 1000)));
    assert_eq!(mode(&f.p("/home/alice/.ssh")), 0o700);
    assert_eq!(mode(&f.p("/home/alice/.ssh/authorized_keys.d")), 0o700);
    let ak = f.read("/home/alice/.ssh/authorized_keys");
    assert!(ak.contains("ssh-ed25519 AAAA alice@a\n") && ak.contains("ssh-ed25519 BBBB alice@b\n"));
    assert_eq!(
        f.read("/home/core/.ssh/authorized_keys.d/ignition"),
        "ssh-ed25519 CCCC core\n"
    );
    assert_eq!(
        owner(&f.p("/home/core/.ssh/authorized_keys.d/ignition")),
        (500, 500)
    );
}

#[test]
fn hand_written_authorized_keys_is_kept_as_a_fragment() {
    let f = fixture();
    fs::create_dir_all(f.p("/home/core/.ssh")).unwrap();
    fs::write(
        f.p("/home/core/.ssh/authorized_keys"),
        "ssh-rsa OLD old@host\n",
    )
    .unwrap();
    f.apply_json(r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"core","sshAuthorizedKeys":["ssh-rsa NEW"]}]}}"#)
        .unwrap();
    assert_eq!(
        f.read("/home/core/.ssh/authorized_keys.d/old_authorized_keys"),
        "ssh-rsa OLD old@host\n"
    );
    let ak = f.read("/home/core/.ssh/authorized_keys");
    assert!(
        ak.contains("ssh-rsa OLD old@host\n") && ak.contains("ssh-rsa NEW\n"),
        "{ak}"
    );
}

#[test]
fn user_and_group_deletion() {
    let f = fixture();
    f.apply_json(r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"bob"}]}}"#)
        .unwrap();
    assert!(f.p("/home/bob").is_dir());
    f.apply_json(r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"bob","shouldExist":false}],"groups":[{"name":"wheel","shouldExist":false}]}}"#)
        .unwrap();
    assert!(!f.read("/etc/passwd").contains("bob:"));
    assert!(!f.read("/etc/shadow").contains("bob:"));
    assert!(!f.read("/etc/group").contains("bob:") && !f.read("/etc/group").contains("wheel:"));
    assert!(!f.p("/home/bob").exists());
}

#[test]
fn unsupported_sections_are_refused_by_name() {
    let f = fixture();
    let err = f
        .apply_json(r#"{"ignition":{"version":"3.6.0"},"storage":{"luks":[{"name":"d","device":"/dev/vdb","clevis":{"tang":[{"url":"http://t","thumbprint":"x"}]}}]}}"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage.luks.0.clevis (tang/tpm2/custom binding): not supported yet"
    );
    let err = f
        .apply_json(
            r#"{"ignition":{"version":"3.3.0"},"kernelArguments":{"shouldExist":["quiet"]}}"#,
        )
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::KernelArgumentsNotApplied),
        "{err}"
    );
}

#[test]
fn hostile_absolute_symlink_in_target_is_followed_inside_the_root() {
    let f = fixture();
    // /evil -> <host path of outside>, absolute: must resolve to <root><outside>.
    symlink(&f.outside, f.p("/evil")).unwrap();
    symlink(f.outside.join("victim"), f.p("/etc/victim-link")).unwrap();
    f.apply_json(
        r#"{"ignition":{"version":"3.6.0"},"storage":{
        "files":[{"path":"/evil/victim","contents":{"source":"data:,pwned"},"overwrite":true},
                 {"path":"/etc/victim-link","contents":{"source":"data:,pwned"},"overwrite":true}],
        "directories":[{"path":"/evil/newdir"}]}}"#,
    )
    .unwrap();
    f.assert_outside_untouched();
    let inside = f.root.join(f.outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(inside.join("victim")).unwrap(), "pwned");
    assert!(inside.join("newdir").is_dir());
    assert!(
        !fs::symlink_metadata(f.p("/etc/victim-link"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "link replaced, not followed"
    );
}

#[test]
fn hostile_relative_symlinks_and_dotdot_cannot_climb_out() {
    let f = fixture();
    symlink("../../../../../../outside", f.p("/etc/up")).unwrap();
    symlink("../outside", f.p("/sibling")).unwrap();
    f.apply_json(
        r#"{"ignition":{"version":"3.6.0"},"storage":{
        "files":[{"path":"/etc/up/victim","contents":{"source":"data:,x"},"overwrite":true},
                 {"path":"/sibling/f","contents":{"source":"data:,x"}}],
        "directories":[{"path":"/etc/up/d"}]}}"#,
    )
    .unwrap();
    f.assert_outside_untouched();
    assert_eq!(fs::read_to_string(f.p("/outside/victim")).unwrap(), "x");
    assert!(f.p("/outside/d").is_dir() && f.p("/outside/f").is_file());

    // `..` is rejected by validation; applied anyway (an unvalidated Config) it stays inside.
    let rejected = parse_config(
        br#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/../outside/victim"}]}}"#,
    );
    assert!(rejected.is_err());
    let mut config = Config::default();
    config.storage.files.push(crate::model::File {
        node: crate::model::Node {
            path: "/../../outside/victim2".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    config.storage.directories.push(crate::model::Directory {
        node: crate::model::Node {
            path: "/../../outside/dir2".into(),
            ..Default::default()
        },
        mode: None,
    });
    apply(&config, &f.root).unwrap();
    f.assert_outside_untouched();
    assert!(f.p("/outside/victim2").is_file() && f.p("/outside/dir2").is_dir());
}

#[test]
fn config_created_symlinks_cannot_redirect_later_writes_out() {
    let f = fixture();
    let outside = f.outside.display();
    // The config links /home/mallory to the host's outside dir, then creates that user.
    f.apply_json(&format!(
        r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"links":[{{"path":"/home/mallory","target":"{outside}"}},{{"path":"/srv","target":"/.."}}]}}}}"#
    ))
    .unwrap();
    f.apply_json(
        r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"mallory","sshAuthorizedKeys":["ssh-rsa X"]}]},
        "storage":{"files":[{"path":"/srv/escaped","contents":{"source":"data:,x"}}]}}"#,
    )
    .unwrap();
    f.assert_outside_untouched();
    assert!(
        f.p("/escaped").is_file(),
        "/srv -> /.. resolves to the root itself"
    );
    let inside = f.root.join(f.outside.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read_to_string(inside.join(".ssh/authorized_keys.d/ignition")).unwrap(),
        "ssh-rsa X\n"
    );
}

#[test]
fn deleting_a_user_whose_home_resolves_to_the_root_keeps_the_root() {
    let f = fixture();
    let passwd = format!("{}weird:x:1500:1500::/..:/bin/sh\n", f.read("/etc/passwd"));
    fs::write(f.p("/etc/passwd"), passwd).unwrap();
    f.apply_json(
        r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"weird","shouldExist":false}]}}"#,
    )
    .unwrap();
    assert!(!f.read("/etc/passwd").contains("weird"));
    assert!(f.p("/etc/group").is_file(), "the root was not removed");
    f.assert_outside_untouched();
}
