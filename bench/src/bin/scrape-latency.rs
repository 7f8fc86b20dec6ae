//! `scrape-latency`: scrape an exporter's /metrics from N concurrent
//! clients (each a fresh connection per scrape, as Prometheus after an idle
//! close) while M other connections sit idle, sending nothing; print the
//! scrape latency percentiles as one JSON line, and how many of the idle
//! connections the exporter had closed by the end.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
#[command(name = "scrape-latency")]
struct Args {
    /// host:port of the exporter.
    addr: SocketAddr,
    /// Concurrent scrapers.
    #[arg(long, default_value_t = 20)]
    scrapers: usize,
    /// Scrapes per scraper.
    #[arg(long, default_value_t = 10)]
    scrapes: usize,
    /// Connections opened first and left silent for the whole run.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Keep running until at least this many seconds passed (the idle
    /// connections' fate is read at the end).
    #[arg(long, default_value_t = 0.0)]
    min_seconds: f64,
}

/// One GET /metrics on a new connection: (latency, body bytes).
fn scrape(addr: SocketAddr) -> std::io::Result<(Duration, usize)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answer: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        )));
    }
    Ok((start.elapsed(), body.len()))
}

/// Idle connections the peer has closed (a read returns 0 or an error).
fn closed_by_peer(idle: &[TcpStream]) -> usize {
    let mut n = 0;
    for mut s in idle {
        s.set_nonblocking(true).ok();
        let mut b = [0u8; 1];
        if !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            n += 1;
        }
    }
    n
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn main() -> ExitCode {
    let a = Args::parse();
    let start = Instant::now();
    let idle: Vec<TcpStream> = (0..a.idle)
        .filter_map(|_| TcpStream::connect(a.addr).ok())
        .collect();
    let opened_idle = idle.len();
    let workers: Vec<_> = (0..a.scrapers)
        .map(|_| {
            let (addr, n) = (a.addr, a.scrapes);
            std::thread::spawn(move || (0..n).map(|_| scrape(addr)).collect::<Vec<_>>())
        })
        .collect();
    let mut lat = Vec::new();
    let (mut errors, mut bytes) = (0usize, 0usize);
    for w in workers {
        for r in w.join().unwrap_or_default() {
            match r {
                Ok((d, b)) => {
                    lat.push(d);
                    bytes = bytes.max(b);
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("scrape: {e}");
                }
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    if let Some(rest) = Duration::from_secs_f64(a.min_seconds).checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    let idle_closed = closed_by_peer(&idle);
    if lat.is_empty() {
        eprintln!("no scrape succeeded");
        return ExitCode::FAILURE;
    }
    lat.sort();
    println!(
        "{}",
        serde_json::json!({
            "scrapers": a.scrapers,
            "scrapes": lat.len(),
            "errors": errors,
            "p50_ms": pct(&lat, 0.50),
            "p99_ms": pct(&lat, 0.99),
            "max_ms": pct(&lat, 1.0),
            "body_bytes": bytes,
            "scrape_wall_s": wall,
            "idle_opened": opened_idle,
            "idle_closed_by_exporter": idle_closed,
            "elapsed_s": start.elapsed().as_secs_f64(),
        })
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
