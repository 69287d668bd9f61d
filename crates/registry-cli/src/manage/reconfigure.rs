//! `registry reconfigure KEY=VALUE`: the keys it knows, each mapped to its place in
//! registry.toml; comments are kept, and the result is validated before it is written.

use anyhow::bail;
use toml_edit::value;

use crate::config::mirrors::{mirror_entry, remove_mirror, MIRROR_FIELDS};
use crate::config::parse_hostname;
use crate::instance::{array_entry, remove_array_entry, set_key, Instance};

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
    List,
}

/// The keys `reconfigure` knows: name, TOML table, TOML key, kind, what it is.
const KEYS: &[(&str, &str, &str, Kind, &str)] = &[
    (
        "hostname",
        "instance",
        "hostname",
        Kind::Text,
        "the host name clients use",
    ),
    (
        "protected",
        "instance",
        "protected",
        Kind::Bool,
        "refuse remove/uninstall without --force",
    ),
    (
        "listen",
        "server",
        "listen",
        Kind::Text,
        "IP:PORT to listen on",
    ),
    (
        "storage",
        "storage",
        "url",
        Kind::Text,
        "a directory or s3://bucket/prefix",
    ),
    (
        "s3_endpoint",
        "storage.s3",
        "endpoint",
        Kind::Text,
        "S3 endpoint URL",
    ),
    (
        "s3_region",
        "storage.s3",
        "region",
        Kind::Text,
        "S3 region (auto for R2)",
    ),
    (
        "s3_access_key_id",
        "storage.s3",
        "access_key_id",
        Kind::Text,
        "S3 access key id",
    ),
    (
        "s3_secret_access_key",
        "storage.s3",
        "secret_access_key",
        Kind::Text,
        "S3 secret key",
    ),
    (
        "s3_allow_http",
        "storage.s3",
        "allow_http",
        Kind::Bool,
        "plain HTTP to a remote S3",
    ),
    (
        "s3_virtual_hosted",
        "storage.s3",
        "virtual_hosted",
        Kind::Bool,
        "bucket.endpoint addressing",
    ),
    (
        "s3_redirect",
        "storage.s3",
        "redirect",
        Kind::Bool,
        "blob GETs redirect to S3",
    ),
    ("delete", "api", "delete", Kind::Bool, "allow DELETE"),
    (
        "upload_max_age",
        "uploads",
        "max_age",
        Kind::Text,
        "purge idle uploads after (24h)",
    ),
    (
        "metrics",
        "metrics",
        "enabled",
        Kind::Bool,
        "Prometheus metrics at /metrics",
    ),
    ("ui", "ui", "enabled", Kind::Bool, "web interface at /"),
    (
        "ui_admins",
        "ui",
        "admins",
        Kind::List,
        "who sees usage and starts gc in the web interface",
    ),
    (
        "ui_session_lifetime",
        "ui",
        "session_lifetime",
        Kind::Text,
        "web sign-in lasts (8h)",
    ),
    (
        "tls_cert",
        "tls",
        "cert",
        Kind::Text,
        "PEM certificate chain",
    ),
    ("tls_key", "tls", "key", Kind::Text, "PEM private key"),
    (
        "client_ca",
        "tls",
        "client_ca",
        Kind::Text,
        "CA of client certificates (mTLS)",
    ),
    (
        "client_auth",
        "tls",
        "client_auth",
        Kind::Text,
        "required or optional",
    ),
    (
        "client_names",
        "tls",
        "client_names",
        Kind::List,
        "authorized client names, * = one label",
    ),
    (
        "plain_listen",
        "tls",
        "plain_listen",
        Kind::Text,
        "also plain HTTP on IP:PORT",
    ),
    (
        "htpasswd",
        "auth",
        "htpasswd",
        Kind::Text,
        "htpasswd file of Basic users",
    ),
    ("realm", "auth", "realm", Kind::Text, "Basic realm"),
    (
        "auth_mode",
        "auth",
        "mode",
        Kind::Text,
        "basic, or token (OAuth2 Bearer tokens)",
    ),
    (
        "token_lifetime",
        "auth.token",
        "lifetime",
        Kind::Text,
        "access token lifetime (5m)",
    ),
    (
        "token_realm",
        "auth.token",
        "realm",
        Kind::Text,
        "where clients get tokens",
    ),
    (
        "token_service",
        "auth.token",
        "service",
        Kind::Text,
        "tokens' audience",
    ),
    (
        "token_issuer",
        "auth.token",
        "issuer",
        Kind::Text,
        "tokens' iss",
    ),
    (
        "token_rootcertbundle",
        "auth.token",
        "rootcertbundle",
        Kind::Text,
        "external issuer: x5c roots",
    ),
    (
        "token_jwks",
        "auth.token",
        "jwks",
        Kind::Text,
        "external issuer: JWKS URL or file",
    ),
    (
        "public_read",
        "auth",
        "public_read",
        Kind::Bool,
        "anonymous pull",
    ),
    (
        "ip_allowlist",
        "network",
        "allow",
        Kind::List,
        "CIDRs that may connect",
    ),
    (
        "trusted_proxies",
        "network",
        "trusted_proxies",
        Kind::List,
        "proxies whose X-Forwarded-For counts",
    ),
];

