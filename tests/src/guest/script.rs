//! The guest's /init: mounts, modules, a known workload between busybox nc
//! clients and servers, the tracer runs around it, and every result printed
//! between markers on the serial console.

use std::fmt::Write as _;

/// Servers and ports of the workload (nothing else talks TCP in the guest).
pub const PORT_CLIENT_CLOSES: u16 = 7001;
pub const PORT_SERVER_CLOSES: u16 = 7002;
/// Nothing listens here: connects are refused by RST.
pub const PORT_REFUSED: u16 = 7003;
pub const PORT_IPV6: u16 = 7004;
/// `tracer serve` listens here; its filter excludes the scrape itself.
pub const PORT_METRICS: u16 = 9477;

/// Lines that open and close a section of console output.
pub const BEGIN: &str = "@@@BEGIN ";
pub const END: &str = "@@@END ";
/// Printed last, just before poweroff: the run completed.
pub const DONE: &str = "@@@DONE";

/// What the tracer prints on stderr once its program is loaded, verified
/// and attached (summary, events, serve).
pub const READY: &str = "Aggregating|Tracing TCP|Serving Prometheus";

/// Connections with known endings, all made by busybox `nc`:
/// - `client_closes` to 127.0.0.1:7001 (`echo hi | nc`; the server echoes
///   and closes after the client's FIN): TIME_WAIT on the client;
/// - `server_closes` to 127.0.0.1:7002 (the server runs `true`, which
///   exits at once; the client runs `cat` until EOF): TIME_WAIT on the server;
/// - `refused` connects to 127.0.0.1:7003;
/// - `ipv6` client closes to [::1]:7004.
///
/// The servers are `nc -ll` on `::` (dual stack): accepted IPv4 sockets are
/// IPv6 sockets with v4-mapped addresses.
///
/// Every workload process is pinned to CPU 0 (`taskset 1`), so all of its
/// loopback packets are processed there, one after the other: on two CPUs
/// the final ACK and the first data segment of a connection can reach the
/// listener's request at once, and the kernel then creates a second child
/// that dies in SYN_RECV (an extra PassiveOpen, LISTEN→SYN_RECV→CLOSE) —
/// real, and traced exactly, but not a known count. The tracers' programs
/// still load on both CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub client_closes: u64,
    pub server_closes: u64,
    pub refused: u64,
    pub ipv6: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            client_closes: 6,
            server_closes: 4,
            refused: 3,
            ipv6: 2,
        }
    }
}

impl Workload {
    /// Established connections.
    pub fn connections(&self) -> u64 {
        self.client_closes + self.server_closes + self.ipv6
    }
}

/// One tracer process in the guest: a name for its sections, its arguments.
#[derive(Clone, Debug)]
pub struct Run {
    pub name: &'static str,
    pub args: Vec<String>,
}

/// The runs of one boot: `check` (loads both modes, reports the verifier's
/// figures, exits), then each mode once, two of them filtered. They load
/// their programs concurrently (each load costs seconds of verifier time
/// under TCG) and the three modes see the same workload.
pub fn runs() -> Vec<Run> {
    let run = |name, args: &[&str]| Run {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        // Loads each mode, prints the verified instructions, and exits.
        run("check", &["check", "--json"]),
        run("summary", &["summary", "--json"]),
        run(
            "events",
            &[
                "events",
                "--json",
                "--rport",
                &PORT_CLIENT_CLOSES.to_string(),
            ],
        ),
        run(
            "serve",
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{PORT_METRICS}"),
                "--addr",
                "::1/128",
            ],
        ),
    ]
}

/// Where the tracer binary and the diag modules go in the initramfs.
pub const TRACER_PATH: &str = "/usr/bin/tracer";
pub const MODULES_DIR: &str = "/lib/modules/diag";

const PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t devtmpfs dev /dev
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
dmesg -n 1
ip link set lo up
mkdir -p /out
up() { cut -d' ' -f1 /proc/uptime; }
secs() { cut -d. -f1 /proc/uptime; }
begin() { echo "@@@BEGIN $1"; }
end() { echo; echo "@@@END $1"; }
# show NAME FILE LIMIT: the file, or its head and tail when larger than LIMIT.
show() {
  begin "$1"
  size=$(wc -c < "$2" 2>/dev/null || echo 0)
  if [ "$size" -gt "$3" ]; then
    head -c 4096 "$2"; echo; echo "[... $((size - $3)) bytes cut ...]"; tail -c $(($3 - 4096)) "$2"
  else
    cat "$2" 2>/dev/null
  fi
  end "$1"
}
# dead PID: the process exited (gone, or a zombie not yet waited for).
dead() { [ ! -e /proc/$1/stat ] || [ "$(cut -d' ' -f3 /proc/$1/stat)" = Z ]; }
# cpu PID: user+system CPU seconds (USER_HZ ticks of 1/100 s) so far.
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' /proc/$1/stat 2>/dev/null; }
# listening PORT: a listener on that port (hex in /proc/net/tcp*).
listening() {
  awk -v p=":$(printf %04X $1)" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' /proc/net/tcp /proc/net/tcp6
}
# settled: every socket is LISTEN (0A) or TIME_WAIT (06): all closes done.
settled() {
  awk '$4 != "st" && $4 != "0A" && $4 != "06" { n++ } END { exit n > 0 }' /proc/net/tcp /proc/net/tcp6
}
start() {
  name=$1; shift
  up > /out/$name.t0
  tracer "$@" > /out/$name.out 2> /out/$name.err &
  echo $! > /out/$name.pid
}
# poll NAME DEADLINE: decide NAME's state once (ready: the attached line;
# exited; timeout), stamping when; until then, note its CPU time (a process
# that exited is reaped by the shell at once, so its last reading is kept).
poll() {
  [ -s /out/$1.state ] && return 0
  pid=$(cat /out/$1.pid)
  c=$(cpu $pid); [ -n "$c" ] && echo $c > /out/$1.cpu
  if grep -qE "$READY" /out/$1.err; then st=ready
  elif dead $pid; then st=exited
  elif [ "$(secs)" -ge "$2" ]; then st=timeout
  else return 1; fi
  echo $st > /out/$1.state; up > /out/$1.t1
}
# ready DEADLINE NAME...: poll them all until each has a state.
ready() {
  deadline=$1; shift
  while :; do
    pending=0
    for n in "$@"; do poll $n $deadline || pending=1; done
    [ $pending = 0 ] && break
    usleep 200000
  done
}
# stop NAME: SIGINT, wait up to 60 s for the report, then its exit code.
stop() {
  pid=$(cat /out/$1.pid)
  kill -INT $pid 2>/dev/null
  limit=$(( $(secs) + 60 ))
  while ! dead $pid && [ "$(secs)" -lt $limit ]; do usleep 100000; done
  dead $pid || { echo "killed after 60 s" >> /out/$1.err; kill -KILL $pid; }
  wait $pid; echo $? > /out/$1.rc
  up > /out/$1.t2
}
meta() {
  begin "meta.$1"
  for k in state t0 t1 t2 cpu rc; do echo "$k=$(cat /out/$1.$k 2>/dev/null)"; done
  end "meta.$1"
}
"#;

/// The whole /init for `w` and `runs`; `ready_timeout_s` bounds the wait
/// for all programs to load.
pub fn init(w: &Workload, runs: &[Run], ready_timeout_s: u64) -> String {
    let mut s = String::from(PRELUDE);
    let modules = super::setup::DIAG_MODULES;
    let _ = writeln!(s, "READY='{READY}'");
    let _ = writeln!(s, "echo init_start=$(up) > /out/times");
    for m in modules {
        let _ = writeln!(s, "insmod {MODULES_DIR}/{m} || echo 'insmod {m} failed'");
    }
    s.push_str(
        "begin env\nuname -r\nnproc\ngrep MemTotal /proc/meminfo\nlsmod\n\
         ls -l /sys/kernel/btf/vmlinux\nend env\n",
    );
    // Servers first, so that their listen() is not part of what is traced.
    let _ = writeln!(s, "taskset 1 nc -ll -p {PORT_CLIENT_CLOSES} -e /bin/cat &");
    let _ = writeln!(s, "taskset 1 nc -ll -p {PORT_SERVER_CLOSES} -e /bin/true &");
    let _ = writeln!(s, "taskset 1 nc -ll -p {PORT_IPV6} -e /bin/cat &");
    let _ = writeln!(
        s,
        "for p in {PORT_CLIENT_CLOSES} {PORT_SERVER_CLOSES} {PORT_IPV6}; do \
         n=0; while ! listening $p && [ $n -lt 100 ]; do usleep 50000; n=$((n+1)); done; done"
    );
    for r in runs {
        let _ = writeln!(s, "start {} {}", r.name, shell_words(&r.args));
    }
    let _ = writeln!(s, "deadline=$(( $(secs) + {ready_timeout_s} ))");
    let names: Vec<&str> = runs.iter().map(|r| r.name).collect();
    let _ = writeln!(s, "ready $deadline {}", names.join(" "));
    workload(&mut s, w);
    for r in runs.iter().filter(|r| r.name != "serve") {
        let _ = writeln!(s, "stop {}", r.name);
    }
    // The scrape's own connection is after the other runs stopped, and
    // outside serve's filter.
    let _ = writeln!(
        s,
        "wget -q -O /out/metrics http://127.0.0.1:{PORT_METRICS}/metrics; echo $? > /out/metrics.rc"
    );
    if runs.iter().any(|r| r.name == "serve") {
        s.push_str("stop serve\n");
    }
    s.push_str("echo end=$(up) >> /out/times\n");
    report(&mut s, runs);
    s
}

