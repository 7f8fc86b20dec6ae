use std::process::ExitCode;

use clap::Parser;
use tracer::cli::{Cli, Command, EventsArgs};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli
            .command
            .unwrap_or_else(|| Command::Events(EventsArgs::default_cli()))
        {
            Command::Events(a) => tracer::run::events(&a).await,
            Command::Summary(a) => tracer::run::summary(&a).await,
            Command::Serve(a) => tracer::serve::serve(&a).await,
            Command::Check(a) => tracer::run::check(&a),
            Command::Top(a) => tracer::top::run(&a).await,
            Command::Record(a) => tracer::record::run::record(&a).await,
            Command::Report(a) => tracer::record::run::report(&a),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
