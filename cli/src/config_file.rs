//! Optional TOML config files. `--config FILE` names a file whose table
//! named after the subcommand holds defaults for that subcommand's flags,
//! keyed by long flag name:
//!
//! ```toml
//! [storage]
//! node-id = 3
//! data-dir = "/srv/torchfs"
//! metad = ["10.0.0.1:7401", "10.0.0.2:7401", "10.0.0.3:7401"]
//! ```
//!
//! The values are turned into flags placed before the command line's own,
//! so the command line wins (clap's `args_override_self`).

use std::ffi::OsString;

use anyhow::{bail, Context, Result};

/// Returns `args` with the config file's values for the subcommand inserted
/// right after the subcommand name; unchanged when no `--config` is given.
pub fn args_with_config_defaults(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let Some(sub_index) = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
    else {
        return Ok(args);
    };
    let sub_index = sub_index + 1;
    let subcommand = args[sub_index].to_string_lossy().into_owned();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read config file {path}"))?;
    let flags =
        flags_from_toml(&text, &subcommand).with_context(|| format!("config file {path}"))?;
    let mut out = args[..=sub_index].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args[sub_index + 1..].iter().cloned());
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<String> {
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().map(|s| s.into_owned());
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_string());
        }
    }
    None
}

/// The flags that the `[subcommand]` table of a TOML document stands for.
fn flags_from_toml(text: &str, subcommand: &str) -> Result<Vec<String>> {
    let doc: toml::Table = text.parse().context("parse TOML")?;
    for key in doc.keys() {
        if !doc[key].is_table() {
            bail!("top-level key `{key}` must be a table named after a subcommand, e.g. [storage]");
        }
    }
    let Some(table) = doc.get(subcommand).and_then(|t| t.as_table()) else {
        return Ok(Vec::new());
    };
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "config" {
            bail!("`config` cannot be set inside a config file");
        }
        let flag = format!("--{key}");
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let values: Result<Vec<String>> = items.iter().map(|v| scalar(key, v)).collect();
                flags.push(flag);
                flags.push(values?.join(","));
            }
            other => {
                flags.push(flag);
                flags.push(scalar(key, other)?);
            }
        }
    }
    Ok(flags)
}

fn scalar(key: &str, value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("`{key}`: expected a string, number, boolean or a list of them"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn table_values_become_flags() {
        let flags = flags_from_toml(
            "[storage]\nnode-id = 3\ndata-dir = \"/srv\"\nmetad = [\"a:1\", \"b:2\"]\nverbose = true\nquiet = false\n[metad]\nid = 9\n",
            "storage",
        )
        .unwrap();
        assert_eq!(
            flags,
            [
                "--data-dir",
                "/srv",
                "--metad",
                "a:1,b:2",
                "--node-id",
                "3",
                "--verbose"
            ]
        );
    }

    #[test]
    fn missing_table_gives_no_flags_and_bad_shapes_are_errors() {
        assert!(flags_from_toml("[metad]\nid = 1\n", "storage")
            .unwrap()
            .is_empty());
        assert!(flags_from_toml("id = 1\n", "storage").is_err());
        assert!(flags_from_toml("[storage]\nx = {a = 1}\n", "storage").is_err());
        assert!(flags_from_toml("[storage\n", "storage").is_err());
    }

    #[test]
    fn config_flags_go_before_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[status]\nmetad = \"x:1\"\n").unwrap();
        let p = path.to_str().unwrap();
        let out =
            args_with_config_defaults(os(&["torchfs", "status", "--config", p, "--json"])).unwrap();
        assert_eq!(
            out,
            os(&["torchfs", "status", "--metad", "x:1", "--config", p, "--json"])
        );
        let err =
            args_with_config_defaults(os(&["torchfs", "status", "--config", "/nonexistent.toml"]));
        assert!(format!("{:#}", err.unwrap_err()).contains("/nonexistent.toml"));
    }
}
