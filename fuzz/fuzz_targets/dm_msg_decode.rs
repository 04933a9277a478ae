//! Fuzzes the cluster DM message decoder with untrusted bytes: it must never panic,
//! and whatever it accepts must re-encode to a frame that decodes to the same value.
#![no_main]

use dmapi::proto::{decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A stream may hold several frames back to back; decode them in turn as the
    // transport does, stopping at the first error.
    while let Ok((frame, used)) = decode_frame(rest) {
        assert!(used > 0 && used <= rest.len());
        let bytes = encode_frame(&frame).expect("a decoded frame re-encodes");
        let (again, n) = decode_frame(&bytes).expect("a re-encoded frame decodes");
        assert_eq!(n, bytes.len());
        assert_eq!(again, frame);
        rest = &rest[used..];
    }
});
