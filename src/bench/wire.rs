//! Unary gRPC calls for the load client, straight on the `h2` crate (the
//! HTTP/2 implementation under hyper and tonic): a call is one HEADERS and
//! one DATA frame out, the answer read back and checked, and nothing else.
//!
//! A tonic channel sends each call through a buffer task and a tower stack,
//! and encodes the message on the way; measured against h2load on the same
//! server, that made the client the bound (BENCHMARKS.md, "The load
//! client"). Here the body is framed once per request, before the run.

use std::time::Duration;

use prost::Message;
use prost::bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, Method, Request, Uri, uri::Authority};

/// The largest answer read, as tonic's default decoding limit: past it a
/// call fails instead of growing the client without bound.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("not an http:// address (the load client speaks plaintext HTTP/2 only)")]
    NotPlaintext,
    #[error("no host:port in the address")]
    NoAuthority,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[source] h2::Error),
}

/// Why one call failed; a failed call is counted, and the first reason shown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("HTTP status {0}")]
    HttpStatus(http::StatusCode),
    /// A status other than OK, as a person reads it: `INVALID_ARGUMENT: ...`,
    /// the message percent-decoded.
    #[error("{code}: {message}")]
    Grpc {
        /// The code's name in the gRPC specification.
        code: &'static str,
        message: String,
    },
    #[error("no gRPC status in the answer")]
    NoStatus,
    #[error("answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("answer is not one uncompressed gRPC message")]
    Framing,
    #[error("answer does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The address a run sends to: `host:port`, or an `http://` URL.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    authority: Authority,
}

impl Target {
    pub(crate) fn parse(addr: &str) -> Result<Self, ConnectError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let uri: Uri = url.parse().map_err(|_| ConnectError::NoAuthority)?;
        if uri.scheme_str() != Some("http") {
            return Err(ConnectError::NotPlaintext);
        }
        let authority = uri.authority().cloned().ok_or(ConnectError::NoAuthority)?;
        Ok(Self { authority })
    }

    /// The URI of `method`, a gRPC path such as `/pkg.Service/Method`.
    pub(crate) fn uri(&self, method: &'static str) -> Uri {
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(method)
            .build()
            // Cannot fail: the authority was parsed, and the paths are ours.
            .unwrap_or_default()
    }

    /// Opens one HTTP/2 connection, driven by a task of its own, and returns
    /// the handle calls are sent on (cloned for each call in flight).
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<h2::client::SendRequest<Bytes>, ConnectError> {
        let open = async {
            let tcp = TcpStream::connect(self.authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            h2::client::handshake(tcp)
                .await
                .map_err(ConnectError::Handshake)
        };
        let (send, connection) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        // It ends when the connection closes; calls then fail and are counted.
        tokio::spawn(connection);
        Ok(send)
    }
}

/// `message` as one gRPC frame: an uncompressed flag byte, the length as a
/// big-endian u32, then the message.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    // A message larger than 4 GiB cannot be framed; it cannot be read either.
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(message);
    framed
}

/// Sends one unary call to `uri` with a framed body, and decodes the answer.
pub(crate) async fn unary<U: Message + Default>(
    send: &mut h2::client::SendRequest<Bytes>,
    uri: &Uri,
    framed: Bytes,
) -> Result<U, CallError> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let mut ready = send.clone().ready().await?;
    let (answer, mut body_out) = ready.send_request(request, false)?;
    body_out.send_data(framed, true)?;
    let answer = answer.await?;
    if answer.status() != http::StatusCode::OK {
        return Err(CallError::HttpStatus(answer.status()));
    }
    let (head, mut body) = answer.into_parts();
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        // Hand the window back, or the connection stalls after 64 KiB.
        let _ = body.flow_control().release_capacity(chunk.len());
        if message.len() + chunk.len() > MAX_ANSWER {
            return Err(CallError::TooLarge);
        }
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    // A trailers-only answer carries its status in the headers.
    check_status(trailers.as_ref().unwrap_or(&head.headers))?;
    let Some((&0, rest)) = message.split_first() else {
        return Err(CallError::Framing);
    };
    let Some((size, message)) = rest.split_first_chunk::<4>() else {
        return Err(CallError::Framing);
    };
    if message.len() != u32::from_be_bytes(*size) as usize {
        return Err(CallError::Framing);
    }
    Ok(U::decode(message)?)
}

/// The call's gRPC status. Read here rather than with
/// `tonic::Status::from_header_map`, which panics on a malformed details
/// header and copies the map on every call.
fn check_status(headers: &HeaderMap) -> Result<(), CallError> {
    let Some(code) = headers.get("grpc-status") else {
        return Err(CallError::NoStatus);
    };
    match tonic::Code::from_bytes(code.as_bytes()) {
        tonic::Code::Ok => Ok(()),
        code => Err(CallError::Grpc {
            code: super::code_name(code),
            message: headers
                .get("grpc-message")
                .map(|v| percent_decode(v.as_bytes()))
                .unwrap_or_default(),
        }),
    }
}

/// `grpc-message` as sent: UTF-8 with `%XX` escapes (the gRPC HTTP/2
/// protocol's percent-encoding); an escape that is not one stays as it is.
fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)),
            _ => None,
        };
        match escaped {
            // Two hex digits: at most 0xff, so the cast keeps every bit.
            Some((hi, lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plaintext_http_with_a_host_and_port() {
        assert_eq!(
            Target::parse("127.0.0.1:50051").unwrap().authority.as_str(),
            "127.0.0.1:50051"
        );
        assert_eq!(
            Target::parse("http://localhost:9/")
                .unwrap()
                .authority
                .as_str(),
            "localhost:9"
        );
        assert!(matches!(
            Target::parse("https://localhost:9"),
            Err(ConnectError::NotPlaintext)
        ));
        assert!(matches!(
            Target::parse("unix:///tmp/s"),
            Err(ConnectError::NotPlaintext | ConnectError::NoAuthority)
        ));
    }

    #[test]
    fn a_status_other_than_ok_is_an_error_with_its_name_and_decoded_message() {
        let mut h = HeaderMap::new();
        assert!(matches!(check_status(&h), Err(CallError::NoStatus)));
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("too%20many%20%60calls%60%0A"),
        );
        let e = check_status(&h).unwrap_err().to_string();
        assert_eq!(e, "RESOURCE_EXHAUSTED: too many `calls`\n");
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(check_status(&h).is_ok());
    }

    #[test]
    fn messages_are_percent_decoded_and_bad_escapes_kept() {
        assert_eq!(percent_decode(b"a%20b%25c"), "a b%c");
        assert_eq!(percent_decode(b"%E2%9C%93 ok"), "\u{2713} ok");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
    }

    #[test]
    fn a_frame_is_flag_length_and_message() {
        assert_eq!(frame(b"ab"), vec![0, 0, 0, 0, 2, b'a', b'b']);
    }
}
