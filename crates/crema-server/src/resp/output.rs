//! The replies a connection has not written yet.
//!
//! Small replies are encoded into one buffer. A large bulk value (at least
//! [`Output::SHARED_FROM`] bytes) is not copied: the `Bytes` the cache handed out is queued as
//! it is, shared with the cache. Found from outside: a 600-byte `MGET big big ...` (63 times an
//! 8 MB value) that its client never read made the node copy 504 MB into that connection's
//! buffer, eight such clients held 4 GB for the 30 s of the write timeout, and the copying kept
//! the node's runtime from its Raft ticks for 1.6 s, long enough for the leader to lose its
//! leadership. Queued by reference, such a reply costs a few bytes per value until the client
//! reads it; what a slow client can hold beyond that is values replaced or deleted meanwhile,
//! one write of the value's size each.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Where a reply is encoded: a plain buffer (everything copied) or an [`Output`].
pub trait ReplySink {
    /// Appends `bytes`, copied.
    fn put(&mut self, bytes: &[u8]);

    /// Appends a bulk value; an [`Output`] keeps a large one by reference.
    fn put_value(&mut self, value: &Bytes) {
        self.put(value);
    }
}

impl ReplySink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A connection's pending replies, in order: written chunk by chunk (see the module docs).
#[derive(Debug, Default)]
pub struct Output {
    /// Complete chunks before `tail`, in order.
    chunks: VecDeque<Bytes>,
    /// Where small replies are encoded, after every chunk.
    tail: BytesMut,
    /// Bytes pending in all.
    len: usize,
}

impl Output {
    /// Bulk values of at least this many bytes are queued by reference, not copied.
    pub const SHARED_FROM: usize = 16 * 1024;

    /// Bytes pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes to write next: a prefix of what is pending, empty when nothing is.
    pub fn first(&self) -> &[u8] {
        self.chunks.front().map_or(&self.tail[..], |chunk| &chunk[..])
    }

    /// [`Self::first`], cut to at most `max` bytes.
    pub fn first_at_most(&self, max: usize) -> &[u8] {
        let first = self.first();
        &first[..first.len().min(max)]
    }

    /// Drops the first `n` bytes of [`Self::first`], written.
    pub fn advance(&mut self, n: usize) {
        match self.chunks.front_mut() {
            Some(chunk) => {
                chunk.advance(n);
                if chunk.is_empty() {
                    self.chunks.pop_front();
                }
            }
            None => self.tail.advance(n),
        }
        self.len -= n;
        if self.len == 0 {
            self.tail.clear();
        }
    }

    /// Drops everything pending.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.tail.clear();
        self.len = 0;
    }
}

impl ReplySink for Output {
    fn put(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn put_value(&mut self, value: &Bytes) {
        if value.len() < Self::SHARED_FROM {
            return self.put(value);
        }
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
        self.chunks.push_back(value.clone());
        self.len += value.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{Protocol, Reply};

    fn drain(out: &mut Output, step: usize) -> Vec<u8> {
        let mut written = Vec::new();
        while !out.is_empty() {
            let first = out.first();
            let n = first.len().min(step);
            assert!(n > 0, "pending bytes but nothing to write");
            written.extend_from_slice(&first[..n]);
            out.advance(n);
        }
        written
    }

    #[test]
    fn large_values_are_shared_and_the_bytes_come_out_as_encoded() {
        let big = Bytes::from(vec![7u8; Output::SHARED_FROM]);
        let reply = Reply::Array(vec![
            Reply::bulk("small"),
            Reply::Bulk(big.clone()),
            Reply::Integer(3),
            Reply::Bulk(big.clone()),
            Reply::Null,
        ]);
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            let mut copied = BytesMut::new();
            reply.encode(protocol, &mut copied);
            let mut out = Output::default();
            reply.encode(protocol, &mut out);
            assert_eq!(out.len(), copied.len());
            // Queued by reference: the value's own allocation, not a copy of it.
            assert!(out.chunks.iter().any(|c| c.as_ptr() == big.as_ptr()));
            assert_eq!(out.chunks.iter().map(Bytes::len).sum::<usize>(), out.len() - out.tail.len());
            for step in [1, 5, 4096, usize::MAX] {
                let mut again = Output::default();
                reply.encode(protocol, &mut again);
                again.put(b"+OK\r\n");
                let mut expected = copied.to_vec();
                expected.extend_from_slice(b"+OK\r\n");
                assert_eq!(drain(&mut again, step), expected, "written {step} bytes at a time");
                assert!(again.first().is_empty());
            }
        }
    }

    #[test]
    fn small_values_are_copied_into_one_buffer() {
        let mut out = Output::default();
        Reply::bulk(vec![1u8; Output::SHARED_FROM - 1]).encode(Protocol::Resp2, &mut out);
        Reply::OK.encode(Protocol::Resp2, &mut out);
        assert!(out.chunks.is_empty());
        assert_eq!(out.first().len(), out.len());
        out.clear();
        assert!(out.is_empty() && out.first().is_empty());
    }
}
