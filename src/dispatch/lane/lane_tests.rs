//! The lane as one state machine: random sequences of sends, answers and clock steps, with the rules a
//! lane promises checked after every step. Each part (health, rate, slots) has its own tests beside it.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
/// UNIX ms at the dispatcher's start, in these tests.
const EPOCH_MS: i64 = 1_700_000_000_000;

fn at(mono: Duration) -> Now {
    Now {
        mono,
        wall_ms: EPOCH_MS + i64::try_from(mono.as_millis()).unwrap(),
    }
}

fn key(host: &str, workspace: &str) -> HostKey {
    HostKey {
        host: host.into(),
        workspace: workspace.into(),
    }
}

fn settings(threshold: u32, rules: &[(&str, f64)], per_host: usize) -> LaneSettings {
    LaneSettings {
        health: HostHealthConfig {
            threshold,
            ..HostHealthConfig::default()
        },
        rules: RateRules::new(&rules.iter().map(|(h, r)| (h.to_string(), *r)).collect()),
        rate: RateLimits {
            max_wait: 2 * SEC,
            max_waiting_per_host: 64,
            max_waiting: 256,
            retry_after_cap: 60 * SEC,
        },
        slots: QueueLimits {
            max_in_flight: 8,
            max_in_flight_per_host: per_host,
            max_queued_per_host: 16,
            max_queue_wait: 30 * SEC,
            request_timeout: 90 * SEC,
        },
    }
}

fn answer(status: u16, retry_after: Option<Duration>) -> Answer {
    Answer {
        status: Some(status),
        retry_after,
        took: 10 * MS,
    }
}

#[test]
fn a_send_to_a_host_without_rules_goes_at_once_and_its_answer_frees_the_slot() {
    let mut lanes = Lanes::new(settings(3000, &[], 4));
    let k = key("a.example", "ws");
    assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
    assert_eq!(lanes.in_flight("a.example"), 1);
    assert!(lanes.answer(&k, answer(200, None), at(SEC)).is_empty());
    assert_eq!(lanes.in_flight("a.example"), 0);
    let notes = lanes.notes();
    assert!(notes.is_empty(), "nothing changed for the host: {notes:?}");
}

#[test]
fn a_host_over_the_unhealthy_threshold_is_paused_for_that_workspace_only() {
    let mut lanes = Lanes::new(settings(2, &[], 64));
    let k = key("h", "ws");
    for _ in 0..3 {
        assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
        lanes.answer(&k, answer(503, None), at(SEC));
    }
    assert!(matches!(
        &lanes.notes()[..],
        [Note::Health {
            key: paused,
            transition: Transition::Paused { .. },
            paused_hosts: 1
        }] if *paused == k
    ));
    assert!(matches!(
        lanes.ask(&k, at(2 * SEC), false),
        Ask::Unhealthy { .. }
    ));
    assert_eq!(lanes.ask(&key("h", "other"), at(2 * SEC), false), Ask::Go);
}

#[test]
fn retry_after_holds_the_host_for_its_workspace_and_a_long_hold_requeues_with_that_reason() {
    let mut lanes = Lanes::new(settings(3000, &[], 64));
    let k = key("h", "ws");
    assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
    lanes.answer(&k, answer(429, Some(SEC)), at(SEC));
    assert_eq!(
        lanes.notes(),
        vec![Note::RetryAfterHold {
            key: k.clone(),
            until_ms: EPOCH_MS + 2000
        }]
    );
    assert_eq!(
        lanes.ask(&k, at(SEC), false),
        Ask::Hold {
            wait: SEC,
            reason: HoldReason::RetryAfter,
            slot: false,
        }
    );
    lanes.hold_over("h");
    assert_eq!(lanes.ask(&k, at(2 * SEC), true), Ask::Go);
    lanes.answer(&k, answer(503, Some(30 * SEC)), at(2 * SEC));
    assert!(matches!(
        lanes.ask(&k, at(2 * SEC), false),
        Ask::Requeue {
            reason: RequeueReason::RetryAfter,
            ..
        }
    ));
}

