//! Who gets the next request slot. Each host has a lane: its requests in flight (at most
//! `max_in_flight_per_host`) and a queue of sends waiting for a slot. Free global slots (`max_in_flight`)
//! go to the waiting lane with the fewest requests in flight first.
//!
//! A new lane starts with a quarter of its cap (at least 4) and gains a slot with every request that ends (slow start,
//! as TCP does): a host is not known to be quick until it has answered, and slots handed to a host that
//! turns out to hang are lost for its timeout. A host answering at once reaches its cap within a few
//! dozen requests; one answering in 3 s doubles its share every 3 s.
//!
//! A lane is *slow* while its requests hold their slots for long: nothing of it has finished for a second
//! with requests in flight, or its requests have lately taken over a second on average. A slow lane, or
//! one that has not answered yet, may not take the last eighth of the global slots, so slow or hanging
//! hosts never take every slot from a host that answers at once, however many of them there are. Its queue is bounded: a send that finds it
//! full (`max_queued_per_host`), or waits in it for `max_queue_wait`, is *spilled* — handed back to go to
//! a retry tier without an attempt, due when the host can be expected to take it at the rate it has been
//! answering.
//!
//! A queued send waits without its consumer admission slot (the caller gives it back), so queues never
//! hold the capacity other hosts' records need to start. Only when more than `4 × max_in_flight` sends of
//! lanes that are not slow wait at once — the dispatcher itself is the bottleneck then, not a host — do
//! further ones keep their admission slot (ordinary backpressure); they ask again with
//! [`HostQueues::settle`] now and then. A lane that is not slow is never spilled: moving its sends aside
//! would not make them go sooner.
//!
//! Pure: time is an argument (a monotonic `Duration` since the dispatcher started). The async side that
//! parks tasks on these decisions is [`super::slots`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// A spilled send comes back at most this much later, whatever the host's backlog: by then either the
/// host has caught up or the send is simply spilled again.
pub const MAX_SPILL_DELAY: Duration = Duration::from_secs(2 * 3600);
/// A saturation episode ends once its host has had nothing queued and nothing spilled for this long.
pub const QUIET_AFTER: Duration = Duration::from_secs(10);
/// Requests that take longer than this make their host slow.
pub const SLOW_LATENCY: Duration = Duration::from_secs(1);
/// How long completions are counted before a host's absorption rate is re-estimated.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// How the lanes are bounded.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_in_flight: usize,
    pub max_in_flight_per_host: usize,
    /// Sends a slow host may have waiting for a slot; more are spilled.
    pub max_queued_per_host: usize,
    /// The longest a send waits in a slow host's queue before it is spilled.
    pub max_queue_wait: Duration,
    /// Every request ends by then, so a host with its cap in use absorbs at least
    /// `max_in_flight_per_host / request_timeout` requests a second, even one that never answers.
    pub request_timeout: Duration,
}

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

/// What a send asking for a slot is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A slot is its own now: give it back with [`HostQueues::release`].
    Go,
    /// Wait in the host's queue under this ticket for a [`Wake`]; `release`: without holding an admission
    /// slot (else keep it, and re-ask with [`HostQueues::settle`] now and then).
    Queued { ticket: u64, release: bool },
    /// Go to a retry tier, to come back this much later.
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

/// What a queued send is woken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// It has a slot (already counted as in use).
    Go,
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

/// What a waiter that keeps its admission slot should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Keep waiting as it is (or it has just been woken: its wake is on its way).
    Wait,
    /// Give the admission slot back and wait on.
    Release,
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wakeup {
    pub ticket: u64,
    pub wake: Wake,
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

/// What the metrics show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub queued: usize,
    pub saturated_hosts: usize,
    /// How long the send waiting longest in a queue has waited.
    pub oldest_queued: Duration,
    /// The saturated hosts with the longest queues, longest first: `(host, queued, in flight)`.
    pub top: Vec<(Arc<str>, usize, usize)>,
}

/// How a queued send waits, and so what it is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waits {
    /// Keeping its admission slot.
    Keeping,
    /// Without it, counted against its lane's bound (queued while its lane was slow or not yet answered).
    ReleasedSlow,
    /// Without it, counted in `HostQueues::released_fast`.
    ReleasedFast,
}

