//! Memory backend: volatile, for tests and benchmarks of the data path.

use super::Backend;
use parking_lot::RwLock;
use std::io;

const CHUNK: u64 = 1 << 20;

/// Memory split in 1 MiB chunks, each behind its own lock, so queues that
/// touch different regions do not contend. Chunks are allocated on first
/// write; unwritten chunks read as zeroes, like a thin-provisioned device.
pub struct MemBackend {
    size: u64,
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
}

impl MemBackend {
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK) as usize;
        Self { size, chunks: (0..n).map(|_| RwLock::new(None)).collect() }
    }

    /// Splits `[off, off+len)` into per-chunk pieces: (chunk, offset in chunk, offset in buffer, len).
    fn pieces(off: u64, len: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let mut done = 0usize;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let pos = off + done as u64;
            let c = (pos / CHUNK) as usize;
            let co = (pos % CHUNK) as usize;
            let n = (CHUNK as usize - co).min(len - done);
            let piece = (c, co, done, n);
            done += n;
            Some(piece)
        })
    }

    fn check(&self, off: u64, len: u64) -> io::Result<()> {
        if off.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond the end"));
        }
        Ok(())
    }
}

impl Backend for MemBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.check(off, buf.len() as u64)?;
        for (c, co, bo, n) in Self::pieces(off, buf.len()) {
            match &*self.chunks[c].read() {
                Some(data) => buf[bo..bo + n].copy_from_slice(&data[co..co + n]),
                None => buf[bo..bo + n].fill(0),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64, _fua: bool) -> io::Result<()> {
        self.check(off, buf.len() as u64)?;
        for (c, co, bo, n) in Self::pieces(off, buf.len()) {
            let mut g = self.chunks[c].write();
            let data = g.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            data[co..co + n].copy_from_slice(&buf[bo..bo + n]);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, off: u64, len: u64, _dealloc: bool) -> io::Result<()> {
        self.deallocate(off, len)
    }

    fn deallocate(&self, off: u64, len: u64) -> io::Result<()> {
        self.check(off, len)?;
        for (c, co, _, n) in Self::pieces(off, len as usize) {
            let mut g = self.chunks[c].write();
            if co == 0 && n == CHUNK as usize {
                *g = None;
            } else if let Some(data) = g.as_mut() {
                data[co..co + n].fill(0);
            }
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.chunks.iter().filter(|c| c.read().is_some()).count() as u64 * CHUNK
    }

    fn describe(&self) -> String {
        format!("memory ({} bytes)", self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_across_chunks_read_back_and_deallocate_zeroes() {
        let m = MemBackend::new(3 * CHUNK);
        let data: Vec<u8> = (0..(CHUNK as usize + 100)).map(|i| i as u8).collect();
        m.write_at(&data, CHUNK - 50, false).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_at(&mut back, CHUNK - 50).unwrap();
        assert_eq!(back, data);
        m.deallocate(CHUNK - 50, 100).unwrap();
        m.read_at(&mut back[..100], CHUNK - 50).unwrap();
        assert!(back[..100].iter().all(|&b| b == 0));
        assert!(m.read_at(&mut back[..10], 3 * CHUNK - 5).is_err());
        m.deallocate(CHUNK, CHUNK).unwrap();
        assert_eq!(m.used_bytes(), 2 * CHUNK, "chunk 1 freed whole; chunks 0 and 2 still hold data");
    }
}
