//! Secrets out of the commands `/status` shows (`--status-commands
//! redacted`, the default): the `--pull`, `--id`, `--exec` and `--stop`
//! commands often carry a registry password, an API token or a database
//! URL, and `/status` may be read by whoever reaches the admin port.
//!
//! What is replaced by `***`, word by word (a word is what the shell would
//! make one argument, quotes included):
//! - the value of every environment-style assignment (`NAME=value`, also
//!   as in `docker run -e NAME=value` or `env NAME=value`), unless the
//!   value only names a placeholder (`<<PORT>>`) or a variable (`$TOKEN`);
//! - the value of a flag whose name looks secret (`pass`, `secret`,
//!   `token`, `key`, `auth`, `cred`), as `--password=x` or `--password x`;
//!   `-p x` too in a `login` command (`docker login -p`);
//! - the password of `user:password`: in a URL (`https://user:pw@host`; a
//!   user alone in an http(s) URL is a token: `https://***@host`) and after
//!   `-u`/`--user` (`curl -u user:pw`);
//! - query parameters with a secret-looking name (`?access_token=x`);
//! - the value of a header whose name looks secret (`Authorization: Bearer
//!   x` keeps the scheme: `Authorization: Bearer ***`), and a word after
//!   `Bearer`.
//!
//! It errs on the side of hiding: a port mapping after `-p` in a login
//! command, or a harmless assignment, is hidden too. `--status-commands
//! full` shows the commands as given.

/// Whether a name (of a flag, variable, header or parameter) looks like it
/// holds a secret.
fn secretish(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "auth", "cred"]
        .iter()
        .any(|word| name.contains(word))
}

/// Flags that name where a secret is, not the secret (`--password-stdin`,
/// `--key-file PATH`).
fn names_a_source(flag: &str) -> bool {
    let flag = flag.to_ascii_lowercase();
    ["-stdin", "-file", "-path", "-dir", "-env"]
        .iter()
        .any(|suffix| flag.ends_with(suffix))
}

const MASK: &str = "***";

