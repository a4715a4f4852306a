//! When a slow host's sends are spilled and when they come back, saturation episodes, and what the
//! metrics show of the slots. Pure: time is an argument. Split from [`super::slots`], whose state it reads.

use std::sync::Arc;
use std::time::Duration;

use super::slots::{Slots, Take, Wake, Wakeup};
pub use crate::telemetry::isolation_metrics::Snapshot;

/// A spilled send comes back at most this much later, whatever the host's backlog: by then either the
/// host has caught up or the send is simply spilled again.
pub const MAX_SPILL_DELAY: Duration = Duration::from_secs(2 * 3600);

/// A saturation episode ends once its host has had nothing queued and nothing spilled for this long.
pub const QUIET_AFTER: Duration = Duration::from_secs(10);

/// How long completions are counted before a host's absorption rate is re-estimated.
pub(super) const RATE_WINDOW: Duration = Duration::from_millis(500);

/// Why a send was spilled; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpillReason {
    QueueFull,
    QueueWait,
    /// The dispatcher is stopping.
    Stopping,
}

impl SpillReason {
    pub const ALL: [SpillReason; 3] = [
        SpillReason::QueueFull,
        SpillReason::QueueWait,
        SpillReason::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpillReason::QueueFull => "queue_full",
            SpillReason::QueueWait => "queue_wait",
            SpillReason::Stopping => "stopping",
        }
    }
}

/// A host saturated, or no longer: logged once per episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Episode {
    Began {
        host: Arc<str>,
        in_flight: usize,
        queued: usize,
    },
    Ended {
        host: Arc<str>,
        lasted: Duration,
        spilled: u64,
        peak_queued: usize,
    },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct EpisodeState {
    pub(super) since: Duration,
    pub(super) last_busy: Duration,
    pub(super) spilled: u64,
    pub(super) peak_queued: usize,
}

impl Slots {
    /// The dispatcher stops: every send waiting for a slow host is spilled now (its record is then done
    /// and committed, instead of redone by the partition's next owner), and so are later ones.
    pub fn drain(&mut self, now: Duration) -> Vec<Wakeup> {
        self.draining = true;
        let mut wakes = Vec::new();
        let keys: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
        for key in keys {
            while self.lanes[&key].slow(now) && !self.lanes[&key].queue.is_empty() {
                let ticket = self.lanes[&key].queue[0].0;
                self.remove_at(&key, 0);
                let after = self.spill_after(&key, now);
                wakes.push(Wakeup {
                    ticket,
                    wake: Wake::Spill {
                        after,
                        reason: SpillReason::Stopping,
                    },
                });
            }
        }
        wakes
    }

    /// Spills what waited too long in slow lanes, notes saturation episodes, and hands out slots a lane
    /// may take now that it is no longer slow; call a few times a second.
    pub fn tick(&mut self, now: Duration) -> (Vec<Wakeup>, Vec<Episode>) {
        let mut wakes = Vec::new();
        let mut episodes = Vec::new();
        let keys: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
        for key in keys {
            self.lanes.get_mut(&key).expect("present").close_window(now);
            self.expire(&key, now, &mut wakes);
            let lane = self.lanes.get_mut(&key).expect("present");
            let busy = (lane.slow(now) && !lane.queue.is_empty()) || lane.spilled_since_tick;
            lane.spilled_since_tick = false;
            match (&mut lane.episode, busy) {
                (None, true) => {
                    lane.episode = Some(EpisodeState {
                        since: now,
                        last_busy: now,
                        spilled: 0,
                        peak_queued: lane.queue.len(),
                    });
                    episodes.push(Episode::Began {
                        host: key.clone(),
                        in_flight: lane.in_flight,
                        queued: lane.queue.len(),
                    });
                }
                (Some(e), true) => {
                    e.last_busy = now;
                    e.peak_queued = e.peak_queued.max(lane.queue.len());
                }
                (Some(e), false) if now.saturating_sub(e.last_busy) >= QUIET_AFTER => {
                    episodes.push(Episode::Ended {
                        host: key.clone(),
                        lasted: e.last_busy.saturating_sub(e.since),
                        spilled: e.spilled,
                        peak_queued: e.peak_queued,
                    });
                    lane.episode = None;
                }
                _ => {}
            }
            self.forget_if_idle(&key, now);
        }
        wakes.extend(self.fill(now));
        (wakes, episodes)
    }

    pub fn snapshot(&self, now: Duration, top: usize) -> Snapshot {
        let mut oldest = Duration::ZERO;
        let mut saturated = 0;
        let mut queues: Vec<(Arc<str>, usize, usize)> = Vec::new();
        for (host, lane) in &self.lanes {
            if let Some((_, at, _)) = lane.queue.front() {
                oldest = oldest.max(now.saturating_sub(*at));
            }
            if lane.episode.is_some() {
                saturated += 1;
                if !lane.queue.is_empty() {
                    queues.push((host.clone(), lane.queue.len(), lane.in_flight));
                }
            }
        }
        queues.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        queues.truncate(top);
        Snapshot {
            queued: self.queued,
            saturated_hosts: saturated,
            oldest_queued: oldest,
            top: queues,
        }
    }

