//! Pingora's server configuration (`-c FILE`), checked strictly.
//!
//! Pingora ignores keys it does not know, so `thread: 4` would silently
//! leave one worker thread. liveroll rejects unknown keys (suggesting the
//! nearest known one) and reports type errors with the key's name, before
//! anything starts. The known keys are read off Pingora's own defaults, so
//! they follow the Pingora version liveroll is built with.

use log::warn;
use pingora_core::server::configuration::ServerConf;

use crate::config::Config;

/// Loads the `-c` file (or Pingora's defaults) and fills in shutdown timing
/// that fits liveroll where the file leaves it unset.
pub fn load(config: &Config) -> Result<ServerConf, String> {
    let mut conf = match &config.conf {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--conf {path}: {e}"))?;
            parse(&text).map_err(|e| format!("--conf {path}: {e}"))?
        }
        None => ServerConf::new().expect("Pingora's built-in configuration parses"),
    };
    // Pingora waits this long after a stop signal before dropping its tasks;
    // liveroll exits as soon as its children are gone, so this is only a bound.
    let stop = match config.stop {
        Some(_) => config.stop_timeout(),
        None => std::time::Duration::ZERO,
    };
    let needed = (config.shutdown_delay + config.drain_timeout + stop + config.kill_timeout * 2)
        .as_secs()
        + 5;
    let grace = *conf.grace_period_seconds.get_or_insert(needed);
    if grace < needed {
        warn!(
            "event=config_warning key=grace_period_seconds value={grace} needed={needed} \
             reason=\"shorter than the drain and kill timeouts: children may be killed without a drain\""
        );
    }
    conf.graceful_shutdown_timeout_seconds.get_or_insert(1);
    Ok(conf)
}

/// Parses a Pingora YAML configuration, rejecting unknown keys and settings
/// that cannot work with children (daemon mode).
pub fn parse(text: &str) -> Result<ServerConf, String> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let known = known_keys();
    match &value {
        serde_yaml::Value::Mapping(map) => {
            for key in map.keys() {
                let Some(key) = key.as_str() else {
                    return Err(format!("key {key:?} is not a string"));
                };
                if !known.iter().any(|k| k == key) {
                    return Err(match nearest(key, &known) {
                        Some(hint) => format!("unknown key `{key}` (did you mean `{hint}`?)"),
                        None => format!("unknown key `{key}`"),
                    });
                }
            }
        }
        serde_yaml::Value::Null => {}
        _ => return Err("expected a mapping of settings at the top level".into()),
    }
    let conf = ServerConf::from_yaml(text).map_err(|e| match &e.cause {
        Some(cause) => cause.to_string(),
        None => e.to_string(),
    })?;
    if conf.daemon {
        return Err(
            "`daemon: true` is not supported; run liveroll in the foreground (systemd)".into(),
        );
    }
    Ok(conf)
}

/// Every key Pingora's configuration has, taken from its serialized defaults.
fn known_keys() -> Vec<String> {
    let defaults = ServerConf::new()
        .expect("Pingora's built-in configuration parses")
        .to_yaml();
    let value: serde_yaml::Value =
        serde_yaml::from_str(&defaults).expect("Pingora writes valid YAML");
    value
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The known key within two edits of `key`, if any (a typo's likely intent).
fn nearest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../conf/liveroll.yaml");
        let conf = parse(text).unwrap();
        assert_eq!(conf.threads, 1);
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        assert_eq!(
            parse("version: 1\nthread: 4\n").unwrap_err(),
            "unknown key `thread` (did you mean `threads`?)"
        );
        assert_eq!(
            parse("version: 1\nfoo_bar_baz: 4\n").unwrap_err(),
            "unknown key `foo_bar_baz`"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = parse("version: 1\nthreads: four\n").unwrap_err();
        assert!(err.starts_with("threads: invalid type"), "{err}");
    }

    #[test]
    fn daemon_mode_and_non_mappings_are_refused() {
        assert!(parse("version: 1\ndaemon: true\n")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse("- a\n- b\n").unwrap_err().contains("mapping"));
        assert!(parse("threads: [\n")
            .unwrap_err()
            .contains("not valid YAML"));
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("thread", "threads"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
