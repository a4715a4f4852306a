use super::*;
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn key(host: &str, workspace: &str) -> HostKey {
    HostKey {
        host: host.to_string(),
        workspace: workspace.to_string(),
    }
}

fn rules(pairs: &[(&str, f64)]) -> RateRules {
    RateRules::new(&pairs.iter().map(|(h, r)| (h.to_string(), *r)).collect())
}

fn limits(max_wait: Duration, per_host: usize, cap: Duration) -> RateLimits {
    RateLimits {
        max_wait,
        max_waiting_per_host: per_host,
        max_waiting: 10_000,
        retry_after_cap: cap,
    }
}

fn pacing(pairs: &[(&str, f64)]) -> Rates {
    Rates::new(rules(pairs), limits(10 * SEC, 128, 3600 * SEC))
}

#[test]
fn an_exact_name_wins_over_a_suffix_and_a_longer_suffix_over_a_shorter_one() {
    let r = rules(&[
        ("*.example.com", 10.0),
        ("*.eu.example.com", 5.0),
        ("api.eu.example.com", 1.0),
    ]);
    assert_eq!(r.rate_for("a.example.com"), Some(10.0));
    assert_eq!(r.rate_for("b.eu.example.com"), Some(5.0));
    assert_eq!(r.rate_for("api.eu.example.com"), Some(1.0));
    assert_eq!(
        r.rate_for("example.com"),
        None,
        "a suffix rule needs a label before it"
    );
    assert_eq!(
        r.rate_for("badexample.com"),
        None,
        "a suffix matches at a dot only"
    );
    assert_eq!(r.rate_for("other.org"), None);
}

#[test]
fn a_host_without_a_rule_or_hold_goes_at_once() {
    let mut p = pacing(&[("limited.example", 10.0)]);
    for _ in 0..1000 {
        assert_eq!(p.admit(&key("free.example", "w"), SEC), Pace::Go);
    }
}

#[test]
fn a_limited_host_gets_one_slot_per_interval_and_waits_for_it() {
    let mut p = pacing(&[("limited.example", 10.0)]);
    let k = key("limited.example", "w");
    assert_eq!(p.admit(&k, SEC), Pace::Go);
    assert_eq!(
        p.admit(&k, SEC),
        Pace::Wait {
            wait: 100 * MS,
            reason: HoldReason::RateLimit
        }
    );
    assert_eq!(
        p.admit(&k, SEC),
        Pace::Wait {
            wait: 200 * MS,
            reason: HoldReason::RateLimit
        }
    );
    assert_eq!(
        p.admit(&key("limited.example", "other workspace"), SEC),
        Pace::Wait {
            wait: 300 * MS,
            reason: HoldReason::RateLimit
        },
        "the limit is the host's, whatever the workspace"
    );
    assert_eq!(
        p.admit(&key("limited.example.", "w"), SEC),
        Pace::Wait {
            wait: 400 * MS,
            reason: HoldReason::RateLimit
        },
        "a trailing dot names the same host"
    );
}

#[test]
fn an_idle_limited_host_does_not_save_up_a_burst() {
    let mut p = pacing(&[("limited.example", 10.0)]);
    let k = key("limited.example", "w");
    assert_eq!(p.admit(&k, SEC), Pace::Go);
    assert_eq!(p.admit(&k, 60 * SEC), Pace::Go);
    assert!(matches!(p.admit(&k, 60 * SEC), Pace::Wait { .. }));
}

#[test]
fn waits_longer_than_the_in_process_bound_are_requeued_spread_out_at_twice_the_rate_and_book_nothing(
) {
    let mut p = Rates::new(
        rules(&[("slow.example", 1.0)]),
        limits(2 * SEC, 128, 3600 * SEC),
    );
    let k = key("slow.example", "w");
    assert_eq!(p.admit(&k, SEC), Pace::Go);
    assert!(matches!(p.admit(&k, SEC), Pace::Wait { .. }));
    assert!(matches!(p.admit(&k, SEC), Pace::Wait { .. }));
    let first = p.admit(&k, SEC);
    let second = p.admit(&k, SEC);
    let (Pace::Requeue { after: a, .. }, Pace::Requeue { after: b, .. }) = (first, second) else {
        panic!("requeued: {first:?} {second:?}")
    };
    assert_eq!(
        b - a,
        SEC / 2,
        "requeued sends come back half an interval apart"
    );
    assert_eq!(
        a,
        3 * SEC / 2,
        "half an in-process wait before their turn, at most an in-process wait and a spacing ahead (2.5 s)"
    );
    assert_eq!(
        p.admit(&k, 3 * SEC),
        Pace::Wait {
            wait: Duration::ZERO + SEC,
            reason: HoldReason::RateLimit
        },
        "nothing was booked for them: the next slot is the one after the waiting sends"
    );
}

#[test]
fn waiting_is_bounded_per_host_and_in_all_and_a_wake_frees_a_place() {
    let mut p = Rates::new(
        rules(&[("*.example", 100.0)]),
        RateLimits {
            max_wait: 10 * SEC,
            max_waiting_per_host: 2,
            max_waiting: 3,
            retry_after_cap: 3600 * SEC,
        },
    );
    let a = key("a.example", "w");
    let b = key("b.example", "w");
    assert_eq!(p.admit(&a, SEC), Pace::Go);
    assert!(matches!(p.admit(&a, SEC), Pace::Wait { .. }));
    assert!(matches!(p.admit(&a, SEC), Pace::Wait { .. }));
    assert!(matches!(p.admit(&a, SEC), Pace::Requeue { .. }), "per host");
    assert_eq!(p.admit(&b, SEC), Pace::Go);
    assert!(matches!(p.admit(&b, SEC), Pace::Wait { .. }));
    assert!(matches!(p.admit(&b, SEC), Pace::Requeue { .. }), "in all");
    p.woke("a.example");
    assert!(matches!(p.admit(&b, SEC), Pace::Wait { .. }));
}

