//! `tracer serve`: the Prometheus exporter's HTTP side (hyper). Each scrape
//! reads the kernel maps and sock_diag afresh; nothing is cached.

use std::{convert::Infallible, sync::Arc};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{body::Bytes, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

use crate::{
    cli::ServeArgs,
    export::{self, LiveCollector, Scrape, Slots},
    run::stop_signal,
    SummaryOptions, Tracer,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the kernel records BPF run-time statistics right now.
fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Bind first: a busy address fails before anything is loaded.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let tracer = Tracer::start(args.filter.spec()?, false, 4096)?;
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
    let held = _stats.is_some();
    let tracer = Arc::new(tracer);
    let opts = SummaryOptions {
        top: args.top_peers as usize,
        close_wait_threshold: args.close_wait_age,
        ..Default::default()
    };
    let t = tracer.clone();
    let collector = LiveCollector {
        scrape: Box::new(move || {
            let snap = t.snapshot()?;
            let summary = t.summary_of(&snap, &opts)?;
            Ok(Scrape {
                snap,
                summary,
                run_stats: t.probe.run_stats()?,
                stats_enabled: held || bpf_stats_enabled(),
            })
        }),
        slots: std::sync::Mutex::new(Slots::new(args.top_peers as usize)),
    };
    let registry = Arc::new(export::registry(collector));
    eprintln!(
        "Serving Prometheus metrics on http://{}/metrics ({}). Ctrl-C to stop.",
        listener.local_addr()?,
        tracer.filter().describe()
    );
    let stop = stop_signal(args.duration);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let registry = registry.clone();
                        async move { Ok::<_, Infallible>(respond(&registry, &req)) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        log::debug!("HTTP connection: {e}");
                    }
                });
            }
        }
    }
    Ok(())
}

fn respond<B>(registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    match req.uri().path() {
        "/metrics" => {
            let om = match export::openmetrics(registry) {
                Ok(t) => t,
                Err(_) => {
                    return reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "reading the kernel maps failed; see the exporter's log\n".into(),
                    )
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
