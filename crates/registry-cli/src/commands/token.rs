//! `registry token`: the built-in token service's signing keys, and scoped tokens for machines
//! (CI): created with the scopes they may be granted, listed, revoked.

use std::path::Path;

use clap::Subcommand;

use super::run;
use crate::config::parse_duration;
use crate::instance::{self, Instance};
use crate::manage::{self, tokens};

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create the instance's signing key (tokens/signing-key.pem, 0600) and turn token
    /// authentication on (auth.mode = "token").
    Init {
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
        /// Replace an existing key (every token it signed stops working at once; prefer
        /// rotate-key).
        #[arg(long)]
        force: bool,
    },
    /// A new signing key; the current one keeps verifying the tokens it signed until they
    /// expire. A running registry picks the new key up within seconds.
    RotateKey {
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
    /// Create a scoped token: a name and a secret (printed once) that log in like a user and
    /// are granted no more than the scopes.
    Create {
        /// Its login name (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// What it may be granted: repository:PATTERN:ACTIONS (actions pull, push, delete or
        /// *; * in a pattern matches within one path segment, ** across them) or
        /// registry:catalog:*. Repeatable.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// How long it is valid (90d, 12h…), or "never".
        #[arg(long, default_value = "90d")]
        expires: String,
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
    /// The instance's scoped tokens (never their secrets).
    List {
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
    /// Revoke a scoped token: no new access tokens at once; those already issued expire
    /// within their lifetime (auth.token.lifetime).
    Revoke {
        name: String,
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
}

/// `registry token …`.
pub(crate) fn token(home: &Path, c: TokenCommand) -> anyhow::Result<()> {
    match c {
        TokenCommand::Init { instance, force } => {
            let i = Instance::open(home, &instance)?;
            let dir = tokens::key_dir(&i)?;
            let kid = tokens::init_key(&dir, force)?;
            println!("created signing key {kid} in {}", dir.display());
            if i.raw()?.auth.mode.as_deref() != Some("token") {
                manage::reconfigure(&i, &["auth_mode=token".to_owned()])?;
                println!("instance {instance:?} now takes tokens (auth.mode = \"token\"); a reload applies it: `registry reconfigure --reload`");
            }
            print_realm(&i)
        }
        TokenCommand::RotateKey { instance } => {
            let i = Instance::open(home, &instance)?;
            let (old, new) = tokens::rotate_key(&tokens::key_dir(&i)?)?;
            println!("signing with {new} now; {old} verifies its tokens until they expire");
            Ok(())
        }
        TokenCommand::Create {
            name,
            scopes,
            expires,
            instance,
        } => {
            let i = Instance::open(home, &instance)?;
            let settings = i.settings()?;
            let expires = match expires.as_str() {
                "never" => None,
                text => Some(
                    parse_duration(text)
                        .map_err(|e| anyhow::anyhow!("--expires {text:?}: {e} (or \"never\")"))?,
                ),
            };
            let new = tokens::NewToken {
                name: name.clone(),
                scopes,
                expires,
            };
            let secret = run(async {
                let records = tokens::records(&settings)?;
                tokens::create(records.as_ref(), &new).await
            })?;
            println!("created token {name:?}; its secret (shown only now):");
            println!("{secret}");
            let host = settings
                .hostname
                .clone()
                .unwrap_or_else(|| settings.listen.to_string());
            println!(
                "log in with: echo \"$SECRET\" | docker login {host} -u {name} --password-stdin"
            );
            Ok(())
        }
        TokenCommand::List { instance } => {
            let settings = Instance::open(home, &instance)?.settings()?;
            let listed = run(async {
                let records = tokens::records(&settings)?;
                tokens::list(records.as_ref()).await
            })?;
            print!("{listed}");
            Ok(())
        }
        TokenCommand::Revoke { name, instance } => {
            let settings = Instance::open(home, &instance)?.settings()?;
            let removed = run(async { Ok(tokens::records(&settings)?.remove(&name).await?) })?;
            if !removed {
                anyhow::bail!("instance {instance:?} has no token named {name:?}");
            }
            println!("revoked token {name:?}");
            Ok(())
        }
    }
}

fn print_realm(i: &Instance) -> anyhow::Result<()> {
    if let Some(t) = &i.settings()?.guard.token {
        println!("clients get tokens at {}", t.realm);
    }
    Ok(())
}
