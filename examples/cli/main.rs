//! plafond's command-line client: one command to a running server, its reply printed for
//! people.
//!
//! ```text
//! cargo run --release --example cli -- open-profile eu-west
//! cargo run --release --example cli -- open-account 0 checking
//! cargo run --release --example cli -- pay 0 100
//! cargo run --release --example cli -- stats
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use plafond_examples::flags::Flags;
use plafond_examples::resp::{encode_command, parse_value, Value};

/// How long the client waits for the server to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

const HELP: &str = "\
plafond cli: send one command to a plafond server and print the reply.

usage: cli [--host 127.0.0.1] [--port 7379] [--token T] <command...>

commands:
  ping
  open-profile <region>                   e.g. open-profile eu-west
  open-account <profile> checking|savings
  pay <card> <amount> [command_id]
  transfer <from> <to> <amount> [command_id]
  deposit <account> <amount> [command_id]
  balance <account>
  card <card>
  ceiling <card> <amount> | block <card> | unblock <card>
  stats                                   the table
  stats-json                              the same as JSON
  clock-set <unix_ms> | clock-advance <ms> (server started with --clock manual)
  anything else is sent as typed, e.g. `cli CARD.BLOCK 3`
";

/// The server command for a friendly verb.
fn command_of(words: &[String]) -> Vec<String> {
    let Some((verb, rest)) = words.split_first() else {
        return Vec::new();
    };
    let name = match verb.as_str() {
        "open-profile" => "PROFILE.OPEN",
        "open-account" => "ACCOUNT.OPEN",
        "ceiling" => "CARD.CEILING",
        "block" => "CARD.BLOCK",
        "unblock" => "CARD.UNBLOCK",
        "stats-json" => return vec!["STATS".into(), "JSON".into()],
        "clock-set" => "CLOCK.SET",
        "clock-advance" => "CLOCK.ADVANCE",
        other => return words_upper_first(other, rest),
    };
    let mut args = vec![name.to_string()];
    args.extend(rest.iter().map(|word| match verb.as_str() {
        // Kinds are upper-case words on the wire.
        "open-account" => word.to_ascii_uppercase(),
        _ => word.clone(),
    }));
    args
}

fn words_upper_first(verb: &str, rest: &[String]) -> Vec<String> {
    let mut args = vec![verb.to_ascii_uppercase()];
    args.extend(rest.iter().cloned());
    args
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cli: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let flags = Flags::parse(std::env::args().skip(1), &["host", "port", "token"])
        .map_err(|e| anyhow!(e))?;
    if flags.help || flags.positional.is_empty() {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    let host = flags.text("host").unwrap_or("127.0.0.1");
    let port: u16 = flags.get("port", 7379).map_err(|e| anyhow!(e))?;
    let stream = TcpStream::connect((host, port))
        .with_context(|| format!("cannot connect to {host}:{port} (is the server running?)"))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut client = Client { stream, buffer: Vec::new() };
    if let Some(token) = flags.text("token") {
        if let Value::Error(error) = client.call(&["AUTH".to_string(), token.to_string()])? {
            bail!("AUTH refused: {error}");
        }
    }
    let reply = client.call(&command_of(&flags.positional))?;
    println!("{reply}");
    Ok(match reply {
        Value::Error(_) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    fn call(&mut self, args: &[String]) -> anyhow::Result<Value> {
        let mut request = Vec::new();
        encode_command(&mut request, args);
        self.stream.write_all(&request)?;
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            if let Some((value, used)) = parse_value(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(value);
            }
            let read = self.stream.read(&mut chunk).context("reading the reply")?;
            if read == 0 {
                bail!("the server closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}
