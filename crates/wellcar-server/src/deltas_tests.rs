//! The payload choice as a table, and delta packages end to end over real HTTP on loopback, on
//! SQLite and PostgreSQL: upload a package with one delta from 1.0.0; a machine at 1.0.0 is
//! offered the delta (`IsDeltaPayload="true"`, its size and hash), one at 0.9.0 the full
//! package; after a 3/0 event the 1.0.0 machine gets the full package; the delta downloads with
//! a Range; the activity log shows what was served.

use sha2::Digest as _;
use wellcar_omaha::{
    ErrorCode, Event, Request, Response, UpdateCheckRequest, UpdateDecision, UpdateInfo,
    WELLCAR_APP_ID,
};

use super::*;
use crate::client::{ApiClient, PackageRef};
use crate::store::Role;
use crate::{RunningServer, Settings};

fn package(url: &str) -> Package {
    Package {
        id: "p1".into(),
        app_id: WELLCAR_APP_ID.into(),
        version: "1.1.0".into(),
        arch: "amd64".into(),
        filename: "wellcar_update.bin".into(),
        url: url.into(),
        size: 1000,
        sha256_hex: "ab".repeat(32),
        sha1_base64: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        sha256_base64: "q6s=".into(),
    }
}

fn delta(package_id: &str, source: &str) -> PackageDelta {
    PackageDelta {
        package_id: package_id.into(),
        source_version: source.into(),
        filename: format!("wellcar_delta_from_{source}.bin"),
        size: 10,
        sha256_hex: "cd".repeat(32),
        sha1_base64: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        sha256_base64: "zc0=".into(),
    }
}

#[test]
fn the_delta_goes_only_to_its_source_version_and_never_after_it_failed() {
    let hosted = package("");
    let deltas = [delta("p1", "1.0.0"), delta("p1", "0.9.0")];
    let other_package = [delta("p2", "1.0.0")];
    let external = package("https://cdn.example.test/1.1.0/");
    // Reported version, failed version, package, its deltas, the delta chosen (by source).
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a Package,
        &'a [PackageDelta],
        Option<&'a str>,
    );
    let cases: [Case; 9] = [
        ("1.0.0", None, &hosted, &deltas, Some("1.0.0")),
        ("0.9.0", None, &hosted, &deltas, Some("0.9.0")),
        // Text equality: no prefix or semantic match.
        ("1.0", None, &hosted, &deltas, None),
        ("1.0.0+nightly-1", None, &hosted, &deltas, None),
        ("0.8.0", None, &hosted, &deltas, None),
        ("1.0.0", None, &hosted, &[], None),
        // Failed for this target: full; a failure for another target does not count.
        ("1.0.0", Some("1.1.0"), &hosted, &deltas, None),
        ("1.0.0", Some("1.0.5"), &hosted, &deltas, Some("1.0.0")),
        // Another package's delta, or a package not hosted here: full.
        ("1.0.0", None, &external, &other_package, None),
    ];
    for (reported, failed, package, deltas, want) in cases {
        let facts = InstanceDeltaFacts {
            reported_version: reported,
            delta_failed_version: failed,
        };
        let got = match choose_payload(facts, package, deltas) {
            PayloadChoice::Full => None,
            PayloadChoice::Delta(d) => Some(d.source_version),
        };
        assert_eq!(
            got.as_deref(),
            want,
            "{reported} {failed:?} {}",
            package.url
        );
    }
    let facts = InstanceDeltaFacts {
        reported_version: "1.0.0",
        delta_failed_version: None,
    };
    assert_eq!(
        choose_payload(facts, &external, &deltas),
        PayloadChoice::Full
    );
}

#[test]
fn the_delta_manifest_is_the_full_one_with_the_delta_file_and_the_flag() {
    let full = crate::omaha::manifest(&package(""));
    let d = delta("p1", "1.0.0");
    let m = delta_manifest(full.clone(), &d);
    assert_eq!(m.version, full.version);
    assert_eq!(m.packages[0].name, d.filename);
    assert_eq!(m.packages[0].size, 10);
    assert_eq!(m.packages[0].sha256_hex.as_deref(), Some(&*d.sha256_hex));
    assert_eq!(m.actions[0].sha256_base64.as_deref(), Some("zc0="));
    assert!(m.actions[0].is_delta_payload && !full.actions[0].is_delta_payload);
    assert!(m.actions[0].disable_payload_backoff);
}

