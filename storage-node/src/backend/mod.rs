//! Block storage behind a namespace: a file or block device, or memory.
//!
//! Backends are shared by every queue of every controller that exports the
//! namespace, so all methods take `&self` and are positioned (no seek
//! state). Offsets and lengths are in bytes and already range-checked by
//! the command parser.

pub mod file;
pub mod mem;

use std::io;

pub trait Backend: Send + Sync {
    /// Capacity in bytes.
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// `fua`: the data is durable when this returns.
    fn write_at(&self, buf: &[u8], off: u64, fua: bool) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Zeroes a range; `dealloc` allows freeing the space instead.
    fn write_zeroes(&self, off: u64, len: u64, dealloc: bool) -> io::Result<()>;
    /// Frees a range (Dataset Management deallocate); reads return zeroes after.
    fn deallocate(&self, off: u64, len: u64) -> io::Result<()>;
    /// Space actually used, for NUSE.
    fn used_bytes(&self) -> u64 {
        self.size()
    }
    fn describe(&self) -> String;
}

/// A zero page used to write zeroes where the backend cannot punch holes.
pub(crate) static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
