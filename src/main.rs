use std::path::PathBuf;
use std::process::ExitCode;

use std::io::BufRead;

use clap::{Parser, Subcommand};

use ucgate::config::Config;
use ucgate::{Gateway, State};

/// mimalloc: a proxy allocates and frees many small buffers per request, from one thread, which
/// glibc's allocator serves noticeably slower (measured with benches/load.sh).
#[global_allocator]
static ALLOCATOR: ucgate::Allocator = ucgate::Allocator;

/// Exit code for a configuration that cannot be used (as sysexits' EX_USAGE family, and what
/// init systems treat as "do not restart in a loop").
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "ucgate",
    version,
    about = "Authentication sidecar for XiVO's HTTP APIs"
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(
        long,
        short,
        env = "UCGATE_CONFIG",
        default_value = "/etc/ucgate/ucgate.toml",
        global = true
    )]
    config: PathBuf,
    /// Listen on these addresses instead of server.listen (comma-separated), e.g. in a container.
    #[arg(long, env = "UCGATE_LISTEN", value_delimiter = ',', global = true)]
    listen: Vec<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration, find the shared token, print the resolved routes.
    CheckConfig,
    /// Read a password on stdin, print its argon2id hash for the users file.
    HashPassword,
    /// Check PLAY_AUTH_TOKEN across the custom.env files of a XiVO install (never prints it).
    Doctor {
        /// Prefix of the XiVO paths (/etc/docker/{xivo,mds,compose}/custom.env).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The variable to check.
        #[arg(long, default_value = "PLAY_AUTH_TOKEN")]
        variable: String,
        /// Print a fresh strong token and exit.
        #[arg(long)]
        new_token: bool,
        /// More custom.env files, e.g. copied from the other servers of a multi-server install.
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ucgate::install_provider();
    let command = cli.command.unwrap_or(Command::Run);
    match command {
        Command::HashPassword => return hash_password(),
        Command::Doctor {
            new_token: true, ..
        } => {
            println!("{}", ucgate::new_token());
            return ExitCode::SUCCESS;
        }
        Command::Doctor {
            root,
            variable,
            files,
            ..
        } => {
            let out = &mut std::io::stdout();
            let healthy = ucgate::doctor(&root, &files, &variable, out)
                .and_then(|tokens| Ok(tokens & doctor_directory(&cli.config, out)?));
            return match healthy {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("ucgate: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Run | Command::CheckConfig => {}
    }
    let loaded = Config::load(&cli.config)
        .map_err(ucgate::LoadError::from)
        .and_then(State::load);
    let state = match loaded {
        Ok(state) => state,
        Err(message) => {
            eprintln!("ucgate: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(clash) = state.config().server.admin_clash(&cli.listen) {
        eprintln!("ucgate: {clash}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match command {
        Command::CheckConfig => {
            print_config(&state, &cli.listen);
            for warning in state.warnings() {
                eprintln!("ucgate: warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Command::Run => run(state, cli.listen),
        Command::HashPassword | Command::Doctor { .. } => unreachable!("handled above"),
    }
}

/// The directory part of `ucgate doctor`, when the configuration file exists.
fn doctor_directory(
    config: &std::path::Path,
    out: &mut impl std::io::Write,
) -> std::io::Result<bool> {
    if !config.exists() {
        writeln!(
            out,
            "  -  {}: no configuration here, the user directory is not checked",
            config.display()
        )?;
        return Ok(true);
    }
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            writeln!(out, "FAIL {e}")?;
            return Ok(false);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(ucgate::doctor_directory(&config, out))
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("ucgate: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("ucgate: empty password");
        return ExitCode::FAILURE;
    }
    match ucgate::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ucgate: cannot hash: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `run` would do with this configuration; `listen` is `--listen` (or `UCGATE_LISTEN`),
/// which replaces `server.listen` as it does for `run`.
fn print_config(state: &State, listen: &[std::net::SocketAddr]) {
    let config = state.config();
    println!("configuration {} is valid", config.file.display());
    let addresses = |list: &[std::net::SocketAddr]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if listen.is_empty() {
        println!("listen: {}", addresses(&config.server.listen));
    } else {
        println!(
            "listen: {} (--listen or UCGATE_LISTEN, instead of server.listen: {})",
            addresses(listen),
            addresses(&config.server.listen)
        );
    }
    if let Some(admin) = config.server.admin_listen {
        println!("admin_listen: {admin} (metrics, health; not on listen)");
    }
    let workers = config.server.worker_threads();
    println!(
        "workers: {workers}{}",
        match (workers, config.server.per_core_workers()) {
            (1, _) => "",
            (_, Some(_)) => ", thread per core",
            (_, None) => ", one work-stealing runtime",
        }
    );
    println!("shared token: from {}", state.shared_token_source());
    if let Some(cluster) = state.cluster() {
        println!("cluster: {cluster}");
    }
    if let (Some(tokens), Some(directory)) = (&config.tokens, state.directory()) {
        println!(
            "uc tokens: {}, ttl {}, {directory}",
            tokens.algorithm.name(),
            humantime::format_duration(tokens.ttl),
        );
    }
    if let Some(xuc) = &config.xuc {
        println!(
            "xuc: tokens checked at {}, check_cache {}, negative_cache {}, timeout {}, profiles from {}",
            xuc.url.as_str().trim_end_matches('/'),
            humantime::format_duration(xuc.check_cache),
            humantime::format_duration(xuc.negative_cache),
            humantime::format_duration(xuc.timeout),
            format!("{:?}", xuc.profiles_from).to_lowercase(),
        );
    }
    println!("routes:");
    for r in &config.routes {
        println!(
            "  {:<16} {:<24} -> {:<28} accept={:<9} upstream_auth={:<6} timeout={}{}{}{}",
            r.name,
            r.prefix,
            r.upstream.to_string(),
            r.accept.to_string(),
            format!("{:?}", r.upstream_auth).to_lowercase(),
            humantime::format_duration(r.timeout),
            if r.websocket { " websocket" } else { "" },
            if r.cors { " cors" } else { "" },
            if r.profiles.is_empty() {
                String::new()
            } else {
                format!(" profiles={}", r.profiles.join(","))
            },
        );
    }
}

fn run(state: State, listen: Vec<std::net::SocketAddr>) -> ExitCode {
    let server_config = state.config().server.clone();
    let listen = if listen.is_empty() {
        server_config.listen.clone()
    } else {
        listen
    };
    // One worker, or a runtime per worker thread (`server.thread_per_core`, started by
    // `serve`): this thread's runtime is current-thread, without the cross-thread machinery
    // (work stealing, atomic queues, a parked main thread).
    let per_core = server_config.per_core_workers().is_some();
    let mut runtime = if per_core || server_config.worker_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        // 0: tokio's own choice (the cores, or TOKIO_WORKER_THREADS).
        if server_config.workers != 0 {
            builder.worker_threads(server_config.workers);
        }
        builder
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ucgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        ucgate::init_logging(server_config.log_format);
        // Before the listeners are announced: a SIGHUP sent from then on reloads.
        let hup = ucgate::hangup();
        let admin = server_config.admin_listen.as_slice();
        let (listeners, admin) = match (ucgate::bind(&listen).await, ucgate::bind(admin).await) {
            (Ok(listeners), Ok(mut admin)) => (listeners, admin.pop()),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            config = %state.config().file.display(),
            routes = state.config().routes.len(),
            shared_token = state.shared_token_source(),
            uc_tokens = state.config().tokens.is_some(),
            directory = state.directory().as_deref().unwrap_or("none"),
            cluster = state.cluster().as_deref().unwrap_or("none"),
            "ucgate starting"
        );
        for warning in state.warnings() {
            tracing::warn!("{warning}");
        }
        let config_file = state.config().file.clone();
        let gateway = Gateway::new(state);
        gateway.start_background_tasks();
        tokio::spawn(ucgate::watch(gateway.clone(), config_file, hup));
        match ucgate::serve(
            listeners,
            admin,
            gateway,
            &server_config,
            ucgate::shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("cannot serve: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