#[test]
fn the_fleet_s_errors_count_with_the_lane_s_own_and_its_pauses_and_holds_apply_here() {
    use super::fleet::Remote;
    let mut lanes = Lanes::new(settings(20, &[], 64));
    let k = key("h", "ws");
    for _ in 0..15 {
        assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
        lanes.answer(&k, answer(503, None), at(SEC));
    }
    assert_eq!(
        lanes.ask(&k, at(SEC), false),
        Ask::Go,
        "15 are not above 20"
    );
    lanes.answer(&k, answer(200, None), at(SEC));
    let six = Remote {
        errors: 6,
        ..Remote::default()
    };
    lanes.fleet(&k, six, at(2 * SEC));
    assert!(
        matches!(lanes.ask(&k, at(2 * SEC), false), Ask::Unhealthy { .. }),
        "15 of its own and 6 of the fleet's are"
    );
    let seen = lanes.seen(at(2 * SEC));
    assert_eq!(seen[&k].errors, 15, "it tells the fleet its own count only");
    assert!(seen[&k].paused_until_ms.is_some(), "and the pause it began");
    let elsewhere = key("h", "ws2");
    let paused = Remote {
        paused_until_ms: Some(EPOCH_MS + 5_000),
        ..Remote::default()
    };
    lanes.fleet(&elsewhere, paused, at(2 * SEC));
    assert_eq!(
        lanes.ask(&elsewhere, at(2 * SEC), false),
        Ask::Unhealthy {
            until_ms: EPOCH_MS + 5_000
        },
        "a pause another dispatcher began"
    );
    let held = key("h", "ws3");
    let hold = Remote {
        hold_until_ms: Some(EPOCH_MS + 3_000),
        ..Remote::default()
    };
    lanes.fleet(&held, hold, at(2 * SEC));
    assert!(
        matches!(
            lanes.ask(&held, at(2 * SEC), false),
            Ask::Hold {
                reason: HoldReason::RetryAfter,
                ..
            }
        ),
        "a Retry-After another dispatcher was given"
    );
}

#[test]
fn a_rate_limited_host_s_rate_is_split_by_what_each_dispatcher_asks_for() {
    use super::fleet::Remote;
    let mut lanes = Lanes::new(settings(3000, &[("limited", 10.0)], 64));
    let (k, host) = (key("limited", "ws"), key("limited", ""));
    assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
    assert_eq!(
        lanes.seen(at(SEC))[&host].demand,
        Some(1),
        "it tells the fleet what it asked for"
    );
    // The others asked for nine a second: a tenth of 10/s, one a second, is this dispatcher's.
    let others = Remote {
        demands: vec![9],
        ..Remote::default()
    };
    lanes.fleet(&host, others, at(SEC));
    let next = lanes.ask(&k, at(SEC), false);
    assert!(
        matches!(next, Ask::Hold { wait, .. } if wait == SEC),
        "the send booked before the split counts at the new share: {next:?}"
    );
    let next = lanes.ask(&k, at(SEC), false);
    assert!(
        matches!(next, Ask::Hold { wait, .. } if wait == 2 * SEC),
        "{next:?}"
    );
    assert_eq!(
        lanes.seen(at(2 * SEC))[&host].demand,
        Some(10),
        "two asks in a second, but sends booked seconds ahead: it asks for the whole rate"
    );
    // The others stopped asking: the whole rate again, and the slot booked two seconds ahead at a tenth of
    // the rate is brought in tenfold.
    lanes.fleet(&host, Remote::default(), at(2 * SEC));
    let next = lanes.ask(&k, at(2 * SEC), false);
    assert!(
        matches!(next, Ask::Hold { wait, .. } if wait == 200 * MS),
        "{next:?}"
    );
    assert!(matches!(lanes.ask(&k, at(4 * SEC), false), Ask::Go));
    assert!(matches!(
        lanes.ask(&k, at(4 * SEC), false),
        Ask::Hold { wait, .. } if wait == 100 * MS
    ));
}

