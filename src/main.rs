use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ucgate::auth::SharedToken;
use ucgate::config::Config;
use ucgate::gateway::Gateway;
use ucgate::{server, telemetry};

/// Exit code for a configuration that cannot be used (as sysexits' EX_USAGE family, and what
/// init systems treat as "do not restart in a loop").
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "ucgate", version, about = "Authentication sidecar for XiVO's HTTP APIs")]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, env = "UCGATE_CONFIG", default_value = "/etc/ucgate/ucgate.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration, find the shared token, print the resolved routes.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, shared) = match load(&cli.config) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("ucgate: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print_config(&config, &shared);
            ExitCode::SUCCESS
        }
        Command::Run => run(config, shared),
    }
}

fn load(path: &std::path::Path) -> Result<(Config, SharedToken), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let shared = SharedToken::load(&config.shared_token)
        .map_err(|e| format!("{}: shared_token: {e}", config.file.display()))?;
    Ok((config, shared))
}

fn print_config(config: &Config, shared: &SharedToken) {
    println!("configuration {} is valid", config.file.display());
    let listen: Vec<String> = config.server.listen.iter().map(ToString::to_string).collect();
    println!("listen: {}", listen.join(", "));
    println!("shared token: from {}", shared.source());
    println!("routes:");
    for r in &config.routes {
        println!(
            "  {:<16} {:<24} -> {:<28} accept={:<9} upstream_auth={:<6} timeout={}{}",
            r.name,
            r.prefix,
            r.upstream.to_string(),
            r.accept.to_string(),
            format!("{:?}", r.upstream_auth).to_lowercase(),
            humantime::format_duration(r.timeout),
            if r.websocket { " websocket" } else { "" },
        );
    }
}

fn run(config: Config, shared: SharedToken) -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.server.workers > 0 {
        runtime.worker_threads(config.server.workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ucgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        telemetry::init(config.server.log_format);
        let listeners = match server::bind(&config.server.listen).await {
            Ok(listeners) => listeners,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            config = %config.file.display(),
            routes = config.routes.len(),
            shared_token = shared.source(),
            "ucgate starting"
        );
        let server_config = config.server.clone();
        let gateway = Gateway::new(config, shared);
        server::serve(listeners, gateway, &server_config, server::shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}
