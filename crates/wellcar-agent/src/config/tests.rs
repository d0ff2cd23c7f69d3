//! `update.conf` parsing: layering, bad values, durations, keys.

use super::*;

/// Fuzzing finding (issue 20, target `update-conf`): a duration past `Duration::MAX`
/// (`18446744073709551616h`) panicked in `Duration::from_secs_f64` and took the agent down
/// at start; it is an error naming the key and value.
#[test]
fn a_duration_too_long_for_duration_is_an_error_not_a_panic() {
    let err = parse_duration("18446744073709551616h").unwrap_err();
    assert!(err.contains("too long"), "{err}");
    let err = Config::parse(
        "WELLCAR_CHECK_INTERVAL=18446744073709551616h\n",
        Path::new("/etc/wellcar/update.conf"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("WELLCAR_CHECK_INTERVAL"), "{err}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn later_files_override_earlier_ones_and_missing_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let usr = write(
        dir.path(),
        "usr.conf",
        "SERVER=https://a.example/v1/update/\nGROUP=stable\n",
    );
    let flatcar = write(
        dir.path(),
        "flatcar.conf",
        "# comment\nGROUP=\"beta\"\nREBOOT_STRATEGY=off\nLOCKSMITHD_ENDPOINT=http://x\n",
    );
    let wellcar = write(dir.path(), "wellcar.conf", "export MACHINE_ALIAS='web 1'\n");
    let config = Config::load(&[usr, flatcar, dir.path().join("missing"), wellcar]).unwrap();
    assert_eq!(
        config.server.as_deref(),
        Some("https://a.example/v1/update/")
    );
    assert_eq!(config.group, "beta");
    assert_eq!(config.machine_alias, "web 1");
    assert_eq!(config.reboot_strategy, RebootStrategy::Off);
    assert_eq!(config.reboot_window, None);
    assert_eq!(config.check_interval, Duration::from_secs(2700));
}

#[test]
fn server_disabled_turns_updates_off() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "u.conf", "SERVER=disabled\n");
    assert_eq!(Config::load(&[f]).unwrap().server, None);
}

#[test]
fn bad_values_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "u.conf", "GROUP=x\nREBOOT_STRATEGY=sometimes\n");
    let err = Config::load(std::slice::from_ref(&f))
        .unwrap_err()
        .to_string();
    assert!(err.contains("u.conf:2"), "{err}");
    assert!(err.contains("REBOOT_STRATEGY"), "{err}");
    let f = write(dir.path(), "v.conf", "no equals sign\n");
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(err.contains("v.conf:1"), "{err}");
    let f = write(
        dir.path(),
        "w.conf",
        "LOCKSMITHD_REBOOT_WINDOW_START=Thu 04:00\n",
    );
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(err.contains("LOCKSMITHD_REBOOT_WINDOW_LENGTH"), "{err}");
    let f = write(
        dir.path(),
        "x.conf",
        "REBOOT_WINDOW_START=Thu 25:00\nREBOOT_WINDOW_LENGTH=1h\n",
    );
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(err.contains("REBOOT_WINDOW_START"), "{err}");
}

#[test]
fn window_and_schedule_keys_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "u.conf",
        "LOCKSMITHD_REBOOT_WINDOW_START=\"Thu 04:00\"\nLOCKSMITHD_REBOOT_WINDOW_LENGTH=1h30m\n\
         WELLCAR_FIRST_CHECK_DELAY=2m\nWELLCAR_CHECK_INTERVAL=10m\nWELLCAR_RETRY_DELAY=5s\n",
    );
    let config = Config::load(&[f]).unwrap();
    let window = config.reboot_window.unwrap();
    assert_eq!(window.length, Duration::from_secs(5400));
    assert_eq!(config.first_check_delay, Duration::from_secs(120));
    assert_eq!(config.check_interval, Duration::from_secs(600));
    assert_eq!(config.retry_delay, Duration::from_secs(5));
}

