//! The brute-force throttle of digest authentication (issue 8 item 8): failed authentications
//! are counted per source and per account, in memory, on each node, and a source that failed
//! too often is refused before its credentials are checked.
//!
//! A failure is a credentials header whose response does not match, or that names no account
//! (counted the same, so the throttle does not tell whether an account exists). Missing
//! credentials, stale nonces and malformed headers are not password guesses and do not count.
//! Each count lives for a window that starts at its first failure.
//!
//! Invariant: a source (IPv4 address, IPv6 /64) with `per_source_max` failures in its window
//! is refused for every account until that window ends.
//! Invariant: an account with `per_account_max` failures in its window refuses only the sources
//! that failed on it in their own window; a source with no recent failure on the account (the
//! real user from elsewhere) is checked as usual, so an attacker cannot lock the user out.
//! Invariant: a success clears only the failures of that source on that account, never the
//! source's own count (an attacker's valid account does not reset its guesses elsewhere).
//! Invariant: each table holds at most `entries_max` entries; when full the oldest window is
//! forgotten first. Nothing here sleeps or delays: a refusal is an immediate answer.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;

use pms_types::{UnixMillis, UserId, limits};

/// The limits of an [`AuthThrottle`]; the defaults are the named constants in
/// `pms_types::limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthThrottleLimits {
    pub window_ms: u64,
    pub per_source_max: u32,
    pub per_account_max: u32,
    pub entries_max: usize,
}

impl Default for AuthThrottleLimits {
    fn default() -> Self {
        AuthThrottleLimits {
            window_ms: limits::AUTH_FAILURE_WINDOW_MS,
            per_source_max: limits::AUTH_FAILURES_PER_SOURCE_MAX,
            per_account_max: limits::AUTH_FAILURES_PER_ACCOUNT_MAX,
            entries_max: limits::AUTH_THROTTLE_ENTRIES_MAX,
        }
    }
}

/// Where attempts come from: an IPv4 address, or the /64 of an IPv6 address (one host usually
/// holds a whole /64). IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    V6Prefix64(u64),
}

