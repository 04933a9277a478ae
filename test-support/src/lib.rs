//! Helpers the client and storage-node integration tests share (each
//! crate's `tests/common` module re-exports what it uses), and [`skip`], the
//! one place that decides whether a test may skip.

pub mod etcd;
pub mod skip;

pub use skip::{fuse_available, have_tool, is_root};

use std::sync::atomic::{AtomicU32, Ordering};

/// xorshift64*: a small seeded generator, the same on every machine, for the
/// seeded simulations (a failure replays from its seed).
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Below `n` (not 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// True `per_mille` times in a thousand.
    pub fn per_mille(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

/// The seeds a seeded simulation runs: `TIDEPOOL_SIM_SEED=<n>` replays
/// seed n alone, `TIDEPOOL_SIM_SEEDS=<n>` runs seeds 1 to n (a longer run
/// than the suite's), and otherwise seeds 1 to `default`.
pub fn sim_seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("TIDEPOOL_SIM_SEED") {
        return vec![s.parse().expect("TIDEPOOL_SIM_SEED is a number")];
    }
    let n = std::env::var("TIDEPOOL_SIM_SEEDS").map_or(default, |n| n.parse().expect("TIDEPOOL_SIM_SEEDS is a number"));
    (1..=n).collect()
}

/// A port on `ip` for a server that may be restarted on it: below the
/// kernel's ephemeral range (32768 up), where outgoing connections take
/// their local ports and could take a killed server's port before it comes
/// back; spread by process id, and free when chosen.
pub fn listen_port(ip: &str) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = 20_000 + base.wrapping_add(n.wrapping_mul(104_729)) % 12_000;
        if std::net::TcpListener::bind((ip, p as u16)).is_ok() {
            return p as u16;
        }
    }
}
