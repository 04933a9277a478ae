//! Fuzzes what the DM RDMA transport reads off the wire before any frame:
//! the RDMA CM private data and the header of every received SEND. Neither
//! parser may panic; what they accept must describe the bytes given.
#![no_main]

use dmapi::transport::rdma_wire::{ConnParams, SendHdr, HDR_LEN, KIND_CREDIT, MORE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ConnParams::parse(data) {
        assert!(p.recv_depth.get() >= 4 && p.buf_size.get() >= 256);
    }
    if let Ok((h, body)) = SendHdr::parse(data) {
        assert_eq!(h.len.get() as usize, body.len());
        assert_eq!(data.len(), HDR_LEN + body.len());
        assert!(h.flags & !MORE == 0);
        if h.kind == KIND_CREDIT {
            assert!(body.is_empty());
        }
    }
});
