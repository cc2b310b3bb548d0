//! HTTP/2 frame headers read off a gRPC connection's bytes, both ways, so
//! the connection's requests (streams) can be counted below tonic, which
//! offers no hook per connection. Only the 9-byte frame headers are looked
//! at; payloads are skipped. A stream opens with the client's HEADERS and
//! closes with the server's END_STREAM or an RST_STREAM either way.

use std::collections::HashSet;

use super::conns::Activity;

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;

/// Streams counted at most: h2 refuses more than
/// `max_concurrent_streams_per_connection` anyway, with an RST_STREAM.
const MAX_TRACKED: usize = 100_000;

/// A frame's header: its type, flags and stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Frame headers out of one direction's bytes, fed in any pieces.
#[derive(Debug)]
struct Scanner {
    /// Bytes of the client preface still to pass (the client's side only).
    preface: usize,
    head: [u8; 9],
    filled: usize,
    /// Payload bytes still to skip.
    skip: usize,
}

impl Scanner {
    fn new(preface: bool) -> Self {
        Self {
            preface: if preface { PREFACE.len() } else { 0 },
            head: [0; 9],
            filled: 0,
            skip: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(Head)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.filled).min(bytes.len());
                self.head[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                self.filled += n;
                bytes = &bytes[n..];
                if self.filled == 9 {
                    self.filled = 0;
                    let h = self.head;
                    self.skip =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    on(Head {
                        kind: h[3],
                        flags: h[4],
                        stream,
                    });
                }
            }
        }
    }
}

/// One gRPC connection's open streams, reported to its [`Activity`].
#[derive(Debug)]
pub(crate) struct StreamCounter {
    read: Scanner,
    written: Scanner,
    open: HashSet<u32>,
}

impl Default for StreamCounter {
    fn default() -> Self {
        Self {
            read: Scanner::new(true),
            written: Scanner::new(false),
            open: HashSet::new(),
        }
    }
}

impl StreamCounter {
    /// Bytes the client sent.
    pub(crate) fn read(&mut self, bytes: &[u8], activity: &Activity) {
        let open = &mut self.open;
        self.read.feed(bytes, |head| match head.kind {
            HEADERS if head.stream != 0 => {
                if !open.contains(&head.stream) && open.len() < MAX_TRACKED {
                    open.insert(head.stream);
                    activity.opened_one();
                } else {
                    activity.moved();
                }
            }
            DATA => activity.moved(),
            RST_STREAM => close(open, head.stream, activity),
            _ => {}
        });
    }

    /// Bytes the server wrote.
    pub(crate) fn written(&mut self, bytes: &[u8], activity: &Activity) {
        let open = &mut self.open;
        self.written.feed(bytes, |head| match head.kind {
            HEADERS | DATA if head.flags & END_STREAM != 0 => close(open, head.stream, activity),
            HEADERS | DATA => activity.moved(),
            RST_STREAM => close(open, head.stream, activity),
            _ => {}
        });
    }
}

fn close(open: &mut HashSet<u32>, stream: u32, activity: &Activity) {
    if open.remove(&stream) {
        activity.closed_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let len = u32::try_from(payload).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, payload));
        f
    }

    #[test]
    fn frames_are_found_in_any_pieces() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, 6)); // SETTINGS
        bytes.extend(frame(0x6, 0, 0, 8)); // PING
        bytes.extend(frame(HEADERS, 0x4, 1, 30));
        bytes.extend(frame(DATA, END_STREAM, 1, 100));
        for piece in [1, 2, 7, 9, 10, 1000] {
            let mut scanner = Scanner::new(true);
            let mut heads = Vec::new();
            for chunk in bytes.chunks(piece) {
                scanner.feed(chunk, |h| heads.push((h.kind, h.flags, h.stream)));
            }
            assert_eq!(
                heads,
                [(0x4, 0, 0), (0x6, 0, 0), (HEADERS, 0x4, 1), (DATA, 1, 1)],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn streams_open_with_headers_and_close_with_the_answer_not_with_pings() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use crate::metrics::Metrics;
        use crate::transport::conns::{Closed, ConnTimeouts, Registry};
        let timeouts = ConnTimeouts {
            first_request: Duration::from_secs(5),
            idle: Duration::from_secs(60),
        };
        let registry = Registry::new(1, timeouts, "test", Arc::new(Metrics::new()));
        let slot = registry.admit().unwrap();
        let activity = slot.activity();
        let later = Instant::now() + Duration::from_secs(6);
        let mut counter = StreamCounter::default();
        let mut client = PREFACE.to_vec();
        client.extend(frame(0x4, 0, 0, 6));
        client.extend(frame(0x6, 0, 0, 8));
        counter.read(&client, activity);
        assert_eq!(
            activity.verdict(later),
            Err(Closed::NoRequest),
            "PINGs are no request"
        );
        counter.read(&frame(HEADERS, 0x4, 1, 20), activity);
        assert!(
            activity.verdict(later + Duration::from_secs(600)).is_ok(),
            "a call is open"
        );
        counter.written(&frame(HEADERS, 0x4, 1, 20), activity);
        counter.written(&frame(0x6, 0x1, 0, 8), activity);
        assert!(
            activity.verdict(later + Duration::from_secs(600)).is_ok(),
            "not answered yet"
        );
        counter.written(&frame(HEADERS, 0x5, 1, 10), activity);
        assert_eq!(
            activity.verdict(Instant::now() + Duration::from_secs(61)),
            Err(Closed::Idle),
            "answered: idle again"
        );
    }
}
