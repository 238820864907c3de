//! `LIVEROLL_ENV_FILE`: the environment file liveroll reads itself, so a
//! new process started by an upgrade sees the file as it is now.
//!
//! Under systemd the unit's `EnvironmentFile=` is read once, when the unit
//! starts; a process started later by liveroll inherits those values. So
//! liveroll reads the file named here at every start (setting each
//! variable, over what it inherited), and on an upgrade the old process
//! removes the variables it read from the new one's environment: a line
//! deleted from the file is gone in the new process too.
//!
//! The syntax is the part of systemd's that the shipped `liveroll.env`
//! uses: `KEY=VALUE` lines, `#` and `;` comments, blank lines, and
//! optional quotes around the whole value.

/// The variable naming the file.
pub const VAR: &str = "LIVEROLL_ENV_FILE";

/// Reads the file named by [`VAR`], if set, into the environment; returns
/// the names it set. Call before any thread starts.
pub fn load() -> Result<Vec<String>, String> {
    let Some(path) = std::env::var_os(VAR).filter(|p| !p.is_empty()) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{VAR}={}: {e}", path.to_string_lossy()))?;
    let pairs = parse(&text).map_err(|e| format!("{VAR}={}: {e}", path.to_string_lossy()))?;
    let mut names = Vec::new();
    for (key, value) in pairs {
        std::env::set_var(&key, value);
        names.push(key);
    }
    Ok(names)
}

/// The `KEY=VALUE` pairs of an environment file, in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("line {}: {key:?} is not a variable name", n + 1));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|&q| value.strip_prefix(q)?.strip_suffix(q))
            .unwrap_or(value);
        pairs.push((key.to_string(), unquoted.to_string()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses() {
        let pairs = parse(include_str!("../../conf/liveroll.env")).unwrap();
        assert!(pairs.contains(&("LIVEROLL_PORT".into(), "8080".into())));
        let exec = pairs.iter().find(|(k, _)| k == "LIVEROLL_EXEC").unwrap();
        assert!(exec.1.starts_with("exec docker run"), "{exec:?}");
    }

    #[test]
    fn comments_quotes_and_errors() {
        let text = "# c\n; c\n\nA=1\n B = \"two words\" \nC='x'\nD=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into()),
                ("D".into(), "".into()),
            ]
        );
        assert_eq!(parse("oops\n").unwrap_err(), "line 1: expected KEY=VALUE");
        assert!(parse("1A=x\n").unwrap_err().contains("not a variable name"));
    }
}
