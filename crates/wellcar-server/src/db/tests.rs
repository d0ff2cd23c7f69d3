//! Tests of the SQL layer on SQLite: the write combiner, placeholder rewriting, URL handling,
//! typed columns and write accounting. The PostgreSQL side runs in the server's HTTP tests.

use super::*;
use crate::params;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_writes_commit_together_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("c.db").display());
    let db = Db::open(&url, 2).unwrap();
    db.write(|c| Ok(c.batch("CREATE TABLE t (a BIGINT PRIMARY KEY)")?))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200_i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.write_combined(move |c| {
                c.execute("INSERT INTO t VALUES ($1)", &params![i])?;
                if i % 50 == 0 {
                    // Fails after writing: only this job's row must disappear.
                    c.execute("INSERT INTO t VALUES ($1)", &params![i])?;
                }
                Ok(i)
            })
            .await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 4);
    let rows = db
        .read(|c| Ok(c.query("SELECT COUNT(*), MIN(a) FROM t", &[])?))
        .await
        .unwrap();
    assert_eq!(rows[0].int(0).unwrap(), 196);
    assert_eq!(rows[0].int(1).unwrap(), 1);
    // Fewer commits than jobs: the writes were combined.
    assert!(
        db.write_counts().transactions < 200,
        "{:?}",
        db.write_counts()
    );
    assert_eq!(db.write_counts().rows, 196);
}

#[test]
fn placeholders_are_rewritten_for_sqlite() {
    assert_eq!(
        sqlite::rewrite("SELECT $1, '$x', $12 WHERE a = $2"),
        "SELECT ?1, '$x', ?12 WHERE a = ?2"
    );
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact("postgres://u:secret@h:5/db"),
        "postgres://u:***@h:5/db"
    );
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
}

#[test]
fn bad_urls_are_named() {
    let err = Db::open("mysql://x", 1).unwrap_err();
    assert!(err.to_string().contains("mysql://x"), "{err}");
    assert!(Db::open("sqlite:", 1).is_err());
}

#[test]
fn sqlite_round_trip_and_write_counts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("t.db").display());
    let db = Db::open(&url, 2).unwrap();
    db.write_blocking(|c| {
        c.batch("CREATE TABLE t (a BIGINT, b TEXT)")?;
        c.execute("INSERT INTO t VALUES ($1, $2)", &params![7_i64, "x"])?;
        c.execute(
            "INSERT INTO t VALUES ($1, $2)",
            &params![8_i64, None::<String>],
        )?;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        db.write_counts(),
        WriteCounts {
            transactions: 1,
            rows: 2
        }
    );
    let rows = db
        .write_blocking(|c| Ok(c.query("SELECT a, b FROM t ORDER BY a", &[])?))
        .unwrap();
    assert_eq!(rows[0].int(0).unwrap(), 7);
    assert_eq!(rows[0].text(1).unwrap(), "x");
    assert_eq!(rows[1].opt_text(1).unwrap(), None);
    assert!(rows[1].text(1).is_err());
    // A read-only transaction does not count as a write.
    assert_eq!(db.write_counts().transactions, 1);
}