#[test]
fn a_dispatcher_with_a_backlog_asks_for_the_whole_rate_and_one_with_a_trickle_for_its_trickle() {
    use super::fleet::Remote;
    let mut lanes = Lanes::new(settings(3000, &[("limited", 10.0)], 64));
    let (k, host) = (key("limited", "ws"), key("limited", ""));
    for s in 1..=3 {
        assert_eq!(lanes.ask(&k, at(s * SEC), false), Ask::Go);
    }
    assert_eq!(
        lanes.seen(at(3 * SEC))[&host].demand,
        Some(1),
        "a send a second"
    );
    // Its part is a send a second (the others ask for nine); a burst of three: one goes, one waits a second,
    // one would wait two, more than the in-process wait (2 s) allows with the next: requeued.
    let others = Remote {
        demands: vec![9],
        ..Remote::default()
    };
    lanes.fleet(&host, others, at(3 * SEC));
    let asks: Vec<Ask> = (0..4).map(|_| lanes.ask(&k, at(4 * SEC), false)).collect();
    assert!(
        matches!(
            asks[3],
            Ask::Requeue {
                reason: RequeueReason::RateLimit,
                ..
            }
        ),
        "{asks:?}"
    );
    assert_eq!(
        lanes.seen(at(4 * SEC))[&host].demand,
        Some(10),
        "it requeued a send for the rate: it could use the whole rate"
    );
    let quiet = lanes.seen(at(5 * SEC));
    assert_eq!(
        quiet[&host].demand,
        Some(10),
        "and while its sends are booked seconds ahead"
    );
}

#[test]
fn a_200_with_retry_after_holds_nothing() {
    let mut lanes = Lanes::new(settings(3000, &[], 64));
    let k = key("h", "ws");
    assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
    lanes.answer(&k, answer(200, Some(SEC)), at(SEC));
    assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
}

#[test]
fn every_requeue_reason_has_its_metric_label() {
    use crate::telemetry::isolation_metrics::SPILL_REASONS;
    use crate::telemetry::metrics::HOLD_REASONS;
    for r in RequeueReason::ALL {
        let labels: &[&str] = if r.is_spill() {
            &SPILL_REASONS
        } else {
            &HOLD_REASONS
        };
        assert!(labels.contains(&r.as_str()), "{r:?}");
    }
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Op {
    /// A send to host `h` for workspace `w` asks to go.
    Ask { h: usize, w: usize },
    /// The oldest request in flight to host `h` is answered with `status`, maybe with `Retry-After`.
    Answer {
        h: usize,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Time passes; held sends whose wait is over ask again, and the lanes tick.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize).prop_map(|(h, w)| Op::Ask { h, w }),
        3 => (0..3usize, prop::sample::select(vec![200u16, 200, 503, 429, 500]), prop::option::of(0..3u64))
            .prop_map(|(h, status, retry_after)| Op::Answer { h, status, retry_after }),
        2 => (1..1500u64).prop_map(Op::Advance),
    ]
}

const HOSTS: [&str; 3] = ["limited", "b", "c"];
/// `limited`'s rate: 5 a second.
const RATE: f64 = 5.0;

/// What the test knows of the lanes from outside.
#[derive(Default)]
struct Model {
    now: Duration,
    /// Per host: the keys of its requests in flight, oldest first.
    in_flight: HashMap<usize, Vec<HostKey>>,
    /// Queued tickets, and whose.
    queued: HashMap<u64, (usize, HostKey)>,
    /// Held sends: when they ask again, and whose.
    held: Vec<(Duration, usize, HostKey)>,
    /// Held sends that hold their slot meanwhile.
    held_with_slot: Vec<(Duration, usize, HostKey)>,
    /// When each request to `limited` began.
    starts: Vec<Duration>,
    /// Per key: `Retry-After` holds in force until then (monotonic).
    holds: HashMap<HostKey, Duration>,
    /// Per key: paused until this UNIX ms, as the lanes' notes said.
    paused: HashMap<HostKey, i64>,
}