impl SourceKey {
    pub fn of(address: IpAddr) -> SourceKey {
        match address {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6Prefix64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Failed-authentication counts per source, per account and per (account, source).
#[derive(Debug)]
pub struct AuthThrottle {
    limits: AuthThrottleLimits,
    sources: WindowTable<SourceKey>,
    accounts: WindowTable<UserId>,
    pairs: WindowTable<(UserId, SourceKey)>,
}

impl AuthThrottle {
    pub fn new(limits: AuthThrottleLimits) -> Self {
        AuthThrottle {
            limits,
            sources: WindowTable::new(limits.window_ms, limits.entries_max),
            accounts: WindowTable::new(limits.window_ms, limits.entries_max),
            pairs: WindowTable::new(limits.window_ms, limits.entries_max),
        }
    }

    /// `Some(ms)` when an attempt from `source` on `account` (`None`: a name that is no valid
    /// user name) must be refused unchecked, for about `ms` more milliseconds.
    pub fn refused_for_ms(
        &self,
        source: SourceKey,
        account: Option<&UserId>,
        now: UnixMillis,
    ) -> Option<u64> {
        if let Some(window) = self.sources.live(&source, now)
            && window.count >= self.limits.per_source_max
        {
            return Some(self.sources.left_ms(window, now));
        }
        let account = account?;
        let account_window = self.accounts.live(account, now)?;
        if account_window.count < self.limits.per_account_max {
            return None;
        }
        let pair_window = self.pairs.live(&(account.clone(), source), now)?;
        Some(
            self.accounts
                .left_ms(account_window, now)
                .min(self.pairs.left_ms(pair_window, now)),
        )
    }

    /// Counts a failed authentication from `source` on `account`.
    pub fn failed(&mut self, source: SourceKey, account: Option<&UserId>, now: UnixMillis) {
        self.sources.count(source, now);
        if let Some(account) = account {
            self.accounts.count(account.clone(), now);
            self.pairs.count((account.clone(), source), now);
        }
    }

    /// `source` proved it knows `account`'s password: its earlier failures on the account
    /// (a mistyped password) no longer mark it as a guesser of this account.
    pub fn succeeded(&mut self, source: SourceKey, account: &UserId) {
        self.pairs.forget(&(account.clone(), source));
    }

    /// Entries held in the (sources, accounts, pairs) tables.
    pub fn entries(&self) -> (usize, usize, usize) {
        (
            self.sources.entries.len(),
            self.accounts.entries.len(),
            self.pairs.entries.len(),
        )
    }
}

/// Failures counted in one window that started at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    start: UnixMillis,
    count: u32,
}

/// A bounded map from key to its current window, with the keys in the order their windows
/// started (so the oldest is found without a scan).
#[derive(Debug)]
struct WindowTable<K> {
    window_ms: u64,
    entries_max: usize,
    entries: HashMap<K, Window>,
    /// (key, window start) in start order; an item whose key now has another window, or none,
    /// is stale and skipped.
    order: VecDeque<(K, UnixMillis)>,
}

impl<K: Clone + Eq + Hash> WindowTable<K> {
    fn new(window_ms: u64, entries_max: usize) -> Self {
        WindowTable {
            window_ms,
            entries_max: entries_max.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn expired(&self, window: &Window, now: UnixMillis) -> bool {
        now.0 >= window.start.0.saturating_add(self.window_ms)
    }

    /// The key's window, unless it has none or it ended.
    fn live(&self, key: &K, now: UnixMillis) -> Option<Window> {
        self.entries
            .get(key)
            .copied()
            .filter(|window| !self.expired(window, now))
    }

    /// Milliseconds until `window` ends (at least 1).
    fn left_ms(&self, window: Window, now: UnixMillis) -> u64 {
        window
            .start
            .0
            .saturating_add(self.window_ms)
            .saturating_sub(now.0)
            .max(1)
    }

    fn count(&mut self, key: K, now: UnixMillis) {
        self.drop_expired(now);
        if let Some(window) = self.live(&key, now) {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.count = window.count.saturating_add(1);
            }
            return;
        }
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.entries_max {
                if !self.forget_oldest() {
                    break;
                }
            }
        }
        self.entries.insert(
            key.clone(),
            Window {
                start: now,
                count: 1,
            },
        );
        self.order.push_back((key, now));
        // A clock that went backwards can leave stale items behind live ones; keep the index
        // bounded by rebuilding it from the entries.
        if self.order.len() > self.entries_max.saturating_mul(2) {
            let mut order: Vec<(K, UnixMillis)> = self
                .entries
                .iter()
                .map(|(key, window)| (key.clone(), window.start))
                .collect();
            order.sort_by_key(|(_, start)| *start);
            self.order = order.into();
        }
    }

    fn forget(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Drops the windows that ended, oldest first, and stale index items at the front.
    fn drop_expired(&mut self, now: UnixMillis) {
        while let Some((key, start)) = self.order.front() {
            match self.entries.get(key) {
                Some(window) if window.start == *start => {
                    if !self.expired(window, now) {
                        return;
                    }
                    self.entries.remove(key);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Forgets the oldest window; false when there is none.
    fn forget_oldest(&mut self) -> bool {
        while let Some((key, start)) = self.order.pop_front() {
            if self
                .entries
                .get(&key)
                .is_some_and(|window| window.start == start)
            {
                self.entries.remove(&key);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AuthThrottleLimits {
        AuthThrottleLimits {
            window_ms: 60_000,
            per_source_max: 5,
            per_account_max: 3,
            entries_max: 8,
        }
    }

    fn source(last: u8) -> SourceKey {
        SourceKey::of(IpAddr::from([192, 0, 2, last]))
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn a_source_is_refused_for_every_account_after_its_maximum_until_the_window_ends() {
        let mut throttle = AuthThrottle::new(limits());
        let accounts: Vec<UserId> = (0..5).map(|n| user(&format!("u{n}"))).collect();
        for (n, account) in accounts.iter().enumerate() {
            assert_eq!(
                throttle.refused_for_ms(source(1), Some(account), UnixMillis(1_000)),
                None
            );
            throttle.failed(source(1), Some(account), UnixMillis(1_000 + n as u64));
        }
        let fresh = user("fresh");
        assert_eq!(
            throttle.refused_for_ms(source(1), Some(&fresh), UnixMillis(11_000)),
            Some(50_000)
        );
        assert_eq!(
            throttle.refused_for_ms(source(1), None, UnixMillis(11_000)),
            Some(50_000)
        );
        assert_eq!(
            throttle.refused_for_ms(source(2), Some(&fresh), UnixMillis(11_000)),
            None
        );
        assert_eq!(
            throttle.refused_for_ms(source(1), Some(&fresh), UnixMillis(61_000)),
            None,
            "the window started at the first failure"
        );
    }

    #[test]
    fn an_attacked_account_refuses_only_the_sources_that_failed_on_it() {
        let mut throttle = AuthThrottle::new(limits());
        let alice = user("alice");
        for last in [1, 2, 3] {
            throttle.failed(source(last), Some(&alice), UnixMillis(0));
        }
        for last in [1, 2, 3] {
            assert_eq!(
                throttle.refused_for_ms(source(last), Some(&alice), UnixMillis(30_000)),
                Some(30_000)
            );
        }
        assert_eq!(
            throttle.refused_for_ms(source(9), Some(&alice), UnixMillis(30_000)),
            None,
            "the real user elsewhere is not locked out"
        );
        assert_eq!(
            throttle.refused_for_ms(source(1), Some(&user("bob")), UnixMillis(30_000)),
            None,
            "below its own maximum a source may still try other accounts"
        );
    }

    #[test]
    fn a_success_clears_the_sources_failures_on_that_account_only() {
        let mut throttle = AuthThrottle::new(limits());
        let alice = user("alice");
        throttle.failed(source(1), Some(&alice), UnixMillis(0));
        throttle.failed(source(2), Some(&alice), UnixMillis(0));
        throttle.failed(source(2), Some(&alice), UnixMillis(0));
        throttle.succeeded(source(1), &alice);
        assert_eq!(
            throttle.refused_for_ms(source(1), Some(&alice), UnixMillis(1)),
            None
        );
        assert!(
            throttle
                .refused_for_ms(source(2), Some(&alice), UnixMillis(1))
                .is_some()
        );
        // The source's own count is kept: 5 failures in all refuse it everywhere.
        for _ in 0..4 {
            throttle.failed(source(1), Some(&user("bob")), UnixMillis(2));
        }
        throttle.succeeded(source(1), &user("carol"));
        assert!(
            throttle
                .refused_for_ms(source(1), Some(&user("carol")), UnixMillis(3))
                .is_some()
        );
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_bit_prefix() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_prefix: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_prefix: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(one), SourceKey::of(same_prefix));
        assert_ne!(SourceKey::of(one), SourceKey::of(other_prefix));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(SourceKey::of(mapped), source(7));
    }

    #[test]
    fn tables_are_bounded_and_forget_the_oldest_window_first() {
        let mut throttle = AuthThrottle::new(limits());
        for n in 0..100u64 {
            let last = u8::try_from(n).unwrap();
            throttle.failed(source(last), Some(&user(&format!("u{n}"))), UnixMillis(n));
            let (sources, accounts, pairs) = throttle.entries();
            assert!(sources <= 8 && accounts <= 8 && pairs <= 8);
        }
        // The newest are kept, the oldest forgotten.
        assert!(
            throttle
                .sources
                .live(&source(99), UnixMillis(100))
                .is_some()
        );
        assert!(throttle.sources.live(&source(0), UnixMillis(100)).is_none());
        assert!(throttle.order_is_bounded());
    }

    #[test]
    fn ended_windows_are_dropped_and_start_again_at_one() {
        let mut throttle = AuthThrottle::new(limits());
        for _ in 0..5 {
            throttle.failed(source(1), None, UnixMillis(0));
        }
        assert!(
            throttle
                .refused_for_ms(source(1), None, UnixMillis(1))
                .is_some()
        );
        throttle.failed(source(1), None, UnixMillis(60_000));
        assert_eq!(
            throttle.refused_for_ms(source(1), None, UnixMillis(60_001)),
            None
        );
        assert_eq!(
            throttle.sources.live(&source(1), UnixMillis(60_001)),
            Some(Window {
                start: UnixMillis(60_000),
                count: 1
            })
        );
        // Later failures of other sources drop the ended window from the table.
        throttle.failed(source(2), None, UnixMillis(200_000));
        assert_eq!(throttle.entries().0, 1);
    }

    #[test]
    fn a_clock_going_backwards_keeps_the_index_bounded() {
        let mut throttle = AuthThrottle::new(limits());
        for n in 0..1_000u64 {
            let last = u8::try_from(n % 16).unwrap();
            throttle.failed(source(last), None, UnixMillis(1_000_000 - n * 997 % 90_000));
            assert!(throttle.order_is_bounded());
        }
    }

    impl AuthThrottle {
        fn order_is_bounded(&self) -> bool {
            let max = self.limits.entries_max * 2;
            self.sources.order.len() <= max
                && self.accounts.order.len() <= max
                && self.pairs.order.len() <= max
        }
    }
}
