//! [`KeyHasher`]: the keyed limiter's default hasher, tollgate's own type (the algorithm behind
//! it may change without a breaking release).

use std::hash::{BuildHasher, Hasher};

/// The default key hasher of a [`KeyedLimiter`](crate::KeyedLimiter): fast, with a random seed
/// per limiter, so nobody can precompute keys that collide (hash flooding). Today it is
/// foldhash; that is not part of the API.
///
/// ```
/// use std::hash::BuildHasher;
/// use tollgate::KeyHasher;
///
/// let a = KeyHasher::default();
/// assert_eq!(a.hash_one("alice"), a.hash_one("alice"));
/// // Two limiters seed differently: a key's hash in one says nothing about the other.
/// let b = KeyHasher::default();
/// assert_ne!(
///     (0..8).map(|i| a.hash_one(i)).collect::<Vec<_>>(),
///     (0..8).map(|i| b.hash_one(i)).collect::<Vec<_>>(),
/// );
/// ```
#[derive(Clone, Default)]
pub struct KeyHasher(foldhash::fast::RandomState);

/// Opaque: the seed stays out of logs.
impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher")
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = KeyHashState;

    #[inline(always)]
    fn build_hasher(&self) -> KeyHashState {
        KeyHashState(self.0.build_hasher())
    }
}

/// The hasher a [`KeyHasher`] builds, for one key.
///
/// ```
/// use std::hash::{BuildHasher, Hasher};
/// use tollgate::KeyHasher;
///
/// let mut h = KeyHasher::default().build_hasher();
/// h.write_u64(7);
/// let _ = h.finish();
/// ```
#[derive(Clone)]
pub struct KeyHashState(foldhash::fast::FoldHasher<'static>);

impl std::fmt::Debug for KeyHashState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHashState")
    }
}

impl Hasher for KeyHashState {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes)
    }
    #[inline(always)]
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i)
    }
    #[inline(always)]
    fn write_u16(&mut self, i: u16) {
        self.0.write_u16(i)
    }
    #[inline(always)]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i)
    }
    #[inline(always)]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i)
    }
    #[inline(always)]
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i)
    }
    #[inline(always)]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i)
    }
}
