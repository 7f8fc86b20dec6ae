//! TCP state tracer: userspace library.
//!
//! Data flows one way: kernel maps/ring buffer (`probe`) → plain data
//! (`model`, `event`) → outputs (`report`, text/JSON lines). `Tracer` ties the
//! probe to the sock_diag population so the binary and the integration tests
//! produce reports through the same path.

pub mod cgroup;
pub mod cli;
pub mod diag;
pub mod event;
pub mod filter;
pub mod model;
pub mod offsets;
pub mod probe;
pub mod procs;
pub mod report;
pub mod run;

use std::time::Instant;

use anyhow::Context as _;
use tracer_common::state;

use crate::{
    diag::DiagSocket,
    filter::FilterSpec,
    model::Snapshot,
    probe::{Probe, ProbeOptions},
    report::Summary,
};

/// An attached tracer.
pub struct Tracer {
    pub probe: Probe,
    filter: FilterSpec,
    started: Instant,
}

impl Tracer {
    /// Validate the filter, load and attach the programs, and tell them who
    /// owns the listening sockets that already exist.
    pub fn start(filter: FilterSpec, emit_events: bool, ring_bytes: u32) -> anyhow::Result<Self> {
        filter.validate()?;
        let opts = ProbeOptions {
            filter: filter.to_kernel(),
            emit_events,
            ring_bytes,
            ..Default::default()
        };
        let mut probe = Probe::attach(&opts)?;
        if let Err(e) = seed_listeners(&mut probe) {
            log::warn!("could not look up existing listeners' owners: {e:#}");
        }
        Ok(Tracer {
            probe,
            filter,
            started: Instant::now(),
        })
    }

    pub fn filter(&self) -> &FilterSpec {
        &self.filter
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(self.probe.snapshot()?)
    }

    /// Sockets in the states the report counts, filtered like the trace.
    pub fn sockets(&self) -> anyhow::Result<Vec<DiagSocket>> {
        let mut all = diag::dump(diag::population_states())?;
        all.retain(|s| self.filter.matches_socket(s));
        Ok(all)
    }

    /// The report, as of now.
    pub fn summary(&self, top: usize) -> anyhow::Result<Summary> {
        let snap = self.snapshot()?;
        let sockets = self.sockets()?;
        Ok(report::build(
            &snap,
            &report::Context {
                duration_s: self.started.elapsed().as_secs_f64(),
                filter: self.filter.describe(),
                top,
                sockets: &sockets,
                ephemeral: ephemeral_range(),
            },
        ))
    }
}

fn seed_listeners(probe: &mut Probe) -> anyhow::Result<()> {
    let listeners = diag::dump(diag::states(&[state::LISTEN])).context("sock_diag LISTEN dump")?;
    let inodes: Vec<u32> = listeners.iter().map(|s| s.inode).collect();
    let owners = procs::socket_owners(&inodes);
    let seeds: Vec<_> = listeners
        .iter()
        .map(|s| (s.sport, owners.get(&s.inode).copied().unwrap_or_default()))
        .collect();
    probe.seed_listeners(&seeds)?;
    Ok(())
}

/// net.ipv4.ip_local_port_range (Linux default 32768-60999 if unreadable).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}
