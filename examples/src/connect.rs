//! Where a client program (cli, loadgen, attack) finds the server, and the token it
//! `AUTH`s with: the same three sources as the server's (SPEC §9), so that an operator's
//! token never has to show in `ps` on the client's side either.

use std::path::PathBuf;

use clap::Args;

use plafond_server::access::{self, TokenError};
use plafond_server::options::number;

/// `--host`, `--port` and the token, flattened into each client's flags.
#[derive(Clone, Debug, Args)]
pub struct ServerAddress {
    /// The server's host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The server's port.
    #[arg(long, default_value_t = 7379, value_parser = number::<u16>)]
    pub port: u16,
    /// AUTH with this token first; it shows in the process list, so prefer --token-file or
    /// PLAFOND_TOKEN. Give the token one way only.
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// AUTH with the token on this file's first line (kept out of the process list).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServerAddress {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The token from `--token`, `--token-file` or `PLAFOND_TOKEN` (one of them at most),
    /// or `None` if the server is to be spoken to without one.
    pub fn token(&self) -> Result<Option<String>, TokenError> {
        access::token(self.token.as_deref(), self.token_file.as_deref(), access::token_from_env()?)
    }
}
