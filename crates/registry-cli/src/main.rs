//! The `registry` binary: parses the command line and runs a subcommand.

mod config;
mod listen;
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
    ///   registry serve --htpasswd ./htpasswd --tls-cert cert.pem --tls-key key.pem
    ///   registry serve --tls-cert cert.pem --tls-key key.pem --client-ca clients.pem \
    ///                  --client-names '*.clients.example.com' --allow-ip 10.0.0.0/8
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
    /// Require HTTP Basic logins from this htpasswd file (bcrypt, $apr1$, {SHA}, $5$, $6$).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify client certificates against this PEM CA bundle (required unless --client-auth optional).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Whether client certificates are "required" or "optional" [default: required].
    #[arg(long, value_name = "MODE")]
    client_auth: Option<String>,
    /// Authorized client certificate names, comma-separated; `*` stands for one DNS label.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    client_names: Option<Vec<String>>,
    /// Only these addresses may connect (CIDRs, comma-separated) [default: all].
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    allow_ip: Option<Vec<String>>,
    /// Believe Forwarded / X-Forwarded-For from these proxies (CIDRs, comma-separated).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    trusted_proxies: Option<Vec<String>>,
    /// Let anyone pull without credentials (pushes and deletes still need an identity).
    #[arg(long)]
    public_read: bool,
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
    if args.htpasswd.is_some() {
        raw.auth.htpasswd = args.htpasswd;
    }
    if args.tls_cert.is_some() {
        raw.tls.cert = args.tls_cert;
        raw.tls.key = args.tls_key;
    }
    if args.client_ca.is_some() {
        raw.tls.client_ca = args.client_ca;
    }
    if args.client_auth.is_some() {
        raw.tls.client_auth = args.client_auth;
    }
    if args.client_names.is_some() {
        raw.tls.client_names = args.client_names;
    }
    if args.allow_ip.is_some() {
        raw.network.allow = args.allow_ip;
    }
    if args.trusted_proxies.is_some() {
        raw.network.trusted_proxies = args.trusted_proxies;
    }
    if args.public_read {
        raw.auth.public_read = Some(true);
    }
    let settings = raw.validate()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve::serve(settings))
}
