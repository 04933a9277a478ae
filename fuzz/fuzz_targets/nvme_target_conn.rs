//! The storage node's queue state machine fed an arbitrary byte stream,
//! after either nothing, a valid ICReq, or a full admin Connect + enable
//! (chosen by the first byte), against a target with a memory namespace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use storage_node::target::Target;
use storage_node::transport::pair::{connected_prefix, drive};

const NQN: &str = "nqn.2026-11.io.tidepool:fuzz";

fn target() -> &'static Arc<Target> {
    static T: OnceLock<Arc<Target>> = OnceLock::new();
    T.get_or_init(|| {
        let cfg = storage_node::config::Config::single_memory(NQN, 4 << 20, "127.0.0.1:0");
        let t = Target::new(cfg.target_opts());
        let s = t.add_subsystem(cfg.subsystem[0].build_subsystem()).unwrap();
        s.add_namespace(cfg.subsystem[0].namespace[0].build(NQN).unwrap()).unwrap();
        t
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut input = match mode % 3 {
        0 => Vec::new(),
        1 => connected_prefix(NQN)[..128].to_vec(),
        _ => connected_prefix(NQN),
    };
    input.extend_from_slice(rest);
    let _ = drive(target(), &input);
});
