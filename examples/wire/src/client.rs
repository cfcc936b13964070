//! A blocking client: one connection, one command at a time or pipelined by hand.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::encode::encode_command;
use crate::reader::ReplyReader;
use crate::reply::Value;
use crate::request::ProtocolError;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr} (is the server running?): {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server's reply is not RESP: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the server closed the connection")]
    Closed,
    #[error("AUTH refused: {0}")]
    AuthRefused(String),
}

impl ClientError {
    /// Whether the server ended the connection (closed or reset it): what a test of a
    /// server that drops a client expects.
    pub fn is_disconnect(&self) -> bool {
        match self {
            ClientError::Closed => true,
            ClientError::Io(error) => matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// A blocking RESP connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    replies: ReplyReader,
}

impl Client {
    /// Connects to `addr`; every read waits at most `reply_timeout`.
    pub fn connect(
        addr: impl ToSocketAddrs,
        reply_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(&addr)
            .map_err(|source| ClientError::Connect { addr: describe(&addr), source })?;
        stream.set_read_timeout(Some(reply_timeout))?;
        Ok(Client { stream, replies: ReplyReader::new() })
    }

    /// Connects to `addr`, waiting at most `connect_timeout` (a node behind a partition
    /// never answers the handshake); every read waits at most `reply_timeout`.
    pub fn connect_within(
        addr: std::net::SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, connect_timeout)
            .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
        stream.set_read_timeout(Some(reply_timeout))?;
        stream.set_write_timeout(Some(reply_timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, replies: ReplyReader::new() })
    }

    /// Sends `AUTH token`; an error reply is [`ClientError::AuthRefused`].
    pub fn auth(&mut self, token: &str) -> Result<(), ClientError> {
        match self.call(&["AUTH", token])? {
            Value::Error(error) => Err(ClientError::AuthRefused(error)),
            _ => Ok(()),
        }
    }

    /// Sends raw bytes (hand-made or deliberately broken requests).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Sends one command as a RESP array of bulk strings.
    pub fn send_command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), ClientError> {
        let mut bytes = Vec::new();
        encode_command(&mut bytes, args);
        self.send(&bytes)
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> Result<Value, ClientError> {
        loop {
            if let Some(value) = self.replies.next_reply()? {
                return Ok(value);
            }
            self.replies.fill(&mut self.stream)?;
        }
    }

    /// Reads the next part of a reply in place with `part` (see
    /// [`ReplyReader::read_part`]), reading from the connection until that part has
    /// arrived: a big reply costs no [`Value`] per element, is tokenized once, and is
    /// never held whole (a part at a time, plus what one read brought). The outer error is
    /// the connection's, the inner one `part`'s.
    pub fn read_part<T, E>(
        &mut self,
        mut part: impl FnMut(&mut crate::Tokens<'_>) -> Result<T, E>,
    ) -> Result<Result<T, E>, ClientError> {
        loop {
            if let Some(answer) = self.replies.read_part(&mut part) {
                return Ok(answer);
            }
            self.replies.fill(&mut self.stream)?;
        }
    }

    /// Sends a command and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ClientError> {
        self.send_command(args)?;
        self.read()
    }

    /// The connection itself (timeouts, shutdown, raw reads).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// `addr` for an error message.
fn describe(addr: &impl ToSocketAddrs) -> String {
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().map_or_else(|| "?".to_owned(), |a| a.to_string()),
        Err(_) => "?".to_owned(),
    }
}
