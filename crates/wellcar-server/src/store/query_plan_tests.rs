//! The dashboard's aggregate queries (as `benches/dashboard.rs` times them) use the indexes the
//! dashboard migration added, on SQLite: checked with `EXPLAIN QUERY PLAN` on a migrated, empty
//! database (plans do not depend on statistics here: the server never runs `ANALYZE`). And
//! `version_adoption_daily` counts exactly the verified completions `insert_event` stores.

use crate::db::{Db, Value};

fn plan(db: &Db, sql: &str, params: Vec<Value>) -> String {
    let sql = format!("EXPLAIN QUERY PLAN {sql}");
    db.write_blocking(move |c| {
        let rows = c.query(&sql, &params)?;
        Ok(rows
            .iter()
            .map(|r| r.text(3))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"))
    })
    .unwrap()
}

#[test]
fn dashboard_queries_use_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite:{}", dir.path().join("p.db").display()), 1).unwrap();
    db.write_blocking(|c| super::migrate(c, 1)).unwrap();
    let app = || Value::from("app");
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        (
            "SELECT group_id, version, COUNT(*) FROM instances WHERE app_id = $1
             GROUP BY group_id, version",
            vec![app()],
            "COVERING INDEX instances_app_group_version",
        ),
        (
            "SELECT group_id, status, COUNT(*) FROM instances WHERE app_id = $1
             GROUP BY group_id, status",
            vec![app()],
            "COVERING INDEX instances_app_group_status_check",
        ),
        (
            "SELECT machine_id FROM instances WHERE app_id = $1 AND group_id = $2
               AND status = 'complete' ORDER BY last_check DESC, machine_id LIMIT 50 OFFSET 100",
            vec![app(), Value::from("g")],
            "INDEX instances_app_group_status_check",
        ),
        (
            "SELECT machine_id FROM instances WHERE app_id = $1 AND version = '1.0.0'
             ORDER BY last_check DESC, machine_id LIMIT 50",
            vec![app()],
            "INDEX instances_app_version_check",
        ),
        (
            "SELECT created_at, kind FROM activity WHERE app_id = $1 AND created_at >= $2
             ORDER BY created_at DESC LIMIT 100",
            vec![app(), Value::from(0i64)],
            "INDEX activity_app_created",
        ),
        (
            "SELECT day, version, completions FROM version_adoption_daily
             WHERE app_id = $1 AND day >= $2",
            vec![app(), Value::from(0i64)],
            "sqlite_autoindex_version_adoption_daily_1",
        ),
        (
            "SELECT COALESCE(group_id, ''), event_type, event_result, COUNT(*) FROM events
             WHERE created_at >= $1 AND app_id = $2
             GROUP BY COALESCE(group_id, ''), event_type, event_result",
            vec![Value::from(0i64), app()],
            "COVERING INDEX events_app_created",
        ),
        (
            "SELECT created_at, event_type, event_result, error_code, previous_version, version,
                verified
             FROM events WHERE app_id = $1 AND machine_id = $2
             ORDER BY created_at DESC, id DESC LIMIT 200",
            vec![app(), Value::from("m")],
            "INDEX events_machine_created",
        ),
        (
            "SELECT machine_id FROM instances WHERE app_id = $1
             ORDER BY last_check DESC, machine_id LIMIT 1000",
            vec![app()],
            "INDEX instances_app_last_check",
        ),
    ];
    for (sql, params, index) in cases {
        let plan = plan(&db, sql, params);
        assert!(plan.contains(index), "{sql}\nuses\n{plan}\nnot {index}");
    }
}

#[test]
fn adoption_counts_only_verified_completions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite:{}", dir.path().join("a.db").display()), 1).unwrap();
    db.write_blocking(|c| super::migrate(c, 1)).unwrap();
    let event = |t: u32, r: u32| wellcar_omaha::Event {
        event_type: t,
        event_result: r,
        ..wellcar_omaha::Event::default()
    };
    let day = 20_000 * 86_400_000;
    let stored = [
        (event(3, 2), "2.0.0", true, day),
        (event(3, 2), "2.0.0", true, day + 1000),
        (event(3, 2), "2.0.0", false, day + 2000),
        (event(3, 1), "2.0.0", true, day + 3000),
        (event(3, 2), "2.0.0", true, day + 86_400_000),
        (event(3, 2), "3.0.0", true, day + 86_400_000),
    ];
    db.write_blocking(move |c| {
        for (e, version, verified, at) in &stored {
            let new = super::NewEvent {
                app_id: "app",
                machine_id: "m",
                group_id: None,
                event: e,
                version,
                verified: *verified,
            };
            super::insert_event(c, &new, *at)?;
        }
        Ok(())
    })
    .unwrap();
    let rows = db
        .write_blocking(|c| {
            let rows = c.query(
                "SELECT day, version, completions FROM version_adoption_daily ORDER BY day, version",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| Ok((r.int(0)?, r.text(1)?, r.int(2)?)))
                .collect::<Result<Vec<_>, crate::db::DbError>>()?)
        })
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (20_000, "2.0.0".to_owned(), 2),
            (20_001, "2.0.0".to_owned(), 1),
            (20_001, "3.0.0".to_owned(), 1),
        ]
    );
}
