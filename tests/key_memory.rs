//! A stored key never keeps a request's buffer alive (issue 12): a header value taken from a
//! request is a view into the connection's read buffer, and the limiter stores a compact copy
//! of the key's bytes when it first sees the key. Counted with a counting allocator, for every
//! `Key` kind an extractor makes.
#![cfg(all(not(loom), feature = "http"))]

#[path = "support/counting.rs"]
mod counting;

use bytes::Bytes;
use http::HeaderValue;
use tollgate::http::{Key, KeyExtractor, RequestInfo};
use tollgate::{KeyedLimiter, Limit, ManualClock};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// The size of the buffer each request's header values are views into (hyper reads a
/// connection into buffers of about this size).
const BUFFER: usize = 16 * 1024;
const KEYS: usize = 2_000;
/// Bytes per key beyond the key's own: the map entry, the bucket word, the table's share.
const OVERHEAD: usize = 256;

/// A header value that is a view into a fresh `BUFFER`-byte buffer, as hyper's are.
fn shared_value(text: &str) -> HeaderValue {
    let mut buf = vec![b' '; BUFFER];
    buf[100..100 + text.len()].copy_from_slice(text.as_bytes());
    let buf = Bytes::from(buf);
    HeaderValue::from_maybe_shared(buf.slice(100..100 + text.len())).unwrap()
}

fn held_per_key(
    extractor: KeyExtractor,
    header: &str,
    value_of: impl Fn(usize) -> String,
) -> usize {
    let limiter: KeyedLimiter<Key> = KeyedLimiter::builder(Limit::per_second(10).unwrap())
        .clock(ManualClock::new())
        .build();
    let _ = limiter.check_key(&Key::Global); // the map's first table
    let before = counting::live();
    let mut key_len = 0;
    for i in 0..KEYS {
        let text = value_of(i);
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
            shared_value(&text),
        );
        let key = extractor
            .extract(&RequestInfo::new(&req, None))
            .expect("a key");
        assert!(limiter.check_key(&key).is_allowed());
        assert!(
            limiter.check_key(&key).is_allowed(),
            "a hit finds the stored key"
        );
        key_len = key_len.max(text.len());
        // The request, its buffer and the extracted key drop here.
    }
    assert_eq!(limiter.len(), KEYS + 1);
    let per_key = (counting::live() - before) / KEYS;
    eprintln!("{header}: {per_key} B held per key of at most {key_len} B");
    assert!(
        per_key <= key_len + OVERHEAD,
        "{per_key} B held per key of {key_len} B: the stored key keeps the request's buffer"
    );
    per_key
}

/// One test for every kind: the allocator's count is process-wide, so the measurements must
/// not run beside other tests of this binary.
#[test]
fn stored_keys_hold_their_bytes_only() {
    held_per_key(KeyExtractor::api_key(), "x-api-key", |i| {
        format!("api-key-{i:08}")
    });
    held_per_key(KeyExtractor::bearer(), "authorization", |i| {
        format!("Bearer token-{i:012}")
    });
    // Closures that return a view into a larger buffer (`Bytes`) or a copy (`Text`).
    let bytes = KeyExtractor::from_fn(|req| {
        let v = req.headers.get("x-user")?;
        let shared = Bytes::copy_from_slice(&[v.as_bytes(), &[0u8; 4096]].concat());
        Some(Key::Bytes(shared.slice(..v.len())))
    });
    held_per_key(bytes, "x-user", |i| format!("user-{i:08}"));
    let text = KeyExtractor::from_fn(|req| {
        Some(Key::Text(
            req.headers.get("x-user")?.to_str().ok()?.to_owned(),
        ))
    });
    held_per_key(text, "x-user", |i| format!("user-{i:08}"));
    bearer_scheme_and_spaces_do_not_make_new_keys();
}

fn bearer_scheme_and_spaces_do_not_make_new_keys() {
    let limiter: KeyedLimiter<Key> = KeyedLimiter::builder(Limit::per_hour(2).unwrap())
        .clock(ManualClock::new())
        .build();
    for value in ["Bearer t1", "bearer t1", "BEARER   t1  "] {
        let mut req = http::Request::new(());
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, value.parse().unwrap());
        let key = KeyExtractor::bearer()
            .extract(&RequestInfo::new(&req, None))
            .unwrap();
        let _ = limiter.check_key(&key);
    }
    assert_eq!(limiter.len(), 1, "one token, one bucket");
}