/// The valid keys, for messages and `--help`.
pub(crate) fn reconfigure_keys() -> String {
    let mut lines: Vec<String> = KEYS
        .iter()
        .map(|(k, _, _, _, what)| format!("  {k:<22} {what}"))
        .collect();
    lines.push(format!(
        "  {:<22} a pull-through cache of the registry at URL, for PREFIX/… (empty: remove it)",
        "mirror.PREFIX"
    ));
    lines.push(format!(
        "  {:<22} its FIELD: {}",
        "mirror.PREFIX.FIELD",
        MIRROR_FIELDS.join(", ")
    ));
    lines.push(format!(
        "  {:<22} events to the webhook at URL (empty: remove it)",
        "notify.NAME"
    ));
    lines.push(format!(
        "  {:<22} its FIELD: {}; header.H=V sends header H",
        "notify.NAME.FIELD",
        NOTIFY_FIELDS.join(", ")
    ));
    lines.join("\n")
}

/// What `notify.NAME.FIELD` may set (see `config::notify`).
const NOTIFY_FIELDS: [&str; 10] = [
    "url",
    "actions",
    "repositories",
    "format",
    "timeout",
    "backoff",
    "retries",
    "max_queued",
    "max_age",
    "ca",
];

/// `notify.NAME=URL` (empty: remove the endpoint), `notify.NAME.FIELD=VALUE` or
/// `notify.NAME.header.H=VALUE`.
fn set_notify(doc: &mut toml_edit::DocumentMut, key: &str, v: &str) -> anyhow::Result<()> {
    let (name, field) = key.split_once('.').unwrap_or((key, "url"));
    if name.is_empty() {
        bail!("notify.NAME needs a name (notify.deploy=https://hooks.example.com/registry)");
    }
    if field == "url" && v.is_empty() {
        if !remove_array_entry(doc, "notify", "name", name) {
            bail!("there is no notify endpoint {name:?}");
        }
        return Ok(());
    }
    let Some(entry) = array_entry(doc, "notify", "name", name, field == "url") else {
        bail!("there is no notify endpoint {name:?}: set notify.{name}=URL first");
    };
    if let Some(header) = field.strip_prefix("header.") {
        let headers = entry
            .entry("headers")
            .or_insert_with(|| toml_edit::Item::Value(toml_edit::InlineTable::new().into()));
        let Some(headers) = headers.as_inline_table_mut() else {
            bail!("notify.{name}.headers is not an inline table; edit the file");
        };
        if v.is_empty() {
            headers.remove(header);
        } else {
            headers.insert(header, v.into());
        }
        return Ok(());
    }
    if !NOTIFY_FIELDS.contains(&field) {
        bail!(
            "unknown notify field {field:?}; valid: {}, header.NAME",
            NOTIFY_FIELDS.join(", ")
        );
    }
    let item = match field {
        _ if v.is_empty() => None,
        "actions" | "repositories" => Some(value(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<toml_edit::Array>(),
        )),
        "retries" | "max_queued" => {
            let n: i64 = v
                .parse()
                .map_err(|_| anyhow::anyhow!("notify.{name}.{field}={v:?}: expected a number"))?;
            Some(value(n))
        }
        _ => Some(value(v)),
    };
    set_field(entry, field, item);
    Ok(())
}

