//! Instances on disk: each is a directory under the config home holding `registry.toml`, the
//! htpasswd file and TLS material, readable and editable by a person. Files are written whole to
//! a temporary name and renamed into place, so a failed command leaves no half-written config;
//! files that may hold secrets are created 0600 and directories 0700.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use toml_edit::DocumentMut;

use crate::config::{RawConfig, Settings};

/// The instance used when none is named.
pub(crate) const DEFAULT: &str = "default";

/// The file name of an instance's configuration.
pub(crate) const CONFIG_FILE: &str = "registry.toml";

/// The config home: the flag or `REGISTRY_CONFIG_DIR` if given, else `/etc/registry` for root
/// and `$XDG_CONFIG_HOME/registry` (or `~/.config/registry`) for anyone else.
pub(crate) fn config_home(given: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given {
        return dir;
    }
    if is_root() {
        return PathBuf::from("/etc/registry");
    }
    match (
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    ) {
        (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("registry"),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".config/registry"),
        _ => PathBuf::from(".registry"),
    }
}

/// Whether this process runs as root (from /proc; elsewhere assumed not).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Checks an instance name: lowercase letters, digits and `-`, at most 63, starting with a
/// letter or digit (it names a directory and appears in unit names).
pub(crate) fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("{name:?} is not an instance name (lowercase letters, digits and '-', like \"default\" or \"team-a\")");
    }
    Ok(())
}

/// One instance's directory.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub name: String,
    pub dir: PathBuf,
}

impl Instance {
    /// The instance `name` under `home` (which need not exist yet).
    pub(crate) fn at(home: &Path, name: &str) -> anyhow::Result<Instance> {
        check_name(name)?;
        Ok(Instance {
            name: name.to_owned(),
            dir: home.join("instances").join(name),
        })
    }

    /// The instance `name` under `home`, which must exist.
    pub(crate) fn open(home: &Path, name: &str) -> anyhow::Result<Instance> {
        let i = Instance::at(home, name)?;
        if !i.config_path().is_file() {
            bail!(
                "no instance {name:?} in {} (create it with `registry instance create {name}` or `registry config --instance {name}`)",
                home.display()
            );
        }
        Ok(i)
    }

    /// Every instance under `home`, by name.
    pub(crate) fn all(home: &Path) -> anyhow::Result<Vec<Instance>> {
        let dir = home.join("instances");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut all = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && entry.path().join(CONFIG_FILE).is_file() {
                all.push(Instance::at(home, &name)?);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The htpasswd file an instance's users live in, by default.
    pub(crate) fn htpasswd_path(&self) -> PathBuf {
        self.dir.join("htpasswd")
    }

    /// The configuration as written, with paths made relative to the instance directory.
    pub(crate) fn raw(&self) -> anyhow::Result<RawConfig> {
        let mut raw = RawConfig::load(&self.config_path())?;
        raw.resolve_paths(&self.dir);
        Ok(raw)
    }

    /// The validated settings; errors name the file.
    pub(crate) fn settings(&self) -> anyhow::Result<Settings> {
        self.raw()?
            .validate()
            .with_context(|| format!("{}", self.config_path().display()))
    }

    /// The configuration document, for editing with comments kept.
    pub(crate) fn document(&self) -> anyhow::Result<DocumentMut> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.parse()
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Validates `doc` as this instance's configuration and writes it.
    pub(crate) fn save(&self, doc: &DocumentMut) -> anyhow::Result<()> {
        let text = doc.to_string();
        let mut raw: RawConfig = toml::from_str(&text)
            .with_context(|| format!("the new {} would be invalid", CONFIG_FILE))?;
        raw.resolve_paths(&self.dir);
        raw.validate()
            .with_context(|| format!("the new {} would be invalid", CONFIG_FILE))?;
        write_private(&self.config_path(), text.as_bytes())
    }
}

/// The entry of the array of tables `array` (`[[proxy]]`, `[[notify]]`) whose `field` is
/// `key`, created (with that field) when `create`.
pub(crate) fn array_entry<'d>(
    doc: &'d mut DocumentMut,
    array: &str,
    field: &str,
    key: &str,
    create: bool,
) -> Option<&'d mut toml_edit::Table> {
    if !doc.contains_array_of_tables(array) {
        if !create {
            return None;
        }
        doc.insert(array, toml_edit::ArrayOfTables::new().into());
    }
    let entries = doc[array].as_array_of_tables_mut()?;
    let at = entries
        .iter()
        .position(|t| t.get(field).and_then(|p| p.as_str()) == Some(key));
    let at = match at {
        Some(i) => i,
        None if create => {
            let mut t = toml_edit::Table::new();
            t[field] = toml_edit::value(key);
            entries.push(t);
            entries.len() - 1
        }
        None => return None,
    };
    entries.get_mut(at)
}

/// Removes the entry of `array` whose `field` is `key` (and the array when it empties);
/// whether there was one.
pub(crate) fn remove_array_entry(
    doc: &mut DocumentMut,
    array: &str,
    field: &str,
    key: &str,
) -> bool {
    let Some(entries) = doc.get_mut(array).and_then(|p| p.as_array_of_tables_mut()) else {
        return false;
    };
    let before = entries.len();
    entries.retain(|t| t.get(field).and_then(|p| p.as_str()) != Some(key));
    let removed = entries.len() != before;
    if entries.is_empty() {
        doc.remove(array);
    }
    removed
}

/// Sets `table.key` (a dotted table path) in a config document to `item`, creating the tables
/// it needs, or removes the key for `None`.
pub(crate) fn set_key(
    doc: &mut DocumentMut,
    table: &str,
    key: &str,
    item: Option<toml_edit::Item>,
) {
    let mut t = doc.as_table_mut();
    let parts: Vec<&str> = table.split('.').collect();
    for (n, part) in parts.iter().copied().enumerate() {
        if !t.contains_table(part) {
            if item.is_none() {
                return;
            }
            let mut new = toml_edit::Table::new();
            // `[storage.s3]` alone, without an empty `[storage]` above it.
            new.set_implicit(n + 1 < parts.len());
            t.insert(part, toml_edit::Item::Table(new));
        }
        t = t[part].as_table_mut().expect("a table");
    }
    match item {
        Some(item) => t[key] = item,
        None => {
            t.remove(key);
        }
    }
}

/// Creates `dir` and its parents, the last ones 0700.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600) and a
/// rename: readers see the old file or the new one, never a part.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_whole(path, bytes, 0o600)
}

/// Like [`write_private`], for files anyone may read (certificates): mode 0644.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_whole(path, bytes, 0o644)
}

fn write_whole(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(permissions(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn permissions(mode: u32) -> std::fs::Permissions {
    #[cfg(unix)]
    {
        std::os::unix::fs::PermissionsExt::from_mode(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        std::fs::metadata(".")
            .map(|m| m.permissions())
            .expect("current directory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["default", "team-a", "a1", "0"] {
            check_name(good).unwrap();
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "..", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn private_files_replace_whole() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("x/y/file");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
