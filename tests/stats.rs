//! Decision counters (`stats(true)`), and with the `metrics` feature their publication.
#![cfg(not(loom))]

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, ManualClock};

#[test]
fn stats_count_exactly_under_threads() {
    let clock = ManualClock::new();
    let limiter: KeyedLimiter<u64> =
        KeyedLimiter::builder(Limit::new(100, 1, Duration::from_secs(1)).unwrap())
            .clock(clock.clone())
            .idle_ttl(Duration::from_secs(1))
            .stats(true)
            .build();
    let allowed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (limiter, allowed) = (&limiter, &allowed);
            s.spawn(move || {
                for i in 0..1_000u64 {
                    if limiter.check_key(&(i % 7 + t)).is_allowed() {
                        allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let stats = limiter.stats().unwrap();
    assert_eq!(stats.allowed, allowed.into_inner());
    assert_eq!(stats.allowed + stats.denied, 4_000);
    assert_eq!(stats.allowed, 10 * 100, "ten keys, 100 tokens each");
    clock.advance(Duration::from_secs(1_000));
    let evicted = limiter.evict_idle() as u64;
    assert_eq!(limiter.stats().unwrap().evicted, evicted);
    assert_eq!(evicted, 10);
    let plain: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_second(1).unwrap());
    assert!(plain.stats().is_none());
}

#[cfg(feature = "metrics")]
#[test]
fn stats_publish_to_the_metrics_facade() {
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, String, u64)>>);
    struct One(Arc<Seen>, String, String);
    impl CounterFn for One {
        fn increment(&self, _: u64) {}
        fn absolute(&self, v: u64) {
            self.0
                 .0
                .lock()
                .unwrap()
                .push((self.1.clone(), self.2.clone(), v));
        }
    }
    struct Rec(Arc<Seen>);
    impl Recorder for Rec {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let label = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            Counter::from_arc(Arc::new(One(self.0.clone(), key.name().to_string(), label)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
    let seen = Arc::new(Seen::default());
    let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_hour(1).unwrap())
        .stats(true)
        .build();
    let _ = limiter.check_key(&1);
    let _ = limiter.check_key(&1);
    let _ = limiter.check_key(&1);
    metrics::with_local_recorder(&Rec(seen.clone()), || {
        limiter.stats().unwrap().publish("api")
    });
    let got = seen.0.lock().unwrap().clone();
    assert!(
        got.contains(&("tollgate_allowed_total".into(), "limiter=api".into(), 1)),
        "{got:?}"
    );
    assert!(
        got.contains(&("tollgate_denied_total".into(), "limiter=api".into(), 2)),
        "{got:?}"
    );
    assert!(
        got.contains(&("tollgate_evicted_total".into(), "limiter=api".into(), 0)),
        "{got:?}"
    );
}

#[test]
fn multi_limit_stats_count_each_call_once() {
    use tollgate::MultiKeyedLimiter;
    let build = |c| {
        KeyedLimiter::builder(Limit::new(c, 1, Duration::from_secs(3600)).unwrap())
            .clock(ManualClock::new())
            .stats(true)
            .build()
    };
    let limits: MultiKeyedLimiter<String> = MultiKeyedLimiter::from_limiters(build(2), [build(5)]);
    assert!(limits.check_key("a").is_allowed());
    assert!(limits.check_key("a").is_allowed());
    let d = limits.check_key("a");
    assert_eq!((d.is_allowed(), d.index), (false, 0));
    let first = limits.limiters()[0].stats().unwrap();
    let second = limits.limiters()[1].stats().unwrap();
    assert_eq!(
        (first.allowed, first.denied),
        (2, 1),
        "peeks are not decisions"
    );
    assert_eq!((second.allowed, second.denied), (2, 0));
}
