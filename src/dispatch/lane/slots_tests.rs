use super::super::spill::*;
use super::super::waits::*;
use super::*;
use proptest::prelude::*;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn limits(global: usize, per_host: usize, queued: usize) -> QueueLimits {
    QueueLimits {
        max_in_flight: global,
        max_in_flight_per_host: per_host,
        max_queued_per_host: queued,
        max_queue_wait: 30 * SEC,
        request_timeout: 90 * SEC,
    }
}

fn queued(take: Take) -> u64 {
    match take {
        Take::Queued { ticket, .. } => ticket,
        other => panic!("expected to be queued, got {other:?}"),
    }
}

/// `n` requests to `host` that end at once: it has answered, and may use its whole cap.
fn warm(q: &mut Slots, host: &str, n: usize, now: Duration) {
    for _ in 0..n {
        assert_eq!(q.take(host, now), Take::Go);
        q.release(host, Duration::ZERO, now);
    }
}

/// `n` requests to `host` at `now` that do not end: a host that never answered is slow a quarter second
/// later.
fn hanging(q: &mut Slots, host: &str, n: usize, now: Duration) {
    for _ in 0..n {
        assert_eq!(q.take(host, now), Take::Go);
    }
    assert!(!q.is_slow(host, now + SEC / 4));
    assert!(q.is_slow(host, now + SEC / 4 + MS));
}

#[test]
fn a_host_at_its_cap_queues_its_own_sends_and_others_go_at_once() {
    let mut q = Slots::new(limits(512, 2, 10));
    warm(&mut q, "slow", 2, SEC);
    assert_eq!(q.take("slow", SEC), Take::Go);
    assert_eq!(q.take("slow", SEC), Take::Go);
    let t = queued(q.take("slow", SEC));
    assert_eq!(
        q.take("fast", SEC),
        Take::Go,
        "another host is not held back"
    );
    let wakes = q.release("slow", SEC, 2 * SEC);
    assert_eq!(
        wakes,
        vec![Wakeup {
            ticket: t,
            wake: Wake::Go
        }]
    );
    assert_eq!(q.in_flight("slow"), 2);
}

#[test]
fn a_host_that_never_answered_gets_its_spills_back_within_a_request_timeout() {
    let mut q = Slots::new(limits(512, 1, 2));
    hanging(&mut q, "h", 1, Duration::ZERO);
    assert_eq!(
        q.take("h", 2 * SEC),
        Take::Queued {
            ticket: 0,
            release: true
        },
        "a queued send waits without its admission slot"
    );
    queued(q.take("h", 2 * SEC));
    let afters: Vec<Duration> = (0..3)
        .map(|_| match q.take("h", 2 * SEC) {
            Take::Spill { after, reason } => {
                assert_eq!(reason, SpillReason::QueueFull);
                after
            }
            other => panic!("expected a spill, got {other:?}"),
        })
        .collect();
    // Nothing finished: one request per 90 s timeout would put them 180, 270, 360 s out, behind the queue
    // of 2; but by 90 s its requests have answered or timed out, and its rate is known.
    assert_eq!(afters, [90 * SEC, 90 * SEC, 90 * SEC]);
}

#[test]
fn a_slow_host_that_answered_gets_its_spills_spread_at_what_its_slots_take_at_its_latency() {
    let mut q = Slots::new(limits(512, 2, 1));
    for _ in 0..20 {
        assert_eq!(q.take("h", Duration::ZERO), Take::Go);
        q.release("h", 3 * SEC, Duration::ZERO);
    }
    // Two slots at about 3 s a request: a send every 1.5 s at best.
    let now = 10 * SEC;
    warm_busy(&mut q, "h", 2, now);
    queued(q.take("h", now + 2 * SEC));
    let afters: Vec<f64> = (0..3)
        .map(|_| match q.take("h", now + 2 * SEC) {
            Take::Spill { after, .. } => after.as_secs_f64(),
            other => panic!("expected a spill, got {other:?}"),
        })
        .collect();
    let step = afters[1] - afters[0];
    assert!(
        (1.4..1.7).contains(&step),
        "spread {step} s apart: {afters:?}"
    );
    assert!((afters[2] - afters[1] - step).abs() < 1e-6);
}

