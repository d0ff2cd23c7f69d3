//! The dashboard's aggregate queries (as `benches/dashboard.rs` times them) use the indexes the
//! dashboard migration added, on SQLite: checked with `EXPLAIN QUERY PLAN` on a migrated, empty
//! database (plans do not depend on statistics here: the server never runs `ANALYZE`).

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
            "SELECT created_at / 86400000, version, COUNT(*) FROM events
             WHERE app_id = $1 AND event_type = 3 AND event_result = 2 AND created_at >= $2
             GROUP BY created_at / 86400000, version",
            vec![app(), Value::from(0i64)],
            "COVERING INDEX events_adoption",
        ),
    ];
    for (sql, params, index) in cases {
        let plan = plan(&db, sql, params);
        assert!(plan.contains(index), "{sql}\nuses\n{plan}\nnot {index}");
    }
}
