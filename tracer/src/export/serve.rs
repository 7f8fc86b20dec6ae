//! `tracer serve`: the Prometheus exporter's HTTP side (hyper). Each scrape
//! reads the kernel maps and sock_diag afresh; nothing is cached between
//! scrapes. The scrape runs on tokio's blocking pool, one at a time:
//! requests that arrive while one is computing share its result, so the
//! runtime thread only accepts connections and parses requests, and twenty
//! scrapers cost one scrape. With `--web.config.file` (webconfig.rs) it
//! serves TLS (rustls) and asks for basic auth.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{self, HeaderName, HeaderValue},
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{watch, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use crate::{
    cli::ServeArgs,
    export::webconfig::{self, Auth, WebConfig},
    export::{self, LiveCollector, Scrape, Slots},
    host::privs,
    run::{drop_privileges, StopSignals},
    SummaryOptions, Tracer,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client must send a request's headers within this long of connecting or
/// of its previous response, else its connection is closed: silent clients
/// and idle keep-alive connections cannot pile up. Prometheus reconnects at
/// its next scrape.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's accept queue. With
/// `HEADER_TIMEOUT`, idle ones free their slot within 10 s.
pub const MAX_CONNECTIONS: usize = 512;

/// Whether the kernel records BPF run-time statistics right now.
fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// The OpenMetrics text of one scrape, or why it failed.
type Rendered = Result<String, String>;

/// One scrape computing at a time; concurrent requests share its result.
pub struct SingleFlight {
    compute: Arc<dyn Fn() -> Rendered + Send + Sync>,
    running: Mutex<Option<watch::Receiver<Option<Arc<Rendered>>>>>,
}

impl SingleFlight {
    pub fn new(compute: impl Fn() -> Rendered + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(SingleFlight {
            compute: Arc::new(compute),
            running: Mutex::new(None),
        })
    }

    /// The result of the scrape running now, or of a new one. The scrape
    /// runs on the blocking pool in its own task, so a client that goes away
    /// does not cancel it for the others.
    pub async fn get(self: &Arc<Self>) -> Arc<Rendered> {
        let mut rx = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match &*running {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *running = Some(rx.clone());
                    let this = self.clone();
                    tokio::spawn(async move {
                        let compute = this.compute.clone();
                        let r = tokio::task::spawn_blocking(move || compute())
                            .await
                            .unwrap_or_else(|e| Err(format!("scrape panicked: {e}")));
                        // Requests from now on start a fresh scrape.
                        *this.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        let _ = tx.send(Some(Arc::new(r)));
                    });
                    rx
                }
            }
        };
        let got = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for Some"),
            Err(_) => Arc::new(Err("scrape task ended without a result".into())),
        };
        got
    }
}

/// The scrape: kernel maps, sock_diag and run statistics, encoded.
fn scraper(tracer: Arc<Tracer>, args: &ServeArgs, stats_held: bool) -> Arc<SingleFlight> {
    let opts = SummaryOptions {
        top: args.top_peers as usize,
        close_wait_threshold: args.close_wait_age,
        // The metrics need no process names or cgroup paths.
        owners: false,
        ..Default::default()
    };
    let collector = LiveCollector {
        scrape: Box::new(move || {
            let snap = tracer.snapshot()?;
            let summary = tracer.summary_of(&snap, &opts)?;
            Ok(Scrape {
                snap,
                summary,
                run_stats: tracer.probe.run_stats()?,
                stats_enabled: stats_held || bpf_stats_enabled(),
            })
        }),
        slots: Mutex::new(Slots::new(args.top_peers as usize)),
    };
    let registry: Registry = export::registry(collector);
    SingleFlight::new(move || {
        export::openmetrics(&registry)
            .map_err(|_| "reading the kernel maps failed; see the exporter's log".to_string())
    })
}