impl Model {
    fn began(&mut self, h: usize, k: HostKey) {
        if h == 0 {
            self.starts.push(self.now);
        }
        self.in_flight.entry(h).or_default().push(k);
    }

    /// Hands out what the lanes woke, each with the answer the lane decided for it when its slot came
    /// free (the pause and the pace checked then).
    fn wake(&mut self, lanes: &mut Lanes, woken: Vec<Woken>) -> Result<(), TestCaseError> {
        self.noted(lanes);
        for w in woken.into_iter().chain(lanes.wakes()) {
            let (h, k) = self
                .queued
                .remove(&w.ticket)
                .expect("a woken ticket was queued");
            prop_assert_eq!(&w.key, &k);
            match w.ask {
                Ask::Go => {
                    prop_assert!(
                        !self.is_paused(&k),
                        "a paused host's queued send was woken to go"
                    );
                    self.began(h, k);
                }
                Ask::Hold { wait, slot, .. } => {
                    prop_assert!(slot, "a woken send holds its slot through a hold");
                    self.held_with_slot.push((self.now + wait, h, k));
                }
                Ask::Requeue { .. } | Ask::Unhealthy { .. } => self.asked(h, k, w.ask)?,
                Ask::Queued { .. } => prop_assert!(false, "a woken send was queued again"),
            }
        }
        Ok(())
    }

    /// A held send's wait is over now: it asks again, with its slot if it kept one.
    fn hold_over(
        &mut self,
        lanes: &mut Lanes,
        h: usize,
        k: HostKey,
        with_slot: bool,
    ) -> Result<(), TestCaseError> {
        lanes.hold_over(HOSTS[h]);
        let now = at(self.now);
        if !with_slot {
            let ask = lanes.ask(&k, now, true);
            self.noted(lanes);
            self.asked(h, k, ask)?;
            return self.wake(lanes, Vec::new());
        }
        let ask = lanes.with_slot(&k, now);
        self.noted(lanes);
        match ask {
            Ask::Go => self.began(h, k),
            Ask::Hold { wait, slot, .. } => {
                prop_assert!(slot);
                self.held_with_slot.push((self.now + wait, h, k));
            }
            Ask::Requeue { .. } | Ask::Unhealthy { .. } => self.asked(h, k, ask)?,
            Ask::Queued { .. } => prop_assert!(false, "a send with a slot was queued"),
        }
        self.wake(lanes, Vec::new())
    }

    fn is_paused(&self, k: &HostKey) -> bool {
        self.paused
            .get(k)
            .is_some_and(|until| at(self.now).wall_ms < *until)
    }

    /// What the lanes said changed.
    fn noted(&mut self, lanes: &mut Lanes) {
        for note in lanes.notes() {
            match note {
                Note::Health {
                    key,
                    transition:
                        Transition::Paused { until_ms, .. } | Transition::PauseExtended { until_ms, .. },
                    ..
                } => {
                    self.paused.insert(key, until_ms);
                }
                Note::Health {
                    key,
                    transition: Transition::Resumed,
                    ..
                } => {
                    self.paused.remove(&key);
                }
                Note::PausedHosts(_) | Note::RetryAfterHold { .. } => {}
            }
        }
    }

    /// Applies what a lane answered an ask, checking it against what the model knows.
    fn asked(&mut self, h: usize, k: HostKey, ask: Ask) -> Result<(), TestCaseError> {
        if self.is_paused(&k) {
            prop_assert!(
                matches!(ask, Ask::Unhealthy { .. }),
                "a paused host got {:?}",
                ask
            );
        }
        match ask {
            Ask::Go => self.began(h, k),
            Ask::Hold { wait, slot, .. } => {
                prop_assert!(!slot);
                self.held.push((self.now + wait, h, k));
            }
            Ask::Queued { ticket, .. } => {
                self.queued.insert(ticket, (h, k));
            }
            Ask::Requeue { reason, .. } => {
                let held = self.holds.get(&k).is_some_and(|u| *u > self.now);
                match reason {
                    RequeueReason::RetryAfter => prop_assert!(held, "no Retry-After in force"),
                    RequeueReason::RateLimit => prop_assert_eq!(h, 0, "only one host has a rule"),
                    other => prop_assert!(other.is_spill()),
                }
            }
            Ask::Unhealthy { until_ms } => {
                prop_assert!(at(self.now).wall_ms < until_ms);
            }
        }
        Ok(())
    }
}

