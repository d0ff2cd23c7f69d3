//! When to reboot, take the reboot lock or give it back: pure decisions, no I/O and no clock
//! of their own (the caller passes `now`), so every rule is a unit test.
//!
//! Contract ([`Coordinator::step`], called once per daemon tick):
//! - A reboot is *allowed* when an update is staged, the strategy is not `off` and the reboot
//!   window (if any) is open; the caller computes that into [`Tick::reboot_allowed`].
//! - Without a lock ([`Tick::uses_lock`] false): an allowed reboot is [`Step::Reboot`].
//! - With a lock: an allowed reboot is [`Step::Reboot`] only while the lock is
//!   [`Holding::Held`]; otherwise [`Step::Acquire`], retried after a failure (refused or
//!   unreachable) with a pause of [`Tick::retry_delay`] doubling per failure up to
//!   [`MAX_RETRY_DELAY`] (locksmith's 5 s to 5 min). When the reboot stops being allowed (the
//!   window closed, the update went away) no lock is tried until it is allowed again, and the
//!   pause starts over (locksmith resets its interval after waiting for the window).
//! - When no reboot is allowed and the lock may be held ([`Holding::Unknown`] at start: a lock
//!   from before the last reboot or a killed process, as Zincati and locksmithd assume; or
//!   [`Holding::Held`] after a reboot command failed), [`Step::ReleaseIfSteady`]: the caller
//!   releases only once the booted slot is marked good, and reports back which it was.
//!   Releasing is idempotent on both servers, so nothing about the lock is persisted.
//! - After a reboot command succeeded, nothing happens for [`REBOOT_RETRY`] (the machine is
//!   going down; the lock stays held for the next boot to release). After one failed, reboots
//!   pause for [`REBOOT_RETRY`] and the lock is released meanwhile (when steady), so a machine
//!   that cannot reboot does not block its group.

use std::time::{Duration, Instant};

/// Pause before asking for a reboot again (after a failed reboot command, or one that
/// returned but did not take the machine down).
pub const REBOOT_RETRY: Duration = Duration::from_secs(10 * 60);

/// Longest pause between lock or unlock attempts (locksmith's `maxInterval`).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5 * 60);

/// How often a release waiting for the booted slot to be marked good looks again.
pub const STEADY_POLL: Duration = Duration::from_secs(1);

/// What the agent knows about its hold on the reboot lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// At start: may hold one from before (released once steady).
    Unknown,
    /// Taken by this process.
    Held,
    /// Released by this process (or never needed).
    Free,
}

/// What the caller observed this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Now.
    pub now: Instant,
    /// An update is staged, the strategy reboots and the window is open.
    pub reboot_allowed: bool,
    /// The strategy takes a lock (fleetlock, etcd-lock, best-effort with etcd).
    pub uses_lock: bool,
    /// First pause after a failed lock or unlock (`WELLCAR_LOCK_RETRY_DELAY`).
    pub retry_delay: Duration,
}

/// What to do this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Wait,
    /// Run the reboot, then report [`Coordinator::reboot_started`] or
    /// [`Coordinator::reboot_failed`].
    Reboot,
    /// Take the lock, then report [`Coordinator::acquired`] or [`Coordinator::acquire_failed`].
    Acquire,
    /// If the booted slot is marked good, release the lock and report
    /// [`Coordinator::released`] or [`Coordinator::release_failed`]; if not, report
    /// [`Coordinator::not_steady`].
    ReleaseIfSteady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Acquire,
    Release,
}

/// A lock action that failed and when to try it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    action: Action,
    failures: u32,
    next: Instant,
}

/// The reboot-coordination decisions of one daemon process.
#[derive(Debug, Clone)]
pub struct Coordinator {
    holding: Holding,
    retry: Option<Retry>,
    going_down_until: Option<Instant>,
    paused_until: Option<Instant>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new()
    }
}

/// The pause after `failures` failures: `first`, doubled per further failure, at most
/// [`MAX_RETRY_DELAY`].
pub fn backoff(first: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(MAX_RETRY_DELAY)
}

impl Coordinator {
    /// A fresh process: the lock may be held from before.
    pub fn new() -> Self {
        Self {
            holding: Holding::Unknown,
            retry: None,
            going_down_until: None,
            paused_until: None,
        }
    }

