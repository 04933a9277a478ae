//! Block devices the file system runs on: a shared NVMe-oF namespace, or
//! memory for tests. Offsets are in file-system blocks.

use super::{FsError, Result};
use nvmf::Controller;
use std::sync::Arc;

pub trait BlockDev: Send + Sync {
    /// File-system block size in bytes (a multiple of the device's LBA size).
    fn block_size(&self) -> u32;
    /// Capacity in file-system blocks.
    fn blocks(&self) -> u64;
    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()>;
    /// `fua`: durable when this returns.
    fn write(&self, block: u64, data: &[u8], fua: bool) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Refuses every later read and write, for good (the host was expelled
    /// and must not write what it still holds). Nothing for local devices.
    fn close(&self) {}
    /// Zeroes `count` blocks from `block` (newly allocated blocks must not
    /// show what a freed file left there).
    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        let zero = vec![0u8; self.block_size() as usize * count.min(64) as usize];
        let mut b = block;
        while b < block + count {
            let n = (block + count - b).min(64);
            self.write(b, &zero[..n as usize * self.block_size() as usize], false)?;
            b += n;
        }
        Ok(())
    }
}

fn check(bs: u32, blocks: u64, block: u64, len: usize) -> Result<()> {
    if len == 0 || !len.is_multiple_of(bs as usize) {
        return Err(FsError::Invalid(format!("{len} bytes is not whole {bs}-byte blocks")));
    }
    if block.checked_add((len / bs as usize) as u64).is_none_or(|e| e > blocks) {
        return Err(FsError::Invalid(format!("blocks {block}+{} beyond the end ({blocks})", len / bs as usize)));
    }
    Ok(())
}

/// A volume in memory.
pub struct MemDev {
    bs: u32,
    data: parking_lot::RwLock<Vec<u8>>,
}

impl MemDev {
    pub fn new(block_size: u32, bytes: u64) -> Self {
        Self { bs: block_size, data: parking_lot::RwLock::new(vec![0; bytes as usize]) }
    }
    /// A copy of the raw bytes (for tests that inspect or corrupt the volume).
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }
    pub fn restore(&self, bytes: &[u8]) {
        self.data.write().copy_from_slice(bytes);
    }
}

impl BlockDev for MemDev {
    fn block_size(&self) -> u32 {
        self.bs
    }
    fn blocks(&self) -> u64 {
        self.data.read().len() as u64 / self.bs as u64
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check(self.bs, self.blocks(), block, buf.len())?;
        let off = (block * self.bs as u64) as usize;
        buf.copy_from_slice(&self.data.read()[off..off + buf.len()]);
        Ok(())
    }
    fn write(&self, block: u64, data: &[u8], _fua: bool) -> Result<()> {
        check(self.bs, self.blocks(), block, data.len())?;
        let off = (block * self.bs as u64) as usize;
        self.data.write()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A namespace on a storage node, reached through the user-space initiator.
pub struct NvmfDev {
    ctrl: Arc<Controller>,
    nsid: u32,
    lba_size: u32,
    bs: u32,
    blocks: u64,
}

impl NvmfDev {
    pub fn new(ctrl: Arc<Controller>, nsid: u32, block_size: u32) -> Result<Self> {
        let ns = ctrl.identify_ns(nsid).map_err(|e| FsError::Io(e.to_string()))?;
        if !block_size.is_multiple_of(ns.block_size) {
            return Err(FsError::Invalid(format!(
                "block size {block_size} is not a multiple of the LBA size {}",
                ns.block_size
            )));
        }
        let blocks = ns.blocks * ns.block_size as u64 / block_size as u64;
        Ok(Self { ctrl, nsid, lba_size: ns.block_size, bs: block_size, blocks })
    }
}

impl BlockDev for NvmfDev {
    fn block_size(&self) -> u32 {
        self.bs
    }
    fn close(&self) {
        self.ctrl.close();
    }
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check(self.bs, self.blocks, block, buf.len())?;
        let lba = block * (self.bs / self.lba_size) as u64;
        self.ctrl.read_range(self.nsid, lba, self.lba_size, buf).map_err(|e| FsError::Io(e.to_string()))
    }
    fn write(&self, block: u64, data: &[u8], fua: bool) -> Result<()> {
        check(self.bs, self.blocks, block, data.len())?;
        let lba = block * (self.bs / self.lba_size) as u64;
        self.ctrl.write_range(self.nsid, lba, self.lba_size, data, fua).map_err(|e| FsError::Io(e.to_string()))
    }
    fn flush(&self) -> Result<()> {
        self.ctrl.flush(self.nsid).map_err(|e| FsError::Io(e.to_string()))
    }
    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        check(self.bs, self.blocks, block, (count * self.bs as u64) as usize)?;
        // NVMe Write Zeroes: no data on the wire (the storage node punches a hole).
        let per = (self.bs / self.lba_size) as u64;
        let (mut lba, end) = (block * per, (block + count) * per);
        while lba < end {
            let n = (end - lba).min(65536);
            self.ctrl.write_zeroes(self.nsid, lba, n as u32, false).map_err(|e| FsError::Io(e.to_string()))?;
            lba += n;
        }
        Ok(())
    }
}
