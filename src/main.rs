use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use navigator::control::Action;
use navigator::control::client::{self, Target};
use navigator::{cli, config, explain, run};

/// Front server and process supervisor for multi-tenant Rails deployments.
#[derive(Parser)]
#[command(name = "navigator", version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Config file (TOML, or Navigator YAML with .yml/.yaml); default
    /// config/navigator.toml, then config/navigator.yml.
    #[arg(value_name = "CONFIG")]
    config: Option<PathBuf>,

    /// Config file, as an option.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "CONFIG",
        conflicts_with = "config"
    )]
    config_option: Option<PathBuf>,

    /// Send a signal to the running server: `reload` (SIGHUP).
    #[arg(short = 's', value_name = "SIGNAL", value_parser = ["reload"])]
    signal: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate a config, print a summary; exit 2 when invalid.
    Check { config: Option<PathBuf> },
    /// Print the TOML equivalent of a Navigator YAML config.
    Convert { file: PathBuf },
    /// Ask the running server to reload its config (SIGHUP to the pid in
    /// the pid file).
    Reload {
        /// Pid file of the running server; default: the config's
        /// server.pid_file, else /tmp/navigator.pid.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        config: Option<PathBuf>,
    },
    /// Explain how each path would be answered: the pipeline step, the
    /// rule, tenant or file, and what a replay would send.
    Routes {
        /// Config file (TOML or Navigator YAML).
        config: PathBuf,
        /// URL paths, each starting with `/`, optionally with a query.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        /// The request method.
        #[arg(
            short = 'X',
            long = "request",
            value_name = "METHOD",
            default_value = "GET"
        )]
        method: String,
        /// Treat the request as authenticated as this user (no password
        /// needed).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// A request header, `"Name: value"`; may be repeated.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The request body size in bytes, sent as Content-Length.
        #[arg(long, value_name = "BYTES")]
        content_length: Option<u64>,
        /// Explain for a client on a loopback address.
        #[arg(long)]
        loopback: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the tenants of the running server with their state.
    Tenants {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the control API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop, restart or prewarm one tenant of the running server.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Run the built-in demo tenant (a stand-in for a Rails app).
    #[command(hide = true)]
    DemoTenant {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// How the tenant commands find the running server.
#[derive(clap::Args)]
struct ServerArgs {
    /// The control API, e.g. http://127.0.0.1:3000/_navigator/; default:
    /// server.listen and server.status.path of the config, on loopback.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Config file naming the server's address; default
    /// config/navigator.toml, then config/navigator.yml.
    #[arg(short = 'c', long, value_name = "CONFIG")]
    config: Option<PathBuf>,
}

impl ServerArgs {
    fn target(self) -> Target {
        Target {
            url: self.url,
            config: self.config,
        }
    }
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Stop the tenant's process (stop hooks, SIGTERM, grace period); the
    /// next request starts it again.
    Stop {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replace the tenant's process by a new one without failing requests.
    Restart {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start the tenant now and keep it running, exempt from idle stops
    /// and eviction, until it is stopped with `tenant stop`.
    Prewarm {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Some(Command::Check { config }) => cli::check(&config.unwrap_or_else(config::default_path)),
        Some(Command::Convert { file }) => cli::convert(&file),
        Some(Command::Reload { pid_file, config }) => {
            cli::signal_reload(&pid_file_for(pid_file, config))
        }
        Some(Command::Routes {
            config,
            paths,
            method,
            user,
            headers,
            content_length,
            loopback,
            json,
        }) => explain::run(&explain::Options {
            config,
            paths,
            method,
            user,
            headers,
            content_length,
            loopback,
            json,
        }),
        Some(Command::Tenants { server, json }) => client::list_tenants(&server.target(), json),
        Some(Command::Tenant { command }) => {
            let (action, name, server) = match command {
                TenantCommand::Stop { name, server } => (Action::Stop, name, server),
                TenantCommand::Restart { name, server } => (Action::Restart, name, server),
                TenantCommand::Prewarm { name, server } => (Action::Prewarm, name, server),
            };
            client::tenant_action(&server.target(), action, &name)
        }
        Some(Command::DemoTenant { .. }) => navigator::demo::run_blocking(),
        None => {
            let config = args.config.or(args.config_option);
            if args.signal.is_some() {
                cli::signal_reload(&pid_file_for(None, config))
            } else {
                serve(config.unwrap_or_else(config::default_path))
            }
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn serve(config: PathBuf) -> i32 {
    // tokio reads this variable and panics on a value that is not a
    // positive number; refuse it with a message instead.
    if let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS") {
        let valid = value
            .to_str()
            .and_then(|text| text.parse::<usize>().ok())
            .is_some_and(|count| count > 0);
        if !valid {
            eprintln!("TOKIO_WORKER_THREADS={value:?} is not a positive number of threads");
            return 1;
        }
    }
    let started = navigator::workers::configured_count()
        .map_err(|message| message.to_string())
        .and_then(|count| {
            navigator::workers::start(count)
                .map_err(|error| format!("cannot start the connection workers: {error}"))
        });
    if let Err(message) = started {
        eprintln!("{message}");
        return 1;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return 1;
        }
    };
    runtime.block_on(run::run(config))
}

/// Picks the pid file named on the command line, else the one the config
/// names, else the default.
fn pid_file_for(explicit: Option<PathBuf>, config: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    let config = config.unwrap_or_else(config::default_path);
    config::load(&config)
        .map(|loaded| loaded.config.server.pid_file)
        .unwrap_or_else(|_| PathBuf::from("/tmp/navigator.pid"))
}