/// `SERVER_PUBLIC_KEY` and `FLEET_TOKEN` are read; a key that cannot be used, or a token
/// that is no header value, is an error naming the line (and never echoes the token).
#[test]
fn server_public_key_and_fleet_token() {
    let dir = tempfile::tempdir().unwrap();
    let signing = wellcar_omaha::signature::SigningKey::from_bytes(&[9; 32]);
    let pem = dir.path().join("server.pub");
    std::fs::write(
        &pem,
        wellcar_payload::keys::public_key_pem(&signing.verifying_key()),
    )
    .unwrap();
    let f = write(
        dir.path(),
        "u.conf",
        &format!(
            "SERVER_PUBLIC_KEY={}\nFLEET_TOKEN=\"s3cret-token\"\n",
            pem.display()
        ),
    );
    let config = Config::load(&[f]).unwrap();
    let key = config.server_public_key.unwrap();
    assert_eq!(
        (key.path, key.keys),
        (pem.clone(), vec![signing.verifying_key()])
    );
    let token = config.fleet_token.unwrap();
    assert_eq!(token.expose(), "s3cret-token");
    assert!(!format!("{token:?}").contains("s3cret"));
    assert_eq!(Config::default().server_public_key, None);

    let missing = dir.path().join("missing.pub");
    let f = write(
        dir.path(),
        "v.conf",
        &format!("GROUP=x\nSERVER_PUBLIC_KEY={}\n", missing.display()),
    );
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(
        err.contains("v.conf:2") && err.contains("SERVER_PUBLIC_KEY"),
        "{err}"
    );
    assert!(err.contains("missing.pub"), "{err}");
    let f = write(dir.path(), "w.conf", "SERVER_PUBLIC_KEY=keys/server.pub\n");
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(err.contains("absolute path"), "{err}");
    let f = write(
        dir.path(),
        "x.conf",
        &format!("SERVER_PUBLIC_KEY={}\n", f_path(dir.path())),
    );
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(err.contains("not a PEM ed25519 public key"), "{err}");
    let f = write(dir.path(), "y.conf", "FLEET_TOKEN=two words\n");
    let err = Config::load(&[f]).unwrap_err().to_string();
    assert!(
        err.contains("y.conf:1") && err.contains("FLEET_TOKEN"),
        "{err}"
    );
    assert!(!err.contains("two words"), "{err}");
}

/// `SERVER_PUBLIC_KEY` naming a directory accepts a signature by any of its keys (key
/// rotation), and still refuses another key's or a missing signature.
#[test]
fn server_public_key_directory_accepts_any_of_its_keys() {
    use wellcar_omaha::signature::{sign_response, SignatureError, SigningKey};
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("server-keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let (old, new) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    for (name, key) in [("old.pub", &old), ("new.pub", &new)] {
        let pem = wellcar_payload::keys::public_key_pem(&key.verifying_key());
        std::fs::write(keys_dir.join(name), pem).unwrap();
    }
    let f = write(
        dir.path(),
        "u.conf",
        &format!("SERVER_PUBLIC_KEY={}\n", keys_dir.display()),
    );
    let key = Config::load(&[f]).unwrap().server_public_key.unwrap();
    assert_eq!(key.keys.len(), 2);
    let verify = |signer: &SigningKey| {
        let header = sign_response(signer, b"req", b"nonce", b"resp");
        key.verify(b"req", b"nonce", b"resp", Some(&header))
    };
    assert_eq!(verify(&old), Ok(()));
    assert_eq!(verify(&new), Ok(()));
    assert_eq!(
        verify(&SigningKey::from_bytes(&[3; 32])),
        Err(SignatureError::Invalid)
    );
    assert_eq!(
        key.verify(b"req", b"nonce", b"resp", None),
        Err(SignatureError::Missing)
    );
}

/// A file that exists but holds no key.
fn f_path(dir: &Path) -> String {
    write(dir, "not-a-key.pub", "hello\n").display().to_string()
}

#[test]
fn go_durations() {
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("1d").is_err());
    assert!(parse_duration("h").is_err());
    assert!(parse_duration("").is_err());
}