#[derive(Debug, Default)]
struct Lane {
    in_flight: usize,
    /// Requests it may have in flight now (slow start, up to `max_in_flight_per_host`).
    window: usize,
    /// A request of it has ended.
    answered: bool,
    /// `(ticket, queued at, how it waits)`, oldest first.
    queue: VecDeque<(u64, Duration, Waits)>,
    /// Queued sends that wait without an admission slot.
    released: usize,
    /// When a request of this lane last finished, or it last went from idle to busy.
    last_done: Duration,
    /// Smoothed duration of its requests, in seconds.
    latency: f64,
    /// Where the spilled sends' return times end, so they come back spread at the host's rate.
    horizon: Duration,
    /// The rate (sends a second) the horizon was spread at.
    horizon_rate: f64,
    window_start: Duration,
    window_done: u32,
    /// Requests a second the host was seen to finish (smoothed), once a window has passed.
    rate: Option<f64>,
    episode: Option<EpisodeState>,
    spilled_since_tick: bool,
    /// When a request last began or ended: an idle lane is kept a while, for what was measured of it.
    last_active: Duration,
}

impl Lane {
    fn new(now: Duration, window: usize) -> Self {
        Self {
            window,
            last_done: now,
            window_start: now,
            last_active: now,
            ..Self::default()
        }
    }

    /// A request of this lane begins.
    fn start(&mut self, now: Duration) {
        if self.in_flight == 0 {
            // Idle until now: nothing was owed, so nothing is overdue.
            self.last_done = now;
        }
        self.in_flight += 1;
        self.last_active = now;
    }

    fn slow(&self, now: Duration) -> bool {
        // A host that has never answered is suspect sooner: most answer well within a quarter second.
        let overdue = if self.answered {
            SLOW_LATENCY
        } else {
            SLOW_LATENCY / 4
        };
        self.in_flight > 0
            && (now.saturating_sub(self.last_done) > overdue
                || self.latency > SLOW_LATENCY.as_secs_f64())
    }
}

#[derive(Debug, Clone, Copy)]
struct EpisodeState {
    since: Duration,
    last_busy: Duration,
    spilled: u64,
    peak_queued: usize,
}

/// The lanes of every host with work in flight, queued or recently measured.
#[derive(Debug)]
pub struct HostQueues {
    limits: QueueLimits,
    /// Global slots slow lanes may not take.
    reserve: usize,
    /// Sends of lanes that are not slow that may wait without an admission slot, in all.
    max_released: usize,
    in_use: usize,
    queued: usize,
    /// Queued sends of lanes that are not slow waiting without an admission slot.
    released_fast: usize,
    lanes: HashMap<Arc<str>, Lane>,
    /// Set once the dispatcher stops: slow lanes spill instead of queueing.
    draining: bool,
    /// Lanes with a queue and room under their cap, by (in flight, ticket of the queue's head).
    ready: BTreeSet<(usize, u64, Arc<str>)>,
    next_ticket: u64,
}

impl HostQueues {
    pub fn new(limits: QueueLimits) -> Self {
        let limits = QueueLimits {
            max_in_flight: limits.max_in_flight.max(1),
            max_in_flight_per_host: limits.max_in_flight_per_host.max(1),
            ..limits
        };
        Self {
            reserve: limits.max_in_flight / 8,
            max_released: limits.max_in_flight.saturating_mul(4),
            limits,
            in_use: 0,
            queued: 0,
            released_fast: 0,
            draining: false,
            lanes: HashMap::new(),
            ready: BTreeSet::new(),
            next_ticket: 0,
        }
    }

