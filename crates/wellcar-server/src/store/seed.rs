//! The rows an empty database starts with.
//!
//! Contract:
//! - Seeding creates Wellcar's application, channels `stable`, `beta`, `alpha` for amd64 and
//!   arm64, groups of the same names with the default policy, and one activity entry.
//! - It runs only from [`super::migrate`], when the database has no application. Seed rows have
//!   fixed ids, so two servers starting at once on one PostgreSQL seed once.

use super::{create_app, create_channel, create_group, log_activity, GroupSpec, NewActivity};
use crate::db::Conn;
use crate::model::{App, Policy};
use crate::StoreError;

pub(super) fn seed(conn: &mut dyn Conn, now: i64) -> Result<(), StoreError> {
    let app = App {
        id: wellcar_omaha::WELLCAR_APP_ID.to_owned(),
        name: "Wellcar Container Linux".into(),
        description: "The Wellcar operating system".into(),
    };
    create_app(conn, &app, now)?;
    for name in ["stable", "beta", "alpha"] {
        for arch in ["amd64", "arm64"] {
            create_channel(conn, &app.id, name, arch, now)?;
        }
        let spec = GroupSpec {
            name,
            track: name,
            channel: name,
            description: "",
            policy: &Policy::default(),
        };
        create_group(conn, &app.id, &spec, now)?;
    }
    log_activity(
        conn,
        now,
        &NewActivity {
            actor: "system",
            kind: "seeded",
            app_id: Some(&app.id),
            group_id: None,
            severity: "info",
            message:
                "created the Wellcar application with channels and groups stable, beta and alpha",
        },
    )?;
    Ok(())
}