/// update_engine's order: `/usr/share/flatcar/release` first, then the update.conf files; the
/// app id comes from `FLATCAR_RELEASE_APPID` (a later file overrides it); a malformed release
/// line names the file and line.
#[test]
fn flatcar_release_file_sets_the_app_id_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let release = write(
        dir.path(),
        "release",
        "FLATCAR_RELEASE_VERSION=1.2.0\nFLATCAR_RELEASE_BOARD=amd64-usr\nFLATCAR_RELEASE_APPID={E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}\n",
    );
    let etc = dir.path().join("etc-update.conf");
    let config = Config::load(&[release.clone(), etc.clone()]).unwrap();
    assert_eq!(config.app_id, wellcar_omaha::FLATCAR_APP_ID);
    assert_eq!(Config::default().app_id, wellcar_omaha::WELLCAR_APP_ID);
    std::fs::write(
        &etc,
        "FLATCAR_RELEASE_APPID=66ccd106-e1a0-49f8-92cf-29995de7c384\n",
    )
    .unwrap();
    let config = Config::load(&[release.clone(), etc.clone()]).unwrap();
    assert_eq!(config.app_id, wellcar_omaha::WELLCAR_APP_ID);
    std::fs::write(&etc, "FLATCAR_RELEASE_APPID=not an id\n").unwrap();
    let err = Config::load(&[release.clone(), etc.clone()])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:1", etc.display())), "{err}");
    assert!(err.contains("FLATCAR_RELEASE_APPID"), "{err}");
    let bad = write(
        dir.path(),
        "release2",
        "FLATCAR_RELEASE_VERSION=1.2.0\nthis is not a setting\n",
    );
    let err = Config::load(std::slice::from_ref(&bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:2", bad.display())), "{err}");
}

#[test]
fn download_credentials_need_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("update.conf");
    let config = Config::parse("DOWNLOAD_USER=fleet\nDOWNLOAD_PASSWORD=s3cret:x\n", &path).unwrap();
    assert_eq!(
        config.download_credentials,
        Some(("fleet".into(), "s3cret:x".into()))
    );
    assert_eq!(Config::parse("", &path).unwrap().download_credentials, None);
    let err = Config::parse("DOWNLOAD_PASSWORD=p\n", &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("DOWNLOAD_USER is not set"), "{err}");
    let err = Config::parse("DOWNLOAD_USER=a:b\n", &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot contain ':'"), "{err}");
}

/// locksmithd's unit environment is the lowest layer: a drop-in's `REBOOT_STRATEGY` or
/// `LOCKSMITHD_*` applies unless update.conf sets the key; other variables are ignored; a bad
/// value names `(environment)`.
#[test]
fn locksmiths_environment_is_below_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("update.conf");
    std::fs::write(&file, "GROUP=beta\n").unwrap();
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let files = [file.clone()];
    let config = Config::load_over_environment(
        &files,
        env(&[
            ("REBOOT_STRATEGY", "off"),
            ("GROUP", "ignored"),
            ("LOCKSMITHD_REBOOT_WINDOW_START", "Thu 04:00"),
            ("LOCKSMITHD_REBOOT_WINDOW_LENGTH", "1h"),
        ]),
    )
    .unwrap();
    assert_eq!(config.reboot_strategy, RebootStrategy::Off);
    assert_eq!(
        config.group, "beta",
        "only locksmith's keys come from the environment"
    );
    assert!(config.reboot_window.is_some());
    std::fs::write(&file, "REBOOT_STRATEGY=reboot\n").unwrap();
    let config = Config::load_over_environment(&files, env(&[("REBOOT_STRATEGY", "off")])).unwrap();
    assert_eq!(
        config.reboot_strategy,
        RebootStrategy::Reboot,
        "the file wins"
    );
    std::fs::write(&file, "").unwrap();
    let err = Config::load_over_environment(&files, env(&[("REBOOT_STRATEGY", "sometimes")]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("(environment):0: REBOOT_STRATEGY"), "{err}");
}
