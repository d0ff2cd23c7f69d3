//! A seeded fleet for the dashboard's tests: a real server on SQLite with a movable clock,
//! tokens of each scope, instances in the three seeded groups, events, and packages.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::InstanceFacts;
use crate::store::{self, NewEvent, NewPackage, Scope, Sighting};
use crate::{RunningServer, Settings};

/// A running server with a seeded fleet.
pub(crate) struct Fleet {
    pub server: RunningServer,
    pub clock: Arc<AtomicI64>,
    pub admin: String,
    pub publisher: String,
    pub reader: String,
    _dir: tempfile::TempDir,
}

/// Instances per seeded group.
pub(crate) const GROUP_SIZES: [(&str, usize); 3] = [("stable", 12), ("beta", 7), ("alpha", 3)];

impl Fleet {
    /// Starts a server and seeds it.
    pub async fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicI64::new(crate::now_ms()));
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
        settings.payload_dir = dir.path().join("payloads");
        settings.sweep_interval = Duration::from_secs(3600);
        let c = clock.clone();
        settings.clock = Arc::new(move || c.load(Ordering::SeqCst));
        let server = crate::spawn(settings).await.unwrap();
        let now = clock.load(Ordering::SeqCst);
        let admin = crate::test_server::token(&server, "ops-admin", Scope::Admin, now).await;
        let publisher = crate::test_server::token(&server, "releaser", Scope::Publish, now).await;
        let reader = crate::test_server::token(&server, "viewer", Scope::Read, now).await;
        seed(&server, now).await;
        Fleet {
            server,
            clock,
            admin,
            publisher,
            reader,
            _dir: dir,
        }
    }

    /// Now on the server's clock.
    pub fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Moves the server's clock.
    pub fn advance(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Whether group `track` grants updates.
    pub async fn updates_enabled(&self, track: &str) -> bool {
        let track = track.to_owned();
        self.server
            .state
            .db
            .read(move |c| store::find_group(c, crate::ui::pages::APP_ID, &track))
            .await
            .unwrap()
            .unwrap()
            .policy
            .updates_enabled
    }

    /// Holders of reboot lock group `group`.
    pub async fn lock_holders(&self, group: &str) -> Vec<String> {
        let group = group.to_owned();
        self.server
            .state
            .db
            .read(move |c| store::fleetlock_holders(c, &group))
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect()
    }

    /// Adds an instance with `alias` to group `track`.
    pub async fn add_instance(&self, machine_id: &str, alias: &str, track: &str) {
        let s = sighting(
            &self.server,
            machine_id,
            alias,
            "10.9.0.1",
            "1.0.0",
            track,
            self.now(),
        )
        .await;
        self.server
            .state
            .db
            .write(move |c| store::upsert_sightings(c, &[s]))
            .await
            .unwrap();
    }
}

async fn sighting(
    server: &RunningServer,
    machine_id: &str,
    alias: &str,
    ip: &str,
    version: &str,
    track: &str,
    at: i64,
) -> Sighting {
    let group_id = server
        .state
        .config()
        .groups
        .get(&(crate::ui::pages::APP_ID.to_owned(), track.to_owned()))
        .map(|g| g.id.clone());
    Sighting {
        facts: InstanceFacts {
            app_id: crate::ui::pages::APP_ID.to_owned(),
            machine_id: machine_id.to_owned(),
            alias: alias.to_owned(),
            ip: ip.to_owned(),
            oem: "qemu".into(),
            version: version.to_owned(),
            track: track.to_owned(),
            group_id,
            arch: "amd64".into(),
        },
        at,
    }
}

fn package(version: &str) -> NewPackage {
    use base64::Engine as _;
    NewPackage {
        version: version.to_owned(),
        arch: "amd64".into(),
        filename: format!("wellcar-{version}.payload"),
        url: "https://updates.example/wellcar/".into(),
        size: 123_456_789,
        sha256_hex: "ab".repeat(32),
        sha1_base64: base64::engine::general_purpose::STANDARD.encode([7u8; 20]),
    }
}

async fn seed(server: &RunningServer, now: i64) {
    let mut sightings = Vec::new();
    for (track, size) in GROUP_SIZES {
        for i in 0..size {
            let version = if i % 3 == 0 { "1.1.0" } else { "1.0.0" };
            let id = format!("{track}-{i:03}");
            let ip = format!("10.0.{}.{i}", track.len());
            sightings.push(
                sighting(
                    server,
                    &id,
                    &format!("node {i} of {track}"),
                    &ip,
                    version,
                    track,
                    now - i as i64 * 60_000,
                )
                .await,
            );
        }
    }
    let events: Vec<(String, Option<String>)> = sightings
        .iter()
        .filter(|s| s.facts.version == "1.1.0")
        .map(|s| (s.facts.machine_id.clone(), s.facts.group_id.clone()))
        .collect();
    let statuses: Vec<(String, &str)> = sightings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.facts.machine_id.clone(),
                ["complete", "granted", "downloading", "error"][i % 4],
            )
        })
        .collect();
    server
        .state
        .db
        .write(move |c| {
            store::upsert_sightings(c, &sightings)?;
            for v in ["1.0.0", "1.1.0", "1.2.0"] {
                store::create_package(c, crate::ui::pages::APP_ID, &package(v), "seed", now)?;
            }
            for channel in ["stable", "beta"] {
                let target = store::ChannelPackage { channel, version: "1.1.0", arch: "amd64" };
                store::publish(c, crate::ui::pages::APP_ID, &target, "seed", now)?;
            }
            for (id, st) in statuses {
                store::set_instance_status(c, crate::ui::pages::APP_ID, &id, st, None, None, now)?;
                c.execute(
                    "UPDATE instances SET granted_version = '1.1.0', granted_at = $1 WHERE machine_id = $2",
                    &crate::params![now, id],
                )?;
            }
            for (machine, group) in events {
                for (t, r, back) in [(13u32, 1u32, 3_600_000i64), (14, 1, 3_000_000), (3, 1, 2_000_000), (3, 2, 1_000_000)] {
                    let event = wellcar_omaha::Event {
                        event_type: t,
                        event_result: r,
                        error_code: None,
                        previous_version: Some("1.0.0".into()),
                    };
                    let e = NewEvent {
                        app_id: crate::ui::pages::APP_ID,
                        machine_id: &machine,
                        group_id: group.as_deref(),
                        event: &event,
                        version: if t == 3 && r == 2 { "1.1.0" } else { "1.0.0" },
                        verified: true,
                    };
                    store::insert_event(c, &e, now - back)?;
                }
            }
            let stable = store::find_group(c, crate::ui::pages::APP_ID, "stable")?.unwrap();
            store::halt_group(
                c,
                &stable.id,
                crate::ui::pages::APP_ID,
                "safe mode: instance stable-003 failed updating to 1.1.0 (error code 7)",
                now,
            )?;
            let lock = store::LockRequest {
                group: "default".into(),
                id: "stable-001".into(),
                implicit_group: true,
                default_max: 1,
                lease_ms: 3_600_000,
            };
            store::fleetlock_acquire(c, &lock, now)
                .map_err(|e| crate::StoreError::Invalid(e.to_string()))?;
            Ok(())
        })
        .await
        .unwrap();
    server.state.refresh_config(true).await.unwrap();
}
