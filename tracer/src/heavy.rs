//! A bounded breakdown with error bounds: weighted Space-Saving (Metwally,
//! Agrawal, El Abbadi, "Efficient computation of frequent and top-k
//! elements in data streams", 2005), keeping each row's figures exact.
//!
//! At most `capacity` rows are kept. A new key that finds the table full
//! takes the place of the row with the smallest *count*; that row's figures
//! move whole into `other`, and the new row starts with `err` = the evicted
//! count. A row's count is `weight(figures) + err`. With `W` the total
//! weight added:
//!
//! - every row's figures are exact since the row was (last) inserted: the
//!   key's true weight `f` satisfies `weight(figures) ≤ f ≤ count`, so at
//!   most `err` of it is missing (it is in `other`);
//! - `err ≤ min count ≤ W / capacity`;
//! - every key with `f > W / capacity` has a row (it cannot be the minimum);
//! - rows + `other` = everything added, for every figure, exactly;
//! - while no row was ever evicted, every `err` is 0: all figures exact.
//!
//! Pure and allocation-bounded: a `HashMap` index and a min-heap of at most
//! `capacity` entries.

use std::{collections::HashMap, hash::Hash};

/// Figures a row carries: a weight to rank by, and how two merge.
pub trait Tally: Clone + Default {
    fn weight(&self) -> u64;
    fn absorb(&mut self, other: &Self);
}

impl Tally for u64 {
    fn weight(&self) -> u64 {
        *self
    }
    fn absorb(&mut self, other: &Self) {
        *self += other;
    }
}

#[derive(Clone, Debug)]
struct Entry<K, V> {
    key: K,
    value: V,
    /// Weight the key may have had before this row was inserted.
    err: u64,
    /// `value.weight() + err`: the heap's order.
    count: u64,
}

/// The bounded table (see the module doc).
#[derive(Clone, Debug)]
pub struct SpaceSaving<K, V> {
    capacity: usize,
    /// Key → position in `heap`.
    index: HashMap<K, usize>,
    /// Min-heap on `count`.
    heap: Vec<Entry<K, V>>,
    other: V,
    evicted: u64,
    total: u64,
}

/// One row as read out: the key, its exact figures since insertion, and
/// how much weight it may miss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row<K, V> {
    pub key: K,
    pub value: V,
    pub err: u64,
}