    /// Spills the sends at the head of a slow lane's queue that have waited `max_queue_wait`.
    /// Once a host has turned slow, what it queued beyond `max_queued_per_host` while it still looked quick
    /// (or had not answered yet) is spilled too, newest first: its queue's bound holds from the next tick.
    pub(super) fn expire(&mut self, key: &Arc<str>, now: Duration, wakes: &mut Vec<Wakeup>) {
        while self.lanes[key].slow(now)
            && self.lanes[key].queue.len() > self.limits.max_queued_per_host
        {
            let at = self.lanes[key].queue.len() - 1;
            let ticket = self.lanes[key].queue[at].0;
            self.remove_at(key, at);
            let after = self.spill_after(key, now);
            wakes.push(Wakeup {
                ticket,
                wake: Wake::Spill {
                    after,
                    reason: SpillReason::QueueFull,
                },
            });
        }
        loop {
            let lane = &self.lanes[key];
            let Some(&(ticket, at, _)) = lane.queue.front() else {
                return;
            };
            if !lane.slow(now) || now.saturating_sub(at) < self.limits.max_queue_wait {
                return;
            }
            self.remove_at(key, 0);
            let after = self.spill_after(key, now);
            wakes.push(Wakeup {
                ticket,
                wake: Wake::Spill {
                    after,
                    reason: SpillReason::QueueWait,
                },
            });
        }
    }

    /// A send for `key` that cannot wait here is spilled, and why.
    pub(super) fn spill(&mut self, key: &Arc<str>, now: Duration, reason: SpillReason) -> Take {
        let after = self.spill_after(key, now);
        Take::Spill { after, reason }
    }

    /// When a send spilled now should come back: behind the host's queue and the sends spilled before it,
    /// spread at the rate the host could take them. That rate errs high — what it was seen to finish, or
    /// every slot it can get at its latency, at least its cap per request timeout — because a send back
    /// early is only spilled again, while one back late leaves the host idle with a backlog. A host that
    /// has not answered yet gets its spills back within a request timeout, when it will have answered or
    /// timed out and its rate is known.
    pub(super) fn spill_after(&mut self, key: &Arc<str>, now: Duration) -> Duration {
        let timeout = self.limits.request_timeout.max(Duration::from_millis(1));
        let floor = self.limits.max_in_flight_per_host as f64 / timeout.as_secs_f64();
        let reachable = self
            .limits
            .max_in_flight_per_host
            .min(self.limits.max_in_flight - self.reserve)
            .max(1) as f64;
        let lane = self.lanes.get_mut(key).expect("present");
        let potential = if lane.answered {
            reachable / lane.latency.max(0.001)
        } else {
            0.0
        };
        let rate = lane.rate.unwrap_or(0.0).max(floor).max(potential).max(1e-3);
        if lane.horizon > now && rate > lane.horizon_rate {
            // Faster than the spread so far assumed: what is still ahead is drawn in to the new rate.
            let ahead = (lane.horizon - now).as_secs_f64() * lane.horizon_rate / rate;
            lane.horizon = now + Duration::from_secs_f64(ahead.min(MAX_SPILL_DELAY.as_secs_f64()));
        }
        lane.horizon_rate = rate;
        let most = if lane.answered {
            MAX_SPILL_DELAY
        } else {
            timeout.min(MAX_SPILL_DELAY)
        };
        let per_send = Duration::from_secs_f64(1.0 / rate).min(most);
        let behind_queue = Duration::from_secs_f64((lane.queue.len() as f64 / rate).min(1e6));
        let start = lane.horizon.max(now + behind_queue).min(now + most);
        lane.horizon = start + per_send;
        lane.spilled_since_tick = true;
        if let Some(e) = &mut lane.episode {
            e.spilled += 1;
        }
        start.saturating_sub(now).max(per_send)
    }

    /// Requests in flight to `host`.
    pub fn in_flight(&self, host: &str) -> usize {
        self.lanes
            .get(host.trim_end_matches('.'))
            .map_or(0, |l| l.in_flight)
    }

    /// Whether `host`'s lane is slow at `now`.
    #[cfg(test)]
    pub fn is_slow(&self, host: &str, now: Duration) -> bool {
        self.lanes
            .get(host.trim_end_matches('.'))
            .is_some_and(|l| l.slow(now))
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Lanes kept (hosts with work in flight, queued, or measured lately).
    #[cfg(test)]
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Requests `host` may have in flight now.
    #[cfg(test)]
    pub fn cap_of(&self, host: &str) -> usize {
        self.lanes
            .get(host.trim_end_matches('.'))
            .map_or(self.initial_window(), |l| self.cap(l))
    }
}
