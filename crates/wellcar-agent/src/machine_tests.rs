//! Transition tables for [`Machine::step`]: no I/O, no sleeps, no clock.

use super::*;
use crate::state::Operation;

/// The root hash a verified slot read back as.
const ROOT: RootHash = RootHash::from_bytes([0x5a; 32]);

const BOOT: &str = "boot-1";

/// An Omaha event as (type, result, error code).
type Event = (u32, u32, Option<u32>);
/// One row of the input table: name, phase before, input, phase after, effects, events queued.
type InputRow = (&'static str, Phase, Input, Phase, Vec<Effect>, Vec<Event>);
/// One row of the boot table: name, phase before, boot, phase after, events, previous version.
type BootRow = (
    &'static str,
    Phase,
    Booted,
    Phase,
    Vec<Event>,
    Option<&'static str>,
);

fn booted() -> Booted {
    Booted {
        version: "1.0.0".into(),
        boot_id: BOOT.into(),
        slot: Slot::A,
    }
}

fn offer(sha: &str) -> Offer {
    Offer {
        version: "1.1.0".into(),
        urls: vec!["http://u/p".into()],
        size: 100,
        sha256: sha.repeat(64),
        target: Slot::B,
        is_delta: false,
    }
}

fn checkpoint(offset: u64) -> Checkpoint {
    Checkpoint {
        payload_digest: wellcar_payload::Sha256Digest::of(b"payload"),
        data_start: 10,
        payload_offset: offset,
        next_operation: 1,
    }
}

fn download(offset: Option<u64>) -> Download {
    Download {
        offer: offer("a"),
        checkpoint: offset.map(checkpoint),
        received: offset.unwrap_or(0),
        finish_reported: false,
    }
}

fn staged(boot_id: &str) -> Phase {
    Phase::Staged(StagedUpdate {
        version: "1.1.0".into(),
        size: 100,
        slot: Slot::B,
        boot_id: boot_id.into(),
    })
}

fn failure(retryable: bool) -> InstallFailure {
    InstallFailure {
        code: if retryable {
            error_code::DOWNLOAD_TRANSFER
        } else {
            error_code::PAYLOAD_HASH_MISMATCH
        },
        reason: "boom".into(),
        retryable,
    }
}

/// A machine in `phase` that has seen the booted system (A, 1.0.0).
fn machine(phase: Phase) -> Machine {
    let mut m = Machine::new(AgentState {
        aleph_version: Some("1.0.0".into()),
        ..AgentState::in_phase(phase)
    });
    m.step(Input::Booted(booted()));
    m
}

fn events(m: &Machine) -> Vec<(u32, u32, Option<u32>)> {
    m.state()
        .outbox
        .iter()
        .map(|e| (e.event_type, e.event_result, e.error_code))
        .collect()
}

#[test]
fn single_transitions() {
    let invalidate = Effect::Invalidate { slot: Slot::B };
    let download0 = Effect::Download { attempt: 0 };
    let authenticate = |attempt| Effect::Authenticate { attempt };
    let verified = Phase::Verified {
        offer: offer("a"),
        root_hash: ROOT,
    };
    let stage = Effect::Stage {
        slot: Slot::B,
        root_hash: ROOT,
        version: "1.1.0".into(),
    };
    let verifying = Phase::Verifying(Download {
        finish_reported: true,
        received: 100,
        ..download(Some(100))
    });
    let offered = |booted_is_good| Input::Offered {
        offer: offer("a"),
        booted_is_good,
        now: 7,
    };
    #[rustfmt::skip]
    let table: Vec<InputRow> = vec![
        ("no update from idle", Phase::default(), Input::NoUpdate { now: 7 },
            Phase::default(), vec![Effect::Persist], vec![]),
        ("no update drops a paused download", Phase::Idle { paused: Some(download(Some(50))) },
            Input::NoUpdate { now: 7 }, Phase::default(), vec![Effect::Persist], vec![]),
        ("a new offer queues 13/1 and authenticates the payload, not yet invalidating the target",
            Phase::default(), offered(true), Phase::Offered { offer: offer("a") },
            vec![Effect::Persist, Effect::Report, authenticate(0)], vec![(13, 1, None)]),
        ("authenticated: only now is the target invalidated", Phase::Offered { offer: offer("a") },
            Input::Authenticated, Phase::Offered { offer: offer("a") }, vec![invalidate.clone()],
            vec![]),
        ("a transfer failure before authentication retries it",
            Phase::Offered { offer: offer("a") }, Input::Failed(failure(true)),
            Phase::Offered { offer: offer("a") }, vec![authenticate(1)], vec![]),
        ("a payload failing authentication is reported, the target never invalidated",
            Phase::Offered { offer: offer("a") }, Input::Failed(failure(false)), Phase::default(),
            vec![Effect::Persist, Effect::Report, Effect::Finish(End::Failed {
                version: "1.1.0".into(), failure: failure(false) })],
            vec![(3, 0, Some(10))]),
        ("resume of an offer authenticates first", Phase::Offered { offer: offer("a") },
            Input::Resume, Phase::Offered { offer: offer("a") }, vec![authenticate(0)], vec![]),
        ("an offer while the booted slot is on trial is deferred", Phase::default(), offered(false),
            Phase::default(),
            vec![Effect::Persist, Effect::Finish(End::Deferred { version: "1.1.0".into() })], vec![]),
        ("the same offer continues a paused download without 13/1",
            Phase::Idle { paused: Some(download(Some(50))) }, offered(true),
            Phase::Downloading(download(Some(50))), vec![Effect::Persist, invalidate.clone()], vec![]),
        ("another offer replaces a paused download",
            Phase::Idle { paused: Some(Download { offer: offer("c"), ..download(Some(50)) }) },
            offered(true), Phase::Offered { offer: offer("a") },
            vec![Effect::Persist, Effect::Report, authenticate(0)], vec![(13, 1, None)]),
        ("invalidated: the download starts", Phase::Offered { offer: offer("a") }, Input::Invalidated,
            Phase::Downloading(download(None)), vec![Effect::Persist, download0.clone()], vec![]),
        ("a checkpoint is persisted", Phase::Downloading(download(None)),
            Input::Checkpointed(checkpoint(40)), Phase::Downloading(download(Some(40))),
            vec![Effect::Persist], vec![]),
        ("downloaded: 14/1 and verification", Phase::Downloading(download(Some(100))),
            Input::Downloaded { resumed_complete: false }, verifying.clone(),
            vec![Effect::Persist, Effect::Report, Effect::Verify { attempt: 0 }], vec![(14, 1, None)]),
        ("a retryable transfer failure retries", Phase::Downloading(download(Some(40))),
            Input::Failed(failure(true)), Phase::Downloading(download(Some(40))),
            vec![Effect::Download { attempt: 1 }], vec![]),
        ("a fatal transfer failure is reported and drops the download",
            Phase::Downloading(download(Some(40))), Input::Failed(failure(false)), Phase::default(),
            vec![Effect::Persist, Effect::Report, Effect::Finish(End::Failed {
                version: "1.1.0".into(), failure: failure(false) })],
            vec![(3, 0, Some(10))]),
        ("verified: staging", verifying.clone(), Input::Verified { root_hash: ROOT },
            verified.clone(), vec![Effect::Persist, stage.clone()], vec![]),
        ("staged: 3/1, reboot-required", verified.clone(), Input::Staged, staged(BOOT),
            vec![Effect::Persist, Effect::RebootRequired, Effect::Report,
                 Effect::Finish(End::Staged { version: "1.1.0".into() })],
            vec![(3, 1, None)]),
        ("resume of a verified install stages", verified.clone(), Input::Resume, verified,
            vec![stage], vec![]),
        ("resume of a download invalidates first", Phase::Downloading(download(Some(40))),
            Input::Resume, Phase::Downloading(download(Some(40))), vec![invalidate], vec![]),
        ("resume with nothing in progress", Phase::default(), Input::Resume, Phase::default(),
            vec![Effect::Finish(End::Nothing)], vec![]),
        ("an answer that does not fit is ignored", Phase::default(), Input::Staged,
            Phase::default(), vec![], vec![]),
    ];
    for (name, from, input, to, effects, queued) in table {
        let mut m = machine(from);
        let got = m.step(input);
        assert_eq!(m.state().phase, to, "{name}: phase");
        assert_eq!(got, effects, "{name}: effects");
        assert_eq!(events(&m), queued, "{name}: events");
    }
}

#[test]
fn reconcile_with_the_booted_system() {
    let booted_b = Booted {
        version: "1.1.0".into(),
        boot_id: "boot-2".into(),
        slot: Slot::B,
    };
    let booted_a_again = Booted {
        boot_id: "boot-2".into(),
        ..booted()
    };
    #[rustfmt::skip]
    let table: Vec<BootRow> = vec![
        ("same boot keeps the staged update", staged(BOOT), booted(), staged(BOOT), vec![], None),
        ("rebooted into the new version: 3/2", staged(BOOT), booted_b.clone(), Phase::default(),
            vec![(3, 2, None)], Some("1.0.0")),
        ("rebooted into the old version: rollback", staged(BOOT), booted_a_again, Phase::default(),
            vec![(3, 0, Some(error_code::ROLLBACK))], None),
        ("an install aimed at the now booted slot is dropped",
            Phase::Downloading(download(Some(40))), booted_b.clone(), Phase::default(),
            vec![(3, 2, None)], Some("1.0.0")),
        ("a paused download aimed at it too",
            Phase::Idle { paused: Some(download(Some(40))) }, booted_b, Phase::default(),
            vec![(3, 2, None)], Some("1.0.0")),
    ];
    for (name, from, boot, to, queued, previous) in table {
        let mut m = Machine::new(AgentState {
            previous_version: Some("1.0.0".into()),
            busy: Some(Busy::Checking),
            ..AgentState::in_phase(from)
        });
        let effects = m.step(Input::Booted(boot.clone()));
        assert_eq!(m.state().phase, to, "{name}");
        assert_eq!(effects, [Effect::Persist], "{name}: busy cleared at least");
        assert_eq!(m.state().busy, None, "{name}");
        assert_eq!(events(&m), queued, "{name}");
        let reported = m
            .state()
            .outbox
            .first()
            .and_then(|e| e.previous_version.as_deref());
        assert_eq!(reported, previous, "{name}");
        // Reported once: a second look at the same boot changes nothing.
        assert!(m.step(Input::Booted(boot)).is_empty(), "{name}");
        assert_eq!(events(&m), queued, "{name}");
    }
}

#[test]
fn status_names_follow_the_check() {
    let mut m = machine(Phase::default());
    assert_eq!(m.step(Input::CheckStarted), [Effect::Persist]);
    assert_eq!(m.state().operation(), Operation::CheckingForUpdate);
    m.step(Input::CheckFailed {
        error: "down".into(),
    });
    assert_eq!(m.state().operation(), Operation::Idle);
    assert_eq!(m.state().consecutive_failures(), 1);
    m.step(Input::CheckStarted);
    m.step(Input::CheckFailed {
        error: "down".into(),
    });
    assert_eq!(m.state().consecutive_failures(), 2);
    m.step(Input::CheckStarted);
    m.step(Input::NoUpdate { now: 9 });
    assert_eq!(m.state().consecutive_failures(), 0);
    assert_eq!(m.state().last_checked_time, 9);
    assert_eq!(m.state().last_error, None);
}

#[test]
fn transfer_retries_are_bounded_then_the_download_pauses() {
    let mut m = machine(Phase::Downloading(download(Some(40))));
    for attempt in 1..TRANSFER_ATTEMPTS {
        assert_eq!(
            m.step(Input::Failed(failure(true))),
            [Effect::Download { attempt }]
        );
    }
    let effects = m.step(Input::Failed(failure(true)));
    assert_eq!(effects[..2], [Effect::Persist, Effect::Report]);
    assert_eq!(
        m.state().phase,
        Phase::Idle {
            paused: Some(download(Some(40)))
        }
    );
    assert_eq!(m.state().operation(), Operation::ReportingErrorEvent);
    assert_eq!(m.step(Input::Reported), [Effect::Persist]);
    assert_eq!(m.state().operation(), Operation::Idle);
    assert_eq!(events(&m), [(3, 0, Some(error_code::DOWNLOAD_TRANSFER))]);
}

#[test]
fn a_download_completed_by_an_earlier_run_is_downloaded_once_more_if_it_does_not_verify() {
    let verifying = Phase::Verifying(Download {
        finish_reported: true,
        ..download(Some(100))
    });
    let mut m = machine(verifying);
    assert_eq!(
        m.step(Input::Resume),
        [Effect::Invalidate { slot: Slot::B }]
    );
    assert_eq!(m.step(Input::Invalidated), [Effect::Verify { attempt: 0 }]);
    assert_eq!(
        m.step(Input::Failed(failure(false))),
        [Effect::Persist, Effect::Download { attempt: 0 }]
    );
    let Phase::Downloading(d) = &m.state().phase else {
        panic!("{:?}", m.state().phase)
    };
    assert_eq!((d.checkpoint.as_ref(), d.finish_reported), (None, true));
    m.step(Input::Checkpointed(checkpoint(100)));
    m.step(Input::Downloaded {
        resumed_complete: false,
    });
    assert!(events(&m).is_empty(), "14/1 not repeated");
    // This time the verification failure is final.
    let effects = m.step(Input::Failed(failure(false)));
    assert!(matches!(
        effects.last(),
        Some(Effect::Finish(End::Failed { .. }))
    ));
    assert_eq!(m.state().phase, Phase::default());
}

#[test]
fn a_download_streamed_by_this_run_that_does_not_verify_fails() {
    let mut m = machine(Phase::Downloading(download(Some(100))));
    m.step(Input::Downloaded {
        resumed_complete: false,
    });
    let effects = m.step(Input::Failed(failure(false)));
    assert!(matches!(
        effects.last(),
        Some(Effect::Finish(End::Failed { .. }))
    ));
    assert_eq!(events(&m), [(14, 1, None), (3, 0, Some(10))]);
}

#[test]
fn acknowledged_events_leave_the_outbox() {
    let mut m = machine(Phase::default());
    m.step(Input::Offered {
        offer: offer("a"),
        booted_is_good: true,
        now: 1,
    });
    assert_eq!(m.state().outbox.len(), 1);
    assert!(m.step(Input::Acked { count: 0 }).is_empty());
    assert_eq!(m.step(Input::Acked { count: 5 }), [Effect::Persist]);
    assert!(m.state().outbox.is_empty());
    assert_eq!(m.state().outbox.len(), 0);
}