fn check(lanes: &Lanes, m: &Model, per_host: usize) -> Result<(), TestCaseError> {
    for (h, host) in HOSTS.iter().enumerate() {
        let n = m.in_flight.get(&h).map_or(0, Vec::len)
            + m.held_with_slot
                .iter()
                .filter(|(_, held, _)| *held == h)
                .count();
        prop_assert_eq!(lanes.in_flight(host), n);
        prop_assert!(
            n <= per_host,
            "{} has {} in flight, cap {}",
            host,
            n,
            per_host
        );
    }
    prop_assert!(lanes.in_use() <= 8);
    // The rate: no more than one start per interval in any window, and one for the window's edge.
    let interval = Duration::from_secs_f64(1.0 / RATE);
    for (i, start) in m.starts.iter().enumerate() {
        let within = m.starts[i..]
            .iter()
            .take_while(|s| **s < *start + SEC)
            .count();
        prop_assert!(
            within as f64 <= RATE + 1.0,
            "{} requests to the limited host within a second from {:?} (interval {:?})",
            within,
            start,
            interval
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The cap is never exceeded, the rate limit never exceeded over any second, a paused host gets no
    /// request, every requeue carries its true reason, and no host with work starves once answers come.
    #[test]
    fn caps_rates_pauses_and_reasons_hold_over_any_run(ops in proptest::collection::vec(op(), 1..200)) {
        // A cap the rate-limited host never reaches at 5 a second within the 2 s hold: its sends do not
        // queue for slots (they would start as slots free, closer together than the rate: see the module).
        let per_host = 16;
        let mut lanes = Lanes::new(settings(3, &[("limited", RATE)], per_host));
        let mut m = Model { now: SEC, ..Model::default() };
        for op in ops {
            match op {
                Op::Ask { h, w } => {
                    let k = key(HOSTS[h], ["ws1", "ws2"][w]);
                    let ask = lanes.ask(&k, at(m.now), false);
                    m.noted(&mut lanes);
                    m.asked(h, k, ask)?;
                }
                Op::Answer { h, status, retry_after } => {
                    let Some(list) = m.in_flight.get_mut(&h) else { continue };
                    if list.is_empty() { continue; }
                    let k = list.remove(0);
                    let after = retry_after.map(Duration::from_secs);
                    let woken = lanes.answer(&k, answer(status, after), at(m.now));
                    if let (429 | 503, Some(after)) = (status, after) {
                        if !after.is_zero() {
                            let until = m.now + after;
                            let e = m.holds.entry(k.clone()).or_default();
                            *e = (*e).max(until);
                        }
                    }
                    m.wake(&mut lanes, woken)?;
                }
                Op::Advance(ms) => {
                    let end = m.now + Duration::from_millis(ms);
                    // Held sends ask again when their wait ends, each at its own time, as their timers fire.
                    loop {
                        let next = m.held.iter().chain(&m.held_with_slot).map(|(t, _, _)| *t).filter(|t| *t <= end).min();
                        let Some(t) = next else { break };
                        m.now = m.now.max(t);
                        if let Some(i) = m.held.iter().position(|(at, _, _)| *at == t) {
                            let (_, h, k) = m.held.remove(i);
                            m.hold_over(&mut lanes, h, k, false)?;
                        } else if let Some(i) = m.held_with_slot.iter().position(|(at, _, _)| *at == t) {
                            let (_, h, k) = m.held_with_slot.remove(i);
                            m.hold_over(&mut lanes, h, k, true)?;
                        }
                        check(&lanes, &m, per_host)?;
                    }
                    m.now = end;
                    lanes.tick(at(m.now));
                    m.wake(&mut lanes, Vec::new())?;
                }
            }
            check(&lanes, &m, per_host)?;
        }
        // No starvation: once every request in flight is answered and every hold has run out, no send is
        // left queued.
        for _ in 0..10_000 {
            if let Some((_, k)) = m.in_flight.iter_mut().find_map(|(h, l)| (!l.is_empty()).then(|| (*h, l.remove(0)))) {
                let woken = lanes.answer(&k, answer(200, None), at(m.now));
                m.wake(&mut lanes, woken)?;
                continue;
            }
            if m.held.is_empty() && m.held_with_slot.is_empty() && m.queued.is_empty() {
                break;
            }
            m.now += SEC;
            for (_, h, k) in std::mem::take(&mut m.held) {
                m.hold_over(&mut lanes, h, k, false)?;
            }
            for (_, h, k) in std::mem::take(&mut m.held_with_slot) {
                m.hold_over(&mut lanes, h, k, true)?;
            }
            lanes.tick(at(m.now));
            m.wake(&mut lanes, Vec::new())?;
        }
        prop_assert!(m.queued.is_empty(), "queued sends left waiting with nothing in flight: {}", m.queued.len());
    }
}

#[test]
fn requeue_reasons_describe_themselves_distinctly() {
    let texts: BTreeMap<&str, RequeueReason> = RequeueReason::ALL
        .iter()
        .map(|r| (r.describe(), *r))
        .collect();
    assert_eq!(texts.len(), RequeueReason::ALL.len());
}

#[test]
fn a_dispatcher_that_stops_asking_gives_its_part_back_over_a_few_reports() {
    let mut lanes = Lanes::new(settings(3000, &[("limited", 100.0)], 64));
    let (k, host) = (key("limited", "ws"), key("limited", ""));
    lanes.seen(at(SEC));
    for i in 0..4 {
        assert_eq!(lanes.ask(&k, at(SEC + i * 10 * MS), false), Ask::Go);
    }
    let reported: Vec<Option<u64>> = (1..=5)
        .map(|i| {
            let seen = lanes.seen(at(SEC + i * 500 * MS));
            seen.get(&host).and_then(|s| s.demand)
        })
        .collect();
    assert_eq!(
        reported,
        [Some(8), Some(4), Some(2), Some(1), None],
        "four asks in half a second, then none"
    );
}

#[test]
fn a_send_waiting_for_its_slot_moves_with_the_dispatcher_s_part_of_the_rate() {
    use super::fleet::Remote;
    let mut lanes = Lanes::new(settings(3000, &[("limited", 10.0)], 64));
    let (k, host) = (key("limited", "ws"), key("limited", ""));
    assert_eq!(lanes.ask(&k, at(SEC), false), Ask::Go);
    lanes.seen(at(SEC));
    let others = Remote {
        demands: vec![9],
        ..Remote::default()
    };
    lanes.fleet(&host, others, at(SEC));
    let Ask::Hold { wait, .. } = lanes.ask(&k, at(SEC), false) else {
        panic!("held for a tenth of the rate")
    };
    assert_eq!(wait, SEC);
    let booked = lanes.booking("limited", SEC, wait);
    assert_eq!(lanes.rebooked("limited", booked, SEC + 500 * MS), 500 * MS);
    // The others stopped asking: the whole rate again, and the slot booked at 2 s, half a second ahead at a
    // tenth of the rate, is brought in tenfold.
    lanes.fleet(&host, Remote::default(), at(SEC + 500 * MS));
    assert_eq!(lanes.rebooked("limited", booked, SEC + 500 * MS), 50 * MS);
    assert_eq!(
        lanes.rebooked("limited", booked, 2 * SEC),
        Duration::ZERO,
        "past"
    );
    let later = lanes.booking("limited", SEC + 500 * MS, 200 * MS);
    assert_eq!(
        lanes.rebooked("limited", later, SEC + 500 * MS),
        200 * MS,
        "booked after the change: as booked"
    );
}
