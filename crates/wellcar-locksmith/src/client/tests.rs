//! The lock client against a real etcd (v2 API) started by each test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use wellcar_test_support::etcd::Etcd;

use super::*;
use crate::keys::KeysClient;

fn config(etcd: &Etcd) -> EtcdConfig {
    EtcdConfig::with_endpoints([etcd.url.clone()])
}

/// A raw v2 request the way Go's `go.etcd.io/etcd/client` sends it; returns (status, body).
fn raw(etcd: &Etcd, method: &str, key: &str, query: &str, value: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{query}", KeysClient::key_url(&etcd.url, key));
    let response = match (method, value) {
        ("GET", _) => agent.get(&url).call(),
        ("PUT", Some(v)) => agent.put(&url).send_form([("value", v)]),
        _ => unreachable!("{method}"),
    }
    .unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().read_to_string().unwrap())
}

/// The value stored at `key`, read with a raw GET.
fn raw_value(etcd: &Etcd, key: &str) -> String {
    let (status, body) = raw(etcd, "GET", key, "", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["node"]["value"].as_str().unwrap().to_owned()
}

#[test]
fn semaphore_keys_are_locksmiths() {
    let default = "coreos.com/updateengine/rebootlock/semaphore";
    assert_eq!(semaphore_key(None).unwrap(), default);
    assert_eq!(semaphore_key(Some("")).unwrap(), default);
    // locksmith's etcd_test.go cases.
    assert_eq!(
        semaphore_key(Some("database")).unwrap(),
        "coreos.com/updateengine/rebootlock/groups/database/semaphore"
    );
    assert_eq!(
        semaphore_key(Some("prod/database")).unwrap(),
        "coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore"
    );
    // Go's url.QueryEscape: space is `+`, `~` stays, `*` and non-ASCII are escaped.
    assert_eq!(
        semaphore_key(Some("a b~*é")).unwrap(),
        "coreos.com/updateengine/rebootlock/groups/a+b~%2A%C3%A9/semaphore"
    );
    let e = semaphore_key(Some("..")).unwrap_err();
    assert!(matches!(e, Error::InvalidGroup { .. }), "{e}");
}

#[test]
fn lock_unlock_and_set_max_follow_locksmith() {
    let etcd = Etcd::start();
    let lock = EtcdLock::new(&config(&etcd), None).unwrap();
    // Init wrote exactly what locksmith's Init writes.
    assert_eq!(
        raw_value(&etcd, lock.key()),
        r#"{"semaphore":1,"max":1,"holders":null}"#
    );
    let s = lock.get().unwrap();
    assert!(s.index > 0, "{s:?}");
    assert_eq!((s.semaphore, s.max, s.holders()), (1, 1, &[][..]));

    let s = lock.lock("a").unwrap();
    assert_eq!((s.semaphore, s.holders()), (0, &["a".to_owned()][..]));
    assert_eq!(s, lock.get().unwrap(), "lock returns what is stored");
    assert_eq!(
        raw_value(&etcd, lock.key()),
        r#"{"semaphore":0,"max":1,"holders":["a"]}"#
    );
    let full = lock.lock("b").unwrap_err();
    assert!(full.is_full(), "{full}");
    assert!(full.to_string().contains("semaphore is at 0"), "{full}");
    assert!(full.to_string().contains(lock.key()), "{full}");
    // As locksmith: with no free slot, even the holder gets "full", not "holder exists".
    assert!(lock.lock("a").unwrap_err().is_full());
    let not_held = lock.unlock("b").unwrap_err();
    assert!(not_held.is_not_held(), "{not_held}");
    assert!(
        not_held.to_string().contains("holder does not exist"),
        "{not_held}"
    );

    let (old, s) = lock.set_max(2).unwrap();
    assert_eq!((old, s.semaphore, s.max), (1, 1, 2));
    let again = lock.lock("a").unwrap_err();
    assert!(again.is_already_held(), "{again}");
    assert!(again.to_string().contains("holder exists"), "{again}");
    lock.lock("b").unwrap();
    assert!(lock.lock("c").unwrap_err().is_full());

    // A second client (a restart) does not reset the semaphore.
    let other = EtcdLock::new(&config(&etcd), Some("")).unwrap();
    assert_eq!(other.get().unwrap().holders(), ["a", "b"]);

    assert!(other.unlock_if_held("a").unwrap());
    assert!(!other.unlock_if_held("a").unwrap());
    let s = other.unlock("b").unwrap();
    assert_eq!((s.semaphore, s.max), (2, 2));
    assert_eq!(
        raw_value(&etcd, lock.key()),
        r#"{"semaphore":2,"max":2,"holders":[]}"#
    );
    // Lowering max below the holders drives the semaphore negative, as locksmith.
    lock.lock("a").unwrap();
    lock.lock("b").unwrap();
    let (old, s) = lock.set_max(1).unwrap();
    assert_eq!((old, s.semaphore, s.max), (2, -1, 1));
}

#[test]
fn groups_have_their_own_escaped_keys() {
    let etcd = Etcd::start();
    let default = EtcdLock::new(&config(&etcd), None).unwrap();
    let group = EtcdLock::new(&config(&etcd), Some("prod/database")).unwrap();
    assert_eq!(
        group.key(),
        "coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore"
    );
    group.lock("m1").unwrap();
    assert!(default.get().unwrap().holders().is_empty());
    // The key etcd holds is the literal escaped name (as Go's client sends it).
    let (status, body) = raw(
        &etcd,
        "GET",
        "coreos.com/updateengine/rebootlock/groups/",
        "",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""key":"/coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase""#),
        "{body}"
    );
    assert_eq!(
        raw_value(&etcd, group.key()),
        r#"{"semaphore":0,"max":1,"holders":["m1"]}"#
    );
}

#[test]
fn only_one_compare_and_swap_on_an_index_wins() {
    let etcd = Etcd::start();
    let lock = EtcdLock::new(&config(&etcd), None).unwrap();
    let keys = KeysClient::new(&config(&etcd)).unwrap();
    let seen = lock.get().unwrap();
    // Two writers that read the same value both try to take the one slot.
    let mut a = seen.clone();
    a.lock("a").unwrap();
    let mut b = seen.clone();
    b.lock("b").unwrap();
    keys.put(
        lock.key(),
        &a.to_json(),
        Precondition::ModifiedIndex(seen.index),
    )
    .unwrap();
    let lost = keys
        .put(
            lock.key(),
            &b.to_json(),
            Precondition::ModifiedIndex(seen.index),
        )
        .unwrap_err();
    assert!(
        matches!(
            lost,
            Error::Etcd {
                code: COMPARE_FAILED,
                ..
            }
        ),
        "{lost}"
    );
    assert_eq!(lock.get().unwrap().holders(), ["a"]);
}

#[test]
fn concurrent_lockers_never_exceed_max() {
    const LOCKERS: usize = 12;
    const ROUNDS: usize = 4;
    const MAX: i64 = 2;
    let etcd = Etcd::start();
    EtcdLock::new(&config(&etcd), None)
        .unwrap()
        .set_max(MAX)
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let most_holders = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..LOCKERS)
        .map(|n| {
            let config = config(&etcd);
            let (inside, most_inside, most_holders, grants) = (
                inside.clone(),
                most_inside.clone(),
                most_holders.clone(),
                grants.clone(),
            );
            std::thread::spawn(move || {
                let lock = EtcdLock::new(&config, None).unwrap();
                let id = format!("machine-{n:02}");
                for _ in 0..ROUNDS {
                    let held = loop {
                        match lock.lock(&id) {
                            Ok(s) => break s,
                            Err(e) if e.is_full() => continue,
                            Err(e) => panic!("{id}: {e}"),
                        }
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now, Ordering::SeqCst);
                    most_holders.fetch_max(held.holders().len(), Ordering::SeqCst);
                    grants.fetch_add(1, Ordering::SeqCst);
                    assert!(held.is_held_by(&id));
                    assert!(held.semaphore >= 0, "{held:?}");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    lock.unlock(&id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(grants.load(Ordering::SeqCst), LOCKERS * ROUNDS);
    assert!(
        most_inside.load(Ordering::SeqCst) <= MAX as usize,
        "{} lockers held the lock at once (max {MAX})",
        most_inside.load(Ordering::SeqCst)
    );
    assert!(most_holders.load(Ordering::SeqCst) <= MAX as usize);
    let end = EtcdLock::new(&config(&etcd), None).unwrap().get().unwrap();
    assert_eq!((end.semaphore, end.max, end.holders()), (MAX, MAX, &[][..]));
}

#[test]
fn tls_etcd_with_client_certificates() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().unwrap();
    let mut with_cert = config(&etcd);
    with_cert.ca_file = Some(tls.ca_file.clone());
    with_cert.cert_file = Some(tls.client_cert_file.clone());
    with_cert.key_file = Some(tls.client_key_file.clone());
    let lock = EtcdLock::new(&with_cert, Some("tls")).unwrap();
    lock.lock("m1").unwrap();
    assert_eq!(lock.get().unwrap().holders(), ["m1"]);

    // Without a client certificate etcd refuses the handshake.
    let mut anonymous = config(&etcd);
    anonymous.ca_file = Some(tls.ca_file.clone());
    let e = EtcdLock::new(&anonymous, Some("tls")).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&etcd.url), "{e}");
    // Without the CA, etcd's certificate is refused.
    let mut untrusted = with_cert.clone();
    untrusted.ca_file = None;
    let e = EtcdLock::new(&untrusted, Some("tls")).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn unreachable_endpoints_are_named_and_the_next_one_is_tried() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let e = EtcdLock::new(&EtcdConfig::with_endpoints([closed.clone()]), None).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "{closed}/v2/keys/coreos.com/updateengine/rebootlock/semaphore"
        )),
        "{e}"
    );

    let etcd = Etcd::start();
    let lock = EtcdLock::new(
        &EtcdConfig::with_endpoints([closed, etcd.url.clone()]),
        None,
    )
    .unwrap();
    lock.lock("m1").unwrap();
    assert_eq!(lock.get().unwrap().holders(), ["m1"]);
}

