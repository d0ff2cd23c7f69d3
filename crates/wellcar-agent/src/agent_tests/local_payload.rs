//! Pinned installs ([`crate::pin`]): a local payload file through the agent's install (the
//! same slot writes, verification and staging as a download), its refusals, and a version
//! pin against the real server.

use wellcar_disk::Slot;
use wellcar_payload::SigningKey;

use super::fixture::*;
use super::{asserts_nothing_staged, asserts_staged};
use crate::agent::{Agent, AgentError, CheckOutcome, InstallSource};
use crate::pin::{InstallPin, LocalPayloadRefusal, PinError};
use crate::slots::EspSlots;
use crate::state::{Operation, Phase};

fn payload_pin(payload: &Payload) -> InstallPin {
    InstallPin {
        to_version: None,
        payload: Some(payload.path.clone()),
    }
}

/// A host with updates disabled (an air-gapped machine) trusting `key`.
fn air_gapped(key: &SigningKey) -> Host {
    Host::new("disabled", key, "")
}

#[test]
fn local_payload_is_installed_verified_and_staged_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    let host = air_gapped(&key);
    let mut agent = host.agent();
    let outcome = agent
        .check_pinned(InstallSource::OnDemand, Some(&payload_pin(&payload)))
        .unwrap();
    assert_eq!(
        outcome,
        CheckOutcome::Staged {
            version: "1.1.0".into(),
            poll_interval: None
        }
    );
    asserts_staged(&host, &payload);
    assert_eq!(agent.state().operation(), Operation::UpdatedNeedReboot);
    assert!(host.paths.reboot_required.exists());
    // A second pinned install while this one waits for its reboot is refused as Flatcar's is.
    let err = agent
        .check_pinned(InstallSource::OnDemand, Some(&payload_pin(&payload)))
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Pin(PinError::AlreadyStaged)),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("update_engine_client -reset_status"));
}

fn refused(host: &Host, pin: &InstallPin) -> LocalPayloadRefusal {
    let mut agent = host.agent();
    let err = agent
        .check_pinned(InstallSource::OnDemand, Some(pin))
        .unwrap_err();
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    asserts_nothing_staged(host);
    assert!(
        host.slot_bytes(Slot::B, 4096).iter().all(|&b| b == 0),
        "nothing written to B"
    );
    assert!(!host.paths.reboot_required.exists());
    match err {
        AgentError::Pin(PinError::LocalPayload { path, refusal }) => {
            assert_eq!(Some(path), pin.payload.clone());
            refusal
        }
        other => panic!("not a refusal: {other}"),
    }
}

#[test]
fn local_payload_signed_by_a_wrong_key_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let payload = make_payload(dir.path(), "1.1.0", &SigningKey::from_bytes(&[0x42; 32]));
    let refusal = refused(&air_gapped(&key()), &payload_pin(&payload));
    assert!(
        matches!(refusal, LocalPayloadRefusal::WrongKey(_)),
        "{refusal}"
    );
    assert!(refusal.to_string().starts_with("wrong key: "), "{refusal}");
}

#[test]
fn local_payload_of_an_older_or_the_same_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    for version in ["0.9.0", "1.0.0"] {
        let payload = make_payload(dir.path(), version, &key);
        let refusal = refused(&air_gapped(&key), &payload_pin(&payload));
        assert_eq!(
            refusal.to_string(),
            format!("older or same version: the payload is {version}, the booted version is 1.0.0")
        );
    }
}

#[test]
fn local_payload_for_another_board_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    let host = air_gapped(&key);
    host.put(
        &host.paths.os_release,
        "ID=wellcar\nVERSION_ID=1.0.0\nWELLCAR_BOARD=arm64-usr\n",
    );
    let refusal = refused(&host, &payload_pin(&payload));
    assert_eq!(
        refusal.to_string(),
        "another board: the payload is for amd64-usr, this machine is arm64-usr"
    );
}

#[test]
fn local_payload_of_another_version_than_asked_for_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    let pin = InstallPin {
        to_version: Some("1.2.0".into()),
        ..payload_pin(&payload)
    };
    let refusal = refused(&air_gapped(&key), &pin);
    assert_eq!(
        refusal.to_string(),
        "other version: the payload is 1.1.0, --to-version asked for 1.2.0"
    );
}

/// A check pinned to `version` (`flatcar-update --to-version`), run off the runtime's threads;
/// gives the agent back.
async fn pinned_check(
    mut agent: Agent<EspSlots>,
    version: &str,
) -> (Result<CheckOutcome, AgentError>, Agent<EspSlots>) {
    let pin = InstallPin {
        to_version: Some(version.into()),
        payload: None,
    };
    blocking(move || {
        (
            agent.check_pinned(InstallSource::OnDemand, Some(&pin)),
            agent,
        )
    })
    .await
}

/// The pinned check was answered with no offer at all.
fn asserts_not_offered(result: Result<CheckOutcome, AgentError>, version: &str) {
    let err = result.unwrap_err();
    assert!(
        matches!(
            &err,
            AgentError::Pin(PinError::VersionNotOffered { wanted, offered: None, .. })
                if wanted == version
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_pin_installs_only_the_version_asked_for() {
    let (_dir, _key, payload, server, host) = offered("").await;
    // The server honours targetversionprefix: it has no 1.2.0, so it offers nothing.
    let (result, agent) = pinned_check(host.agent(), "1.2.0").await;
    asserts_not_offered(result, "1.2.0");
    asserts_nothing_staged(&host);
    assert_eq!(
        server
            .relay
            .full_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing downloaded"
    );
    // `1.1` is asked for exactly (`targetversionprefix=1.1$`): 1.1.0 is not offered either.
    let (result, agent) = pinned_check(agent, "1.1").await;
    asserts_not_offered(result, "1.1");
    let (result, _agent) = pinned_check(agent, "1.1.0").await;
    assert!(matches!(result.unwrap(), CheckOutcome::Staged { version, .. } if version == "1.1.0"));
    asserts_staged(&host, &payload);
}

#[test]
fn version_pin_without_a_server_says_so() {
    let host = air_gapped(&key());
    let mut agent = host.agent();
    let err = agent
        .check_pinned(
            InstallSource::OnDemand,
            Some(&InstallPin {
                to_version: Some("1.1.0".into()),
                payload: None,
            }),
        )
        .unwrap_err();
    assert!(err.to_string().contains("SERVER=disabled"), "{err}");
}