/// `cmd` with its secrets replaced by `***`; spacing and quoting are kept.
pub fn redact(cmd: &str) -> String {
    let mut out = String::with_capacity(cmd.len());
    // What the previous word asks of this one.
    let mut expect = Expect::Nothing;
    let mut in_login = false;
    for piece in split(cmd) {
        match piece {
            Piece::Space(s) => out.push_str(s),
            Piece::Separator(s) => {
                out.push_str(s);
                in_login = false;
                expect = Expect::Nothing;
            }
            Piece::Word(word) => {
                let (open, inner, close) = unquote(word);
                let redacted = match expect {
                    Expect::Secret => MASK.to_string(),
                    Expect::UserPassword => user_password(inner),
                    Expect::Nothing => redact_word(inner),
                };
                out.push_str(open);
                out.push_str(&redacted);
                out.push_str(close);
                in_login |= inner == "login";
                expect = next_expect(inner, in_login);
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Expect {
    Nothing,
    /// The value of a secret flag.
    Secret,
    /// `user:password` after `-u`/`--user`.
    UserPassword,
}

/// What a word that is a flag says about the next word.
fn next_expect(word: &str, in_login: bool) -> Expect {
    if word.contains('=') || !word.starts_with('-') {
        if word.eq_ignore_ascii_case("bearer") {
            return Expect::Secret;
        }
        return Expect::Nothing;
    }
    match word {
        "-u" | "--user" | "--proxy-user" => Expect::UserPassword,
        "-p" if in_login => Expect::Secret,
        _ if word.starts_with("--") && secretish(word) && !names_a_source(word) => Expect::Secret,
        _ => Expect::Nothing,
    }
}

/// One word, without its outer quotes.
fn redact_word(word: &str) -> String {
    // `Authorization: Bearer x`, `X-Api-Key: x` (a header as a curl -H value).
    if let Some((name, value)) = word.split_once(':') {
        let is_name =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if is_name && !value.starts_with("//") && secretish(name) {
            return format!("{name}:{}", header_value(value));
        }
    }
    // `Bearer x` as one (quoted) word.
    if let Some(rest) = strip_prefix_ignore_case(word, "bearer ") {
        if !rest.trim().is_empty() {
            return format!("{}{MASK}", &word[..word.len() - rest.len()]);
        }
    }
    // `--flag=value`
    if word.starts_with('-') {
        if let Some((flag, value)) = word.split_once('=') {
            let value = match flag {
                "-u" | "--user" | "--proxy-user" => user_password(value),
                _ if secretish(flag) && !names_a_source(flag) => MASK.to_string(),
                // `--env=NAME=value`, `--build-arg=...`
                _ => redact_word(value),
            };
            return format!("{flag}={value}");
        }
        return word.to_string();
    }
    // `NAME=value`
    if let Some((name, value)) = word.split_once('=') {
        if is_variable_name(name) {
            let value = if names_a_value_elsewhere(value) {
                value.to_string()
            } else {
                MASK.to_string()
            };
            return format!("{name}={value}");
        }
    }
    urls(word)
}

/// A header's value: the scheme of `Bearer x` or `Basic x` is kept.
fn header_value(value: &str) -> String {
    let lead = value.len() - value.trim_start().len();
    let rest = &value[lead..];
    match rest.split_once(' ') {
        Some((scheme, cred))
            if scheme.bytes().all(|b| b.is_ascii_alphabetic()) && !cred.trim().is_empty() =>
        {
            format!("{}{scheme} {MASK}", &value[..lead])
        }
        _ if rest.is_empty() => value.to_string(),
        _ => format!("{}{MASK}", &value[..lead]),
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `<<PORT>>`, `$TOKEN`, `${TOKEN}`: a value that only names where the
/// value is, and says more than it hides.
fn names_a_value_elsewhere(value: &str) -> bool {
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    let placeholder = value
        .strip_prefix("<<")
        .and_then(|v| v.strip_suffix(">>"))
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_uppercase()));
    let variable = value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .or_else(|| value.strip_prefix('$'))
        .is_some_and(is_variable_name);
    placeholder || variable
}

/// `user:password` → `user:***`; a user alone stays.
fn user_password(value: &str) -> String {
    match value.split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        None => value.to_string(),
    }
}

/// Credentials and secret query parameters in every URL of `word`.
fn urls(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .char_indices()
            .rfind(|&(_, c)| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let scheme = &rest[scheme_start..at];
        out.push_str(&rest[..at + 3]);
        rest = &rest[at + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || "\"'".contains(c))
            .unwrap_or(rest.len());
        let (url, after) = rest.split_at(end);
        out.push_str(&url_without_secrets(scheme, url));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// One URL after its `scheme://`.
fn url_without_secrets(scheme: &str, url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let userinfo = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}"),
                // `https://TOKEN@host` (a GitHub token in a clone URL).
                None if matches!(scheme, "http" | "https") => MASK.to_string(),
                None => userinfo.to_string(),
            };
            format!("{userinfo}@{host}")
        }
        None => authority.to_string(),
    };
    let Some((path, query)) = path.split_once('?') else {
        return authority + path;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if secretish(name) => format!("{name}={MASK}"),
            _ => param.to_string(),
        })
        .collect();
    format!("{authority}{path}?{}", query.join("&"))
}

/// A piece of a command line.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Space(&'a str),
    /// `;`, `&&`, `||`, `|`, `&`, `(`, `)`: a new command starts after it.
    Separator(&'a str),
    Word(&'a str),
}

/// Splits a command line as the shell would into words (quotes included
/// in them), the spaces between them and the separators of commands. Not
/// a shell: enough to find each argument.
fn split(cmd: &str) -> Vec<Piece<'_>> {
    let bytes = cmd.as_bytes();
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            pieces.push(Piece::Space(&cmd[start..i]));
        } else if b"|&;()".contains(&b) {
            while i < bytes.len() && b"|&;()".contains(&bytes[i]) {
                i += 1;
            }
            pieces.push(Piece::Separator(&cmd[start..i]));
        } else {
            let mut quote = None;
            while i < bytes.len() {
                let b = bytes[i];
                match quote {
                    Some(q) if b == q => quote = None,
                    Some(b'"') if b == b'\\' => i += 1,
                    Some(_) => {}
                    None if b == b'\'' || b == b'"' => quote = Some(b),
                    None if b == b'\\' => i += 1,
                    None if b.is_ascii_whitespace() || b"|&;()".contains(&b) => break,
                    None => {}
                }
                i += 1;
            }
            let end = i.min(bytes.len());
            pieces.push(Piece::Word(&cmd[start..end]));
        }
    }
    pieces
}

