//! Tests of [`super`]: the corpus of real Omaha answers, round trips and limits.

use super::*;

use crate::corpus::read as corpus;

fn sha(b64: &str) -> [u8; 32] {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .try_into()
        .unwrap()
}

enum Want {
    Update {
        version: &'static str,
        url: &'static str,
        size: u64,
        sha256: &'static str,
        delta: bool,
        backoff_off: bool,
    },
    NoUpdate,
    Invalid,
    BadDigest,
    Malformed,
}

/// Every response in the corpus with the client-side reading INDEX.md expects.
const RESPONSES: &[(&str, Want)] = &[
    (
        "03-response-goomaha-ue-update-ok.xml",
        Want::Update {
            version: "9999.0.0",
            url: "http://kam:8080/static/update.gz",
            size: 67546213,
            sha256: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=",
            delta: false,
            backoff_off: false,
        },
    ),
    (
        "05-response-goomaha-ue-noupdate-MALFORMED.xml",
        Want::Malformed,
    ),
    (
        "06-response-goomaha-protocoltest-sample-update.xml",
        Want::Update {
            version: "9999.0.0",
            url: "http://kam:8080/static/update.gz",
            size: 67546213,
            sha256: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=",
            delta: true,
            backoff_off: false,
        },
    ),
    (
        "07-response-goomaha-example-newresponse.xml",
        Want::Update {
            version: "9999.0.0",
            url: "http://localhost/updates/update.gz",
            size: 67546213,
            sha256: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=",
            delta: true,
            backoff_off: true,
        },
    ),
    (
        "08-response-goomaha-multi-manifest-floors.xml",
        Want::BadDigest,
    ),
    (
        "13-response-nebraska-updater-update-exists.xml",
        Want::BadDigest,
    ),
    ("14-response-nebraska-updater-noupdate.xml", Want::NoUpdate),
    ("15-response-nebraska-updater-error.xml", Want::Invalid),
    (
        "16-response-nebraska-updater-app-without-updatecheck.xml",
        Want::Invalid,
    ),
    ("18-response-ue-unittest-noupdate.xml", Want::NoUpdate),
    (
        "20-response-ue-unittest-missing-status-INVALID.xml",
        Want::Invalid,
    ),
    (
        "21-response-ue-unittest-missing-field-no-ping-no-required.xml",
        Want::BadDigest,
    ),
    (
        "22-response-ue-unittest-codebase-without-trailing-slash.xml",
        Want::BadDigest,
    ),
    (
        "26-response-google-v3-positive-multiapp.xml",
        Want::NoUpdate,
    ),
    (
        "28-response-flatcar-update-local-server-rendered.xml",
        Want::Update {
            version: "3732.0.0",
            url: "http://localhost:9091/flatcar_production_update.gz",
            size: 382137917,
            sha256: "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=",
            delta: false,
            backoff_off: true,
        },
    ),
    (
        "39-response-nebraska-recon-noupdate-with-ping-and-event-acks.xml",
        Want::NoUpdate,
    ),
    (
        "40-response-nebraska-recon-unknown-appid-error.xml",
        Want::Invalid,
    ),
];

#[test]
fn every_corpus_response_reads_as_indexed() {
    for (file, want) in RESPONSES {
        let parsed = Response::parse(&corpus(file));
        match want {
            Want::Malformed => {
                assert!(parsed.is_err(), "{file} must not parse");
                continue;
            }
            _ => assert!(parsed.is_ok(), "{file}: {parsed:?}"),
        }
        let decision = parsed.unwrap().update_decision();
        match want {
            Want::Update {
                version,
                url,
                size,
                sha256,
                delta,
                backoff_off,
            } => {
                let Ok(UpdateDecision::Update(info)) = decision else {
                    panic!("{file}: {decision:?}")
                };
                assert_eq!(info.version, *version, "{file}");
                assert_eq!(info.urls[0], *url, "{file}");
                assert_eq!(info.size, *size, "{file}");
                assert_eq!(info.sha256, sha(sha256), "{file}");
                assert_eq!(info.is_delta, *delta, "{file}");
                assert_eq!(info.disable_payload_backoff, *backoff_off, "{file}");
            }
            Want::NoUpdate => assert!(
                matches!(decision, Ok(UpdateDecision::NoUpdate { .. })),
                "{file}: {decision:?}"
            ),
            Want::Invalid => assert!(
                matches!(
                    decision,
                    Err(InterpretError::BadStatus(_) | InterpretError::NoUpdateCheck)
                ),
                "{file}: {decision:?}"
            ),
            Want::BadDigest => assert!(
                matches!(decision, Err(InterpretError::BadSha256(_))),
                "{file}: {decision:?}"
            ),
            Want::Malformed => unreachable!(),
        }
    }
}

#[test]
fn corpus_codebase_without_slash_gets_one() {
    let r = Response::parse(&corpus(
        "22-response-ue-unittest-codebase-without-trailing-slash.xml",
    ))
    .unwrap();
    let uc = r.apps[0].update_check.as_ref().unwrap();
    assert_eq!(uc.codebases, ["http://concat/url/slash/test"]);
    assert_eq!(uc.manifests[0].packages[0].size, 587);
}

