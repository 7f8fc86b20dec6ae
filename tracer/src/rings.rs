//! The per-CPU event rings, read as one stream in timestamp order.
//!
//! The kernel side writes each event into the ring of the CPU it runs on
//! (`EVENT_RINGS`), so CPUs never contend for one ring's lock. One socket's
//! transitions can run on different CPUs, so the rings are merged here: a
//! drain reads every ring and hands out, oldest first, the events at least
//! `HOLD` older than the moment it began; the younger ones wait for the next
//! drain, by which time an older event still being written on another CPU
//! has landed in its ring. Stopping hands out everything.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::Event;

use crate::event::{self, DecodeError};

/// How much younger than a drain's start an event must be to wait for the
/// next one: far longer than the few microseconds between a program's clock
/// read and its ring commit.
pub const HOLD_NS: u64 = 10_000_000;

/// Events read but not yet handed out, in timestamp order on the way out.
#[derive(Default)]
pub struct Reorder {
    held: Vec<Event>,
}

impl Reorder {
    pub fn push(&mut self, e: Event) {
        self.held.push(e);
    }

    /// Hand out, oldest first, every held event with a timestamp at or
    /// before `cutoff`. Each ring is already in order, so the stable sort
    /// only merges runs.
    pub fn release(&mut self, cutoff: u64, mut f: impl FnMut(Event)) {
        self.held.sort_by_key(|e| e.ts_ns);
        let n = self.held.partition_point(|e| e.ts_ns <= cutoff);
        self.held.drain(..n).for_each(&mut f);
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Every CPU's ring, one epoll descriptor that is readable when any of them
/// is, and the events waiting to go out.
pub struct EventRings {
    rings: Vec<RingBuf<MapData>>,
    poll: AsyncFd<OwnedFd>,
    order: Reorder,
}

impl EventRings {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned from here on.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created and owned by nobody else.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        for r in &rings {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            let fd = r.as_fd().as_raw_fd();
            // SAFETY: both descriptors are open; `ev` outlives the call.
            if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the OwnedFd keeps the descriptor open for as long as the
        // AsyncFd (which owns it) lives.
        let poll = unsafe { AsyncFd::register_with_interest(ep, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(EventRings {
            rings,
            poll,
            order: Reorder::default(),
        })
    }

    /// Wait until some ring has data (the kernel wakes us once a quarter of
    /// a ring is pending; callers drain on a timer too).
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.poll.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Read every ring and hand out the events old enough to be in order
    /// (and every undecodable record, as it comes).
    pub fn drain(&mut self, f: impl FnMut(Result<Event, DecodeError>)) {
        let cutoff = crate::monotonic_ns().saturating_sub(HOLD_NS);
        self.drain_until(cutoff, f);
    }

    /// Read every ring and hand out everything (at the stop).
    pub fn drain_all(&mut self, f: impl FnMut(Result<Event, DecodeError>)) {
        self.drain_until(u64::MAX, f);
    }

    fn drain_until(&mut self, cutoff: u64, mut f: impl FnMut(Result<Event, DecodeError>)) {
        for r in &mut self.rings {
            while let Some(item) = r.next() {
                match event::decode(&item) {
                    Ok(e) => self.order.push(e),
                    Err(e) => f(Err(e)),
                }
            }
        }
        self.order.release(cutoff, |e| f(Ok(e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: u64, cookie: u64) -> Event {
        let mut e = event::decode(&[0; size_of::<Event>()]).expect("a whole record");
        (e.ts_ns, e.cookie) = (ts_ns, cookie);
        e
    }

    fn released(r: &mut Reorder, cutoff: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        r.release(cutoff, |e| out.push((e.ts_ns, e.cookie)));
        out
    }

    #[test]
    fn rings_merge_oldest_first_and_young_events_wait() {
        let mut r = Reorder::default();
        // Two rings' worth, each in order, read one after the other.
        for (ts, c) in [(10, 1), (30, 1), (50, 1), (20, 2), (40, 2), (60, 2)] {
            r.push(ev(ts, c));
        }
        assert_eq!(released(&mut r, 40), [(10, 1), (20, 2), (30, 1), (40, 2)]);
        assert_eq!(r.len(), 2);
        // An older event that landed late still goes out before the held ones.
        r.push(ev(45, 3));
        assert_eq!(released(&mut r, u64::MAX), [(45, 3), (50, 1), (60, 2)]);
        assert!(r.is_empty());
    }

    #[test]
    fn equal_timestamps_keep_their_ring_order() {
        let mut r = Reorder::default();
        for c in [7, 8, 9] {
            r.push(ev(5, c));
        }
        assert_eq!(released(&mut r, 5), [(5, 7), (5, 8), (5, 9)]);
    }
}
