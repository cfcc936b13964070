//! plafond's wire format: RESP2, and the few RESP3 types `HELLO 3` needs (SPEC §9).
//!
//! This crate alone knows RESP bytes. The server reads requests with [`RequestParser`] and
//! writes replies with [`Encoder`]; clients write commands with [`encode_command`] and
//! read replies with [`ReplyReader`] (over [`parse_value`], or in place with [`Tokens`]),
//! through [`Client`] (blocking: the cli, the tests, the stream consumer) or
//! [`AsyncClient`] (tokio: the load generator, the attack tool).
//!
//! ```
//! use plafond_wire::{encode_command, parse_value, Value};
//!
//! let mut bytes = Vec::new();
//! encode_command(&mut bytes, &["PAY", "7", "100"]);
//! assert_eq!(bytes, b"*3\r\n$3\r\nPAY\r\n$1\r\n7\r\n$3\r\n100\r\n");
//! let (reply, used) = parse_value(b":19900\r\n").unwrap().unwrap();
//! assert_eq!((reply, used), (Value::Integer(19_900), 8));
//! ```

mod async_client;
mod client;
mod encode;
#[doc(hidden)]
pub mod fuzzing;
pub mod leader;
mod reader;
mod reply;
mod request;

pub use async_client::AsyncClient;
pub use client::{Client, ClientError};
pub use encode::{encode_command, Encoder, Protocol, ERROR_BYTES_MAX};
pub use reader::{ReplyReader, READ_CHUNK_BYTES};
pub use reply::{
    parse_token, parse_value, Token, Tokens, Value, REPLY_ARRAY_LEN_MAX, REPLY_BULK_BYTES_MAX,
    REPLY_DEPTH_MAX,
};
pub use request::{
    parse_i64, Args, Frame, ProtocolError, RequestParser, Step, FRAME_ARGS_MAX, FRAME_BYTES_MAX,
    HEADER_BYTES_MAX, INLINE_BYTES_MAX, SKIP_ARGS_MAX, SKIP_BULK_BYTES_MAX,
};

#[cfg(test)]
mod tests;
