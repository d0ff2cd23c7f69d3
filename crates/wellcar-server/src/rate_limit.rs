//! Keyed token-bucket rate limits, kept in memory with a bounded number of keys.
//!
//! Contract:
//! - A [`Limit`] allows `burst` requests at once per key, refilled at `per_minute`; `burst` 0
//!   disables the limit.
//! - Time comes from the caller (unix ms, the server's clock); a clock going backwards refills
//!   nothing.
//! - A [`KeyedLimiter`] tracks at most `max_keys` keys. When full, it forgets buckets that have
//!   refilled (they are the same as new ones), and if that frees less than an eighth of the
//!   table, the least recently used ones as well; so the limiter's memory cannot be exhausted,
//!   and eviction costs amortized O(1) per new key. An evicted key starts again with a full
//!   bucket.
//! - Keys are fixed-size: IP addresses ([`ip_key`]: IPv6 by its /64, since one host commonly
//!   holds a whole /64) or hashes of client strings ([`KeyedLimiter::hash_key`]), never the
//!   client's string itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

/// One rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed at once (0 = unlimited).
    pub burst: u32,
    /// Refill per minute.
    pub per_minute: u32,
}

impl Limit {
    /// No limit.
    pub const OFF: Limit = Limit {
        burst: 0,
        per_minute: 0,
    };

    /// Whether the limit is switched off.
    pub fn is_off(self) -> bool {
        self.burst == 0
    }
}

/// The server's rate limits ([`crate::Settings::rate_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Omaha requests per client IP. Generous: a whole fleet may sit behind one NAT
    /// (100,000 machines polling every 45 minutes average 37 requests a second; the default
    /// sustains 100 a second).
    pub omaha_per_ip: Limit,
    /// Omaha requests per machine id. A machine checks every 45 minutes and sends a handful
    /// of event reports per update.
    pub omaha_per_instance: Limit,
    /// Admin API requests per client IP.
    pub admin_per_ip: Limit,
    /// Keys each limiter tracks at most.
    pub max_keys: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            omaha_per_ip: Limit {
                burst: 6000,
                per_minute: 6000,
            },
            omaha_per_instance: Limit {
                burst: 60,
                per_minute: 12,
            },
            admin_per_ip: Limit {
                burst: 200,
                per_minute: 600,
            },
            max_keys: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Token buckets by key (see the module docs).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    limit: Limit,
    max_keys: usize,
    hasher: RandomState,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter for `limit`, tracking at most `max_keys` (at least 8) keys.
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        Self {
            limit,
            max_keys: max_keys.max(8),
            hasher: RandomState::new(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now_ms: i64) {
        let elapsed_ms = (now_ms - b.at_ms).max(0) as f64;
        let refill = elapsed_ms * f64::from(self.limit.per_minute) / 60_000.0;
        b.tokens = (b.tokens + refill).min(f64::from(self.limit.burst));
        b.at_ms = b.at_ms.max(now_ms);
    }

    /// Takes one token for `key`. `Err(seconds)`: refused, retry after that many seconds.
    pub fn check(&self, key: K, now_ms: i64) -> Result<(), u64> {
        if self.limit.is_off() {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(&key) && buckets.len() >= self.max_keys {
            self.evict(&mut buckets, now_ms);
        }
        let burst = f64::from(self.limit.burst);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        self.refill(bucket, now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let per_ms = f64::from(self.limit.per_minute) / 60_000.0;
        Err(if per_ms > 0.0 {
            ((1.0 - bucket.tokens) / per_ms / 1000.0).ceil().max(1.0) as u64
        } else {
            u64::from(u32::MAX)
        })
    }

    /// Drops refilled buckets; if that frees less than an eighth, the least recently used too.
    fn evict(&self, buckets: &mut HashMap<K, Bucket>, now_ms: i64) {
        let burst = f64::from(self.limit.burst);
        buckets.retain(|_, b| {
            self.refill(b, now_ms);
            b.tokens < burst
        });
        let want = self.max_keys - self.max_keys / 8;
        if buckets.len() > want {
            let mut times: Vec<i64> = buckets.values().map(|b| b.at_ms).collect();
            let excess = buckets.len() - want;
            let (_, cut, _) = times.select_nth_unstable(excess - 1);
            let cut = *cut;
            let mut removed = 0;
            buckets.retain(|_, b| {
                if removed < excess && b.at_ms <= cut {
                    removed += 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }
}

impl KeyedLimiter<u64> {
    /// A fixed-size key for a client string (e.g. a machine id), hashed with a per-process
    /// random key so clients cannot aim collisions.
    pub fn hash_key(&self, client_string: &str) -> u64 {
        self.hasher.hash_one(client_string)
    }
}

/// The key an IP address is limited under: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_minute() {
        let l = KeyedLimiter::new(
            Limit {
                burst: 2,
                per_minute: 6,
            },
            100,
        );
        assert_eq!(l.check("a", 0), Ok(()));
        assert_eq!(l.check("a", 0), Ok(()));
        assert_eq!(l.check("a", 0), Err(10), "one token per 10 s");
        assert_eq!(l.check("b", 0), Ok(()), "keys are independent");
        assert_eq!(l.check("a", 10_000), Ok(()));
        assert!(l.check("a", 10_000).is_err());
        assert!(
            l.check("a", 5_000).is_err(),
            "a clock going back refills nothing"
        );
        let off = KeyedLimiter::new(Limit::OFF, 100);
        assert!((0..1000).all(|_| off.check("a", 0).is_ok()));
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_busy_keys() {
        let l = KeyedLimiter::new(
            Limit {
                burst: 1,
                per_minute: 1,
            },
            64,
        );
        // A busy key, emptied early.
        assert!(l.check(u64::MAX, 0).is_ok());
        for k in 0..10_000u64 {
            let _ = l.check(k, 1 + k as i64);
            // Keep the busy key recent, so least-recently-used eviction spares it.
            let _ = l.check(u64::MAX, 1 + k as i64);
            assert!(l.tracked() <= 64);
        }
        assert!(
            l.check(u64::MAX, 10_001).is_err(),
            "the empty bucket survived the flood"
        );
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