    /// The hold as known.
    pub fn holding(&self) -> Holding {
        self.holding
    }

    /// Failures of the lock action being retried (0 when none is).
    pub fn failures(&self) -> u32 {
        self.retry.map_or(0, |r| r.failures)
    }

    /// The decision for this tick (see the module docs).
    pub fn step(&mut self, tick: &Tick) -> Step {
        let now = tick.now;
        if self.going_down_until.is_some_and(|t| now < t) {
            return Step::Wait;
        }
        let paused = self.paused_until.is_some_and(|t| now < t);
        let reboot = tick.reboot_allowed && !paused;
        if !tick.uses_lock {
            return if reboot { Step::Reboot } else { Step::Wait };
        }
        let wanted = if reboot {
            if self.holding == Holding::Held {
                return Step::Reboot;
            }
            Action::Acquire
        } else {
            if self.holding == Holding::Free {
                self.retry = None;
                return Step::Wait;
            }
            Action::Release
        };
        match self.retry {
            // A different action starts over (e.g. the window closed while acquiring).
            Some(r) if r.action != wanted => self.retry = None,
            Some(r) if now < r.next => return Step::Wait,
            _ => {}
        }
        match wanted {
            Action::Acquire => Step::Acquire,
            Action::Release => Step::ReleaseIfSteady,
        }
    }

    fn failed(&mut self, action: Action, tick: &Tick) -> Duration {
        let failures = match self.retry {
            Some(r) if r.action == action => r.failures + 1,
            _ => 1,
        };
        let pause = backoff(tick.retry_delay, failures);
        self.retry = Some(Retry {
            action,
            failures,
            next: tick.now + pause,
        });
        pause
    }

    /// The lock was taken (or was already held).
    pub fn acquired(&mut self) {
        self.holding = Holding::Held;
        self.retry = None;
    }

    /// Taking the lock failed or was refused; returns the pause before the next try.
    pub fn acquire_failed(&mut self, tick: &Tick) -> Duration {
        self.failed(Action::Acquire, tick)
    }

    /// The lock was released (or was not held).
    pub fn released(&mut self) {
        self.holding = Holding::Free;
        self.retry = None;
    }

    /// Releasing failed; returns the pause before the next try.
    pub fn release_failed(&mut self, tick: &Tick) -> Duration {
        self.failed(Action::Release, tick)
    }

    /// The booted slot is not marked good yet: look again after [`STEADY_POLL`].
    pub fn not_steady(&mut self, now: Instant) {
        let failures = self.failures();
        self.retry = Some(Retry {
            action: Action::Release,
            failures,
            next: now + STEADY_POLL,
        });
    }

    /// The reboot command ran: the machine is going down.
    pub fn reboot_started(&mut self, now: Instant) {
        self.going_down_until = Some(now + REBOOT_RETRY);
    }

