//! Command-line interface (clap). Raw flags here; `FilterSpec::validate`
//! checks what clap cannot.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::filter::{Family, FilterSpec};

/// The package version and the git commit it was built from ("unknown"
/// outside git): the same for every architecture (the man pages carry it).
pub const SOURCE_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRACER_GIT_COMMIT"),
    ")"
);

/// What `tracer --version` prints after the name: [`SOURCE_VERSION`] and the
/// target the binary was built for.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRACER_GIT_COMMIT"),
    ", ",
    env!("TRACER_TARGET"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version = VERSION,
    about = "Trace every TCP state transition in the kernel (eBPF): handshake latency, TIME_WAIT, resets",
    long_about = "Trace every TCP state transition in the kernel (eBPF tp_btf on \
                  sock:inet_sock_set_state). Without a subcommand, streams events.\n\
                  Needs root, or CAP_BPF and CAP_PERFMON.",
    after_long_help = "Exit status: 0 on success; 2 for a usage error; 1 for any other \
                       error (invalid filter, missing capabilities, no kernel BTF at \
                       /sys/kernel/btf/vmlinux, the kernel refused the program).\n\
                       Environment: RUST_LOG (e.g. RUST_LOG=info) sets the log level, \
                       default warn."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream one line per TCP state transition (the default).
    Events(EventsArgs),
    /// Aggregate in the kernel for --duration (or until Ctrl-C), then print a report.
    Summary(SummaryArgs),
    /// Run as a Prometheus exporter: /metrics, read from the kernel at each scrape.
    Serve(ServeArgs),
    /// Check that the kernel side loads here: verified instructions per
    /// mode and the stack of its deepest call chain, against the limits.
    Check(CheckArgs),
    /// Full-screen live view: host-wide rates and the busiest peers, ports,
    /// processes and cgroups, refreshed every --interval.
    Top(TopArgs),
    /// Write every event and periodic snapshots of the aggregates and the
    /// socket population to a file (format: docs/RECORDING.md).
    Record(RecordArgs),
    /// Rebuild the summary report from a recording (no root, no BPF).
    Report(ReportArgs),
    /// Print a shell completion script to stdout (e.g. `tracer completions bash`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (tracer.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// When to color text output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to emit ANSI colors on stdout.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stdout().is_terminal()
            }
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Refresh period.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one frame (after one --interval) as plain text and exit; also
    /// what to use when stdout is not a terminal.
    #[arg(long)]
    pub once: bool,
    /// Stop after this long (default: until q or Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Each CPU's event ring in KiB (power of two, ≥ 4): top reads events
    /// for the per-group handshake percentiles.
    #[arg(long, default_value_t = crate::DEFAULT_RING_KIB, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The file to write (replaced if it exists).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop cleanly (final snapshot, end record) once the file reaches this
    /// size, e.g. 100M, 2G (K, M, G are powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// How often to snapshot the aggregates and the socket population.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub snapshot_every: Duration,
    /// Each CPU's event ring in KiB (power of two, ≥ 4). Larger than the
    /// other modes' default: the recorder does more per event than printing it.
    #[arg(long, default_value_t = crate::RECORD_RING_KIB, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
    /// CLOSE_WAIT sockets older than this are recorded as leaks.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub close_wait_age: Duration,
    /// Port-pressure warning threshold recorded with the snapshots.
    #[arg(long, default_value_t = 50.0, value_parser = parse_pct, value_name = "PCT")]
    pub port_pressure_warn: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// A file written by `tracer record`.
    pub file: std::path::PathBuf,
    /// Print the report as JSON (the schema of `summary --json`).
    #[arg(long)]
    pub json: bool,
    /// Rows in each top-N table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// `100M`, `2G`, `4096`: bytes, K/M/G as powers of 1024.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 100M)"))?;
    match n.checked_mul(mult) {
        Some(v) if v >= 4096 => Ok(v),
        Some(_) => Err("the size must be at least 4096 bytes".into()),
        None => Err("size too large".into()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Address to serve /metrics on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub listen: std::net::SocketAddr,
    /// Peers with their own series at a time (the most active of the last
    /// scrapes; re-ranked at every scrape); all others are summed into
    /// peer="other". Also bounds the port-pressure destinations exported.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top_peers: u16,
    /// CLOSE_WAIT sockets older than this count as leaked.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub close_wait_age: Duration,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Turn on the kernel's BPF run-time statistics while serving (for the
    /// tcp_tracer_bpf_* cost metrics; needs CAP_SYS_ADMIN). Off by default:
    /// they time every BPF program on the host, not only ours.
    #[arg(long)]
    pub bpf_stats: bool,
    /// The Prometheus exporter-toolkit's web configuration file (as
    /// node_exporter takes it): TLS (tls_server_config), basic auth with
    /// bcrypt hashes (basic_auth_users), response headers
    /// (http_server_config.headers). Read once at start; a file that cannot
    /// be honoured fully stops the exporter before anything is attached.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<std::path::PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 10s, 2m, 1h)"))?;
    if d.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(d)
}

#[derive(Debug, Default, Clone, Args)]
pub struct FilterArgs {
    /// Only sockets owned by this process id (owner captured at connect/listen/close).
    #[arg(short = 'p', long)]
    pub pid: Option<u32>,
    /// Only sockets whose owner has this command name (exact, ≤ 15 bytes).
    #[arg(long)]
    pub comm: Option<String>,
    /// Only connections with this local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only connections with this local port.
    #[arg(short = 'L', long)]
    pub lport: Option<u16>,
    /// Only connections with this remote port.
    #[arg(short = 'D', long)]
    pub rport: Option<u16>,
    /// Only connections whose remote address is in this CIDR (e.g. 10.0.0.0/8, ::1/128).
    #[arg(long, value_name = "CIDR")]
    pub addr: Option<IpNet>,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Kernel BTF to read instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<std::path::PathBuf>,
    /// Only this network namespace: its inode (as `ls -l /proc/PID/ns/net`
    /// shows it), a /run/netns name, or pid:PID for that process's namespace.
    #[arg(long, value_name = "INODE|NAME|pid:PID")]
    pub netns: Option<crate::host::netns::Selector>,
}

impl FilterArgs {
    /// The filter, with `--netns` resolved to an inode (fails when the name
    /// or process does not exist, or its namespace cannot be read).
    pub fn spec(&self) -> anyhow::Result<FilterSpec> {
        let netns = match &self.netns {
            Some(sel) => Some(sel.resolve().map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(FilterSpec {
            netns,
            pid: self.pid,
            comm: self.comm.clone(),
            port: self.port,
            lport: self.lport,
            rport: self.rport,
            addr: self.addr,
            family: if self.ipv4 {
                Some(Family::Ipv4)
            } else if self.ipv6 {
                Some(Family::Ipv6)
            } else {
                None
            },
        })
    }
}

#[derive(Debug, Default, Clone, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// JSON lines instead of aligned text.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Each CPU's event ring in KiB (power of two, ≥ 4).
    #[arg(long, default_value_t = crate::DEFAULT_RING_KIB, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
    /// Replay the events of a recording (`tracer record`) instead of tracing
    /// (no root needed; the filters must not be given).
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
    /// Full date and time (RFC 3339, UTC) in the TIME column instead of the time of day.
    #[arg(short = 'T', long)]
    pub timestamps: bool,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

impl EventsArgs {
    /// What `tracer` with no subcommand runs: `tracer events` with clap's defaults.
    pub fn default_cli() -> Self {
        match Cli::try_parse_from(["tracer", "events"]).map(|c| c.command) {
            Ok(Some(Command::Events(a))) => a,
            _ => unreachable!("`tracer events` always parses"),
        }
    }
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4 || !v.is_power_of_two() || v > (1 << 20) {
        return Err("must be a power of two between 4 and 1048576".into());
    }
    Ok(v)
}

#[derive(Debug, Default, Clone, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// How long to aggregate (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Rows in each top-N table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the report as JSON (schema in README).
    #[arg(long)]
    pub json: bool,
    /// List CLOSE_WAIT sockets older than this as leaks (the application
    /// never called close()).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub close_wait_age: Duration,
    /// Warn when one destination (local addr → remote addr:port) holds this
    /// percentage of the ephemeral port range (TIME_WAIT + live sockets).
    #[arg(long, default_value_t = 50.0, value_parser = parse_pct, value_name = "PCT")]
    pub port_pressure_warn: f64,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

fn parse_pct(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err("expected a percentage in (0, 100]".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_filters_and_durations() {
        let c = Cli::try_parse_from([
            "tracer",
            "summary",
            "--duration",
            "2s",
            "--port",
            "80",
            "--addr",
            "10.0.0.0/8",
            "-4",
        ])
        .unwrap();
        let Some(Command::Summary(s)) = c.command else {
            panic!("summary")
        };
        assert_eq!(s.duration, Some(Duration::from_secs(2)));
        let f = s.filter.spec().unwrap();
        assert_eq!(f.port, Some(80));
        assert_eq!(f.family, Some(Family::Ipv4));
        assert_eq!(s.close_wait_age, Duration::from_secs(30));
        assert_eq!(s.port_pressure_warn, 50.0);
        let c = Cli::try_parse_from([
            "tracer",
            "summary",
            "--close-wait-age",
            "2s",
            "--port-pressure-warn",
            "0.5%",
        ])
        .unwrap();
        let Some(Command::Summary(s)) = c.command else {
            panic!("summary")
        };
        assert_eq!(s.close_wait_age, Duration::from_secs(2));
        assert_eq!(s.port_pressure_warn, 0.5);
    }

    #[test]
    fn netns_selectors_resolve() {
        let own = crate::host::netns::own().unwrap();
        for arg in [format!("pid:{}", std::process::id()), own.to_string()] {
            let c = Cli::try_parse_from(["tracer", "summary", "--netns", &arg]).unwrap();
            let Some(Command::Summary(s)) = c.command else {
                panic!("summary")
            };
            assert_eq!(s.filter.spec().unwrap().netns, Some(own), "{arg}");
        }
        // Parses, but names nothing: a clear error at resolution.
        let c = Cli::try_parse_from(["tracer", "events", "--netns", "netns-none-such"]).unwrap();
        let Some(Command::Events(e)) = c.command else {
            panic!("events")
        };
        let err = e.filter.spec().unwrap_err().to_string();
        assert!(err.contains("no such namespace"), "{err}");
    }

    #[test]
    fn rejects_bad_input() {
        for args in [
            &["tracer", "summary", "--duration", "0s"][..],
            &["tracer", "summary", "--duration", "soon"],
            &["tracer", "events", "--addr", "10.0.0.300/8"],
            &["tracer", "events", "-4", "-6"],
            &["tracer", "events", "--port", "70000"],
            &["tracer", "events", "--ring-kib", "3"],
            &["tracer", "--bogus"],
            &["tracer", "summary", "--port-pressure-warn", "0"],
            &["tracer", "summary", "--port-pressure-warn", "150"],
            &["tracer", "summary", "--close-wait-age", "0s"],
            &["tracer", "serve", "--listen", "localhost"],
            &["tracer", "serve", "--top-peers", "0"],
            &["tracer", "summary", "--netns", "pid:x"],
            &["tracer", "summary", "--netns", "../x"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} should fail");
        }
    }

    #[test]
    fn short_flags_color_and_the_new_commands() {
        let c = Cli::try_parse_from([
            "tracer", "events", "-p", "42", "-L", "80", "-D", "443", "-T", "--color", "never",
        ])
        .unwrap();
        let Some(Command::Events(e)) = c.command else {
            panic!("events")
        };
        let f = e.filter.spec().unwrap();
        assert_eq!((f.pid, f.lport, f.rport), (Some(42), Some(80), Some(443)));
        assert!(e.timestamps);
        assert_eq!(e.color, ColorChoice::Never);
        assert!(!ColorChoice::Never.enabled() && ColorChoice::Always.enabled());
        let c = Cli::try_parse_from([
            "tracer",
            "record",
            "-o",
            "x.rec",
            "--max-size",
            "100M",
            "-D",
            "5432",
        ])
        .unwrap();
        let Some(Command::Record(r)) = c.command else {
            panic!("record")
        };
        assert_eq!(r.max_size, Some(100 << 20));
        assert_eq!(r.output, std::path::PathBuf::from("x.rec"));
        assert_eq!(r.ring_kib, crate::RECORD_RING_KIB);
        let c = Cli::try_parse_from(["tracer", "top", "--interval", "2s", "--once", "-p", "1"])
            .unwrap();
        let Some(Command::Top(t)) = c.command else {
            panic!("top")
        };
        assert_eq!(
            (t.interval, t.once, t.filter.pid),
            (Duration::from_secs(2), true, Some(1))
        );
        let c = Cli::try_parse_from(["tracer", "report", "x.rec", "--json"]).unwrap();
        assert!(matches!(c.command, Some(Command::Report(r)) if r.json));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for bad in [
            &["tracer", "record"][..],
            &["tracer", "record", "-o", "x", "--max-size", "10"],
            &["tracer", "record", "-o", "x", "--max-size", "5T"],
            &["tracer", "top", "--interval", "0s"],
            &["tracer", "events", "--color", "sometimes"],
            &["tracer", "report"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} should fail");
        }
    }
}
