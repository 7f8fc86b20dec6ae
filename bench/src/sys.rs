//! What the harness reads from the system: machine details, per-process CPU
//! time and memory, BPF program run statistics (from /proc fdinfo), sysctls.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The machine a run was made on.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub bpftrace: Option<String>,
}

impl Machine {
    pub fn collect(bpftrace: Option<&Path>) -> Machine {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let bpftrace = bpftrace.and_then(|b| {
            let o = std::process::Command::new(b)
                .arg("--version")
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
        });
        Machine {
            kernel,
            cpu_model: cpu_model(&cpuinfo),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) as f64 / (1024.0 * 1024.0),
            bpftrace,
        }
    }
}

pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A `Key:   N kB` line of /proc/meminfo or /proc/PID/status.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14, 15).
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The comm field may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&s).context("parsing /proc/PID/stat")
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// VmHWM (peak resident set) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    meminfo_kib(&s, "VmHWM").context("no VmHWM")
}

/// One BPF program or map fd of a process, from /proc/PID/fdinfo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfFd {
    pub prog_id: Option<u32>,
    pub map_id: Option<u32>,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub memlock: u64,
}

pub fn parse_fdinfo(text: &str) -> BpfFd {
    let mut f = BpfFd::default();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "prog_id" => f.prog_id = v.parse().ok(),
            "map_id" => f.map_id = v.parse().ok(),
            "run_time_ns" => f.run_time_ns = v.parse().unwrap_or(0),
            "run_cnt" => f.run_cnt = v.parse().unwrap_or(0),
            "memlock" => f.memlock = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    f
}

/// The BPF program and map fds a process holds (one entry per id).
pub fn bpf_fds(pid: u32) -> Result<Vec<BpfFd>> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut out: Vec<BpfFd> = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let Ok(e) = e else { continue };
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if t != "anon_inode:bpf-prog" && t != "anon_inode:bpf-map" {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let f = parse_fdinfo(&info);
        let dup = out.iter().any(|o| {
            (o.prog_id.is_some() && o.prog_id == f.prog_id)
                || (o.map_id.is_some() && o.map_id == f.map_id)
        });
        if !dup {
            out.push(f);
        }
    }
    Ok(out)
}

/// The busiest program a process holds (the one on the benchmarked
/// tracepoint; bpftrace also holds its BEGIN/END programs).
pub fn busiest_program(pid: u32) -> Result<Option<BpfFd>> {
    Ok(bpf_fds(pid)?
        .into_iter()
        .filter(|f| f.prog_id.is_some())
        .max_by_key(|f| f.run_cnt))
}

/// Kernel memory of a process's BPF maps (sum of `memlock`), bytes.
pub fn bpf_map_memlock(pid: u32) -> Result<u64> {
    Ok(bpf_fds(pid)?
        .iter()
        .filter(|f| f.map_id.is_some())
        .map(|f| f.memlock)
        .sum())
}

/// Set a sysctl (by /proc/sys path) and put the old value back on drop.
pub struct SysctlGuard {
    path: PathBuf,
    old: String,
}

impl SysctlGuard {
    pub fn set(name: &str, value: &str) -> Result<SysctlGuard> {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        let old = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        Ok(SysctlGuard {
            path,
            old: old.trim().to_string(),
        })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.old);
    }
}

/// BPF programs loaded on the machine that are not ours (other tracers or
/// tests running at the same time make every transition cost more).
pub fn loaded_program_names() -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A memory cgroup of the bench's own, to measure the kernel memory charged
/// to the tracer: BPF map memory (the per-socket table included) is charged to
/// the cgroup of the process that created the map. cgroup v1's
/// `memory.kmem.usage_in_bytes`, or v2's `kernel` line of `memory.stat`.
pub struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemCgroup {
    /// A fresh cgroup named `name`, or None where no memory controller is
    /// mounted (the figure is then left out).
    pub fn create(name: &str) -> Option<MemCgroup> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, v2) = if v1.join("memory.kmem.usage_in_bytes").exists() {
            (v1.to_path_buf(), false)
        } else {
            let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| {
                    fs::read_to_string(p.join("cgroup.subtree_control"))
                        .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
                })?;
            (v2, true)
        };
        let dir = root.join(name);
        fs::create_dir(&dir).ok()?;
        Some(MemCgroup { dir, v2 })
    }

    /// Make `c`'s child join the cgroup before it execs (so the maps it
    /// creates are charged here).
    pub fn enter(&self, c: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("no NUL in a cgroup path");
        // SAFETY: only open/write/close (async-signal-safe) run between fork
        // and exec, on a path built before the fork.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Kernel memory charged to the cgroup now, bytes.
    pub fn kernel_bytes(&self) -> Option<u64> {
        if self.v2 {
            let stat = fs::read_to_string(self.dir.join("memory.stat")).ok()?;
            stat.lines()
                .find_map(|l| l.strip_prefix("kernel "))?
                .trim()
                .parse()
                .ok()
        } else {
            fs::read_to_string(self.dir.join("memory.kmem.usage_in_bytes"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Empty once the tracer has exited; its charges move to the parent.
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_odd_comms() {
        let stat =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 1 0 100 1000 200";
        assert_eq!(parse_stat_ticks(stat), Some(42));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn fdinfo_of_programs_and_maps() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\tabc\nmemlock:\t4096\nprog_id:\t77\nrun_time_ns:\t123456\nrun_cnt:\t1000\nrecursion_misses:\t0\nverified_insns:\t900\n";
        let f = parse_fdinfo(prog);
        assert_eq!(
            f,
            BpfFd {
                prog_id: Some(77),
                map_id: None,
                run_time_ns: 123456,
                run_cnt: 1000,
                memlock: 4096
            }
        );
        let map = "map_type:\t9\nkey_size:\t8\nvalue_size:\t72\nmax_entries:\t262144\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t21000000\nmap_id:\t12\n";
        let m = parse_fdinfo(map);
        assert_eq!(
            (m.map_id, m.memlock, m.prog_id),
            (Some(12), 21_000_000, None)
        );
    }

    #[test]
    fn meminfo_and_cpu_model() {
        assert_eq!(
            meminfo_kib("VmPeak:\t 100 kB\nVmHWM:\t  2048 kB\n", "VmHWM"),
            Some(2048)
        );
        assert_eq!(meminfo_kib("VmHWM:\t  2048 kB\n", "VmRSS"), None);
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"),
            "AMD EPYC 7B13"
        );
    }

    #[test]
    fn our_own_process_has_cpu_time_and_rss() {
        let pid = std::process::id();
        let t0 = cpu_ticks(pid).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_ticks(pid).unwrap() >= t0);
        assert!(peak_rss_kib(pid).unwrap() > 0);
    }
}
