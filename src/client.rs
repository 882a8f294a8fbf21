//! A small blocking Kafka client over one TCP connection, for the command
//! line tools. Encodes requests with the kafka-protocol codec and reads the
//! matching response; no pipelining.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use thiserror::Error;

/// Largest response accepted from a broker.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Socket timeout for every call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to the broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding or decoding {0:?}: {1}")]
    Codec(ApiKey, String),
    #[error("response of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("response correlation id {got} does not match {want}")]
    Correlation { got: i32, want: i32 },
}

pub struct Client {
    stream: TcpStream,
    next_correlation: i32,
    client_id: String,
}

impl Client {
    pub fn connect(addr: &str, client_id: &str) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            next_correlation: 1,
            client_id: client_id.to_string(),
        })
    }

    /// Sends `request` as `api_key` version `version` and decodes the answer.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let codec = |e: anyhow::Error| ClientError::Codec(api_key, e.to_string());
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .map_err(codec)?;
        request.encode(&mut buf, version).map_err(codec)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)?;
        let mut len_buf = [0u8; 4];
        self.stream.read_exact(&mut len_buf)?;
        let len = i32::from_be_bytes(len_buf).max(0) as usize;
        if len > MAX_RESPONSE_BYTES {
            return Err(ClientError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
            .map_err(codec)?;
        if header.correlation_id != correlation {
            return Err(ClientError::Correlation {
                got: header.correlation_id,
                want: correlation,
            });
        }
        let response = Resp::decode(&mut body, version).map_err(codec)?;
        let _ = body.remaining();
        Ok(response)
    }
}