impl<K: Hash + Eq + Clone, V: Tally> SpaceSaving<K, V> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a Space-Saving table needs at least one row");
        SpaceSaving {
            capacity,
            index: HashMap::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
            other: V::default(),
            evicted: 0,
            total: 0,
        }
    }

    /// Add `v` to `key`'s row (inserting it, evicting the smallest row when full).
    pub fn add(&mut self, key: K, v: &V) {
        let w = v.weight();
        self.total += w;
        if let Some(&i) = self.index.get(&key) {
            let e = &mut self.heap[i];
            e.value.absorb(v);
            e.count += w;
            self.sift_down(i);
        } else if self.heap.len() < self.capacity {
            self.index.insert(key.clone(), self.heap.len());
            self.heap.push(Entry {
                key,
                value: v.clone(),
                err: 0,
                count: w,
            });
            self.sift_up(self.heap.len() - 1);
        } else {
            let min = &mut self.heap[0];
            self.other.absorb(&min.value);
            self.evicted += 1;
            self.index.remove(&min.key);
            let err = min.count;
            *min = Entry {
                key: key.clone(),
                value: v.clone(),
                err,
                count: err + w,
            };
            self.index.insert(key, 0);
            self.sift_down(0);
        }
    }

    /// Figures of evicted rows.
    pub fn other(&self) -> &V {
        &self.other
    }

    /// Rows evicted so far (0: every figure is exact).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Total weight added.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// The most weight any row may miss: the smallest count once the table
    /// is full and has evicted (≤ total / capacity), else 0.
    pub fn max_error(&self) -> u64 {
        if self.evicted == 0 {
            0
        } else {
            self.heap.first().map_or(0, |e| e.count)
        }
    }

    pub fn get(&self, key: &K) -> Option<Row<K, V>> {
        self.index.get(key).map(|&i| self.row(i))
    }

    /// Every row, in no particular order.
    pub fn rows(&self) -> impl Iterator<Item = Row<K, V>> + '_ {
        (0..self.heap.len()).map(|i| self.row(i))
    }

    fn row(&self, i: usize) -> Row<K, V> {
        let e = &self.heap[i];
        Row {
            key: e.key.clone(),
            value: e.value.clone(),
            err: e.err,
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        *self.index.get_mut(&self.heap[a].key).expect("indexed") = a;
        *self.index.get_mut(&self.heap[b].key).expect("indexed") = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].count >= self.heap[parent].count {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < self.heap.len() && self.heap[l].count < self.heap[m].count {
                m = l;
            }
            if r < self.heap.len() && self.heap[r].count < self.heap[m].count {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two figures: a weight and a second one that must also add up.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Two {
        w: u64,
        bytes: u64,
    }

    impl Tally for Two {
        fn weight(&self) -> u64 {
            self.w
        }
        fn absorb(&mut self, o: &Self) {
            self.w += o.w;
            self.bytes += o.bytes;
        }
    }

    /// xorshift64*: deterministic streams without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Feed `stream` to a table and to a brute-force count, then check
    /// every guarantee of the module doc.
    fn check(capacity: usize, stream: &[(u32, Two)]) -> SpaceSaving<u32, Two> {
        let mut t = SpaceSaving::new(capacity);
        let mut truth: HashMap<u32, Two> = HashMap::new();
        for (k, v) in stream {
            t.add(*k, v);
            truth.entry(*k).or_default().absorb(v);
        }
        let total: Two = truth.values().fold(Two::default(), |mut a, v| {
            a.absorb(v);
            a
        });
        let mut sum = *t.other();
        for r in t.rows() {
            sum.absorb(&r.value);
            let f = truth[&r.key];
            assert!(
                r.value.w <= f.w && f.w <= r.value.w + r.err,
                "{r:?} vs {f:?}"
            );
            assert!(r.value.bytes <= f.bytes, "{r:?} vs {f:?}");
            assert!(r.err <= t.max_error(), "{r:?}: max {}", t.max_error());
        }
        assert_eq!(sum, total, "rows + other = everything added");
        assert_eq!(t.total_weight(), total.w);
        let bound = total.w / capacity as u64;
        assert!(t.max_error() <= bound, "{} > W/m = {bound}", t.max_error());
        for (k, f) in &truth {
            if f.w > bound {
                assert!(
                    t.get(k).is_some(),
                    "key {k} ({f:?}) above W/m={bound} missing"
                );
            }
        }
        assert!(t.len() <= capacity);
        if truth.len() <= capacity {
            assert_eq!(t.evicted(), 0);
            for (k, f) in &truth {
                assert_eq!(
                    t.get(k).unwrap().value,
                    *f,
                    "exact while it never overflowed"
                );
            }
        }
        t
    }

    fn one(w: u64) -> Two {
        Two {
            w,
            bytes: 3 * w + 1,
        }
    }

    #[test]
    fn random_streams_keep_every_bound() {
        for seed in 1..20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let keys = 10 + rng.below(2000);
            let stream: Vec<(u32, Two)> = (0..5000)
                .map(|_| (rng.below(keys) as u32, one(rng.below(4))))
                .collect();
            check(1 + rng.below(300) as usize, &stream);
        }
    }

    #[test]
    fn skewed_stream_lists_the_heavy_keys_first() {
        let mut rng = Rng(7);
        // Zipf-like: key k drawn with weight ~ 1/k via a squared uniform.
        let stream: Vec<(u32, Two)> = (0..20_000)
            .map(|_| {
                let u = rng.below(1 << 16) as f64 / 65536.0;
                ((u * u * u * 5000.0) as u32, one(1))
            })
            .collect();
        let t = check(100, &stream);
        let mut rows: Vec<_> = t.rows().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.value.w));
        assert_eq!(rows[0].key, 0, "the heaviest key ranks first");
    }

    #[test]
    fn the_issue_scenario_many_singletons_then_one_heavy_key() {
        // 17 000 distinct keys once each, then one new key 500 times.
        let mut stream: Vec<(u32, Two)> = (0..17_000).map(|k| (k, one(1))).collect();
        stream.extend((0..500).map(|_| (99_999, one(1))));
        let t = check(16_384, &stream);
        let hot = t.get(&99_999).unwrap();
        assert_eq!(
            hot.value,
            Two {
                w: 500,
                bytes: 2000
            },
            "exact since insertion"
        );
        assert_eq!(hot.err, 1, "it may have missed one: the evicted minimum");
        assert_eq!(t.evicted(), 17_001 - 16_384);
    }

    #[test]
    fn round_robin_over_one_more_key_than_rows() {
        // The worst case for churn: every add evicts.
        let stream: Vec<(u32, Two)> = (0..10_000).map(|i| (i % 65, one(1))).collect();
        let t = check(64, &stream);
        assert!(t.evicted() > 0);
    }

    #[test]
    fn heavy_key_hidden_among_bursts_of_new_keys() {
        // A key that is above W/m overall but arrives in thin slices between
        // bursts of fresh keys: it must survive every burst.
        let mut stream = Vec::new();
        let mut fresh = 1_000_000u32;
        for _ in 0..200 {
            stream.push((1, one(5)));
            for _ in 0..40 {
                stream.push((fresh, one(1)));
                fresh += 1;
            }
        }
        let t = check(32, &stream);
        assert!(t.get(&1).is_some());
    }

    #[test]
    fn zero_weight_adds_still_add_up() {
        let stream: Vec<(u32, Two)> = (0..500)
            .map(|i| {
                (
                    i % 37,
                    Two {
                        w: (i % 3 == 0) as u64,
                        bytes: i as u64,
                    },
                )
            })
            .collect();
        check(8, &stream);
    }

    /// Net bytes allocated by the calling thread (this test binary's
    /// allocator counts per thread), for memory measurements.
    mod counting {
        use std::{
            alloc::{GlobalAlloc, Layout, System},
            cell::Cell,
        };
        thread_local! {
            pub static NET: Cell<isize> = const { Cell::new(0) };
        }
        fn add(n: isize) {
            let _ = NET.try_with(|c| c.set(c.get() + n));
        }
        pub struct Counting;
        // SAFETY: forwards to the system allocator; only counts sizes.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, l: Layout) -> *mut u8 {
                add(l.size() as isize);
                unsafe { System.alloc(l) }
            }
            unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
                add(-(l.size() as isize));
                unsafe { System.dealloc(p, l) }
            }
            unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
                add(new as isize - l.size() as isize);
                unsafe { System.realloc(p, l, new) }
            }
        }
        #[global_allocator]
        static A: Counting = Counting;
        pub fn net() -> isize {
            NET.with(|c| c.get())
        }
    }

    #[test]
    fn memory_is_bounded_by_capacity_not_by_keys_seen() {
        use tracer_common::{FlowKey, FlowStats};
        let rows = crate::harvest::LEDGER_ROWS;
        let before = counting::net();
        let mut t: SpaceSaving<FlowKey, FlowStats> = SpaceSaving::new(rows);
        let mut at = Vec::new();
        let one = FlowStats {
            established: 1,
            time_wait: 1,
            ..Default::default()
        };
        for i in 0..1_000_000u32 {
            let mut key = FlowKey {
                family: 2,
                port: 9300,
                dir: 1,
                ..Default::default()
            };
            key.raddr[..4].copy_from_slice(&i.to_be_bytes());
            t.add(key, &one);
            if i + 1 == rows as u32 || i + 1 == 100_000 || i + 1 == 1_000_000 {
                at.push((i + 1, counting::net() - before));
            }
        }
        for (seen, bytes) in &at {
            eprintln!("{rows} rows, {seen} distinct peers seen: {bytes} bytes");
        }
        assert_eq!(t.len(), rows);
        assert_eq!(t.total_weight(), 2_000_000);
        let (_, full) = at[0];
        let (_, last) = at[2];
        // The index may rehash once (its tombstones), never grow with keys.
        assert!(last <= 2 * full, "{at:?}");
        assert!(last < 16 << 20, "under 16 MiB: {at:?}");
    }
}
