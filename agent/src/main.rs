//! The `modelmeter` binary: the command line only. `run` starts the agent (built in `app`),
//! `doctor` reports what this machine allows.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use modelmeter::{
    app::{self, RunError},
    config::{Config, LogFormat},
    doctor,
};

#[derive(Debug, Parser)]
#[command(name = "modelmeter", version, about = "Attributes CPU, memory and latency to pods and the models they serve")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: load the probes, collect, serve /metrics.
    Run {
        /// YAML config file; MODELMETER_* environment variables override its fields.
        #[arg(long, env = "MODELMETER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the running agent's attribution (from /api/v1/snapshot): per model, pod and container.
    Snapshot {
        /// The agent's address.
        #[arg(long, default_value = modelmeter::cli::DEFAULT_AGENT, env = "MODELMETER_AGENT")]
        agent: String,
        /// Print the JSON the agent serves (schema: agent/snapshot.schema.json).
        #[arg(long, conflicts_with = "table")]
        json: bool,
        /// Print a table (the default).
        #[arg(long)]
        table: bool,
    },
    /// A live table of the running agent's attribution: models, their pods and containers.
    Top {
        /// The agent's address.
        #[arg(long, default_value = modelmeter::cli::DEFAULT_AGENT, env = "MODELMETER_AGENT")]
        agent: String,
    },
    /// Report what this machine allows: kernel, BTF, eBPF program types, cgroups, privileges, NVML.
    Doctor {
        #[arg(long, env = "MODELMETER_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for a bad config or a missing privilege.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `snapshot` talks to a running agent and needs no config; the others load it first.
    let (path, doctor_json) = match cli.command {
        Command::Snapshot { agent, json, .. } => return snapshot(&agent, json),
        Command::Top { agent } => return top(&agent),
        Command::Run { config } => (config, None),
        Command::Doctor { config, json } => (config, Some(json)),
    };
    let config = match Config::load(path.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, &anyhow::Error::new(e)),
    };
    match doctor_json {
        Some(json) => {
            let checks = doctor::run(&config);
            if json {
                println!("{}", serde_json::to_string_pretty(&checks).unwrap_or_default());
            } else {
                print!("{}", doctor::table(&checks));
            }
            // Non-zero when the agent could not do its main job here, so scripts and init
            // containers can gate on it; a degraded feature alone does not fail.
            if doctor::verdict(&checks).can_run() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        None => run(config),
    }
}

fn snapshot(agent: &str, json: bool) -> ExitCode {
    match modelmeter::cli::fetch(agent) {
        Ok(view) if json => {
            println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(view) => {
            print!("{}", modelmeter::cli::table(&view));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("modelmeter: {message}");
            ExitCode::from(1)
        }
    }
}

fn top(agent: &str) -> ExitCode {
    match modelmeter::top::run(agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("modelmeter: {message}");
            ExitCode::from(1)
        }
    }
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("modelmeter: {error:#}");
    ExitCode::from(code)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The configured filter, with the Kubernetes client's own failure logs silenced: the pod watch
/// reports every failure itself, once per outage and with the fix, and the client would log each
/// retry at warn/error. A filter that names a `kube` target decides for itself.
fn log_filter(level: &str) -> String {
    if level.contains("kube") {
        level.to_owned()
    } else {
        format!("{level},kube_runtime::watcher=error,kube_client::client::builder=off")
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config);
    match app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Usage(e)) => fail(EXIT_USAGE, &e),
        Err(RunError::Failed(e)) => fail(1, &e),
    }
}