#[test]
fn interop_with_values_written_as_locksmith_writes_them() {
    let etcd = Etcd::start();
    let key = semaphore_key(Some("interop")).unwrap();
    // locksmith's Init (Go client Create: PUT ?prevExist=false, value=json.Marshal(newSemaphore())).
    let (status, body) = raw(
        &etcd,
        "PUT",
        &key,
        "?prevExist=false",
        Some(r#"{"semaphore":1,"max":1,"holders":null}"#),
    );
    assert_eq!(status, 201, "{body}");
    let lock = EtcdLock::new(&config(&etcd), Some("interop")).unwrap();
    let s = lock.get().unwrap();
    assert_eq!((s.semaphore, s.max, s.holders.clone()), (1, 1, None));

    // A value as in locksmith's etcd_test.go, written with Set(prevIndex).
    let (status, body) = raw(
        &etcd,
        "PUT",
        &key,
        &format!("?prevIndex={}", s.index),
        Some(r#"{"semaphore": 1, "max": 2, "holders": ["foo", "bar"]}"#),
    );
    assert_eq!(status, 200, "{body}");
    let s = lock.get().unwrap();
    assert_eq!(
        (s.semaphore, s.max, s.holders()),
        (1, 2, &["foo".to_owned(), "bar".to_owned()][..])
    );

    // Locksmith's state after TestDoubleLockSuccess (a and b hold two slots), as Go writes it.
    let (status, body) = raw(
        &etcd,
        "PUT",
        &key,
        &format!("?prevIndex={}", s.index),
        Some(r#"{"semaphore":0,"max":2,"holders":["a","b"]}"#),
    );
    assert_eq!(status, 200, "{body}");
    lock.unlock("a").unwrap();
    assert_eq!(
        raw_value(&etcd, &key),
        r#"{"semaphore":1,"max":2,"holders":["b"]}"#
    );
    lock.set_max(1).unwrap();
    lock.unlock("b").unwrap();
    assert_eq!(
        raw_value(&etcd, &key),
        r#"{"semaphore":1,"max":1,"holders":[]}"#
    );
    lock.lock("machine").unwrap();
    assert_eq!(
        raw_value(&etcd, &key),
        r#"{"semaphore":0,"max":1,"holders":["machine"]}"#
    );
    // A stale prevIndex (Go's Set after someone else changed it) is refused by etcd: 101.
    let (status, body) = raw(
        &etcd,
        "PUT",
        &key,
        &format!("?prevIndex={}", s.index),
        Some(r#"{"semaphore":1,"max":1,"holders":[]}"#),
    );
    assert_eq!(status, 412, "{body}");
    assert!(body.contains(r#""errorCode":101"#), "{body}");

    // Garbage at the key is named, not overwritten.
    let now = lock.get().unwrap();
    raw(
        &etcd,
        "PUT",
        &key,
        &format!("?prevIndex={}", now.index),
        Some("asdf"),
    );
    let e = lock.lock("other").unwrap_err();
    assert!(matches!(e, Error::BadSemaphoreJson { .. }), "{e}");
    assert!(
        e.to_string().contains(&key) && e.to_string().contains("asdf"),
        "{e}"
    );
    assert_eq!(raw_value(&etcd, &key), "asdf");
}

#[test]
fn basic_auth_credentials_are_sent() {
    let etcd = Etcd::start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let root_auth = "Basic cm9vdDpwYXNzd29yZA=="; // root:password
    let setup = |path: &str, body: &str, auth: Option<&str>| {
        let mut request = agent.put(format!("{}{path}", etcd.url));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send(body).unwrap();
        let status = response.status().as_u16();
        assert!(
            (200..300).contains(&status),
            "{path}: {status} {}",
            response.into_body().read_to_string().unwrap()
        );
    };
    // etcd's v2 auth: a root user, auth on, and the guest role stripped of key access.
    setup(
        "/v2/auth/users/root",
        r#"{"user":"root","password":"password"}"#,
        None,
    );
    setup("/v2/auth/enable", "", None);
    setup(
        "/v2/auth/roles/guest",
        r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#,
        Some(root_auth),
    );

    let e = EtcdLock::new(&config(&etcd), None).unwrap_err();
    assert!(matches!(e, Error::Etcd { code: 110, .. }), "{e}");
    assert!(e.to_string().contains(&etcd.url), "{e}");
    let mut with_password = config(&etcd);
    with_password.username = Some("root".into());
    with_password.password = Some("wrong".into());
    assert!(EtcdLock::new(&with_password, None).is_err());
    with_password.password = Some("password".into());
    let lock = EtcdLock::new(&with_password, None).unwrap();
    lock.lock("m1").unwrap();
    assert_eq!(lock.get().unwrap().holders(), ["m1"]);
}

#[test]
fn acquire_counts_holding_already_as_held() {
    let etcd = Etcd::start();
    let lock = EtcdLock::new(&config(&etcd), Some("acquire")).unwrap();
    assert!(lock.acquire("m1").unwrap().is_held_by("m1"));
    // Full, but m1 is the holder: held (lock() says "semaphore is at 0").
    assert!(lock.lock("m1").unwrap_err().is_full());
    assert_eq!(lock.acquire("m1").unwrap().holders(), ["m1"]);
    // Full and held by another: refused.
    let e = lock.acquire("m2").unwrap_err();
    assert!(e.is_full(), "{e}");
    lock.set_max(2).unwrap();
    // A free slot, m1 holding: "holder exists" is held too, and nothing changes.
    let before = lock.get().unwrap();
    assert_eq!(lock.acquire("m1").unwrap(), before);
    assert!(lock.acquire("m2").unwrap().is_held_by("m2"));
}