#[test]
fn spills_made_before_a_host_first_answered_do_not_push_back_those_after_it_answered_fast() {
    let mut q = Slots::new(limits(512, 4, 1));
    hanging(&mut q, "h", 4, Duration::ZERO);
    queued(q.take("h", SEC));
    for _ in 0..100 {
        assert!(matches!(q.take("h", SEC), Take::Spill { .. }));
    }
    // Then it answers, in 100 ms, and is busy again.
    let now = 2 * SEC;
    for _ in 0..4 {
        q.release("h", 100 * MS, now);
    }
    let (_, _) = q.tick(now);
    let idle = 4 - q.in_flight("h");
    warm_busy(&mut q, "h", idle, now);
    while q.queued() < 1 {
        queued(q.take("h", now));
    }
    let Take::Spill { after, .. } = q.take("h", now + 1100 * MS) else {
        panic!("queue full");
    };
    assert!(
        after < 5 * SEC,
        "back after {after:?}: the 100 spilled before it answered were spread for a host unheard of"
    );
}

/// `n` more requests to `host` begin at `now` and stay in flight.
fn warm_busy(q: &mut Slots, host: &str, n: usize, now: Duration) {
    for _ in 0..n {
        assert_eq!(q.take(host, now), Take::Go);
    }
}

#[test]
fn a_fast_host_at_its_cap_is_never_spilled_however_long_its_queue() {
    let mut q = Slots::new(limits(512, 1, 1));
    let mut now = Duration::ZERO;
    assert_eq!(q.take("h", now), Take::Go);
    for _ in 0..50 {
        assert!(matches!(
            q.take("h", now),
            Take::Queued { release: true, .. }
        ));
    }
    // It keeps answering: one request ends every 10 ms, for 40 s, and the next queued one goes.
    for _ in 0..4_000 {
        now += 10 * MS;
        let wakes = q.release("h", 10 * MS, now);
        assert!(wakes.iter().all(|w| w.wake == Wake::Go));
        let (wakes, _) = q.tick(now);
        assert!(wakes.is_empty(), "a fast host's sends are not spilled");
        while q.queued() < 50 {
            assert!(matches!(q.take("h", now), Take::Queued { .. }));
        }
    }
    assert!(!q.is_slow("h", now));
}

#[test]
fn beyond_four_times_max_in_flight_fast_waiters_keep_their_admission_until_there_is_room() {
    let mut q = Slots::new(limits(2, 1, 1));
    warm(&mut q, "h", 1, SEC);
    assert_eq!(q.take("h", SEC), Take::Go);
    for _ in 0..8 {
        assert!(matches!(
            q.take("h", SEC),
            Take::Queued { release: true, .. }
        ));
    }
    let kept = queued(q.take("h", SEC));
    assert_eq!(q.settle("h", kept, SEC), Settle::Wait, "no room yet");
    q.release("h", MS, SEC + MS);
    assert_eq!(q.settle("h", kept, SEC + MS), Settle::Release);
}

#[test]
fn a_host_that_turns_slow_spills_what_its_queue_cannot_hold() {
    let mut q = Slots::new(limits(512, 1, 1));
    assert_eq!(q.take("h", Duration::ZERO), Take::Go);
    queued(q.take("h", Duration::ZERO));
    assert!(
        matches!(q.take("h", 2 * SEC), Take::Spill { .. }),
        "the queue holds one"
    );
    assert_eq!(q.queued(), 1);
}

#[test]
fn a_host_that_never_answers_keeps_no_more_than_its_queue_bound_once_it_turns_slow() {
    // 3,000 sends for a new host at once: it has not answered, so it queues to its own bound and then among
    // every quick host's places; once it turns slow, what is over its own bound is spilled, newest first.
    let mut q = Slots::new(limits(512, 32, 512));
    let mut tickets = Vec::new();
    for _ in 0..3000 {
        match q.take("h", Duration::ZERO) {
            Take::Go => {}
            Take::Queued { ticket, .. } => tickets.push(ticket),
            Take::Spill { .. } => panic!("not slow yet"),
        }
    }
    assert!(
        q.queued() > 512,
        "queued {} before it turned slow",
        q.queued()
    );
    let (wakes, _) = q.tick(SEC);
    assert_eq!(q.queued(), 512);
    assert_eq!(wakes.len(), tickets.len() - 512);
    assert!(wakes.iter().all(|w| matches!(
        w.wake,
        Wake::Spill {
            reason: SpillReason::QueueFull,
            ..
        }
    )));
    let spilled: Vec<u64> = wakes.iter().map(|w| w.ticket).collect();
    assert!(
        spilled.iter().all(|t| !tickets[..512].contains(t)),
        "the oldest 512 keep their places"
    );
}

