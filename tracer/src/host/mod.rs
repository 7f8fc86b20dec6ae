//! Everything the tracer reads from the host besides its BPF maps:
//! sock_diag (`diag`, `diag_storage`), every network namespace's sockets
//! (`netns`, `population`), /proc (`procs`), cgroup and pod names
//! (`cgroup`, `kube`), listeners and their sysctls (`listeners`), and the
//! process's own capabilities (`privs`).

pub mod cgroup;
pub mod diag;
pub mod diag_storage;
pub mod kube;
pub mod listeners;
pub mod netns;
pub mod population;
pub mod privs;
pub mod procs;
