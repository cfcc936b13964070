//! An async (tokio) client: the load generator's connections and the attack tool's.

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::client::ClientError;
use crate::encode::encode_command;
use crate::reader::ReplyReader;
use crate::reply::Value;

/// An async RESP connection.
#[derive(Debug)]
pub struct AsyncClient {
    stream: TcpStream,
    replies: ReplyReader,
}

impl AsyncClient {
    /// Connects to `addr` (with `TCP_NODELAY`: pipelines are written whole) and sends
    /// `AUTH token` if a token is given.
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<AsyncClient, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
        stream.set_nodelay(true)?;
        let mut client = AsyncClient { stream, replies: ReplyReader::new() };
        if let Some(token) = token {
            if let Value::Error(error) = client.call(&["AUTH", token]).await? {
                return Err(ClientError::AuthRefused(error));
            }
        }
        Ok(client)
    }

    /// Connects to the leader of the cluster `addr` is a member of (or to `addr` itself, a
    /// single node or the leader): asks `ROLE` and moves to the member it names, waiting
    /// out an election. Returns the client and the address it is connected to.
    pub async fn connect_leader(
        addr: &str,
        token: Option<&str>,
    ) -> Result<(AsyncClient, String), ClientError> {
        let mut addr = addr.to_owned();
        let (mut hops, mut waits) = (0, 0);
        loop {
            let mut client = AsyncClient::connect(&addr, token).await?;
            let role = client.call(&["ROLE"]).await?;
            if let Value::Array(fields) = &role {
                let no_leader_yet = fields.get(2) == Some(&Value::Nil)
                    && fields.first() != Some(&Value::Bulk(b"leader".to_vec()));
                if no_leader_yet && waits < crate::leader::ELECTION_RETRIES_MAX {
                    waits += 1;
                    tokio::time::sleep(crate::leader::ELECTION_RETRY_INTERVAL).await;
                    continue;
                }
            }
            match crate::leader::leader_elsewhere(&role) {
                Some(leader) if leader != addr && hops < crate::leader::LEADER_HOPS_MAX => {
                    hops += 1;
                    addr = leader;
                }
                _ => return Ok((client, addr)),
            }
        }
    }

    /// Sends bytes already encoded (a pipeline of [`encode_command`]s).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.stream.write_all(bytes).await?)
    }

    /// Sends a command and reads its reply.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ClientError> {
        let mut request = Vec::new();
        encode_command(&mut request, args);
        self.send(&request).await?;
        self.read().await
    }

    /// Reads the next reply.
    pub async fn read(&mut self) -> Result<Value, ClientError> {
        loop {
            if let Some(value) = self.replies.next_reply()? {
                return Ok(value);
            }
            self.replies.fill_async(&mut self.stream).await?;
        }
    }

    /// The connection's two directions and its reply reader, for a loop that writes and
    /// reads at the same time (the load generator's rate mode).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>, &mut ReplyReader) {
        let (reader, writer) = self.stream.split();
        (reader, writer, &mut self.replies)
    }
}
