use std::process::ExitCode;

use clap::Parser;
use tracer::cli::{Cli, Command, EventsArgs};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let command = Cli::parse()
        .command
        .unwrap_or_else(|| Command::Events(EventsArgs::default_cli()));
    let result = match command {
        Command::Completions { shell } => {
            tracer::manual::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir } => tracer::manual::write_man_pages(&out_dir)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("writing man pages to {}: {e}", out_dir.display())),
        command => trace(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tracing subcommands, on a single-threaded tokio runtime.
fn trace(command: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))?;
    let result = rt.block_on(async {
        match command {
            Command::Events(a) => tracer::run::events(&a).await,
            Command::Summary(a) => tracer::run::summary(&a).await,
            Command::Serve(a) => tracer::export::serve::serve(&a).await,
            Command::Check(a) => tracer::run::check(&a),
            Command::Top(a) => tracer::top::run(&a).await,
            Command::Record(a) => tracer::record::run::record(&a).await,
            Command::Report(a) => tracer::record::run::report(&a),
            Command::Completions { .. } | Command::Man { .. } => Ok(()),
        }
    });
    // Do not wait for a scrape still running on the blocking pool: the
    // process is done, and its report (if any) is written.
    rt.shutdown_background();
    result
}
