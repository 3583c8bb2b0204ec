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
        // A TLS record header (handshake, TLS 1.x) read as a length: found from outside, a
        // plaintext node met by a TLS one logged only a frame of 369,295,616 bytes.
        if buf[0] == 0x16 && buf[1] == 0x03 {
            return Err(TransportError::Handshake(
                "a TLS handshake arrived on this plaintext peer port: the other node runs with peer TLS \
                 (every node needs the same peer TLS settings)"
                    .into(),
            ));
        }
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

    #[test]
    fn a_tls_handshake_on_a_plaintext_port_is_named() {
        // The first bytes of a TLS 1.2/1.3 ClientHello record.
        let mut buf = BytesMut::from(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]);
        let err = decode_frame(&mut buf, 16 << 20).unwrap_err().to_string();
        assert!(err.contains("TLS handshake arrived on this plaintext peer port"), "{err}");
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