fn app_request(machine: &str, version: &str, check: bool, events: Vec<Event>) -> String {
    Request {
        updater_version: "wellcar-test-0.1".into(),
        install_source: "scheduler".into(),
        os: None,
        apps: vec![wellcar_omaha::AppRequest {
            app_id: WELLCAR_APP_ID.into(),
            version: version.into(),
            track: "stable".into(),
            board: "amd64-usr".into(),
            machine_id: machine.into(),
            update_check: check.then(UpdateCheckRequest::default),
            events,
            ..Default::default()
        }],
    }
    .to_xml()
}

/// The offer and the raw answer.
async fn check(omaha: &ApiClient, machine: &str, version: &str) -> (UpdateInfo, String) {
    let (status, body) = omaha
        .omaha(&app_request(machine, version, true, Vec::new()))
        .await
        .unwrap();
    assert_eq!(status, hyper::StatusCode::OK, "{body}");
    match Response::parse(body.as_bytes()).unwrap().update_decision() {
        Ok(UpdateDecision::Update(info)) => (info, body),
        other => panic!("{other:?}: {body}"),
    }
}

async fn start(url: String, dir: &std::path::Path) -> (RunningServer, String) {
    let mut settings = Settings::new(&url, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.join("payloads");
    let server = crate::spawn(settings).await.unwrap();
    let token = crate::test_server::token(&server, "admin", Role::Admin, crate::now_ms()).await;
    (server, token)
}

async fn deltas_are_offered_to_their_source_and_fall_back_to_full(
    backend: crate::http_tests::Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    // The PostgreSQL cluster is set up by blocking calls: off the runtime's threads.
    let path = dir.path().to_owned();
    let url = tokio::task::spawn_blocking(move || crate::http_tests::database_url(backend, &path))
        .await
        .unwrap();
    let (server, token) = start(url, dir.path()).await;
    let api = ApiClient::new(&server.url(), Some(&token));
    let omaha = ApiClient::new(&server.url(), None);
    let full: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    let delta: Vec<u8> = (0..3_000u32).map(|i| (i * 13 + 1) as u8).collect();
    let (full_file, delta_file) = (
        dir.path().join("wellcar_update.bin"),
        dir.path().join("wellcar_delta_from_1.0.0.bin"),
    );
    std::fs::write(&full_file, &full).unwrap();
    std::fs::write(&delta_file, &delta).unwrap();
    let target = PackageRef {
        app: WELLCAR_APP_ID,
        version: "1.1.0",
        arch: "amd64",
    };
    let quiet: crate::client::OnUpload = std::sync::Arc::new(|_| {});
    let _: Package = api
        .upload_package(&target, "wellcar_update.bin", &full_file, quiet.clone())
        .await
        .unwrap();
    let stored: PackageDelta = api
        .upload_delta(
            &target,
            "1.0.0",
            "wellcar_delta_from_1.0.0.bin",
            &delta_file,
            quiet.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        (stored.size, stored.sha256_hex.as_str()),
        (3000, &*hex::encode(sha2::Sha256::digest(&delta)))
    );
    // A second delta from the same source is refused, and so is one of a missing package.
    let again = api
        .upload_delta::<PackageDelta>(&target, "1.0.0", "other.bin", &delta_file, quiet.clone())
        .await;
    assert!(
        matches!(&again, Err(crate::client::ClientError::Status { status, .. })
            if *status == hyper::StatusCode::CONFLICT),
        "{again:?}"
    );
    let missing = PackageRef {
        version: "9.9.9",
        ..target
    };
    let missing = api
        .upload_delta::<PackageDelta>(&missing, "1.0.0", "d.bin", &delta_file, quiet)
        .await;
    assert!(
        matches!(&missing, Err(crate::client::ClientError::Status { status, .. })
            if *status == hyper::StatusCode::NOT_FOUND),
        "{missing:?}"
    );
    let _: serde_json::Value = api.publish(&target, "stable").await.unwrap();
    // At the delta's source: the delta, flagged, with its size and hash.
    let (info, body) = check(&omaha, "m1", "1.0.0").await;
    assert!(info.is_delta, "{body}");
    assert!(body.contains("IsDeltaPayload=\"true\""), "{body}");
    assert_eq!(info.version, "1.1.0");
    assert_eq!(info.size, 3000);
    assert_eq!(
        info.sha256.as_slice(),
        sha2::Sha256::digest(&delta).as_slice()
    );
    assert!(
        info.urls[0].ends_with("/1.1.0/wellcar_delta_from_1.0.0.bin"),
        "{:?}",
        info.urls
    );
    // Asked again (the grant is re-served): the delta again, logged once.
    assert!(check(&omaha, "m1", "1.0.0").await.0.is_delta);
    // Elsewhere: the full package, without the flag.
    let (info, body) = check(&omaha, "m2", "0.9.0").await;
    assert!(!info.is_delta && !body.contains("IsDeltaPayload"), "{body}");
    assert_eq!(info.size, full.len() as u64);
    assert!(info.urls[0].ends_with("/1.1.0/wellcar_update.bin"));

    // The delta downloads through the package route, with ranges.
    let path = format!("/packages/{WELLCAR_APP_ID}/amd64/1.1.0/wellcar_delta_from_1.0.0.bin");
    let (status, part) = omaha.get_range(&path, "bytes=100-199").await.unwrap();
    assert_eq!(status, hyper::StatusCode::PARTIAL_CONTENT);
    assert_eq!(&part[..], &delta[100..200]);
    let (status, whole) = omaha.get_text(&path).await.unwrap();
    assert_eq!((status, &whole[..]), (hyper::StatusCode::OK, &delta[..]));
    let unknown = format!("/packages/{WELLCAR_APP_ID}/amd64/1.1.0/wellcar_delta_from_0.1.0.bin");
    assert_eq!(
        omaha.get_text(&unknown).await.unwrap().0,
        hyper::StatusCode::NOT_FOUND
    );

    // The delta fails on m1 (3/0, its own error code): its next check gets the full package.
    let report = |machine: &'static str, code: u32| {
        let omaha = &omaha;
        async move {
            let failed = Event {
                event_type: 3,
                event_result: 0,
                error_code: Some(ErrorCode { raw: code }),
                previous_version: None,
            };
            let (status, body) = omaha
                .omaha(&app_request(machine, "1.0.0", false, vec![failed]))
                .await
                .unwrap();
            assert_eq!(status, hyper::StatusCode::OK, "{body}");
        }
    };
    report("m1", 70).await;
    let (info, body) = check(&omaha, "m1", "1.0.0").await;
    assert!(!info.is_delta && !body.contains("IsDeltaPayload"), "{body}");
    assert_eq!(info.size, full.len() as u64);
    assert_eq!(
        info.sha256.as_slice(),
        sha2::Sha256::digest(&full).as_slice()
    );
    // m1 stays on full for 1.1.0; another machine at 1.0.0 still gets the delta.
    assert!(!check(&omaha, "m1", "1.0.0").await.0.is_delta);
    assert!(check(&omaha, "m3", "1.0.0").await.0.is_delta);
    let status_of = |machine: &'static str| {
        let db = server.state.db.clone();
        async move {
            let i = db
                .read(move |c| store::find_instance(c, WELLCAR_APP_ID, machine, false))
                .await
                .unwrap()
                .unwrap();
            (i.status, i.last_error_code)
        }
    };
    assert_eq!(status_of("m1").await, ("granted".into(), Some(70)));

    // Safe mode halts the group at its first failed update; a failed delta is not one.
    let group = format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/stable");
    let safe_mode = serde_json::json!({"safe_mode": true, "safe_mode_failures": 1});
    let _: serde_json::Value = api
        .call(hyper::Method::PATCH, &group, &safe_mode)
        .await
        .unwrap();
    let halted = || async {
        let g: serde_json::Value = api.get(&group).await.unwrap();
        g["halted"].clone()
    };
    report("m3", 20).await;
    assert_eq!(status_of("m3").await, ("granted".into(), Some(20)));
    assert_eq!(
        halted().await,
        false,
        "a failed delta does not halt the group"
    );
    assert!(!check(&omaha, "m3", "1.0.0").await.0.is_delta);
    // The full payload failing on m3 is an update failure: safe mode halts the group.
    report("m3", 15).await;
    assert_eq!(status_of("m3").await, ("error".into(), Some(15)));
    assert_eq!(
        halted().await,
        true,
        "the failed full update halts the group"
    );

    // What was served is in the activity log (and so in GET /api/v1/activity).
    let activity = server
        .state
        .db
        .read(|c| store::list_activity(c, Some(WELLCAR_APP_ID), 100))
        .await
        .unwrap();
    let of = |kind: &str| -> Vec<String> {
        activity
            .iter()
            .filter(|a| a.kind == kind)
            .map(|a| a.message.clone())
            .collect()
    };
    let served = of("delta-served");
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(served
        .iter()
        .any(|m| m.contains("instance m1 was served the delta of 1.1.0 from 1.0.0")));
    assert_eq!(of("delta-failed").len(), 2, "{activity:?}");
    assert!(of("delta-failed")
        .iter()
        .any(|m| m.contains("instance m1") && m.contains("error code 70")));
    assert_eq!(of("delta-fallback").len(), 2, "{activity:?}");
    server.shutdown().await.unwrap();
}

crate::http_tests::both_backends!(deltas_are_offered_to_their_source_and_fall_back_to_full);