/// A word's outer quotes (when the whole word is one quoted string) and
/// what is inside them.
fn unquote(word: &str) -> (&str, &str, &str) {
    for q in ["'", "\""] {
        if word.len() >= 2 && word.starts_with(q) && word.ends_with(q) {
            return (q, &word[1..word.len() - 1], q);
        }
    }
    ("", word, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn same(cmd: &str) {
        assert_eq!(redact(cmd), cmd);
    }

    #[test]
    fn commands_without_secrets_are_unchanged() {
        same("docker pull ghcr.io/example/blog:latest");
        same("docker image inspect --format '{{.Id}}' ghcr.io/example/blog:latest");
        same("exec docker run --rm --init --name blog-<<PORT>> -p 127.0.0.1:<<PORT>>:80 <<ID>>");
        same("docker rm -f blog-<<PORT>>");
        same("target/release/liveroll-demo --port <<PORT>> --healthcheck <<HEALTHCHECK>> --app-version \"$(cat /tmp/demo-version)\"");
        same("cat /tmp/v; echo done && true | tee x");
        same("git -C /srv/app fetch https://github.com/example/app.git main");
        same("echo \"$REGISTRY_PASSWORD\" | docker login --password-stdin -u ci registry.example.com");
        same("curl -fsS --key-file /etc/app/client.key https://example.com/latest");
        same("PORT=<<PORT>> TOKEN=$APP_TOKEN KEY=${APP_KEY} app");
        same("ssh://git@github.com/example/app.git");
    }

    #[test]
    fn environment_assignments_hide_their_values() {
        assert_eq!(
            redact("DATABASE_URL=postgres://app:hunter2@db/app exec ./server --port <<PORT>>"),
            "DATABASE_URL=*** exec ./server --port <<PORT>>"
        );
        assert_eq!(
            redact("env AWS_ACCESS_KEY_ID=AKIAEXAMPLE AWS_SECRET_ACCESS_KEY='wJalr/K7MDENG' aws s3 cp s3://b/app.tgz /srv"),
            "env AWS_ACCESS_KEY_ID=*** AWS_SECRET_ACCESS_KEY=*** aws s3 cp s3://b/app.tgz /srv"
        );
        assert_eq!(
            redact("docker run --rm -e DB_PASSWORD=hunter2 -e \"API_TOKEN=abc def\" --env=SENTRY_DSN=https://k@o1.ingest.sentry.io/1 -p 127.0.0.1:<<PORT>>:80 <<ID>>"),
            "docker run --rm -e DB_PASSWORD=*** -e \"API_TOKEN=***\" --env=SENTRY_DSN=*** -p 127.0.0.1:<<PORT>>:80 <<ID>>"
        );
        // A value in quotes with spaces is one word.
        assert_eq!(redact("FOO=\"a b c\" run"), "FOO=*** run");
    }

    #[test]
    fn registry_logins_hide_the_password() {
        assert_eq!(
            redact("docker login -u ci -p s3cr3t registry.example.com && docker pull registry.example.com/app:latest"),
            "docker login -u ci -p *** registry.example.com && docker pull registry.example.com/app:latest"
        );
        assert_eq!(
            redact("docker login --username ci --password s3cr3t ghcr.io"),
            "docker login --username ci --password *** ghcr.io"
        );
        assert_eq!(
            redact("docker login --password=s3cr3t ghcr.io; docker run -p 8080:80 x"),
            "docker login --password=*** ghcr.io; docker run -p 8080:80 x"
        );
        assert_eq!(
            redact("aws ecr get-login-password --region eu-west-1 | docker login --username AWS --password-stdin 1234.dkr.ecr.eu-west-1.amazonaws.com"),
            "aws ecr get-login-password --region eu-west-1 | docker login --username AWS --password-stdin 1234.dkr.ecr.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn curl_credentials_and_headers() {
        assert_eq!(
            redact("curl -fsSL -u deploy:hunter2 -o /srv/app.tgz https://artifacts.example.com/app.tgz"),
            "curl -fsSL -u deploy:*** -o /srv/app.tgz https://artifacts.example.com/app.tgz"
        );
        assert_eq!(
            redact("curl -fsS -H 'Authorization: Bearer eyJhbGciOi.x.y' https://api.example.com/latest"),
            "curl -fsS -H 'Authorization: Bearer ***' https://api.example.com/latest"
        );
        assert_eq!(
            redact("curl -H \"X-Api-Key: abc123\" -H 'Accept: text/plain' --header=authorization:Basic\\ Zm9v https://x"),
            "curl -H \"X-Api-Key: ***\" -H 'Accept: text/plain' --header=authorization:*** https://x"
        );
        assert_eq!(
            redact("wget --header 'Authorization: token ghp_abc' -O- https://x"),
            "wget --header 'Authorization: token ***' -O- https://x"
        );
        assert_eq!(
            redact("curl --oauth2-bearer ya29.abc https://x"),
            "curl --oauth2-bearer *** https://x"
        );
        assert_eq!(redact("tool --auth \"Bearer abc\""), "tool --auth \"***\"");
        assert_eq!(
            redact("tool --header \"Bearer abc\""),
            "tool --header \"Bearer ***\""
        );
        assert_eq!(redact("tool Bearer abc"), "tool Bearer ***");
    }

    #[test]
    fn url_credentials_and_secret_parameters() {
        assert_eq!(
            redact("git clone https://deploy:ghp_abc@github.com/example/app.git /srv/app"),
            "git clone https://deploy:***@github.com/example/app.git /srv/app"
        );
        assert_eq!(
            redact("git pull https://ghp_abc@github.com/example/app.git"),
            "git pull https://***@github.com/example/app.git"
        );
        assert_eq!(
            redact("curl 'https://x.example.com/dl?name=app&access_token=abc&v=2'"),
            "curl 'https://x.example.com/dl?name=app&access_token=***&v=2'"
        );
        assert_eq!(
            redact("pg_dump postgresql://app:pw@db:5432/app"),
            "pg_dump postgresql://app:***@db:5432/app"
        );
        assert_eq!(
            redact("curl --proxy-user me:pw --user=me:pw2 https://x"),
            "curl --proxy-user me:*** --user=me:*** https://x"
        );
    }

    #[test]
    fn words_are_split_as_the_shell_would() {
        use Piece::*;
        assert_eq!(
            split("a 'b c'&&d\"e f\"|g"),
            vec![
                Word("a"),
                Space(" "),
                Word("'b c'"),
                Separator("&&"),
                Word("d\"e f\""),
                Separator("|"),
                Word("g")
            ]
        );
        // An unterminated quote ends the word at the end of the line.
        assert_eq!(split("x 'y z"), vec![Word("x"), Space(" "), Word("'y z")]);
        // Any input gives back its own text.
        for cmd in [
            "",
            "  ",
            "'",
            "\\",
            "a\\ b",
            "é 'ü",
            "x=\"\\\"\"",
            "é://x",
            "\\é",
        ] {
            let pieces: String = split(cmd)
                .iter()
                .map(|p| match p {
                    Space(s) | Separator(s) | Word(s) => *s,
                })
                .collect();
            assert_eq!(pieces, cmd);
            let _ = redact(cmd);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_command_line_is_redacted_without_panic(cmd in "[ -~éü\t]{0,60}|[a-zé:/@ =]{0,20}") {
            let _ = redact(&cmd);
        }
    }
}
