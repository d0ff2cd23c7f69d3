//! `targetversionprefix` end to end, over real HTTP on loopback, on SQLite and on PostgreSQL:
//! the channel offers 1.0.0, other packages (0.9.0, 1.1.0, 1.10.0) exist, and pinned checks get
//! the matching package, or `noupdate` when nothing newer matches; a pinned grant counts against
//! the group's `max_updates_per_period` like any grant.

use wellcar_omaha::{Request, Response, UpdateCheckRequest, UpdateDecision, WELLCAR_APP_ID};

use crate::client::ApiClient;
use crate::model::GroupPatch;
use crate::store::{self, ChannelPackage, NewPackage};
use crate::{RunningServer, Settings};

fn pinned_check(machine: &str, version: &str, prefix: Option<&str>) -> String {
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
            update_check: Some(UpdateCheckRequest {
                target_version_prefix: prefix.map(str::to_owned),
            }),
            ..Default::default()
        }],
    }
    .to_xml()
}

/// The version offered, or `None` for `noupdate`.
async fn offered(omaha: &ApiClient, machine: &str, version: &str, prefix: &str) -> Option<String> {
    let prefix = (!prefix.is_empty()).then_some(prefix);
    let (status, body) = omaha
        .omaha(&pinned_check(machine, version, prefix))
        .await
        .unwrap();
    assert_eq!(status, hyper::StatusCode::OK, "{body}");
    match Response::parse(body.as_bytes()).unwrap().update_decision() {
        Ok(UpdateDecision::Update(info)) => Some(info.version),
        Ok(UpdateDecision::NoUpdate { .. }) => None,
        Err(e) => panic!("{e}: {body}"),
    }
}

async fn start(url: String, dir: &std::path::Path) -> RunningServer {
    let mut settings = Settings::new(&url, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.join("payloads");
    crate::spawn(settings).await.unwrap()
}

async fn pinned_checks_get_the_matching_package(backend: crate::http_tests::Backend) {
    let dir = tempfile::tempdir().unwrap();
    // The PostgreSQL cluster is set up by blocking calls: off the runtime's threads.
    let path = dir.path().to_owned();
    let url = tokio::task::spawn_blocking(move || crate::http_tests::database_url(backend, &path))
        .await
        .unwrap();
    let server = start(url, dir.path()).await;
    let state = server.state.clone();
    let now = crate::now_ms();
    state
        .db
        .write(move |c| {
            for v in ["0.9.0", "1.0.0", "1.1.0", "1.10.0"] {
                let p = NewPackage {
                    version: v.into(),
                    arch: "amd64".into(),
                    filename: "wellcar_update.bin".into(),
                    url: format!("https://payloads.example.test/{v}/"),
                    size: 1000,
                    sha256_hex: "cd".repeat(32),
                    sha1_base64: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                };
                store::create_package(c, WELLCAR_APP_ID, &p, "test", now)?;
            }
            let target = ChannelPackage {
                channel: "stable",
                version: "1.0.0",
                arch: "amd64",
            };
            store::publish(c, WELLCAR_APP_ID, &target, "test", now)
        })
        .await
        .unwrap();
    state.refresh_config(true).await.unwrap();
    let omaha = ApiClient::new(&server.url(), None);

    // The prefix picks the package, not the channel; "1.1" is not a prefix of 1.10.0.
    assert_eq!(
        offered(&omaha, "m1", "0.5.0", "1.1").await.as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        offered(&omaha, "m2", "0.5.0", "1.10").await.as_deref(),
        Some("1.10.0")
    );
    assert_eq!(
        offered(&omaha, "m3", "0.5.0", "1.1.0$").await.as_deref(),
        Some("1.1.0")
    );
    // The channel's own package when it matches; unpinned checks still get the channel's.
    assert_eq!(
        offered(&omaha, "m4", "0.5.0", "1").await.as_deref(),
        Some("1.0.0")
    );
    assert_eq!(
        offered(&omaha, "m5", "0.5.0", "").await.as_deref(),
        Some("1.0.0")
    );
    // Nothing matches; a match that is not newer; a prefix that matches no version.
    assert_eq!(offered(&omaha, "m6", "0.5.0", "3").await, None);
    assert_eq!(offered(&omaha, "m7", "1.0.0", "0.9").await, None);
    assert_eq!(offered(&omaha, "m8", "0.5.0", "1..1").await, None);

    // The grant records the pinned version, and the rollout log names the prefix.
    let (m1, activity) = state
        .db
        .read(|c| {
            let m1 = store::find_instance(c, WELLCAR_APP_ID, "m1", false)?;
            Ok((m1, store::list_activity(c, Some(WELLCAR_APP_ID), 50)?))
        })
        .await
        .unwrap();
    assert_eq!(m1.unwrap().granted_version.as_deref(), Some("1.1.0"));
    assert!(
        activity.iter().any(|a| a.kind == "rollout-started"
            && a.message.contains("rollout of 1.1.0")
            && a.message.contains("(pinned: targetversionprefix=1.1)")),
        "{activity:?}"
    );

    // Five grants so far (m1..m5): with a limit of five per period, a pinned check is refused
    // like any other (m1's own pinned grant is still re-served).
    state
        .db
        .write(move |c| {
            let patch = GroupPatch {
                max_updates_per_period: Some(5),
                ..GroupPatch::default()
            };
            store::update_group(c, WELLCAR_APP_ID, "stable", &patch, "test", now)
        })
        .await
        .unwrap();
    state.refresh_config(true).await.unwrap();
    assert_eq!(
        offered(&omaha, "m1", "0.5.0", "1.1").await.as_deref(),
        Some("1.1.0")
    );
    assert_eq!(offered(&omaha, "m9", "0.5.0", "1.1").await, None);
    server.shutdown().await.unwrap();
}

crate::http_tests::both_backends!(pinned_checks_get_the_matching_package);