    /// A send for `host` asks for a slot.
    pub fn take(&mut self, host: &str, now: Duration) -> Take {
        let key = self.lane_key(host, now);
        let lane = &self.lanes[&key];
        if lane.queue.is_empty() && self.may_go(lane, now) {
            self.lanes.get_mut(&key).expect("present").start(now);
            self.in_use += 1;
            return Take::Go;
        }
        let waits = match self.how_to_wait(lane, now) {
            Ok(waits) => waits,
            Err(reason) => {
                return Take::Spill {
                    after: self.spill_after(&key, now),
                    reason,
                }
            }
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unready(&key);
        let lane = self.lanes.get_mut(&key).expect("present");
        lane.queue.push_back((ticket, now, waits));
        self.counted(&key, waits, 1);
        self.queued += 1;
        self.reready(&key);
        Take::Queued {
            ticket,
            release: waits != Waits::Keeping,
        }
    }

    /// How a send that cannot go now waits in `lane`; `Err`: it is spilled, and why. A slow lane's sends, and
    /// those of a lane not yet answered waiting for its own window, wait without their admission slot up
    /// to the lane's bound; other lanes' sends up to the bound of them all, then keeping their slot. Only
    /// a slow lane spills.
    fn how_to_wait(&self, lane: &Lane, now: Duration) -> Result<Waits, SpillReason> {
        let room = lane.released < self.limits.max_queued_per_host;
        if self.draining && lane.slow(now) {
            return Err(SpillReason::Stopping);
        }
        if lane.slow(now) {
            return if room {
                Ok(Waits::ReleasedSlow)
            } else {
                Err(SpillReason::QueueFull)
            };
        }
        if !lane.answered && lane.in_flight >= self.cap(lane) && room {
            return Ok(Waits::ReleasedSlow);
        }
        if self.released_fast < self.max_released {
            return Ok(Waits::ReleasedFast);
        }
        Ok(Waits::Keeping)
    }

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

    /// Adds (`+1`) or takes away (`-1`) a waiter of `key` from the counts of how it waits.
    fn counted(&mut self, key: &Arc<str>, waits: Waits, sign: i8) {
        let lane = self.lanes.get_mut(key).expect("present");
        let step = |n: &mut usize| {
            *n = if sign > 0 {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
        };
        if waits != Waits::Keeping {
            step(&mut lane.released);
        }
        if waits == Waits::ReleasedFast {
            step(&mut self.released_fast);
        }
    }

    /// A waiter keeping its admission slot asks again whether it may give it back.
    pub fn settle(&mut self, host: &str, ticket: u64, now: Duration) -> Settle {
        let Some((key, lane)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return Settle::Wait;
        };
        let Some(at) = lane.queue.iter().position(|(t, _, _)| *t == ticket) else {
            return Settle::Wait;
        };
        if lane.queue[at].2 != Waits::Keeping {
            return Settle::Wait;
        }
        let key = key.clone();
        let waits = match self.how_to_wait(lane, now) {
            Ok(Waits::Keeping) => return Settle::Wait,
            Ok(waits) => waits,
            Err(reason) => {
                self.remove_at(&key, at);
                return Settle::Spill {
                    after: self.spill_after(&key, now),
                    reason,
                };
            }
        };
        self.lanes.get_mut(&key).expect("present").queue[at].2 = waits;
        self.counted(&key, waits, 1);
        Settle::Release
    }

    /// A request to `host` has ended after `took`: its slot goes to whoever should have it next.
    pub fn release(&mut self, host: &str, took: Duration, now: Duration) -> Vec<Wakeup> {
        let Some((key, _)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return Vec::new();
        };
        let key = key.clone();
        self.unready(&key);
        let lane = self.lanes.get_mut(&key).expect("present");
        lane.in_flight = lane.in_flight.saturating_sub(1);
        self.in_use = self.in_use.saturating_sub(1);
        lane.window_done = lane.window_done.saturating_add(1);
        lane.window = lane
            .window
            .saturating_add(1)
            .min(self.limits.max_in_flight_per_host);
        lane.answered = true;
        lane.last_done = now;
        lane.last_active = now;
        lane.latency = 0.8 * lane.latency + 0.2 * took.as_secs_f64();
        close_window(lane, now);
        self.reready(&key);
        self.forget_if_idle(&key, now);
        self.fill(now)
    }

    /// A queued send gave up waiting (its task was dropped). `false` if it had already been woken.
    pub fn cancel(&mut self, host: &str, ticket: u64, now: Duration) -> bool {
        let Some((key, lane)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return false;
        };
        let Some(at) = lane.queue.iter().position(|(t, _, _)| *t == ticket) else {
            return false;
        };
        let key = key.clone();
        self.remove_at(&key, at);
        self.forget_if_idle(&key, now);
        true
    }

    /// Spills what waited too long in slow lanes, notes saturation episodes, and hands out slots a lane
    /// may take now that it is no longer slow; call a few times a second.
    pub fn tick(&mut self, now: Duration) -> (Vec<Wakeup>, Vec<Episode>) {
        let mut wakes = Vec::new();
        let mut episodes = Vec::new();
        let keys: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
        for key in keys {
            close_window(self.lanes.get_mut(&key).expect("present"), now);
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

    /// Requests in flight to `host`.
    pub fn in_flight(&self, host: &str) -> usize {
        self.lanes
            .get(host.trim_end_matches('.'))
            .map_or(0, |l| l.in_flight)
    }

    /// Whether `host`'s lane is slow at `now`.
    pub fn is_slow(&self, host: &str, now: Duration) -> bool {
        self.lanes
            .get(host.trim_end_matches('.'))
            .is_some_and(|l| l.slow(now))
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Lanes kept (hosts with work in flight, queued, or measured lately).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The lane of `host`, made if it has none.
    fn lane_key(&mut self, host: &str, now: Duration) -> Arc<str> {
        let host = host.trim_end_matches('.');
        if let Some((key, _)) = self.lanes.get_key_value(host) {
            return key.clone();
        }
        let key: Arc<str> = Arc::from(host);
        let window = self.initial_window();
        self.lanes.insert(key.clone(), Lane::new(now, window));
        key
    }

    /// Requests `lane` may have in flight now.
    fn cap(&self, lane: &Lane) -> usize {
        lane.window.min(self.limits.max_in_flight_per_host)
    }

    /// Requests `host` may have in flight now.
    pub fn cap_of(&self, host: &str) -> usize {
        self.lanes
            .get(host.trim_end_matches('.'))
            .map_or(self.initial_window(), |l| self.cap(l))
    }

    /// What a new lane may have in flight: a quarter of its cap, at least 4 (or the whole cap if smaller).
    fn initial_window(&self) -> usize {
        let cap = self.limits.max_in_flight_per_host;
        (cap / 4).max(cap.min(4))
    }

    /// Whether `lane` may take a free slot.
    fn may_go(&self, lane: &Lane, now: Duration) -> bool {
        lane.in_flight < self.cap(lane)
            && self.in_use < self.limits.max_in_flight
            && (self.in_use < self.limits.max_in_flight - self.reserve
                || (lane.answered && !lane.slow(now)))
    }

    /// Hands free slots to queued sends, the lane with the fewest in flight first (slow lanes skipped
    /// once only the reserve is left).
    fn fill(&mut self, now: Duration) -> Vec<Wakeup> {
        let mut wakes = Vec::new();
        while self.in_use < self.limits.max_in_flight {
            let Some(key) = self
                .ready
                .iter()
                .find(|(_, _, key)| self.may_go(&self.lanes[key], now))
                .map(|(_, _, key)| key.clone())
            else {
                break;
            };
            self.unready(&key);
            let lane = self.lanes.get_mut(&key).expect("ready lanes exist");
            let (ticket, _, waits) = lane.queue.pop_front().expect("ready lanes have a queue");
            lane.start(now);
            self.counted(&key, waits, -1);
            self.in_use += 1;
            self.queued -= 1;
            self.reready(&key);
            wakes.push(Wakeup {
                ticket,
                wake: Wake::Go,
            });
        }
        wakes
    }

    /// Spills the sends at the head of a slow lane's queue that have waited `max_queue_wait`.
    fn expire(&mut self, key: &Arc<str>, now: Duration, wakes: &mut Vec<Wakeup>) {
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

    /// Takes the waiter at `at` out of `key`'s queue.
    fn remove_at(&mut self, key: &Arc<str>, at: usize) {
        self.unready(key);
        let lane = self.lanes.get_mut(key).expect("present");
        if let Some((_, _, waits)) = lane.queue.remove(at) {
            self.counted(key, waits, -1);
            self.queued -= 1;
        }
        self.reready(key);
    }

    /// When a send spilled now should come back: behind the host's queue and the sends spilled before it,
    /// spread at the rate the host could take them. That rate errs high — what it was seen to finish, or
    /// every slot it can get at its latency, at least its cap per request timeout — because a send back
    /// early is only spilled again, while one back late leaves the host idle with a backlog. A host that
    /// has not answered yet gets its spills back within a request timeout, when it will have answered or
    /// timed out and its rate is known.
    fn spill_after(&mut self, key: &Arc<str>, now: Duration) -> Duration {
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

    fn unready(&mut self, key: &Arc<str>) {
        let lane = &self.lanes[key];
        if let Some((ticket, _, _)) = lane.queue.front() {
            self.ready.remove(&(lane.in_flight, *ticket, key.clone()));
        }
    }

    fn reready(&mut self, key: &Arc<str>) {
        let lane = &self.lanes[key];
        if let Some((ticket, _, _)) = lane.queue.front() {
            if lane.in_flight < self.cap(lane) {
                self.ready.insert((lane.in_flight, *ticket, key.clone()));
            }
        }
    }

    fn forget_if_idle(&mut self, key: &Arc<str>, now: Duration) {
        let lane = &self.lanes[key];
        if lane.in_flight == 0
            && lane.queue.is_empty()
            && lane.episode.is_none()
            && lane.horizon <= now
            && now.saturating_sub(lane.last_active) >= QUIET_AFTER
        {
            self.lanes.remove(key);
        }
    }
}

/// Re-estimates the lane's absorption rate once a window has passed.
fn close_window(lane: &mut Lane, now: Duration) {
    let elapsed = now.saturating_sub(lane.window_start);
    if elapsed < RATE_WINDOW {
        return;
    }
    if lane.window_done > 0 || lane.in_flight > 0 {
        let rate = f64::from(lane.window_done) / elapsed.as_secs_f64();
        // Smoothed, so one quiet half second does not forget what the host was absorbing.
        lane.rate = Some(lane.rate.map_or(rate, |r| (r + rate) / 2.0));
    }
    lane.window_start = now;
    lane.window_done = 0;
}

#[cfg(test)]
#[path = "host_queues_tests.rs"]
mod tests;
