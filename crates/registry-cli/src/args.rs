//! The command line: the commands and their help. Each command's own arguments are defined
//! beside the code that runs it (`commands`, `wizard`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{admin, remote, serve, storage, token};
use crate::wizard;

/// A fast, self-contained OCI container image registry.
#[derive(Parser)]
#[command(name = "registry", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Where instances live [default: /etc/registry for root, else ~/.config/registry].
    #[arg(long, global = true, env = "REGISTRY_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Serve(serve::ServeArgs),
    /// Set up an instance interactively: domain, authorization, storage, anonymous pull, IP
    /// allowlist, TLS. Re-running shows the current values as defaults; every question has a
    /// flag, and --non-interactive takes the flags alone.
    ///
    /// Examples:
    ///   registry config
    ///   registry config --instance team-b
    ///   registry config --non-interactive --domain registry.example.com --auth basic \
    ///       --user ann --tls ca --storage data --public-read false
    ///   registry config --non-interactive --domain r.example.com --auth mtls --client-ca create \
    ///       --client-names '*.ci.example.com' --tls ca --storage s3://bucket/prefix
    #[command(verbatim_doc_comment)]
    Config(Box<wizard::ConfigArgs>),
    /// Create, list, show or remove instances.
    ///
    /// Examples:
    ///   registry instance create default --hostname registry.example.com --listen 0.0.0.0:443
    ///   registry instance create team-b --hostname b.example.com --storage s3://bucket/team-b
    ///   registry instance list
    ///   registry instance show default
    ///   registry instance remove team-b
    #[command(verbatim_doc_comment, subcommand)]
    Instance(admin::InstanceCommand),
    /// Add, remove or list an instance's users, or change a password (HTTP Basic, bcrypt).
    ///
    /// Examples:
    ///   registry user add ann                     (prints a generated password once)
    ///   echo "$PASS" | registry user add ci --password-stdin --instance team-b
    ///   registry user passwd ann --password-stdin
    ///   registry user list
    ///   registry user remove ann
    #[command(verbatim_doc_comment, subcommand)]
    User(admin::UserCommand),
    /// Change an instance's settings: KEY=VALUE, validated as a whole before anything is written.
    ///
    /// An empty value removes a setting (its default applies). Lists are comma-separated.
    ///
    /// Examples:
    ///   registry reconfigure ip_allowlist=192.168.1.0/24,10.13.13.0/24
    ///   registry reconfigure --instance team-b public_read=true listen=0.0.0.0:443
    ///   registry reconfigure client_ca=tls/ca.pem client_names='*.ci.example.com'
    ///   registry reconfigure ip_allowlist=                (back to: everyone)
    #[command(verbatim_doc_comment, after_help = admin::reconfigure_help())]
    Reconfigure(admin::ReconfigureArgs),
    /// A small CA per instance: server and client certificates for TLS and mutual TLS.
    ///
    /// Examples:
    ///   registry cert init-ca
    ///   registry cert server registry.example.com      (and configures the instance's TLS)
    ///   registry cert client ci.example.com --out /etc/docker/certs.d/registry.example.com
    #[command(verbatim_doc_comment, subcommand)]
    Cert(admin::CertCommand),
    /// Token authentication (OAuth2): the instance's signing keys, and scoped tokens for CI
    /// that can push one repository and nothing else.
    ///
    /// Examples:
    ///   registry token init                       (a signing key; auth.mode = "token")
    ///   registry token create --name ci-app --scope 'repository:app/*:pull,push' --expires 90d
    ///   registry token list
    ///   registry token revoke ci-app
    ///   registry token rotate-key
    #[command(verbatim_doc_comment, subcommand)]
    Token(token::TokenCommand),
    /// Log in to a registry: check the credentials, then store them in Docker's config.json.
    ///
    /// The password comes from --password-stdin, else from passwords.json (exported by
    /// `registry config`) for an instance with this host name, else from a prompt.
    ///
    /// Examples:
    ///   registry login registry.example.com
    ///   echo "$PASS" | registry login registry.example.com --username ci --password-stdin
    #[command(verbatim_doc_comment)]
    Login(remote::LoginArgs),
    /// Print every repository:tag of a registry (credentials from Docker's config.json).
    ///
    /// Example:
    ///   registry list-tags registry.example.com
    #[command(verbatim_doc_comment)]
    ListTags(remote::ListTagsArgs),
    /// Delete images by digest: pick them interactively and confirm, or name them with --yes.
    ///
    /// Deleting by digest removes every tag of that manifest. Unreferenced layers stay stored
    /// until garbage collection.
    ///
    /// Examples:
    ///   registry delete-tags registry.example.com
    ///   registry delete-tags registry.example.com --yes app:old tools/builder:1.2
    #[command(verbatim_doc_comment)]
    DeleteTags(remote::DeleteTagsArgs),
    /// Install a systemd service running `registry serve` for every instance, as a dedicated
    /// system user with sandboxing (writes only the config home and storage directories).
    ///
    /// Examples:
    ///   registry install --dry-run        (print the unit and the commands)
    ///   sudo registry install
    #[command(verbatim_doc_comment)]
    Install(admin::InstallArgs),
    /// Stop and remove the systemd service (refused while a protected instance exists).
    Uninstall(admin::UninstallArgs),
    /// Collect garbage while the registry serves: delete manifests, blob links and blobs that
    /// nothing reachable needs, and abandoned upload sessions. Safe with pushes in flight, on
    /// any number of nodes (see registry_core's gc module for the protocol).
    ///
    /// Examples:
    ///   registry gc --dry-run                     (what would go, from the default instance)
    ///   registry gc --delete-untagged --grace-period 30m
    ///   registry gc --storage s3://bucket/prefix
    #[command(verbatim_doc_comment)]
    Gc(storage::GcArgs),
    /// Verify storage: re-hash every blob, check every manifest's references and every tag;
    /// report each problem with its key. --repair moves corrupt blobs and manifests aside
    /// (lost+found/) and drops links and tags that lead nowhere, so clients push them again.
    ///
    /// Exits 1 when problems were found and not repaired.
    ///
    /// Examples:
    ///   registry fsck                          (the default instance)
    ///   registry fsck --instance team-b --repair
    ///   registry fsck --storage /srv/registry
    ///   registry fsck --storage s3://bucket/prefix
    #[command(verbatim_doc_comment)]
    Fsck(storage::FsckArgs),
    /// Validate every instance and print what would be served (never secrets).
    ///
    /// Example:
    ///   registry check
    #[command(verbatim_doc_comment)]
    Check,
}
