//! The rate at which one sender may send MESSAGEs to one recipient through this node (issue 8
//! item 13): a token bucket per (sender, recipient) pair, kept in memory and bounded.
//!
//! The bucket is kept as its "theoretical arrival time" (GCRA): one instant per pair, the time
//! at which the bucket would be full again. A message at `now` is admitted when that instant is
//! at most `(burst - 1) * interval` ahead of `now`, and then moves it one `interval` on.
//!
//! Invariant: a pair gets at most `burst` messages at once and one per `interval_ms` after,
//! whatever other pairs do; a refusal says how long until the next message would be admitted.
//! Invariant: the table holds at most `buckets_max` pairs; a full bucket holds no information
//! and is dropped first, then the bucket nearest to full.

use std::collections::HashMap;

use pms_types::{UnixMillis, UserId, limits};

/// The limits of a [`SenderRateLimiter`]; the defaults are the named constants in
/// `pms_types::limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderRateLimits {
    /// Messages a pair may send at once.
    pub burst: u32,
    /// Milliseconds per message the bucket refills.
    pub interval_ms: u64,
    pub buckets_max: usize,
}

impl Default for SenderRateLimits {
    fn default() -> Self {
        SenderRateLimits {
            burst: limits::SENDER_RECIPIENT_BURST_DEFAULT,
            interval_ms: limits::SENDER_RECIPIENT_INTERVAL_MS_DEFAULT,
            buckets_max: limits::SENDER_RECIPIENT_BUCKETS_MAX,
        }
    }
}

/// Token buckets per (sender, recipient).
#[derive(Debug)]
pub struct SenderRateLimiter {
    limits: SenderRateLimits,
    /// When each pair's bucket is full again.
    full_at: HashMap<(UserId, UserId), UnixMillis>,
}

impl SenderRateLimiter {
    pub fn new(limits: SenderRateLimits) -> Self {
        SenderRateLimiter {
            limits,
            full_at: HashMap::new(),
        }
    }

    /// Takes one message from the pair's bucket: `Ok(())`, or `Err(ms)` until one is there.
    pub fn admit(
        &mut self,
        sender: &UserId,
        recipient: &UserId,
        now: UnixMillis,
    ) -> Result<(), u64> {
        let tolerance_ms =
            u64::from(self.limits.burst.saturating_sub(1)).saturating_mul(self.limits.interval_ms);
        let key = (sender.clone(), recipient.clone());
        let full_at = self.full_at.get(&key).copied().unwrap_or(now).max(now);
        let ahead_ms = full_at.0 - now.0;
        if self.limits.burst == 0 || ahead_ms > tolerance_ms {
            let wait_ms = if self.limits.burst == 0 {
                self.limits.interval_ms
            } else {
                ahead_ms - tolerance_ms
            };
            return Err(wait_ms.max(1));
        }
        if !self.full_at.contains_key(&key) && self.full_at.len() >= self.limits.buckets_max {
            self.make_room(now);
        }
        self.full_at
            .insert(key, full_at.saturating_add_ms(self.limits.interval_ms));
        Ok(())
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }

    /// Drops the buckets that are full again; if none is, the one nearest to full.
    fn make_room(&mut self, now: UnixMillis) {
        self.full_at.retain(|_, full_at| *full_at > now);
        while self.full_at.len() >= self.limits.buckets_max.max(1) {
            let Some(nearest) = self
                .full_at
                .iter()
                .min_by_key(|(_, full_at)| **full_at)
                .map(|(key, _)| key.clone())
            else {
                return;
            };
            self.full_at.remove(&nearest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn limiter(burst: u32, interval_ms: u64, buckets_max: usize) -> SenderRateLimiter {
        SenderRateLimiter::new(SenderRateLimits {
            burst,
            interval_ms,
            buckets_max,
        })
    }

    #[test]
    fn a_pair_gets_its_burst_then_one_message_per_interval() {
        let mut limiter = limiter(3, 100, 16);
        let (alice, bob) = (user("alice"), user("bob"));
        for _ in 0..3 {
            assert_eq!(limiter.admit(&alice, &bob, UnixMillis(1_000)), Ok(()));
        }
        assert_eq!(limiter.admit(&alice, &bob, UnixMillis(1_000)), Err(100));
        assert_eq!(limiter.admit(&alice, &bob, UnixMillis(1_060)), Err(40));
        assert_eq!(limiter.admit(&alice, &bob, UnixMillis(1_100)), Ok(()));
        assert_eq!(limiter.admit(&alice, &bob, UnixMillis(1_100)), Err(100));
        // Idle long enough, the whole burst is back (and no more).
        for _ in 0..3 {
            assert_eq!(limiter.admit(&alice, &bob, UnixMillis(10_000)), Ok(()));
        }
        assert!(limiter.admit(&alice, &bob, UnixMillis(10_000)).is_err());
    }

    #[test]
    fn pairs_do_not_share_a_bucket() {
        let mut limiter = limiter(1, 1_000, 16);
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        assert_eq!(limiter.admit(&alice, &bob, UnixMillis(0)), Ok(()));
        assert!(limiter.admit(&alice, &bob, UnixMillis(0)).is_err());
        assert_eq!(limiter.admit(&carol, &bob, UnixMillis(0)), Ok(()));
        assert_eq!(limiter.admit(&alice, &carol, UnixMillis(0)), Ok(()));
    }

    #[test]
    fn the_table_is_bounded_and_drops_full_buckets_first() {
        let mut limiter = limiter(2, 1_000, 4);
        let bob = user("bob");
        let busy = user("busy");
        // `busy` keeps using its bucket while idle pairs come and go around it.
        for n in 0..100u64 {
            let now = UnixMillis(n * 1_000);
            assert_eq!(limiter.admit(&busy, &bob, now), Ok(()));
            for k in 0..3 {
                let sender = user(&format!("s{n}x{k}"));
                assert_eq!(limiter.admit(&sender, &bob, now), Ok(()));
                assert!(limiter.len() <= 4);
            }
        }
        // Its bucket was kept: one message left in the burst, not two.
        let now = UnixMillis(99_000);
        assert_eq!(limiter.admit(&busy, &bob, now), Ok(()));
        assert!(limiter.admit(&busy, &bob, now).is_err());
    }

    #[test]
    fn when_no_bucket_is_full_the_nearest_to_full_goes() {
        let mut limiter = limiter(3, 1_000, 2);
        let bob = user("bob");
        let (first, second, third) = (user("first"), user("second"), user("third"));
        assert_eq!(limiter.admit(&first, &bob, UnixMillis(0)), Ok(()));
        assert_eq!(limiter.admit(&second, &bob, UnixMillis(0)), Ok(()));
        assert_eq!(limiter.admit(&second, &bob, UnixMillis(0)), Ok(()));
        assert_eq!(limiter.admit(&third, &bob, UnixMillis(10)), Ok(()));
        assert_eq!(limiter.len(), 2);
        // `second` (furthest from full) was kept: one message left of its burst of 3.
        assert_eq!(limiter.admit(&second, &bob, UnixMillis(10)), Ok(()));
        assert!(limiter.admit(&second, &bob, UnixMillis(10)).is_err());
    }

    #[test]
    fn a_zero_burst_admits_nothing() {
        let mut limiter = limiter(0, 50, 4);
        assert_eq!(
            limiter.admit(&user("a"), &user("b"), UnixMillis(0)),
            Err(50)
        );
        assert!(limiter.is_empty());
    }
}