fn workload(s: &mut String, w: &Workload) {
    let lp = |s: &mut String, n: u64, body: &str| {
        let _ = writeln!(s, "i=0; while [ $i -lt {n} ]; do {body}; i=$((i+1)); done");
    };
    s.push_str(
        "cat /proc/net/snmp > /out/snmp.before\ncat /proc/net/netstat > /out/netstat.before\n\
         echo workload_start=$(up) >> /out/times\n",
    );
    lp(
        s,
        w.client_closes,
        &format!(
            "echo hi | taskset 1 nc 127.0.0.1 {PORT_CLIENT_CLOSES} >> /out/echo.client_closes"
        ),
    );
    lp(
        s,
        w.server_closes,
        &format!("taskset 1 nc 127.0.0.1 {PORT_SERVER_CLOSES} -e /bin/cat; echo $? >> /out/rc.server_closes"),
    );
    lp(
        s,
        w.refused,
        &format!("taskset 1 nc 127.0.0.1 {PORT_REFUSED} 2>> /out/err.refused; echo $? >> /out/rc.refused"),
    );
    lp(
        s,
        w.ipv6,
        &format!("echo hi | taskset 1 nc ::1 {PORT_IPV6} >> /out/echo.ipv6"),
    );
    // Wait for the last FIN/ACKs (softirq, after the syscalls returned).
    s.push_str(
        "n=0; while ! settled && [ $n -lt 300 ]; do usleep 100000; n=$((n+1)); done\n\
         echo workload_end=$(up) >> /out/times\n\
         cat /proc/net/snmp > /out/snmp.after\n\
         cat /proc/net/netstat > /out/netstat.after\n\
         cat /proc/net/tcp /proc/net/tcp6 > /out/sockets.after\n",
    );
}

/// Print every result file as its own section, then power off.
fn report(s: &mut String, runs: &[Run]) {
    for r in runs {
        let _ = writeln!(s, "meta {}", r.name);
        let _ = writeln!(s, "show {0}.out /out/{0}.out 1048576", r.name);
        let _ = writeln!(s, "show {0}.err /out/{0}.err 65536", r.name);
    }
    for f in [
        "times",
        "snmp.before",
        "snmp.after",
        "netstat.before",
        "netstat.after",
        "sockets.after",
        "echo.client_closes",
        "rc.server_closes",
        "rc.refused",
        "err.refused",
        "echo.ipv6",
        "metrics",
        "metrics.rc",
    ] {
        let _ = writeln!(s, "show {f} /out/{f} 262144");
    }
    s.push_str("dmesg > /out/dmesg\nshow dmesg /out/dmesg 65536\n");
    let _ = writeln!(s, "echo {DONE}\npoweroff -f");
}

/// Single-quoted for sh.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_every_tracer_and_reports_every_section() {
        let text = init(&Workload::default(), &runs(), 300);
        assert!(text.starts_with("#!/bin/busybox sh\n"));
        for r in runs() {
            assert!(text.contains(&format!("start {} ", r.name)));
            assert!(text.contains(&format!("stop {}", r.name)));
            assert!(text.contains(&format!("meta {}", r.name)));
        }
        assert!(text.contains("ready $deadline check summary events serve\n"));
        assert!(text.contains("start events 'events' '--json' '--rport' '7001'"));
        assert!(text.contains("while [ $i -lt 6 ]; do echo hi | taskset 1 nc 127.0.0.1 7001"));
        assert!(text.trim_end().ends_with("poweroff -f"));
        // serve is stopped after the scrape, the others before it.
        let scrape = text.find("wget -q").unwrap();
        assert!(text.find("stop events").unwrap() < scrape);
        assert!(text.find("stop serve").unwrap() > scrape);
    }

    #[test]
    fn shell_words_quote_everything() {
        let a = ["a b".to_string(), "it's".to_string()];
        assert_eq!(shell_words(&a), r"'a b' 'it'\''s'");
    }
}
