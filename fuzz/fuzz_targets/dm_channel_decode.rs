//! Fuzzes the local DM channel's message decoder (what the node daemon reads
//! from any local process, privileged or not): it must never panic nor
//! allocate without bound, and whatever it accepts re-encodes to the same
//! bytes' meaning.
#![no_main]

use libdmapi::channel::{decode, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<Request>(data) {
        let again: Request = decode(&libdmapi::channel::encode(&r).expect("re-encodes")).expect("re-decodes");
        assert_eq!(format!("{again:?}"), format!("{r:?}"));
    }
    // The library reads replies from its daemon the same way.
    let _ = decode::<Reply>(data);
});