#[test]
fn a_host_measured_fast_gets_its_spills_back_sooner() {
    let mut q = Slots::new(limits(512, 4, 1));
    let mut now = Duration::ZERO;
    for _ in 0..40 {
        q.take("h", now);
        now += 25 * MS;
        q.release("h", 25 * MS, now);
    }
    // Then it hangs with 4 in flight: slow, but it was measured at 40 a second.
    for _ in 0..4 {
        q.take("h", now);
    }
    q.tick(now + 600 * MS);
    q.tick(now + 1100 * MS);
    queued(q.take("h", now + 1100 * MS));
    let Take::Spill { after, .. } = q.take("h", now + 1100 * MS) else {
        panic!("queue full");
    };
    assert!(
        after < SEC,
        "back after {after:?}, not after the 22.5 s a 90 s timeout would give"
    );
}

#[test]
fn a_slow_host_s_sends_that_wait_too_long_are_spilled_by_the_tick() {
    let mut q = Slots::new(limits(512, 1, 10));
    hanging(&mut q, "h", 1, Duration::ZERO);
    let t = queued(q.take("h", 2 * SEC));
    let (wakes, _) = q.tick(31 * SEC);
    assert!(wakes.is_empty());
    let (wakes, _) = q.tick(32 * SEC);
    assert_eq!(wakes.len(), 1);
    assert_eq!(wakes[0].ticket, t);
    assert!(matches!(
        wakes[0].wake,
        Wake::Spill {
            reason: SpillReason::QueueWait,
            ..
        }
    ));
    assert_eq!(q.queued(), 0);
}

#[test]
fn many_slow_hosts_cannot_take_the_slots_a_fast_host_needs() {
    // Eight hosts answering in 3 s, each wanting more than the global slots.
    let mut q = Slots::new(limits(512, 128, 1000));
    let flood = |q: &mut Slots, now| {
        for h in 0..8 {
            for _ in 0..200 {
                q.take(&format!("slow{h}"), now);
            }
        }
    };
    flood(&mut q, Duration::ZERO);
    assert_eq!(
        q.in_use(),
        8 * 32,
        "new hosts start with a quarter of their cap"
    );
    assert_eq!(q.take("fast", Duration::ZERO), Take::Go);
    q.release("fast", MS, MS);
    // Three seconds later their first requests end, and their windows have grown.
    for h in 0..8 {
        for _ in 0..32 {
            q.release(&format!("slow{h}"), 3 * SEC, 3 * SEC);
        }
    }
    flood(&mut q, 3 * SEC);
    assert_eq!(q.in_use(), 512 - 512 / 8, "slow hosts leave the reserve");
    for _ in 0..5 {
        assert_eq!(
            q.take("fast", 3 * SEC),
            Take::Go,
            "a fast host goes at once"
        );
    }
}

#[test]
fn a_new_host_starts_with_a_quarter_of_its_cap_and_gains_a_slot_per_answer() {
    let mut q = Slots::new(limits(512, 128, 1000));
    assert_eq!(q.cap_of("h"), 32);
    warm(&mut q, "h", 10, SEC);
    assert_eq!(q.cap_of("h"), 42);
    warm(&mut q, "h", 200, SEC);
    assert_eq!(q.cap_of("h"), 128, "never past max_in_flight_per_host");
}

#[test]
fn a_single_fast_host_may_use_every_slot() {
    let mut q = Slots::new(limits(8, 128, 10));
    warm(&mut q, "h", 1, SEC);
    for _ in 0..8 {
        assert_eq!(q.take("h", SEC), Take::Go);
    }
}

