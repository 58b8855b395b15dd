//! Layered configuration: a TOML file, then environment variables, then flags.
//!
//! Each role's flags are `Option`s with an `env` name, so clap already prefers a
//! flag over its variable; whatever either gives overrides the file.

use anyhow::Context;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads a role's config from `path`, or its defaults when there is no file.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Sets `target` to `value` when a flag or variable gave one.
pub fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}
