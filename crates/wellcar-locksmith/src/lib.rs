//! locksmith's etcd-lock, the one home of its contract in Wellcar: the cluster-wide reboot
//! semaphore that Flatcar's `locksmithd` and `locksmithctl` keep in etcd, so Wellcar and
//! Flatcar hosts can share one lock.
//!
//! Contract (as locksmith, `flatcar/locksmith` `lock/`):
//! - **API**: etcd's **v2 keys API** over HTTP+JSON (locksmith uses `go.etcd.io/etcd/client`,
//!   the v2 client). etcd 3.x serves it only with `--enable-v2=true`. No maintained Rust crate
//!   speaks v2 (`etcd-client` is v3 gRPC), so [`keys`] is a small client over the workspace's
//!   `wellcar-http` (ureq over rustls): `GET`/`PUT /v2/keys/<key>` with a form `value=`, and
//!   `prevExist=false` / `prevIndex=N` query parameters; the JSON is parsed with serde.
//! - **Key**: `coreos.com/updateengine/rebootlock/semaphore`, or for a group
//!   `coreos.com/updateengine/rebootlock/groups/<url.QueryEscape(group)>/semaphore`
//!   ([`semaphore_key`]).
//! - **Value**: JSON `{"semaphore":1,"max":1,"holders":null}` ([`Semaphore`]): `semaphore` is
//!   the number of free slots, `max` the number of slots, `holders` the sorted holder ids
//!   (`null` until the first lock, `[]` once emptied again, as Go's encoder writes them).
//!   The holder id is the machine-id ([`machine_id`]).
//! - **Init**: [`EtcdLock::new`] creates the key with `{"semaphore":1,"max":1,"holders":null}`
//!   if it does not exist (`prevExist=false`; "node exists", code 105, is fine).
//! - **Changes** are read-modify-write: `GET` (value and `modifiedIndex`), change, `PUT` with
//!   `prevIndex=<modifiedIndex>` (compare-and-swap). A swap that loses a race (code 101,
//!   "compare failed") is retried from a fresh read, a bounded number of times
//!   ([`MAX_CAS_ATTEMPTS`]) with a short random backoff; locksmith tries once and lets
//!   `locksmithd` retry, the outcome is the same. Two lockers can never both take the last
//!   slot: only one swap on a given `modifiedIndex` succeeds.
//! - **Semantics** ([`Semaphore::lock`], [`Semaphore::unlock`], [`Semaphore::set_max`]): lock
//!   fails with "semaphore is at N" when no slot is free (checked first, even for a holder),
//!   else with "holder exists" when the id already holds it; unlock fails with "holder does not
//!   exist"; set-max moves `semaphore` by the same difference as `max` (current holders
//!   keep their slots, so `semaphore` may go negative). There is no lease: a holder that never
//!   comes back holds the lock until someone unlocks it (`locksmithctl unlock ID`).
//! - **Endpoints** ([`EtcdConfig`]): a list (default `http://127.0.0.1:2379`,
//!   `http://127.0.0.1:4001`), tried in order on connection failures, remembering the one that
//!   answered; an etcd answer (even an error) is never retried elsewhere. TLS: an extra CA file,
//!   a client certificate and key (mTLS); basic auth with a username and password.
//!
//! The library never prints: it returns values and [`Error`]s whose variants name the key, URL
//! or holder concerned. [`ctl`] holds `locksmithctl`'s commands (shared with
//! `wellcar-update lock`); the binary only parses arguments and prints.

pub mod client;
pub mod config;
pub mod ctl;
pub mod error;
pub mod keys;
pub mod semaphore;

pub use client::{semaphore_key, EtcdLock, MAX_CAS_ATTEMPTS};
pub use config::{EtcdConfig, LocksmithSettings, DEFAULT_ENDPOINTS};
pub use error::Error;
pub use semaphore::{machine_id, Semaphore, SemaphoreError};