/// `mirror.PREFIX=URL` (empty: remove the mirror) or `mirror.PREFIX.FIELD=VALUE`.
fn set_mirror(doc: &mut toml_edit::DocumentMut, key: &str, v: &str) -> anyhow::Result<()> {
    let field = MIRROR_FIELDS
        .iter()
        .find(|f| key.ends_with(&format!(".{f}")))
        .copied();
    let (prefix, field) = match field {
        Some(f) => (&key[..key.len() - f.len() - 1], f),
        None => (key, "url"),
    };
    if prefix.is_empty() {
        bail!("mirror.PREFIX needs a prefix (mirror.docker.io=https://registry-1.docker.io)");
    }
    if field == "url" && v.is_empty() {
        if !remove_mirror(doc, prefix) {
            bail!("there is no mirror for {prefix:?}");
        }
        return Ok(());
    }
    let Some(entry) = mirror_entry(doc, prefix, field == "url") else {
        bail!("there is no mirror for {prefix:?}: set mirror.{prefix}=URL first");
    };
    let item = match field {
        _ if v.is_empty() => None,
        "default" | "library" => Some(value(parse_bool(field, v)?)),
        _ => Some(value(v)),
    };
    set_field(entry, field, item);
    Ok(())
}

/// Sets `field` of an array entry to `item`, or removes it for `None` (its default applies).
fn set_field(entry: &mut toml_edit::Table, field: &str, item: Option<toml_edit::Item>) {
    match item {
        Some(item) => entry[field] = item,
        None => {
            entry.remove(field);
        }
    }
}

fn parse_bool(key: &str, v: &str) -> anyhow::Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => bail!("{key}={v:?}: expected true or false"),
    }
}

/// Applies `KEY=VALUE` settings to an instance's registry.toml (comments kept); an empty
/// value removes the setting (its default applies). The result is validated as a whole before
/// it is written: a bad value changes nothing.
pub(crate) fn reconfigure(i: &Instance, settings: &[String]) -> anyhow::Result<()> {
    if settings.is_empty() {
        bail!(
            "name at least one KEY=VALUE; valid keys:\n{}",
            reconfigure_keys()
        );
    }
    let mut doc = i.document()?;
    for setting in settings {
        let Some((key, v)) = setting.split_once('=') else {
            bail!("{setting:?} is not KEY=VALUE");
        };
        if let Some(mirror) = key.strip_prefix("mirror.") {
            set_mirror(&mut doc, mirror, v)?;
            continue;
        }
        if let Some(endpoint) = key.strip_prefix("notify.") {
            set_notify(&mut doc, endpoint, v)?;
            continue;
        }
        let Some(&(_, table, name, kind, _)) = KEYS.iter().find(|k| k.0 == key) else {
            let names: Vec<_> = KEYS.iter().map(|k| k.0).collect();
            bail!("unknown key {key:?}; valid keys: {}", names.join(", "));
        };
        let item = match kind {
            _ if v.is_empty() => None,
            Kind::Text if key == "hostname" => Some(value(parse_hostname(v)?)),
            Kind::Text => Some(value(v)),
            Kind::Bool => Some(value(parse_bool(key, v)?)),
            Kind::List => {
                let items: toml_edit::Array = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                Some(value(items))
            }
        };
        set_key(&mut doc, table, name, item);
    }
    i.save(&doc)
}
