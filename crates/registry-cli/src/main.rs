//! The `registry` binary: parses the command line and runs a subcommand.

mod config;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A fast, self-contained OCI container image registry.
#[derive(Parser)]
#[command(name = "registry", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    ///
    /// Examples:
    ///   registry serve                                  (./data on http://127.0.0.1:5000)
    ///   registry serve --listen 0.0.0.0:5000 --storage /srv/registry
    ///   registry serve --config /etc/registry/registry.toml
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML configuration file; flags given here override it.
    #[arg(long, env = "REGISTRY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<String>,
    /// Storage: a directory, a file:// URL, or memory:// [default: ./data].
    #[arg(long)]
    storage: Option<String>,
    /// Refuse DELETE of manifests, tags and blobs (405 UNSUPPORTED).
    #[arg(long)]
    no_delete: bool,
    /// Purge upload sessions idle for longer than this (e.g. 30m, 24h) [default: 24h].
    #[arg(long)]
    upload_max_age: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve_command(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => config::RawConfig::load(path)?,
        None => config::RawConfig::default(),
    };
    if args.listen.is_some() {
        raw.server.listen = args.listen;
    }
    if args.storage.is_some() {
        raw.storage.url = args.storage;
    }
    if args.no_delete {
        raw.api.delete = Some(false);
    }
    if args.upload_max_age.is_some() {
        raw.uploads.max_age = args.upload_max_age;
    }
    let settings = raw.validate()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve::serve(settings))
}
