//! The client's side of a connection's input: replies read and not yet parsed.

use std::io::Read;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client::ClientError;
use crate::reply::{parse_value, Tokens, Value};

/// Bytes read per `read` call: a load generator's deep pipelines (64 commands on each of
/// 16 connections) read many replies per call; one allocation per connection.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Replies read from a connection and not yet parsed. Its buffer holds at most one partial
/// reply plus what one read brought: [`parse_value`]'s limits bound the reply.
#[derive(Debug)]
pub struct ReplyReader {
    buffer: Vec<u8>,
    /// Where the unread replies start in `buffer` (compacted before each read, so a deep
    /// pipeline's replies are not moved once per reply).
    start: usize,
    chunk: Vec<u8>,
}

impl Default for ReplyReader {
    fn default() -> ReplyReader {
        let chunk = vec![0; READ_CHUNK_BYTES];
        ReplyReader { buffer: Vec::new(), start: 0, chunk }
    }
}

impl ReplyReader {
    /// An empty reader.
    pub fn new() -> ReplyReader {
        ReplyReader::default()
    }

    /// The next complete reply already read, if any.
    pub fn next_reply(&mut self) -> Result<Option<Value>, ClientError> {
        let Some((value, used)) = parse_value(&self.buffer[self.start..])? else {
            return Ok(None);
        };
        self.start += used;
        Ok(Some(value))
    }

    /// Walks the next part of a reply in place with `part` (a header, one entry of a
    /// stream reply, ...), if it has all been read: `None` if `part` asked for a token
    /// past what was read ([`Tokens::cut_short`]; nothing is consumed, and `part` is to be
    /// called again from the same place once more is read), else what `part` answered,
    /// its tokens consumed. `part` must therefore read all it needs before it acts.
    pub fn read_part<T, E>(
        &mut self,
        part: &mut impl FnMut(&mut Tokens<'_>) -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        let mut tokens = Tokens::new(&self.buffer[self.start..]);
        let answer = part(&mut tokens);
        if tokens.cut_short() {
            return None;
        }
        self.start += tokens.used();
        Some(answer)
    }

    /// Reads once from a blocking `stream`.
    pub fn fill(&mut self, stream: &mut impl Read) -> Result<(), ClientError> {
        self.compact();
        let read = stream.read(&mut self.chunk)?;
        self.take(read)
    }

    /// Reads once from an async `stream`. Cancel-safe (the load generator races it against
    /// sending): the only await is one `read`, and nothing is lost if it is dropped before
    /// it completes.
    pub async fn fill_async(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), ClientError> {
        self.compact();
        let read = stream.read(&mut self.chunk).await?;
        self.take(read)
    }

    fn compact(&mut self) {
        self.buffer.drain(..self.start);
        self.start = 0;
    }

    fn take(&mut self, read: usize) -> Result<(), ClientError> {
        if read == 0 {
            return Err(ClientError::Closed);
        }
        self.buffer.extend_from_slice(&self.chunk[..read]);
        Ok(())
    }
}