/// What every connection shares: the scrape, and the web configuration's
/// basic auth and extra headers.
struct Site {
    flight: Arc<SingleFlight>,
    auth: Arc<Auth>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    // A bad web configuration fails before anything is bound or attached.
    let web = match &args.web_config_file {
        Some(path) => webconfig::load(path)?,
        None => WebConfig::default(),
    };
    // Bind first: a busy address fails before anything is loaded.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let tracer = Tracer::aggregating(&args.filter)?;
    // Run-time statistics for the cost metrics, only when asked: they time
    // every BPF program on the host (the benchmarks measured the exporter's
    // churn cost with them on). Otherwise they count while
    // kernel.bpf_stats_enabled=1.
    let _stats = if args.bpf_stats {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
                anyhow::anyhow!(
                    "--bpf-stats: enabling BPF run-time statistics (needs CAP_SYS_ADMIN): {e}"
                )
            })?,
        )
    } else {
        None
    };
    drop_privileges(&tracer, privs::Mode::Serve)?;
    let tracer = Arc::new(tracer);
    let describe = tracer.filter().describe();
    let flight = scraper(tracer, args, _stats.is_some());
    let tls = web.tls.map(TlsAcceptor::from);
    let auth = Auth::new(web.users);
    eprintln!(
        "Serving Prometheus metrics on {}://{}/metrics ({describe}{}). Ctrl-C to stop.",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        if auth.enabled() { "; basic auth" } else { "" },
    );
    let site = Arc::new(Site {
        flight,
        auth,
        headers: web.headers,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = signals.wait(args.duration);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            conn = listener.accept() => match conn {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("accept: {e}");
                    continue;
                }
            },
        };
        let (site, tls) = (site.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, site).await,
                Some(tls) => {
                    if let Some(s) = handshake(&tls, stream).await {
                        serve_connection(s, site).await;
                    }
                }
            }
            drop(permit);
        });
    }
    Ok(())
}

/// The answer to plain HTTP on the TLS port, as Go's servers give it.
const PLAIN_TO_TLS: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The TLS handshake, within `HEADER_TIMEOUT`. A client that speaks plain
/// HTTP (its first byte is a letter, never a TLS record's) gets a 400 that
/// says so rather than a bare close.
async fn handshake(tls: &TlsAcceptor, mut stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let work = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.ok()? == 1 && first[0].is_ascii_alphabetic() {
            // Read the request first: closing with it unread would reset
            // the connection before the client reads the answer.
            let mut req = vec![0u8; 8192];
            let mut got = 0;
            while got < req.len() && !req[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut req[got..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let _ = stream.write_all(PLAIN_TO_TLS).await;
            let _ = stream.shutdown().await;
            log::debug!("plain HTTP on the TLS port: answered 400");
            return None;
        }
        match tls.accept(stream).await {
            Ok(s) => Some(s),
            Err(e) => {
                log::debug!("TLS handshake: {e}");
                None
            }
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, work)
        .await
        .ok()
        .flatten()
}

/// One HTTP/1 connection, with the header/idle timeout.
async fn serve_connection<S>(stream: S, site: Arc<Site>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let site = site.clone();
        async move { Ok::<_, Infallible>(respond(&site, &req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        log::debug!("HTTP connection: {e}");
    }
}

fn reply(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Basic auth first (every path, as the toolkit does), then the route; the
/// configured headers on every answer.
async fn respond<B>(site: &Site, req: &Request<B>) -> Response<Full<Bytes>> {
    let authorization = req.headers().get(header::AUTHORIZATION);
    let mut resp = if site.auth.allows(authorization.map(|v| v.as_bytes())).await {
        route(&site.flight, req).await
    } else {
        log::debug!("{} {}: unauthorized", req.method(), req.uri().path());
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "Unauthorized\n".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tcp state tracer\""),
        );
        r
    };
    for (k, v) in &site.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

async fn route<B>(flight: &Arc<SingleFlight>, req: &Request<B>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let om = match &*flight.get().await {
                Ok(t) => t.clone(),
                Err(e) => {
                    log::error!("scrape failed: {e}");
                    return reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    );
                }
            };
            let wants_om = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if wants_om {
                reply(StatusCode::OK, OPENMETRICS, om)
            } else {
                reply(StatusCode::OK, CLASSIC, export::classic_text(&om))
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "tcp state tracer exporter: metrics at /metrics\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_share_one_scrape_and_later_ones_start_another() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let flight = SingleFlight::new(move || {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(200));
            Ok(format!("scrape {n}"))
        });
        let many: Vec<_> = (0..20)
            .map(|_| {
                let f = flight.clone();
                tokio::spawn(async move { f.get().await })
            })
            .collect();
        for h in many {
            assert_eq!(h.await.unwrap().as_deref(), Ok("scrape 1"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.get().await.as_deref(), Ok("scrape 2"));
    }
}
