//! Length-prefixed frames: a 4-byte big-endian payload length, then the payload.
//!
//! Pure code over byte buffers (no sockets): [`decode_frame`] takes what has arrived so far and
//! answers a whole frame, `Ok(None)` when more bytes are needed, or an error for a length over the
//! limit, before any of the oversized payload is buffered.

use bytes::{Buf, Bytes, BytesMut};

use super::error::TransportError;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Appends one frame holding `payload` to `out` (envelopes encode their own frames in one pass;
/// this is the reference the decoder is tested against).
#[cfg(test)]
pub fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    use bytes::BufMut;
    out.reserve(LENGTH_PREFIX_BYTES + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

/// Splits the next whole frame's payload off the front of `buf`.
///
/// # Errors
/// [`TransportError::FrameTooLarge`] when the announced length is over `max_frame_bytes`; the
/// connection must then be closed (the stream cannot be resynchronised).
pub fn decode_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Bytes>, TransportError> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame_bytes {
        return Err(TransportError::FrameTooLarge { len, max: max_frame_bytes });
    }
    if buf.len() < LENGTH_PREFIX_BYTES + len {
        buf.reserve(LENGTH_PREFIX_BYTES + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    #[test]
    fn partial_frames_wait_for_more() {
        let mut out = BytesMut::new();
        encode_frame(b"hello", &mut out);
        let mut buf = BytesMut::from(&out[..3]);
        assert_eq!(decode_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(&out[3..7]);
        assert_eq!(decode_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(&out[7..]);
        assert_eq!(decode_frame(&mut buf, 100).unwrap().unwrap().as_ref(), b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_payload_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32(101);
        assert!(matches!(
            decode_frame(&mut buf, 100),
            Err(TransportError::FrameTooLarge { len: 101, max: 100 })
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 1..8), cut in 0usize..400) {
            let mut wire = BytesMut::new();
            for p in &payloads { encode_frame(p, &mut wire); }
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode_frame(&mut buf, 1000).unwrap() { got.push(f.to_vec()); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode_frame(&mut buf, 1000).unwrap() { got.push(f.to_vec()); }
            prop_assert_eq!(got, payloads);
        }
    }
}
