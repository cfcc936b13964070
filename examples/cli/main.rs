//! plafond's command-line client: one command to a running server, its reply printed for
//! people.
//!
//! ```text
//! cargo run --release --example cli -- open-profile eu-west
//! cargo run --release --example cli -- open-account 0 checking
//! cargo run --release --example cli -- pay 0 100
//! cargo run --release --example cli -- stats
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser};

use plafond_examples::connect::ServerAddress;
use plafond_wire::{leader, Client, Value};

/// How long the client waits for the server to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The commands, after the flags in `--help`.
const COMMANDS: &str = "\
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
  authorize <card> <amount> [command_id]  a hold (card holds, SPEC §12)
  increment <hold> <amount> [command_id]
  capture <hold> <amount> [command_id] | capture-final <hold> <amount> [command_id]
  void <hold> <amount>|all [command_id]
  refund <card> <amount> [command_id]
  hold <hold> | balance-detail <account> | releases <card>
  stats                                   the table
  stats-json                              the same as JSON
  clock-set <unix_ms> | clock-advance <ms> (server started with --clock manual)
  streams-info                            each shard's change stream: first and last id
  xread [COUNT n] [BLOCK ms] STREAMS changes:<shard> ... <id> ...
  xrange changes:<shard> <start|-> <end|+> [COUNT n]
  anything else is sent as typed, e.g. `cli CARD.BLOCK 3`
";

/// plafond cli: send one command to a plafond server and print the reply.
#[derive(Debug, Parser)]
#[command(name = "cli", after_help = COMMANDS)]
struct CliArgs {
    #[command(flatten)]
    server: ServerAddress,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

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
        "increment" => "AUTHORIZE.INCREMENT",
        "capture-final" => "CAPTURE.FINAL",
        "balance-detail" => "BALANCE.DETAIL",
        "releases" => "CARD.RELEASES",
        "streams-info" => "STREAMS.INFO",
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

/// Sends `command` to `addr`, and follows a cluster's leader (SPEC §14): on `-READONLY
/// leader HOST:PORT` it sends it there, on `-CLUSTERDOWN` it waits out the election.
fn call_leader(mut addr: String, token: Option<&str>, command: &[String]) -> anyhow::Result<Value> {
    let (mut hops, mut waits) = (0, 0);
    loop {
        let mut client = Client::connect(&addr, REPLY_TIMEOUT)?;
        if let Some(token) = token {
            client.auth(token)?;
        }
        let reply = client.call(command)?;
        if let Some(leader) = leader::redirect(&reply).filter(|_| hops < leader::LEADER_HOPS_MAX) {
            hops += 1;
            addr = leader.to_owned();
            continue;
        }
        if leader::no_leader(&reply) && waits < leader::ELECTION_RETRIES_MAX {
            waits += 1;
            std::thread::sleep(leader::ELECTION_RETRY_INTERVAL);
            continue;
        }
        return Ok(reply);
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = CliArgs::parse();
    if args.command.is_empty() {
        CliArgs::command().print_help()?;
        return Ok(ExitCode::SUCCESS);
    }
    let token = args.server.token()?;
    let reply = call_leader(args.server.addr(), token.as_deref(), &command_of(&args.command))?;
    println!("{reply}");
    Ok(match reply {
        Value::Error(_) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}
