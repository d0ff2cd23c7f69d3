//! The SQLite write combiner: one writer thread runs queued write jobs back to back in one
//! transaction, each in its own savepoint, and commits once (one fsync for many requests).
//!
//! - A job that fails is rolled back to its savepoint alone; the others still commit.
//! - Every caller is answered only after the commit (or with the commit's error), so durability
//!   is the same as one transaction each.
//! - Rows written by rolled-back jobs are not counted as writes.
//!
//! On PostgreSQL [`Db::write_combined`] is an ordinary [`Db::write`].

use std::sync::Arc;

use super::counts::Counters;
use super::{Conn, Db, DbError};

/// Called once the combined transaction ended: `None` if it committed, else why not.
type Completion = Box<dyn FnOnce(Option<String>) + Send>;
/// A unit of work for the write combiner; `None` if no transaction could be opened.
/// Returns whether the work succeeded (else its savepoint is rolled back).
pub(super) type Job =
    Box<dyn for<'a> FnOnce(Option<&'a mut dyn Conn>) -> (bool, Completion) + Send>;

/// Most jobs committed together by the write combiner.
const MAX_COMBINED: usize = 256;

/// The SQLite write combiner: runs queued write jobs back to back in one transaction (each in
/// its own savepoint), commits once (one fsync), then completes every job. Callers are
/// answered only after the commit, so durability is the same as one transaction each.
pub(super) fn combiner_loop(
    mut conn: Box<dyn Conn>,
    rx: std::sync::mpsc::Receiver<Job>,
    counters: Arc<Counters>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_COMBINED {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.batch("BEGIN IMMEDIATE") {
            tracing::error!("write combiner cannot begin: {e}");
            for job in jobs {
                let (_, done) = job(None);
                done(Some(e.to_string()));
            }
            continue;
        }
        let before = conn.rows_written();
        let mut rolled_back = 0;
        let mut completions = Vec::with_capacity(jobs.len());
        for job in jobs {
            if conn.batch("SAVEPOINT job").is_err() {
                completions.push(job(None).1);
                continue;
            }
            let job_before = conn.rows_written();
            let (ok, done) = job(Some(conn.as_mut()));
            let end = if ok {
                conn.batch("RELEASE job")
            } else {
                rolled_back += conn.rows_written() - job_before;
                conn.batch("ROLLBACK TO job; RELEASE job")
            };
            if let Err(e) = end {
                tracing::error!("write combiner savepoint: {e}");
            }
            completions.push(done);
        }
        match conn.batch("COMMIT") {
            Ok(()) => {
                counters.add(conn.rows_written() - before - rolled_back);
                for done in completions {
                    done(None);
                }
            }
            Err(e) => {
                let _ = conn.batch("ROLLBACK");
                let msg = e.to_string();
                for done in completions {
                    done(Some(msg.clone()));
                }
            }
        }
    }
}

impl Db {
    /// Runs `f` as a write. On SQLite it goes through the write combiner (many requests, one
    /// commit); on PostgreSQL it is its own transaction, as [`Db::write`]. Either way this returns
    /// only after the work is committed (or failed and rolled back).
    pub async fn write_combined<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, crate::StoreError> {
        let Some(queue) = &self.combiner else {
            return self.write(f).await;
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, crate::StoreError>>();
        let job: Job = Box::new(move |conn: Option<&mut dyn Conn>| -> (bool, Completion) {
            let Some(conn) = conn else {
                let done: Completion = Box::new(move |why| {
                    let why = why.unwrap_or_else(|| "no transaction".into());
                    let _ = tx.send(Err(DbError::Worker(why).into()));
                });
                return (false, done);
            };
            let result = f(conn);
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    None => result,
                    Some(e) => Err(DbError::Worker(format!("commit failed: {e}")).into()),
                });
            });
            (ok, done)
        });
        queue
            .send(job)
            .map_err(|_| DbError::Worker("the writer thread stopped".into()))?;
        rx.await
            .map_err(|_| DbError::Worker("the writer thread dropped a job".into()))?
    }
}
