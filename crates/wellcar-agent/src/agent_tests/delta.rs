//! Delta payloads through the agent and the real server: the booted slot is the source, it is
//! verified before anything is written, and a source that is not what the delta was made from
//! is reported (error code 20) so that the next check installs the full payload.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use wellcar_disk::Slot;
use wellcar_omaha::WELLCAR_APP_ID;
use wellcar_payload::{CreateOptions, SigningKey};
use wellcar_server::client::PackageRef;
use wellcar_test_support::build::{Build, MIB};

use super::fixture::*;
use crate::agent::{CheckOutcome, InstallSource};
use crate::machine::error_code;
use crate::slots::PartitionWindow;
use crate::state::Phase;

/// 1.0.0 (what the hosts run) and 1.1.0 with its full payload and its delta from 1.0.0, both
/// hosted by one server.
struct Published {
    _dir: tempfile::TempDir,
    key: SigningKey,
    old: Build,
    new: Build,
    full_size: u64,
    delta_size: u64,
    delta_path: std::path::PathBuf,
    server: Server,
}

impl Published {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = key();
        let old = Build::create(&dir.path().join("build-1.0.0"), "1.0.0");
        let new = Build::create(&dir.path().join("build-1.1.0"), "1.1.0");
        let full = new.payload(&[&key]);
        let delta = wellcar_payload::create_payload_with(
            &new.dir,
            &new.manifest_path(),
            &[&key],
            &dir.path().join("delta.bin"),
            &CreateOptions {
                compression_level: 3,
                delta_from: Some(old.dir.clone()),
                ..CreateOptions::default()
            },
        )
        .unwrap();
        let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
        server.publish("1.1.0", &full.path).await;
        let package = PackageRef {
            app: WELLCAR_APP_ID,
            version: "1.1.0",
            arch: "amd64",
        };
        let _: serde_json::Value = server
            .api
            .upload_delta(
                &package,
                "1.0.0",
                "wellcar_delta_from_1.0.0.bin",
                &delta.path,
                Arc::new(|_| {}),
            )
            .await
            .unwrap();
        Self {
            _dir: dir,
            key,
            old,
            new,
            full_size: full.size,
            delta_size: delta.size,
            delta_path: delta.path,
            server,
        }
    }

    /// A host `machine` running 1.0.0 from USR-A, which holds 1.0.0's /usr image, booted with
    /// root hash `booted_hash` on its command line.
    fn host(&self, machine: &str, booted_hash: wellcar_contract::RootHash) -> Host {
        let host = Host::for_machine(machine, &self.server.omaha_url(), &self.key, "");
        let mut slot = PartitionWindow::open(host.paths.disk.as_ref().unwrap(), Slot::A).unwrap();
        slot.write_all(&self.old.usr_image()).unwrap();
        // Its kernel and initramfs on the ESP, which the delta copies (they did not change).
        let (kernel, initramfs) = host.paths.boot_files(Slot::A);
        std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
        std::fs::copy(self.old.path(&self.old.manifest.kernel), kernel).unwrap();
        let initramfs_name = &self.old.manifest.initramfs;
        std::fs::copy(self.old.path(initramfs_name), initramfs).unwrap();
        host.put(
            &host.paths.cmdline,
            &format!(
                "mount.usr=/dev/mapper/usr verity.usr=PARTUUID={} verity.usrhash={booted_hash}\n",
                Slot::A.unique_guid()
            ),
        );
        host
    }

    /// The activity log's messages of `kind`.
    async fn activity(&self, kind: &str) -> Vec<String> {
        let all: Vec<serde_json::Value> = self
            .server
            .api
            .get("/api/v1/activity?limit=200")
            .await
            .unwrap();
        all.iter()
            .filter(|a| a["kind"] == kind)
            .map(|a| a["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Slot B staged with 1.1.0 and holding exactly its /usr data region.
fn asserts_new_staged(host: &Host, new: &Build) {
    let state = host.boot_state();
    assert_eq!(state.next_boot(), Some(Slot::B));
    assert_eq!(state.b.version, "1.1.0");
    assert_eq!(state.b.root_hash, Some(new.root_hash()));
    let data = new.manifest.verity_data_blocks * 4096;
    assert_eq!(
        host.slot_bytes(Slot::B, data),
        new.usr_image()[..data as usize]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_booted_slot_is_the_source_and_a_delta_downloads_a_fraction_of_the_full_payload() {
    let p = Published::start().await;
    // The delta carries none of /usr's data, and copies kernel and initramfs.
    assert!(
        p.delta_size * 2 < p.full_size,
        "delta {} bytes, full {}",
        p.delta_size,
        p.full_size
    );
    let host = p.host(MACHINE, p.old.root_hash());
    let mut agent = host.agent();
    let outcome = blocking(move || agent.check(InstallSource::Scheduler).unwrap()).await;
    assert!(
        matches!(outcome, CheckOutcome::Staged { ref version, .. } if version == "1.1.0"),
        "{outcome:?}"
    );
    asserts_new_staged(&host, &p.new);
    let served = p.server.relay.served.load(Ordering::SeqCst);
    assert!(
        served >= p.delta_size && served < p.delta_size + MIB,
        "relayed {served} bytes for a delta of {}",
        p.delta_size
    );
    assert_eq!(p.activity("delta-served").await.len(), 1);
    // The head came alone (header, then head), the data afterwards: no stream sat open while
    // the source was verified. This delta has no data section at all (every /usr block is
    // copied, the hash area rebuilt, kernel and initramfs copied), so nothing is requested
    // after the head (a Range from the file's end would be answered 416).
    let ranges = p.server.relay.ranges.lock().unwrap().clone();
    let head = wellcar_payload::PayloadHead::read(&mut std::fs::File::open(&p.delta_path).unwrap())
        .unwrap();
    let data_len = head.manifest_unverified().unwrap().data_len;
    assert_eq!(
        ranges.first().map(String::as_str),
        Some("bytes=0-31"),
        "{ranges:?}"
    );
    assert_eq!(
        ranges.len(),
        if data_len == 0 { 2 } else { 3 },
        "{ranges:?} for {data_len} data bytes"
    );
    assert_eq!(p.server.relay.full_gets.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_source_is_refused_reported_and_the_full_payload_follows() {
    let p = Published::start().await;
    let host = p.host(MACHINE, p.old.root_hash());
    // One flipped byte in the booted slot, where dm-verity has not looked yet.
    let disk = host.paths.disk.clone().unwrap();
    let mut slot = PartitionWindow::open(&disk, Slot::A).unwrap();
    let mut data = p.old.usr_image();
    data[5 * MIB as usize] ^= 0x01;
    slot.write_all(&data).unwrap();
    let before = host.boot_state();

    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("a corrupted source is refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("error code 20") && text.contains("dm-verity root"),
        "{text}"
    );
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    assert_eq!(host.boot_state(), before, "nothing invalidated or staged");
    let events = p.server.events().await;
    assert_eq!(
        events.last().unwrap(),
        &(
            3,
            0,
            Some(i64::from(error_code::DOWNLOAD_STATE_INITIALIZATION)),
            None
        )
    );
    assert_eq!(p.activity("delta-failed").await.len(), 1);

    // The next check is answered with the full payload, which does not read the source.
    let served = p.server.relay.served.load(Ordering::SeqCst);
    let mut agent = agent;
    let outcome = blocking(move || agent.check(InstallSource::Scheduler).unwrap()).await;
    assert!(
        matches!(outcome, CheckOutcome::Staged { ref version, .. } if version == "1.1.0"),
        "{outcome:?}"
    );
    asserts_new_staged(&host, &p.new);
    assert!(p.server.relay.served.load(Ordering::SeqCst) - served >= p.full_size);
    assert_eq!(p.activity("delta-fallback").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_with_another_root_hash_refuses_the_delta_without_reading_the_slot() {
    let p = Published::start().await;
    let other = wellcar_contract::RootHash::from_bytes([0x0c; 32]);
    let host = p.host(MACHINE, other);
    let mut agent = host.agent();
    let err = blocking(move || agent.check(InstallSource::Scheduler))
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("error code 20") && text.contains(&other.to_string()),
        "{text}"
    );
    assert_eq!(host.boot_state().b, wellcar_bootstate::SlotState::empty());
}