#[test]
fn retry_after_holds_the_host_for_that_workspace_only_until_it_ends() {
    let mut p = pacing(&[]);
    let k = key("api.example", "w1");
    assert_eq!(p.hold(&k, SEC, 2 * SEC), Some(3 * SEC));
    assert_eq!(
        p.admit(&k, SEC + 500 * MS),
        Pace::Wait {
            wait: 1500 * MS,
            reason: HoldReason::RetryAfter
        }
    );
    assert_eq!(p.admit(&key("api.example", "w2"), SEC), Pace::Go);
    assert_eq!(p.admit(&key("other.example", "w1"), SEC), Pace::Go);
    assert_eq!(p.admit(&k, 3 * SEC), Pace::Go, "the hold has ended");
}

#[test]
fn retry_after_is_capped_never_shortened_and_zero_holds_nothing() {
    let mut p = Rates::new(RateRules::default(), limits(10 * SEC, 128, 60 * SEC));
    let k = key("api.example", "w");
    assert_eq!(p.hold(&k, SEC, Duration::ZERO), None);
    assert_eq!(p.hold(&k, SEC, 3600 * SEC), Some(61 * SEC), "capped");
    assert_eq!(
        p.hold(&k, 2 * SEC, 5 * SEC),
        None,
        "a shorter one does not shorten it"
    );
    assert_eq!(
        p.admit(&k, 2 * SEC),
        Pace::Requeue {
            after: 59 * SEC,
            reason: HoldReason::RetryAfter
        }
    );
}

#[test]
fn a_limited_host_under_retry_after_books_its_slots_from_the_hold_s_end() {
    let mut p = pacing(&[("api.example", 10.0)]);
    let k = key("api.example", "w");
    p.hold(&k, Duration::ZERO, 2 * SEC);
    assert_eq!(
        p.admit(&k, Duration::ZERO),
        Pace::Wait {
            wait: 2 * SEC,
            reason: HoldReason::RetryAfter
        }
    );
    assert_eq!(
        p.admit(&k, Duration::ZERO),
        Pace::Wait {
            wait: 2100 * MS,
            reason: HoldReason::RateLimit
        }
    );
}

#[test]
fn many_hosts_and_holds_do_not_grow_memory_once_expired() {
    let mut p = pacing(&[("*.example", 1000.0)]);
    for i in 0..20_000u64 {
        let now = Duration::from_millis(i * 10);
        let k = key(&format!("h{i}.example"), "w");
        p.admit(&k, now);
        p.hold(&k, now, MS);
    }
    assert!(p.next_slot.len() <= 2 * SWEEP_ABOVE + 1);
    assert!(p.holds.len() <= 2 * SWEEP_ABOVE + 1);
}

proptest! {
    /// Whatever the arrivals, no two requests to a limited host are given slots closer than its interval:
    /// the rate at the receiver never exceeds the limit.
    #[test]
    fn slots_never_exceed_the_rate(rate in 1u32..500, arrivals in proptest::collection::vec(0u64..5_000, 1..300)) {
        let mut p = Rates::new(rules(&[("h.example", f64::from(rate))]), RateLimits {
            max_wait: Duration::from_secs(3600),
            max_waiting_per_host: usize::MAX,
            max_waiting: usize::MAX,
            retry_after_cap: SEC,
        });
        let mut sorted = arrivals;
        sorted.sort_unstable();
        let mut starts = Vec::new();
        for ms in sorted {
            let now = Duration::from_millis(ms);
            match p.admit(&key("h.example", "w"), now) {
                Pace::Go => starts.push(now),
                Pace::Wait { wait, .. } => starts.push(now + wait),
                Pace::Requeue { .. } => {}
            }
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        for pair in starts.windows(2) {
            prop_assert!(pair[1] >= pair[0] + interval - Duration::from_nanos(1));
        }
    }
}

#[test]
fn a_booked_slot_moves_with_each_change_of_the_part_after_it_but_at_most_one_wait_later() {
    let mut p = pacing(&[("slow.example", 1.0)]);
    // Sends are booked up to the next free slot, which moves with them.
    p.next_slot.insert("slow.example".into(), 20 * SEC);
    let booked = p.booking("slow.example", 5 * SEC);
    p.rescale("slow.example", SEC, 0.5);
    assert_eq!(p.next_slot["slow.example"], SEC + 19 * SEC / 2);
    assert_eq!(
        p.rebooked("slow.example", booked),
        3 * SEC,
        "twice the part: half as far from the change"
    );
    let later = p.booking("slow.example", 5 * SEC);
    p.rescale("slow.example", 2 * SEC, 4.0);
    assert_eq!(
        p.rebooked("slow.example", later),
        14 * SEC,
        "a quarter of the part: four times as far"
    );
    assert_eq!(
        p.rebooked("slow.example", booked),
        6 * SEC,
        "both changes, in order"
    );
    p.rescale("slow.example", 2 * SEC, 50.0);
    assert_eq!(
        p.rebooked("slow.example", later),
        15 * SEC,
        "never more than dispatch.max_hold (10 s) past the booked slot"
    );
}
