//! The reply side of a client connection: encoding replies into the output, and writing them
//! to a client that may read slowly, not at all, or send more while its replies wait.

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::info;

use super::{note_buffer, Closed, Connection, READ_CHUNK};
use crate::cmd::Session;
use crate::resp::Reply;

/// The most one write of replies hands the socket, and how much a connection writes before it
/// lets the other tasks of its runtime run (see `Connection::flush`). Found from outside: 200
/// clients that each asked for an 8 MB value and never read it had the node copy up to their
/// sockets' kernel buffers (4 MB each) in single writes, one task after another, and a client
/// of the same node waited 0.3-1.2 s for a SET.
const WRITE_CHUNK: usize = 256 * 1024;
const WRITE_TURN: usize = 1024 * 1024;

/// How long replies may wait untaken once the query buffer is full (see `Connection::flush`).
const PIPELINE_STALL: std::time::Duration = std::time::Duration::from_secs(2);

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// Sends what the socket takes at once of the pending replies (a killed connection's
    /// last ones: `CLIENT KILL` of itself answers before it closes), without waiting.
    pub(super) fn send_what_fits(&mut self) {
        if let Some(Ok(n)) = self.stream.write(self.output.first()).now_or_never() {
            self.output.advance(n);
            let _ = self.stream.flush().now_or_never();
        }
    }

    /// Encodes `reply`, writing out once enough is pending. An array or map is encoded element
    /// by element, writing out between them as it grows, so that what waits for the client is
    /// bounded by `max_output_buffer_bytes` and one element, however large the reply. Found
    /// from outside: a 210 KB `MGET` naming a 16 KB value 30,000 times made the node copy a
    /// 469 MB reply at once; eight such clients that never read held 3.9 GB and stalled the
    /// node until its leader lost its leadership.
    pub(super) async fn answer(&mut self, session: &Session, reply: Reply) -> Result<(), Closed> {
        let limit = self.state.settings.max_output_buffer_bytes;
        if !reply.is_aggregate() {
            reply.encode(session.protocol, &mut self.output);
            return if self.output.len() >= limit { self.flush().await } else { Ok(()) };
        }
        for piece in reply.pieces() {
            piece.encode(session.protocol, &mut self.output);
            if self.output.len() >= limit {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Writes the pending replies; the client must take some of them at least every
    /// `write_timeout` (a slow reader that keeps reading is served: found from outside, one
    /// reading 95 KB/s was cut off 73 s into an 8 MB reply, the timeout counting from the
    /// start). While the client does not take them, its next requests are read on (up to the
    /// query buffer's limit), not run: found from outside, a client that pipelines large
    /// requests with large replies (redis-py sends a whole pipeline before it reads) and a
    /// server that stopped reading while its replies waited each waited for the other, until
    /// the write timeout closed the connection. A client that sends more than the query
    /// buffer holds before it reads waits for a server that cannot read on: once the buffer is
    /// full and nothing was taken for [`PIPELINE_STALL`], the connection closes (found from
    /// outside: hiredis and redis-rb pipelines of 96 MB stalled 30 s and were reset, silently).
    pub(super) async fn flush(&mut self) -> Result<(), Closed> {
        if self.output.is_empty() {
            return Ok(());
        }
        // The usual case, first: the socket takes it all at once.
        if let Some(Ok(n)) = self.stream.write(self.output.first_at_most(WRITE_CHUNK)).now_or_never() {
            self.output.advance(n);
            if self.output.is_empty() && matches!(self.stream.flush().now_or_never(), Some(Ok(()))) {
                return Ok(());
            }
        }
        let settings = &self.state.settings;
        let mut deadline = Instant::now() + settings.write_timeout;
        let (mut reader, mut writer) = tokio::io::split(&mut *self.stream);
        let mut reading = true;
        let (kill, stop) = (self.entry.kill.clone(), self.shutdown.clone());
        // Made once: each wait registers with its token (a lock, shared for shutdown).
        let (killed, shutdown) = (kill.cancelled(), stop.cancelled());
        tokio::pin!(killed, shutdown);
        let parser_bytes = self.progress.held_bytes();
        let mut this_turn = 0;
        while !self.output.is_empty() {
            let room = reading && self.input.len() + parser_bytes < settings.max_query_buffer_bytes;
            if room {
                self.input.reserve(READ_CHUNK);
            }
            // The buffer is full and the client still sends: it reads nothing until it is done.
            let stalled = reading && !room;
            let wait_until = if stalled { deadline.min(Instant::now() + PIPELINE_STALL) } else { deadline };
            let mut wrote = 0;
            tokio::select! {
                biased;
                () = &mut killed => return Err(Closed::Killed),
                () = &mut shutdown => return Err(Closed::Shutdown),
                written = writer.write(self.output.first_at_most(WRITE_CHUNK)) => match written {
                    Ok(0) => return Err(Closed::Io(std::io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        wrote = n;
                        deadline = Instant::now() + settings.write_timeout;
                    }
                    Err(e) => return Err(Closed::Io(e)),
                },
                read = reader.read_buf(&mut self.input), if room => match read {
                    // The client stopped sending: the run loop sees it once these are out.
                    Ok(0) => reading = false,
                    Ok(_) => {
                        self.read_while_flushing = true;
                        // Counted with every client's query buffers (the stream is split here,
                        // so the fields are passed one by one).
                        let held = self.input.len() + parser_bytes;
                        note_buffer(self.state, self.id, held, &mut self.buffer_tracked, &self.buffer_evicted);
                        if self.buffer_evicted.is_cancelled() {
                            return Err(Closed::BufferEvicted);
                        }
                    }
                    Err(e) => return Err(Closed::Io(e)),
                },
                _ = tokio::time::sleep_until(wait_until) => {
                    if stalled && wait_until < deadline {
                        let (held, addr) = (self.input.len() + parser_bytes, self.entry.addr);
                        info!(
                            %addr,
                            held,
                            "client closed: it sent more requests than its query buffer holds \
                             (max-query-buffer-bytes) without reading their replies"
                        );
                        return Err(Closed::PipelineStalled);
                    }
                    return Err(Closed::SlowReader);
                }
            }
            self.output.advance(wrote);
            this_turn += wrote;
            if this_turn >= WRITE_TURN {
                this_turn = 0;
                tokio::task::yield_now().await;
            }
        }
        match tokio::time::timeout_at(deadline, writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Closed::Io(e)),
            Err(_) => return Err(Closed::SlowReader),
        }
        self.output.clear();
        Ok(())
    }

    pub(super) async fn reply_and_close(&mut self, reply: Reply) -> Result<(), Closed> {
        reply.encode(crate::resp::Protocol::Resp2, &mut self.output);
        self.flush().await
    }
}
