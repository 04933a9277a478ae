//! Block storage behind a namespace: a file or block device, or memory.
//!
//! Backends are shared by every queue of every controller that exports the
//! namespace, so all methods take `&self` and are positioned (no seek
//! state). Offsets and lengths are in bytes and already range-checked by
//! the command parser.

pub mod file;
pub mod mem;
mod uring;

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

    /// Runs a batch of reads and writes, filling each op's result. The
    /// default runs them one by one; the file backend hands the whole batch
    /// to io_uring so the device sees them all at once.
    fn submit_batch(&self, ops: &mut [IoOp<'_>]) {
        for op in ops.iter_mut() {
            op.res = match &mut op.buf {
                IoBuf::Read(b) => self.read_at(b, op.off),
                IoBuf::Write(b, fua) => self.write_at(b, op.off, *fua),
            };
        }
    }
}

/// The data of one batched operation.
pub enum IoBuf<'a> {
    Read(&'a mut [u8]),
    /// Data, and whether it must be durable on completion (FUA).
    Write(&'a [u8], bool),
}

pub struct IoOp<'a> {
    pub buf: IoBuf<'a>,
    pub off: u64,
    pub res: std::io::Result<()>,
}

impl<'a> IoOp<'a> {
    pub fn new(buf: IoBuf<'a>, off: u64) -> Self {
        Self { buf, off, res: Ok(()) }
    }
}

/// A zero page used to write zeroes where the backend cannot punch holes.
pub(crate) static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
