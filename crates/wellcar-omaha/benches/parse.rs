//! Parse cost per byte of hostile request bodies against an ordinary one
//! (`cargo bench -p wellcar-omaha --bench parse`).
//!
//! Prints nanoseconds per byte for: an ordinary request (the largest the limits allow, written
//! as `update_engine` writes them); a body of elements carrying the most attributes allowed; and
//! the review's attack, 9,800 attributes on one element in one 64 KiB body. Each hostile case is
//! also printed as a ratio to the ordinary one: with linear attribute handling the ratios stay
//! near 1, where quadratic handling made the attack hundreds of times costlier per byte.

use std::time::Instant;

use wellcar_omaha::{
    AppRequest, Event, Request, MAX_APPS_PER_REQUEST, MAX_ATTRIBUTES_PER_ELEMENT,
    MAX_EVENTS_PER_APP, MAX_REQUEST_BYTES, WELLCAR_APP_ID,
};

fn ordinary() -> String {
    let app = AppRequest {
        app_id: format!("{{{WELLCAR_APP_ID}}}"),
        version: "4081.2.0".into(),
        track: "stable".into(),
        board: "amd64-usr".into(),
        machine_id: "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0".into(),
        boot_id: "{6b3a0c9e-1f2d-4e5a-8b7c-9d0e1f2a3b4c}".into(),
        oem: "qemu".into(),
        aleph_version: "3760.2.0".into(),
        ping: true,
        update_check: Some(Default::default()),
        events: vec![
            Event {
                event_type: 3,
                event_result: 2,
                previous_version: Some("3760.2.0".into()),
                ..Event::default()
            };
            MAX_EVENTS_PER_APP
        ],
        ..AppRequest::default()
    };
    Request {
        updater_version: "update_engine-0.4.10".into(),
        install_source: "scheduler".into(),
        os: None,
        apps: vec![app; MAX_APPS_PER_REQUEST],
    }
    .to_xml()
}

/// Elements with the most attributes allowed each, filling one request body.
fn attribute_heavy() -> String {
    let attrs: String = (0..MAX_ATTRIBUTES_PER_ELEMENT)
        .map(|i| format!(" a{i}=\"v\""))
        .collect();
    let element = format!("<x{attrs}/>");
    let count = (MAX_REQUEST_BYTES - 64) / element.len();
    format!(
        "<request protocol=\"3.0\">{}</request>",
        element.repeat(count)
    )
}

/// The review's attack: as many distinct attributes on one element as fit in one body.
fn attack() -> String {
    let mut attrs = String::new();
    let mut i = 0u32;
    while attrs.len() < MAX_REQUEST_BYTES - 64 {
        attrs.push_str(&format!(" {}=''", char::from_u32(0x4e00 + i).unwrap()));
        i += 1;
    }
    format!("<request protocol=\"3.0\"{attrs}/>")
}

/// Nanoseconds per byte of `Request::parse(body)`, best of `rounds`.
fn ns_per_byte(body: &str, rounds: usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let outcome = Request::parse(body.as_bytes());
        let elapsed = started.elapsed().as_nanos() as f64;
        std::hint::black_box(outcome).ok();
        best = best.min(elapsed / body.len() as f64);
    }
    best
}

fn main() {
    let rounds = if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        3
    };
    let ordinary = ordinary();
    let base = ns_per_byte(&ordinary, rounds);
    println!(
        "ordinary request:      {:>6} bytes, {base:.2} ns/byte",
        ordinary.len()
    );
    for (name, body) in [
        ("attribute-heavy body:", attribute_heavy()),
        ("9,800-attribute attack:", attack()),
    ] {
        let cost = ns_per_byte(&body, rounds);
        let verdict = match Request::parse(body.as_bytes()) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        println!(
            "{name:<23} {:>6} bytes, {cost:.2} ns/byte, {:.2}x ordinary; {verdict}",
            body.len(),
            cost / base
        );
    }
}
