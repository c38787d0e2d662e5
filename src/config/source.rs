//! Where the configuration's variables come from and how their text is read: the process
//! environment over the `.env` file(s) (`--env-file` / `ENV_FILE`, else `./.env` over
//! `/workspace/.env`), and the typed readers that turn a variable's text into a value or a
//! [`ConfigError`] naming it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{dotenv, ConfigError};

/// Where variables come from: the environment first, then the `.env` files' values.
pub struct Source {
    vars: BTreeMap<String, String>,
    /// The files read, in the order read (a later one wins over an earlier one).
    pub files: Vec<PathBuf>,
    /// One line per statement of a file that could not be read (file and line, never the text:
    /// it may hold a secret), or a named file that could not be read at all.
    pub unreadable: Vec<String>,
}

/// `--env-file`, when given on the command line (see [`set_env_file`]).
static ENV_FILE_ARG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Names the configuration file (`--env-file FILE`): read instead of `/workspace/.env` and
/// `./.env`, and re-read on SIGHUP. `systemctl reload` needs it: values put in the environment by
/// systemd's `EnvironmentFile=` are fixed for the life of the process.
pub fn set_env_file(path: PathBuf) {
    let _ = ENV_FILE_ARG.set(path);
}

/// The configuration file named by `--env-file` or `ENV_FILE`, if any.
pub fn env_file() -> Option<PathBuf> {
    ENV_FILE_ARG.get().cloned().or_else(|| std::env::var_os("ENV_FILE").filter(|v| !v.is_empty()).map(PathBuf::from))
}

impl Source {
    /// The process environment over the configuration file: the one named by `--env-file` /
    /// `ENV_FILE`, else `./.env` over `/workspace/.env` (the Python miner's pydantic-settings
    /// order). Files are read as python-dotenv reads them ([`dotenv`]).
    pub fn load() -> Self {
        let named = env_file();
        let files = match &named {
            Some(path) => vec![path.clone()],
            None => vec![PathBuf::from("/workspace/.env"), PathBuf::from(".env")],
        };
        let mut vars = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut read = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    if named.is_some() {
                        unreadable.push(format!("{}: {e}", file.display()));
                    }
                    continue;
                }
            };
            let parsed = dotenv::parse(&text);
            for line in &parsed.unreadable {
                unreadable.push(format!("{} line {line}", file.display()));
            }
            // pydantic-settings merges the files' `dotenv_values` dicts: a later file's bare `KEY`
            // (no value) unsets what an earlier file set.
            for (k, v) in parsed.values(|name| std::env::var(name).ok()) {
                match v {
                    Some(v) => vars.insert(k, v),
                    None => vars.remove(&k),
                };
            }
            read.push(file);
        }
        for (k, v) in std::env::vars() {
            vars.insert(k, v);
        }
        Self { vars, files: read, unreadable }
    }

    /// A named configuration file that does not exist or cannot be read: a configuration error
    /// (the operator named it; running on defaults instead would surprise them).
    pub fn check_named_file(&self) -> Result<(), ConfigError> {
        match env_file() {
            Some(path) if !self.files.contains(&path) => Err(ConfigError {
                var: "ENV_FILE",
                value: path.display().to_string(),
                expected: "a readable .env file (--env-file / ENV_FILE)".into(),
            }),
            _ => Ok(()),
        }
    }

    /// A source from explicit pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            files: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    /// The variables whose values differ between two loads (set, unset or changed), sorted.
    pub fn changed(&self, other: &Source) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> = self.vars.keys().chain(other.vars.keys()).collect();
        names.into_iter().filter(|n| self.get(n) != other.get(n)).cloned().collect()
    }

    pub(super) fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    pub(super) fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError { var, value: v.into(), expected: expected.into() }),
        }
    }

    pub(super) fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError { var, value: v.into(), expected: "true or false".into() }),
        }
    }

    pub(super) fn secs(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(var, default, "a whole number of seconds").map(Duration::from_secs)
    }
}

/// `value` when `ok`, else the error naming `var` with `value` as read and what it accepts: for
/// the checks a value's type cannot make (a range, a zero).
pub(super) fn checked<T: std::fmt::Display>(
    var: &'static str,
    value: T,
    ok: bool,
    expected: &str,
) -> Result<T, ConfigError> {
    match ok {
        true => Ok(value),
        false => Err(ConfigError { var, value: value.to_string(), expected: expected.into() }),
    }
}
