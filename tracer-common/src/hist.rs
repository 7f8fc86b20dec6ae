//! Log-linear latency histogram shared by kernel and userspace.
//!
//! Values (nanoseconds) below 64 get a bucket each; above, every power of two
//! is split into 64 equal buckets, so a bucket is at most 1/64 (1.6 %) of its
//! lower bound wide. 34 octaves reach 2^39 ns (~550 s); larger values land in
//! the last bucket. `count`, `sum` and `max` are kept exactly beside the buckets.

/// Sub-buckets per power of two (2^SUB_BITS).
pub const SUB_BITS: u32 = 6;
pub const SUB: u64 = 1 << SUB_BITS;
pub const OCTAVES: usize = 34;
pub const BUCKETS: usize = OCTAVES * SUB as usize;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}
const _: () = assert!(core::mem::size_of::<Hist>() == (BUCKETS + 3) * 8);

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

/// Index of the most significant set bit; `v` must be non-zero. Branchy binary
/// search rather than `leading_zeros`, which the BPF backend has no instruction for.
#[inline(always)]
pub fn msb(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket index of `v`.
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let m = msb(v); // >= SUB_BITS
    let idx = (m - SUB_BITS + 1) as u64 * SUB + ((v >> (m - SUB_BITS)) & (SUB - 1));
    if idx >= BUCKETS as u64 {
        BUCKETS - 1
    } else {
        idx as usize
    }
}

/// Smallest value that lands in bucket `i`.
pub fn bucket_low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let octave = i / SUB; // >= 1
    let sub = i % SUB;
    (SUB + sub) << (octave - 1)
}

/// One past the largest value of bucket `i` (the last bucket is open-ended;
/// this returns its nominal bound).
pub fn bucket_high(i: usize) -> u64 {
    if (i as u64) < SUB {
        return i as u64 + 1;
    }
    bucket_low(i) + (1u64 << (i as u64 / SUB - 1))
}