#[test]
fn a_freed_slot_goes_to_the_waiting_host_with_the_fewest_in_flight() {
    let mut q = Slots::new(limits(4, 4, 10));
    warm(&mut q, "a", 3, SEC);
    warm(&mut q, "b", 3, SEC);
    for _ in 0..3 {
        assert_eq!(q.take("a", SEC), Take::Go);
    }
    assert_eq!(q.take("b", SEC), Take::Go);
    queued(q.take("a", SEC));
    let tb = queued(q.take("b", SEC));
    let wakes = q.release("a", MS, SEC + MS);
    assert_eq!(
        wakes,
        vec![Wakeup {
            ticket: tb,
            wake: Wake::Go
        }],
        "b has one in flight, a two"
    );
}

#[test]
fn a_saturation_episode_begins_once_and_ends_after_a_quiet_spell() {
    let mut q = Slots::new(limits(512, 1, 10));
    hanging(&mut q, "h", 1, Duration::ZERO);
    let t = queued(q.take("h", 2 * SEC));
    let (_, e) = q.tick(2 * SEC);
    assert!(matches!(&e[..], [Episode::Began { queued: 1, .. }]));
    let (_, e) = q.tick(2 * SEC + 250 * MS);
    assert!(e.is_empty(), "one line per episode");
    assert_eq!(q.snapshot(2 * SEC, 5).top.len(), 1, "named while saturated");
    assert_eq!(q.release("h", 3 * SEC, 3 * SEC)[0].ticket, t);
    q.release("h", 10 * MS, 3 * SEC);
    let (_, e) = q.tick(4 * SEC);
    assert!(e.is_empty(), "not quiet long enough yet");
    let (_, e) = q.tick(3 * SEC + QUIET_AFTER);
    assert!(matches!(&e[..], [Episode::Ended { peak_queued: 1, .. }]));
    q.tick(4 * SEC + QUIET_AFTER);
    assert_eq!(q.lanes(), 0, "an idle host leaves nothing behind");
}

#[test]
fn a_host_that_answered_is_slow_only_after_a_second_without_an_answer() {
    let mut q = Slots::new(limits(512, 8, 10));
    warm(&mut q, "h", 1, Duration::ZERO);
    q.take("h", SEC);
    assert!(!q.is_slow("h", 2 * SEC));
    assert!(q.is_slow("h", 2 * SEC + MS));
}

#[test]
fn stopping_spills_what_waits_for_slow_hosts_and_what_comes_for_them_later() {
    let mut q = Slots::new(limits(512, 1, 10));
    hanging(&mut q, "slow", 1, Duration::ZERO);
    let t = queued(q.take("slow", SEC));
    warm(&mut q, "fast", 1, SEC);
    q.take("fast", SEC);
    let f = queued(q.take("fast", SEC));
    let wakes = q.drain(SEC);
    assert_eq!(wakes.len(), 1);
    assert_eq!(wakes[0].ticket, t);
    assert!(matches!(
        q.take("slow", SEC),
        Take::Spill {
            reason: SpillReason::Stopping,
            ..
        }
    ));
    assert_eq!(
        q.release("fast", MS, SEC)[0].ticket,
        f,
        "a fast host's sends still go"
    );
}

#[test]
fn a_cancelled_waiter_leaves_the_queue_and_a_woken_one_cannot_be_cancelled() {
    let mut q = Slots::new(limits(512, 1, 10));
    q.take("h", SEC);
    let t1 = queued(q.take("h", SEC));
    let t2 = queued(q.take("h", SEC));
    assert!(q.cancel("h", t1, SEC));
    assert_eq!(q.release("h", MS, SEC)[0].ticket, t2);
    assert!(!q.cancel("h", t2, SEC), "already woken: it holds a slot");
    assert_eq!(q.in_flight("h"), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Take(u8),
    Release(u8, u16),
    Cancel(u8),
    Settle(u8),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6).prop_map(Op::Take),
        3 => (any::<u8>(), 0u16..3000).prop_map(|(i, ms)| Op::Release(i, ms)),
        1 => any::<u8>().prop_map(Op::Cancel),
        1 => any::<u8>().prop_map(Op::Settle),
        2 => (0u16..40_000).prop_map(Op::Tick),
    ]
}

