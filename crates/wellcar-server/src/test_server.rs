//! Servers for this crate's unit tests: a real server on SQLite in a temporary directory, and
//! admin tokens made the way `wellcar server token create` makes them.

use crate::store::{self, Role};
use crate::{RunningServer, Settings};
use std::path::Path;

/// A server on a SQLite database in `dir`, its payloads under `dir/payloads`, with an admin
/// token named `admin`.
pub(crate) async fn sqlite_with_admin(dir: &Path) -> (RunningServer, String) {
    let database = format!("sqlite:{}", dir.join("server.db").display());
    let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.join("payloads");
    let server = crate::spawn(settings).await.unwrap();
    let token = token(&server, "admin", Role::Admin, crate::now_ms()).await;
    (server, token)
}

/// A new token `name` with `role` on `server`, created at `now` (unix ms).
pub(crate) async fn token(server: &RunningServer, name: &str, role: Role, now: i64) -> String {
    let name = name.to_owned();
    server
        .state
        .db
        .write(move |c| store::create_token(c, &name, role, now))
        .await
        .unwrap()
}
