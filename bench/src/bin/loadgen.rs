//! `loadgen`: TCP connection churn over loopback; prints one JSON line with
//! what it did (`bench::loadgen::Report`).

use std::{process::ExitCode, time::Duration};

use std::io::Read as _;

use bench::loadgen::{self, Mode, Plan};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Open and close TCP connections over loopback as fast as allowed (or at --rate)"
)]
struct Args {
    /// Second octet of the loopback /16 used (servers 127.N.0.x, sources 127.N.1.x).
    #[arg(long, default_value_t = 240)]
    net: u8,
    #[arg(long, default_value_t = 4)]
    servers: u8,
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Listening ports per server address and thread.
    #[arg(long, default_value_t = 4)]
    ports: u16,
    /// First listening port (default: ports the kernel picks).
    #[arg(long)]
    port_base: Option<u16>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to run (fractions allowed).
    #[arg(long)]
    seconds: Option<f64>,
    /// Connections to make.
    #[arg(long)]
    count: Option<u64>,
    /// Connect to ports nobody listens on (refused: two transitions each).
    #[arg(long, conflicts_with = "hold")]
    refused: bool,
    /// Open --count connections, print `{"held": N, ...}`, and keep them
    /// open until standard input closes.
    #[arg(long, requires = "count")]
    hold: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let plan = Plan {
        mode: if a.refused {
            Mode::Refused
        } else {
            Mode::Churn
        },
        net: a.net,
        servers: a.servers,
        sources: a.sources,
        ports: a.ports,
        port_base: a.port_base,
        threads: a.threads,
        rate: a.rate,
        duration: a.seconds.map(Duration::from_secs_f64),
        count: a.count,
    };
    if a.hold {
        return match loadgen::hold(&plan) {
            Ok(h) => {
                println!(
                    "{}",
                    serde_json::json!({"held": h.connections(), "elapsed_s": h.elapsed_s})
                );
                // Wait for the caller to close our stdin, then close everything.
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
                drop(h);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match loadgen::run(&plan) {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("report serializes"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
