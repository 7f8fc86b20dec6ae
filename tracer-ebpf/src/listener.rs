//! Listening sockets: CLOSE → LISTEN records who owns the port (in
//! listen()'s context), LISTEN → CLOSE forgets it when the last listening
//! socket of that port and namespace closes. Accepted children take their
//! owner from here. Listener transitions have no peer and no per-socket
//! state; they count only when they satisfy every filter.

use aya_ebpf::bindings::BPF_NOEXIST;
use tracer_common::{close, counter, state, ListenerKey, Owner, SockState, Stats};

use crate::{
    filter::{verdict, Verdict},
    maps::{bump, LISTENERS},
    output::{self, EventFacts},
    sock,
    transition::{count_simple, current_owner, Tr},
};

const EEXIST: i32 = -17;

#[inline(never)]
pub fn on_listener(stats: &mut Stats, t: &Tr) {
    let (sk, old, new, e) = (t.sk, t.old, t.new, &t.ends);
    let netns = sock::netns(sk);
    let key = ListenerKey {
        netns,
        port: e.lport,
        _pad: 0,
    };
    // Both transitions run in the process's own context (listen(), close()).
    let mut st = SockState {
        netns,
        ..SockState::default()
    };
    st.set_owner(&current_owner());
    if new == state::LISTEN {
        remember(stats, &key, &st);
    } else {
        forget(&key);
    }
    if verdict(e, &st, netns, true, || [0u8; 16]) != Verdict::Match {
        bump(stats, counter::FILTERED_OUT);
        return;
    }
    count_simple(stats, old, new);
    let facts = EventFacts {
        old,
        new,
        ts: t.now,
        close_kind: if new == state::CLOSE {
            close::LISTENER_CLOSED
        } else {
            close::NONE
        },
        ..EventFacts::default()
    };
    output::emit(sk, e, &st, &facts);
}

#[inline(always)]
fn remember(stats: &mut Stats, key: &ListenerKey, st: &SockState) {
    if let Some(o) = LISTENERS.get_ptr_mut(key) {
        // SAFETY: a hash map value found by this run. Listen/close of one
        // port race only with SO_REUSEPORT siblings; the count is advisory
        // (it decides when the entry goes), the owner is the latest listen().
        unsafe {
            (*o).sockets += 1;
            (*o).tgid = st.tgid;
            (*o).comm = st.comm;
            (*o).cgroup_id = st.cgroup_id;
        }
        return;
    }
    let owner = Owner {
        cgroup_id: st.cgroup_id,
        tgid: st.tgid,
        comm: st.comm,
        sockets: 1,
    };
    if let Err(e) = LISTENERS.insert(key, &owner, BPF_NOEXIST as u64) {
        if e != EEXIST {
            bump(stats, counter::LISTENER_TABLE_FULL);
        }
    }
}

#[inline(always)]
fn forget(key: &ListenerKey) {
    if let Some(o) = LISTENERS.get_ptr_mut(key) {
        // SAFETY: as in `remember`.
        let last = unsafe {
            let n = (*o).sockets;
            (*o).sockets = n.saturating_sub(1);
            n <= 1
        };
        if last {
            let _ = LISTENERS.remove(key);
        }
    }
}

/// The owner of a listening port in a namespace, if recorded.
#[inline(always)]
pub fn owner_of(netns: u32, port: u16) -> Option<Owner> {
    let key = ListenerKey {
        netns,
        port,
        _pad: 0,
    };
    // SAFETY: a read-only copy of the value.
    unsafe { LISTENERS.get(&key) }.copied()
}
