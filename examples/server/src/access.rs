//! Who may talk to the server: where the token comes from (SPEC §9: `--token`,
//! `--token-file FILE` or the `PLAFOND_TOKEN` environment variable, the last two so that it
//! never shows in a process list), and whether an address may be served without one.

use std::net::IpAddr;
use std::path::Path;

/// The environment variable that may hold the token.
pub const TOKEN_ENV: &str = "PLAFOND_TOKEN";
pub use crate::limits::TOKEN_FILE_BYTES_MAX;

/// Why the token could not be had, in the operator's terms.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// More than one of `--token`, `--token-file` and `PLAFOND_TOKEN`.
    #[error("give the token one way only: --token, --token-file or {TOKEN_ENV} (found {0})")]
    SeveralSources(String),
    /// The token file cannot be read.
    #[error("cannot read --token-file {path}: {why}")]
    Unreadable { path: String, why: String },
    /// The token is empty (or only a line break).
    #[error("the token from {0} is empty")]
    Empty(&'static str),
    #[error("{TOKEN_ENV} is not valid UTF-8")]
    EnvNotUnicode,
    #[error(
        "--bind {0} serves other machines, but no token is set: give one (--token-file, \
         {TOKEN_ENV} or --token), or pass --allow-no-token to serve it open"
    )]
    OpenBind(IpAddr),
}

/// The token, from at most one of the flag's value, the file's first line and the
/// environment variable's value; `None` if none is given.
pub fn token(
    flag: Option<&str>,
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<String>, TokenError> {
    let given: Vec<&str> =
        [flag.map(|_| "--token"), file.map(|_| "--token-file"), env.as_ref().map(|_| TOKEN_ENV)]
            .into_iter()
            .flatten()
            .collect();
    if given.len() > 1 {
        return Err(TokenError::SeveralSources(given.join(", ")));
    }
    let (token, source) = match (flag, file, env) {
        (Some(token), _, _) => (token.to_owned(), "--token"),
        (_, Some(path), _) => (read_token_file(path)?, "--token-file"),
        (_, _, Some(token)) => (token, TOKEN_ENV),
        (None, None, None) => return Ok(None),
    };
    match token.is_empty() {
        true => Err(TokenError::Empty(source)),
        false => Ok(Some(token)),
    }
}

/// The file's first line, without its line break. A file others may read is used, with a
/// warning: refusing it would stop a restart for a mode bit.
fn read_token_file(path: &Path) -> Result<String, TokenError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let unreadable = |why: String| TokenError::Unreadable { path: path.display().to_string(), why };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mode = file.metadata().map_err(|e| unreadable(e.to_string()))?.permissions().mode();
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: --token-file {} can be read by other users (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let mut text = String::new();
    file.take(TOKEN_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(format!("{e} (a token is one line of text)")))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// Refuses to serve a non-loopback address without a token, unless `allowed`
/// (`--allow-no-token`): anyone who can reach the port could move money.
pub fn check_bind(bind: IpAddr, has_token: bool, allowed: bool) -> Result<(), TokenError> {
    if bind.is_loopback() || has_token || allowed {
        return Ok(());
    }
    Err(TokenError::OpenBind(bind))
}

/// The token in [`TOKEN_ENV`], if set.
pub fn token_from_env() -> Result<Option<String>, TokenError> {
    match std::env::var(TOKEN_ENV) {
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(TokenError::EnvNotUnicode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_one_source() {
        assert_eq!(token(None, None, None), Ok(None));
        assert_eq!(token(Some("t"), None, None), Ok(Some("t".into())));
        assert_eq!(token(None, None, Some("e".into())), Ok(Some("e".into())));
        assert!(matches!(
            token(Some("t"), None, Some("e".into())),
            Err(TokenError::SeveralSources(_))
        ));
        assert_eq!(token(None, None, Some(String::new())), Err(TokenError::Empty(TOKEN_ENV)));
    }

    #[test]
    fn a_token_file_gives_its_first_line() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("written");
        assert_eq!(token(None, Some(&path), None), Ok(Some("s3cret".into())));
        std::fs::write(&path, "\n").expect("written");
        assert_eq!(token(None, Some(&path), None), Err(TokenError::Empty("--token-file")));
        let missing = dir.path().join("missing");
        assert!(matches!(token(None, Some(&missing), None), Err(TokenError::Unreadable { .. })));
    }

    #[test]
    fn only_loopback_is_served_without_a_token_by_default() {
        let any: IpAddr = "0.0.0.0".parse().expect("an address");
        let local: IpAddr = "::1".parse().expect("an address");
        assert!(check_bind(any, false, false).is_err());
        assert!(check_bind(any, true, false).is_ok());
        assert!(check_bind(any, false, true).is_ok());
        assert!(check_bind(local, false, false).is_ok());
    }
}