/// What the model holds: the slots each host has, and the tickets still queued (and whether each waits
/// without an admission slot).
#[derive(Default)]
struct Model {
    held: Vec<String>,
    queued: Vec<(String, u64, bool)>,
}

impl Model {
    fn apply(&mut self, wakes: Vec<Wakeup>) {
        for w in wakes {
            let at = self
                .queued
                .iter()
                .position(|(_, t, _)| *t == w.ticket)
                .expect("woken tickets were queued");
            let (host, _, _) = self.queued.remove(at);
            if w.wake == Wake::Go {
                self.held.push(host);
            }
        }
    }
}

fn check(q: &Slots, m: &Model, l: QueueLimits) -> Result<(), TestCaseError> {
    prop_assert!(q.in_use() <= l.max_in_flight, "global slots exceeded");
    prop_assert_eq!(q.in_use(), m.held.len());
    prop_assert_eq!(q.queued(), m.queued.len());
    for h in 0..6 {
        let host = format!("h{h}");
        let held = m.held.iter().filter(|x| **x == host).count();
        prop_assert_eq!(q.in_flight(&host), held);
        prop_assert!(held <= l.max_in_flight_per_host, "a host over its cap");
        let released = m.queued.iter().filter(|(x, _, r)| *x == host && *r).count();
        prop_assert!(
            released <= l.max_queued_per_host + 4 * l.max_in_flight,
            "a queue over its bound"
        );
        let waiting = m.queued.iter().filter(|(x, _, _)| *x == host).count();
        if waiting > 0 && held < q.cap_of(&host) {
            prop_assert!(
                q.in_use() >= l.max_in_flight - l.max_in_flight / 8,
                "a host waits while shared slots are free"
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn no_host_exceeds_its_cap_no_queue_its_bound_and_no_waiting_host_starves(
        global in 1usize..24,
        per_host in 1usize..8,
        queue in 0usize..6,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let l = limits(global, per_host, queue);
        let mut q = Slots::new(l);
        let mut m = Model::default();
        let mut now = Duration::ZERO;
        for op in ops {
            match op {
                Op::Take(h) => {
                    let host = format!("h{h}");
                    match q.take(&host, now) {
                        Take::Go => m.held.push(host),
                        Take::Queued { ticket, release } => m.queued.push((host, ticket, release)),
                        Take::Spill { after, .. } => {
                            prop_assert!(after > Duration::ZERO && after <= MAX_SPILL_DELAY);
                        }
                    }
                }
                Op::Release(i, ms) if !m.held.is_empty() => {
                    let host = m.held.remove(usize::from(i) % m.held.len());
                    let wakes = q.release(&host, Duration::from_millis(u64::from(ms)), now);
                    m.apply(wakes);
                }
                Op::Cancel(i) if !m.queued.is_empty() => {
                    let (host, t, _) = m.queued.remove(usize::from(i) % m.queued.len());
                    prop_assert!(q.cancel(&host, t, now));
                }
                Op::Settle(i) if !m.queued.is_empty() => {
                    let at = usize::from(i) % m.queued.len();
                    let (host, t, released) = m.queued[at].clone();
                    match q.settle(&host, t, now) {
                        Settle::Wait => {}
                        Settle::Release => {
                            prop_assert!(!released);
                            m.queued[at].2 = true;
                        }
                        Settle::Spill { .. } => {
                            prop_assert!(!released);
                            m.queued.remove(at);
                        }
                    }
                }
                Op::Tick(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    let (wakes, _) = q.tick(now);
                    m.apply(wakes);
                }
                _ => {}
            }
            check(&q, &m, l)?;
        }
        // Every request ends: every queued send gets a slot (or is spilled), none waits for ever.
        while let Some(host) = m.held.pop() {
            now += MS;
            let wakes = q.release(&host, MS, now);
            m.apply(wakes);
            check(&q, &m, l)?;
        }
        prop_assert!(m.queued.is_empty(), "sends left waiting with every slot free");
        prop_assert_eq!(q.in_use(), 0);
    }
}
