//! RESP requests as they arrive on a client connection: any bytes parse to requests, "need
//! more bytes" or an error, never a panic, and every parsed request consumes bytes.
#![no_main]

use bytes::BytesMut;
use crema_server::resp::{take_request, RequestLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits so the fuzzer reaches them.
    let limits = RequestLimits { max_bulk_bytes: 4096, max_args: 64, max_inline_bytes: 1024 };
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match take_request(&mut buf, &limits) {
            Ok(Some(_)) => assert!(buf.len() < before, "a request was parsed from no bytes"),
            Ok(None) | Err(_) => break,
        }
    }
});