    /// The reboot command failed: no reboot for [`REBOOT_RETRY`], the lock is released
    /// meanwhile.
    pub fn reboot_failed(&mut self, now: Instant) {
        self.paused_until = Some(now + REBOOT_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(5);

    fn tick(now: Instant, reboot_allowed: bool) -> Tick {
        Tick {
            now,
            reboot_allowed,
            uses_lock: true,
            retry_delay: FIRST,
        }
    }

    #[test]
    fn without_a_lock_an_allowed_reboot_reboots_and_then_waits() {
        let t0 = Instant::now();
        let mut c = Coordinator::new();
        let plain = |now, reboot_allowed| Tick {
            uses_lock: false,
            ..tick(now, reboot_allowed)
        };
        assert_eq!(c.step(&plain(t0, false)), Step::Wait);
        assert_eq!(c.step(&plain(t0, true)), Step::Reboot);
        c.reboot_started(t0);
        assert_eq!(c.step(&plain(t0 + FIRST, true)), Step::Wait);
        assert_eq!(c.step(&plain(t0 + REBOOT_RETRY, true)), Step::Reboot);
    }

    /// No reboot without the lock: the first allowed tick acquires; only after `acquired`
    /// does it reboot.
    #[test]
    fn lock_before_reboot() {
        let t0 = Instant::now();
        let mut c = Coordinator::new();
        assert_eq!(c.step(&tick(t0, true)), Step::Acquire);
        c.acquired();
        assert_eq!(c.holding(), Holding::Held);
        assert_eq!(c.step(&tick(t0, true)), Step::Reboot);
        c.reboot_started(t0);
        // Going down: neither reboot again nor release the lock.
        assert_eq!(c.step(&tick(t0 + FIRST, true)), Step::Wait);
        assert_eq!(c.step(&tick(t0 + FIRST, false)), Step::Wait);
    }

    /// A refused lock means no reboot, and retries after 5 s, 10 s, 20 s … up to 5 min.
    #[test]
    fn refused_lock_retries_with_doubling_backoff() {
        let t0 = Instant::now();
        let mut c = Coordinator::new();
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..9 {
            assert_eq!(c.step(&tick(now, true)), Step::Acquire);
            let pause = c.acquire_failed(&tick(now, true));
            assert_eq!(
                c.step(&tick(now + pause - Duration::from_millis(1), true)),
                Step::Wait
            );
            pauses.push(pause.as_secs());
            now += pause;
        }
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(c.holding(), Holding::Unknown);
    }

    /// The window closes while waiting for the lock: no more tries (a release instead, once
    /// steady, for a lock possibly held from before); when it opens again, the backoff starts
    /// over.
    #[test]
    fn window_closing_stops_acquiring_and_resets_the_backoff() {
        let t0 = Instant::now();
        let mut c = Coordinator::new();
        let mut now = t0;
        for _ in 0..3 {
            assert_eq!(c.step(&tick(now, true)), Step::Acquire);
            now += c.acquire_failed(&tick(now, true));
        }
        assert_eq!(c.failures(), 3);
        // Closed before the next try is due: no try, a release of the lock from before.
        let closed = now - Duration::from_secs(1);
        assert_eq!(c.step(&tick(closed, false)), Step::ReleaseIfSteady);
        c.released();
        assert_eq!(c.step(&tick(closed, false)), Step::Wait);
        // Opens again right away: acquire immediately, first pause again 5 s.
        assert_eq!(c.step(&tick(closed, true)), Step::Acquire);
        assert_eq!(c.acquire_failed(&tick(closed, true)), FIRST);
    }

    /// At start the lock may be held from before: released only once the booted slot is good
    /// (polled), with backoff on failure; then never again.
    #[test]
    fn release_at_start_waits_for_a_good_boot() {
        let t0 = Instant::now();
        let mut c = Coordinator::new();
        assert_eq!(c.step(&tick(t0, false)), Step::ReleaseIfSteady);
        c.not_steady(t0);
        assert_eq!(c.step(&tick(t0, false)), Step::Wait);
        assert_eq!(
            c.step(&tick(t0 + STEADY_POLL, false)),
            Step::ReleaseIfSteady
        );
        assert_eq!(c.release_failed(&tick(t0 + STEADY_POLL, false)), FIRST);
        assert_eq!(c.step(&tick(t0 + STEADY_POLL, false)), Step::Wait);
        let later = t0 + STEADY_POLL + FIRST;
        assert_eq!(c.step(&tick(later, false)), Step::ReleaseIfSteady);
        c.released();
        assert_eq!(c.holding(), Holding::Free);
        assert_eq!(c.step(&tick(later + REBOOT_RETRY, false)), Step::Wait);
    }

    /// A reboot command that fails: the lock is given back (once steady) and the reboot is
    /// retried after the pause, with the lock taken again.
    #[test]
    fn failed_reboot_releases_and_retries_later() {
        let t0 = Instant::now();
        let mut c = Coordinator::new();
        assert_eq!(c.step(&tick(t0, true)), Step::Acquire);
        c.acquired();
        assert_eq!(c.step(&tick(t0, true)), Step::Reboot);
        c.reboot_failed(t0);
        assert_eq!(c.step(&tick(t0, true)), Step::ReleaseIfSteady);
        c.released();
        assert_eq!(c.step(&tick(t0 + FIRST, true)), Step::Wait);
        assert_eq!(c.step(&tick(t0 + REBOOT_RETRY, true)), Step::Acquire);
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        assert_eq!(backoff(FIRST, 1), FIRST);
        assert_eq!(backoff(FIRST, 2), FIRST * 2);
        assert_eq!(backoff(FIRST, u32::MAX), MAX_RETRY_DELAY);
        assert_eq!(
            backoff(Duration::from_millis(300), 3),
            Duration::from_millis(1200)
        );
    }
}