#[test]
fn written_response_parses_back_and_is_usable() {
    let resp = Response {
        server: "wellcar".into(),
        elapsed_seconds: 42,
        elapsed_days: Some(7000),
        apps: vec![AppResponse {
            app_id: "{E96281A6-d1af-4bde-9a0a-97b76e56dc57}".into(),
            status: "ok".into(),
            ping_ok: true,
            update_check: Some(UpdateCheckResponse {
                status: "ok".into(),
                poll_interval: Some(1800),
                codebases: vec!["http://h/packages/a&b".into()],
                manifests: vec![Manifest {
                    version: "1.2.3".into(),
                    packages: vec![Package {
                        name: "wellcar_update.bin".into(),
                        sha1_base64: Some("I6DGNAOrJRUxPbCuLw+AITfiVMo=".into()),
                        sha256_hex: None,
                        size: 10,
                        required: Some(true),
                    }],
                    actions: vec![Action {
                        event: "postinstall".into(),
                        sha256_base64: Some("stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=".into()),
                        disable_payload_backoff: true,
                        ..Action::default()
                    }],
                    ..Manifest::default()
                }],
            }),
            event_acks: 2,
        }],
    };
    let xml = resp.to_xml();
    assert!(
        xml.contains("codebase=\"http://h/packages/a&amp;b\""),
        "{xml}"
    );
    let back = Response::parse(xml.as_bytes()).unwrap();
    assert_eq!(back, resp);
    let Ok(UpdateDecision::Update(info)) = back.update_decision() else {
        panic!()
    };
    assert_eq!(info.urls, ["http://h/packages/a&b/wellcar_update.bin"]);
    assert_eq!(info.poll_interval, Some(1800));
}

/// Finding "the agent can be crashed by its server": a response nested as deep as fits in
/// the response size limit is refused at the depth limit on a small stack, and the 1.04 MB
/// attack body is refused by size before it is parsed. At 5098ded the deep tree was freed
/// recursively and the stack overflowed.
#[test]
fn deep_or_oversized_responses_are_refused_on_a_small_stack() {
    let depth = (MAX_RESPONSE_BYTES - "<response></response>".len()) / "<app></app>".len();
    let body = format!(
        "<response>{}{}</response>",
        "<app>".repeat(depth),
        "</app>".repeat(depth)
    );
    assert!(body.len() <= MAX_RESPONSE_BYTES);
    let err =
        crate::xml::tests::on_small_stack(move || Response::parse(body.as_bytes())).unwrap_err();
    assert!(
        matches!(&err, ParseError::TooDeep { element, max: crate::MAX_DEPTH, .. } if element == "app"),
        "{err}"
    );
    assert!(err.to_string().contains("depth limit of 32"), "{err}");

    let attack = "<a>".repeat(149_000) + &"</a>".repeat(149_000);
    assert!(attack.len() > 1_000_000);
    let err =
        crate::xml::tests::on_small_stack(move || Response::parse(attack.as_bytes())).unwrap_err();
    assert_eq!(
        err,
        ParseError::TooLarge {
            document: "response",
            bytes: 7 * 149_000,
            max: MAX_RESPONSE_BYTES
        }
    );
}

/// The largest response a Wellcar server writes (an answer to the largest request the
/// limits allow: every app pinged, offered an update with a 2 KB URL, and every event acked;
/// about 25 KB) is well inside the response limits.
#[test]
fn the_largest_server_response_is_within_the_limits() {
    let app = AppResponse {
        app_id: format!("{{{}}}", crate::WELLCAR_APP_ID),
        status: "ok".into(),
        ping_ok: true,
        update_check: Some(UpdateCheckResponse {
            status: "ok".into(),
            poll_interval: Some(1800),
            codebases: vec![format!("https://{}/", "u".repeat(2000))],
            manifests: vec![Manifest {
                version: "4081.2.0+nightly-20251231-0000".into(),
                packages: vec![Package {
                    name: "wellcar_update.bin".into(),
                    sha1_base64: Some("I6DGNAOrJRUxPbCuLw+AITfiVMo=".into()),
                    sha256_hex: Some("ab".repeat(32)),
                    size: 1 << 40,
                    required: Some(true),
                }],
                actions: vec![Action {
                    event: "postinstall".into(),
                    sha256_base64: Some("stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=".into()),
                    disable_payload_backoff: true,
                    ..Action::default()
                }],
                ..Manifest::default()
            }],
        }),
        event_acks: crate::MAX_EVENTS_PER_APP,
    };
    let resp = Response {
        server: "wellcar".into(),
        elapsed_seconds: 86_399,
        elapsed_days: Some(7_000),
        apps: vec![app; crate::MAX_APPS_PER_REQUEST],
    };
    let xml = resp.to_xml();
    assert!(xml.len() < MAX_RESPONSE_BYTES / 4, "{} bytes", xml.len());
    assert_eq!(Response::parse(xml.as_bytes()).unwrap(), resp);
}
