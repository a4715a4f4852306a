//! The fleet's rate split: how much of a rate-limited host's rate this dispatcher uses while others send to
//! it too. Each dispatcher tells the fleet what it asks of the host, in sends a second — or, while it has a
//! backlog for the host (its sends wait more than [`BACKLOG_AHEAD`] for their slots, or it requeued one for
//! the rate since it last told), the whole rate, since it could use any part it is given. Each splits the
//! rate max-min fairly over the latest reports ([`fair_share`]): dispatchers with a backlog get equal parts,
//! one that asks for less gets what it asks. Pure: time is an argument.
//!
//! Why a backlog asks for the whole rate rather than what it asked: a dispatcher with a backlog asks as often
//! as its held sends come back from the retry tiers, which is in clumps, so parts split by it swung with
//! the clumps — over the rate while some dispatchers' clumps were counted, under it while others' sends were
//! all in the tiers (such a dispatcher got a send a second, requeued the few that came back far ahead, and
//! stayed starved).

use std::collections::HashMap;
use std::time::Duration;

use super::fleet::Seen;
use super::rate::Booking;
use super::{HostKey, Lanes};

/// Sends booked further ahead than this mean the dispatcher's part of the rate holds it back.
pub const BACKLOG_AHEAD: Duration = Duration::from_secs(1);

impl Lanes {
    /// Adds to `seen` what this dispatcher asks of each rate-limited host since the last report (sends a
    /// second, rounded up: a host asked for at all counts; the whole rate with a backlog; at least half of
    /// what it asked for in the last report).
    pub(super) fn demands(&mut self, now: Duration, seen: &mut HashMap<HostKey, Seen>) {
        let r = &mut self.rates;
        let secs = now
            .saturating_sub(std::mem::replace(&mut r.demand_since, now))
            .as_secs_f64()
            .max(0.001);
        let mut demand: HashMap<String, u64> = std::mem::take(&mut r.demand)
            .into_iter()
            .map(|(host, n)| (host, (n as f64 / secs).ceil() as u64))
            .collect();
        let booked = r
            .next_slot
            .iter()
            .filter(|(_, next)| next.saturating_sub(now) > BACKLOG_AHEAD)
            .map(|(host, _)| host.clone());
        let backlogged: Vec<String> = std::mem::take(&mut r.requeued)
            .into_iter()
            .chain(booked)
            .collect();
        for host in backlogged {
            if let Some(rate) = r.rules.rate_for(&host) {
                let whole = rate.ceil() as u64;
                let asked = demand.entry(host).or_default();
                *asked = (*asked).max(whole);
            }
        }
        // What it asked for before counts at half for the next report, and so on: a second without an ask
        // (a rebalance, its sends in the tiers) lowers its part over a few reports instead of dropping it to
        // nothing and back, which made the others take the whole rate and book sends they then had to give
        // back.
        for (host, before) in &r.last_demand {
            if before / 2 > 0 {
                let asked = demand.entry(host.clone()).or_default();
                *asked = (*asked).max(before / 2);
            }
        }
        for (host, n) in &demand {
            let key = HostKey {
                host: host.clone(),
                workspace: String::new(),
            };
            seen.entry(key).or_default().demand = Some(*n);
        }
        r.last_demand = demand;
    }

    /// This dispatcher's share of a rate-limited host's rate, split max-min fairly by what each dispatcher
    /// asked for lately ([`fair_share`]; this one at least a send a second, so one that just began asking is
    /// not shut out). The next free slot and the slots booked for sends waiting here move with the share
    /// (nearer for a larger one, further for a smaller one; [`Lanes::rebooked`]): sends booked at a small
    /// share do not idle the dispatcher once its share grows, and sends booked at a large share do not add
    /// to the others' once it shrinks.
    pub(super) fn split(&mut self, host: &str, others: &[u64], now: Duration) {
        // As the schedule keys it (a name's trailing dot is not another host's rate).
        let host = host.trim_end_matches('.');
        let rate = self.rates.rules.rate_for(host);
        let share = match (rate, others.is_empty()) {
            (Some(rate), false) => {
                let mine = self
                    .rates
                    .last_demand
                    .get(host)
                    .copied()
                    .unwrap_or(0)
                    .max(1);
                (fair_share(rate, mine, others) / rate).clamp(0.001, 1.0)
            }
            _ => 1.0,
        };
        let old = if share < 1.0 {
            self.rates.share.insert(host.to_string(), share)
        } else {
            self.rates.share.remove(host)
        }
        .unwrap_or(1.0);
        if share != old {
            self.rates.rescale(host, now, old / share);
        }
    }

    /// Books the slot `wait` from `now` for a send about to wait for it (a hold for the host's rate).
    pub fn booking(&self, host: &str, now: Duration, wait: Duration) -> Booking {
        self.rates.booking(host, now + wait)
    }

    /// How much longer the send booked so waits, the changes of the host's part since applied.
    pub fn rebooked(&self, host: &str, booking: Booking, now: Duration) -> Duration {
        self.rates.rebooked(host, booking).saturating_sub(now)
    }
}

/// Max-min fair allocation (water-filling) of `rate` among dispatchers asking for `mine` and `others`
/// (sends a second): one asking for less than an equal part gets what it asks, and the rest is split
/// equally among those asking for more. So dispatchers with a backlog get equal parts whatever the noise in
/// their counts, and the parts add up to the rate as long as the fleet asks for it all. This dispatcher's
/// part. Every dispatcher computes it from the same reports, so the parts agree.
pub fn fair_share(rate: f64, mine: u64, others: &[u64]) -> f64 {
    let mut asks: Vec<(u64, bool)> = others.iter().map(|d| (*d, false)).collect();
    asks.push((mine, true));
    asks.sort_unstable();
    let (mut left, mut n) = (rate, asks.len());
    for (asked, me) in asks {
        let part = (asked as f64).min(left / n as f64);
        if me {
            return part;
        }
        left -= part;
        n -= 1;
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_rate_is_split_equally_among_dispatchers_with_a_backlog_and_what_one_leaves_goes_to_the_others(
    ) {
        let third = fair_share(50.0, 400, &[90, 1_000]);
        assert!(
            (third - 50.0 / 3.0).abs() < 1e-9,
            "all three ask for more: {third}"
        );
        assert_eq!(
            fair_share(50.0, 5, &[90, 1_000]),
            5.0,
            "one asks for less: it gets that"
        );
        assert_eq!(
            fair_share(50.0, 400, &[5, 1_000]),
            22.5,
            "and the others split the rest"
        );
        assert_eq!(fair_share(50.0, 400, &[]), 50.0, "alone");
    }

    proptest! {
        #[test]
        fn the_parts_add_up_to_the_rate_or_to_what_the_fleet_asks(
            asks in proptest::collection::vec(0u64..500, 1..12),
            rate in 0.5f64..1_000.0,
        ) {
            let parts: Vec<f64> = (0..asks.len())
                .map(|i| {
                    let others: Vec<u64> = asks.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect();
                    fair_share(rate, asks[i], &others)
                })
                .collect();
            let total: f64 = parts.iter().sum();
            let asked: f64 = asks.iter().map(|a| *a as f64).sum();
            prop_assert!((total - rate.min(asked)).abs() < 1e-6 * rate.max(1.0), "{total} of {rate} ({asked} asked)");
            for (part, ask) in parts.iter().zip(&asks) {
                prop_assert!(*part <= *ask as f64 + 1e-9);
            }
        }
    }
}
