//! The Omaha endpoint's per-request limits, over real HTTP on loopback with real SQLite: a
//! request over [`wellcar_omaha::MAX_APPS_PER_REQUEST`] is refused with HTTP 400 before anything
//! is stored, and one at the limit is answered.

use hyper::StatusCode;
use wellcar_omaha::{Response, MAX_APPS_PER_REQUEST, MAX_REQUEST_BYTES, WELLCAR_APP_ID};

use crate::client::ApiClient;
use crate::store;

/// A request of `apps` apps of the Wellcar app, each a different machine reporting one
/// download-started event, written compactly so 500 of them fit in one request body.
fn apps_with_events(apps: usize) -> String {
    let mut body = String::from("<request protocol=\"3.0\">");
    for i in 0..apps {
        body.push_str(&format!(
            "<app appid=\"{WELLCAR_APP_ID}\" machineid=\"m{i}\">\
             <event eventtype=\"13\" eventresult=\"1\"/></app>"
        ));
    }
    body.push_str("</request>");
    body
}

/// Finding "a request with 500 apps and events wrote 500 rows": it now gets HTTP 400 naming the
/// per-request app limit, and no event row is written. At 5098ded it got 200 and 500 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omaha_limits_refuse_500_apps_without_storing_events() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _token) = crate::test_server::sqlite_with_admin(dir.path()).await;
    let omaha = ApiClient::new(&server.url(), None);

    let attack = apps_with_events(500);
    assert!(attack.len() <= MAX_REQUEST_BYTES, "{} bytes", attack.len());
    let (status, body) = omaha.omaha(&attack).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("request has 500 <app> elements, over the limit of 8 per request"),
        "{body}"
    );
    let stored = server.state.db.read(store::count_events).await.unwrap();
    assert_eq!(stored, 0, "a refused request stored events");

    // A request at the limit is still answered, every event acknowledged.
    let (status, body) = omaha
        .omaha(&apps_with_events(MAX_APPS_PER_REQUEST))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = Response::parse(body.as_bytes()).unwrap();
    assert_eq!(answer.apps.len(), MAX_APPS_PER_REQUEST);
    assert!(answer.apps.iter().all(|a| a.event_acks == 1), "{answer:?}");
    server.shutdown().await.unwrap();
}
