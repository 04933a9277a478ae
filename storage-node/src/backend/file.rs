//! File and block-device backend.
//!
//! Opens the path twice when O_DIRECT is asked for and supported: aligned
//! I/O goes through the O_DIRECT descriptor (no page-cache copy), anything
//! else through the buffered one. Linux keeps the two coherent: a direct
//! read writes back dirty cached pages of its range first, and a direct
//! write invalidates them. FUA writes use `RWF_DSYNC` so only that write
//! is made durable, not the whole file.

use super::{uring, Backend, IoBuf, IoOp, ZEROES};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment O_DIRECT needs for buffers, offsets and lengths here.
const DIRECT_ALIGN: usize = 4096;

pub struct FileBackend {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    size: u64,
    is_blockdev: bool,
}

#[derive(Debug, Clone)]
pub struct FileOpts {
    /// Create the file with `size` bytes if it does not exist.
    pub create: bool,
    /// Size for a new file, or to grow an existing smaller file to.
    pub size: Option<u64>,
    /// Use O_DIRECT for aligned I/O where the file system supports it.
    pub direct: bool,
}

impl FileBackend {
    pub fn open(path: &Path, opts: &FileOpts) -> io::Result<Self> {
        let buffered = OpenOptions::new().read(true).write(true).create(opts.create).truncate(false).open(path)?;
        let meta = buffered.metadata()?;
        let is_blockdev = meta.file_type().is_block_device();
        let size = if is_blockdev {
            // A block device's length is where SEEK_END lands.
            use std::io::Seek;
            (&buffered).seek(io::SeekFrom::End(0))?
        } else {
            match opts.size {
                Some(want) if meta.len() < want => {
                    buffered.set_len(want)?;
                    want
                }
                _ => meta.len(),
            }
        };
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is empty; give a size", path.display()),
            ));
        }
        let direct = if opts.direct {
            match OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "O_DIRECT not supported here; using buffered I/O");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self { path: path.to_owned(), buffered, direct, size, is_blockdev })
    }

    fn pick(&self, ptr: *const u8, len: usize, off: u64) -> &File {
        match &self.direct {
            Some(d)
                if (ptr as usize).is_multiple_of(DIRECT_ALIGN)
                    && len.is_multiple_of(DIRECT_ALIGN)
                    && off.is_multiple_of(DIRECT_ALIGN as u64) =>
            {
                d
            }
            _ => &self.buffered,
        }
    }

    fn fallocate(&self, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate takes a descriptor we own and plain integers; no memory is shared.
        let r = unsafe { libc::fallocate(self.buffered.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_pages(&self, mut off: u64, len: u64) -> io::Result<()> {
        let end = off + len;
        while off < end {
            let n = ((end - off) as usize).min(ZEROES.len());
            self.buffered.write_all_at(&ZEROES[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    fn pwrite_dsync(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let iov = libc::iovec { iov_base: buf[done..].as_ptr() as *mut libc::c_void, iov_len: buf.len() - done };
            // SAFETY: the iovec points into `buf`, which outlives the call; the kernel only reads it.
            let r =
                unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, (off + done as u64) as libc::off_t, libc::RWF_DSYNC) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev2 wrote nothing"));
            }
            done += r as usize;
        }
        Ok(())
    }
}

impl FileBackend {
    fn uring_batch(&self, ops: &mut [IoOp<'_>]) {
        let mut flat: [uring::RawOp; uring::RING_ENTRIES as usize] = std::array::from_fn(|_| uring::RawOp::EMPTY);
        for (r, op) in flat.iter_mut().zip(ops.iter_mut()) {
            let (ptr, len, write, dsync) = match &mut op.buf {
                IoBuf::Read(b) => (b.as_mut_ptr(), b.len(), false, false),
                IoBuf::Write(b, fua) => (b.as_ptr() as *mut u8, b.len(), true, *fua),
            };
            let fd = self.pick(ptr, len, op.off).as_raw_fd();
            *r = uring::RawOp { fd, write, dsync, ptr, len, off: op.off, res: Ok(0) };
        }
        let n = ops.len();
        // SAFETY: every op points into a distinct buffer borrowed from `ops`,
        // which lives (and is not otherwise touched) until `run` returns.
        let ran = unsafe { uring::run(&mut flat[..n]) };
        for (op, r) in ops.iter_mut().zip(flat.iter_mut()) {
            op.res = if !ran {
                match &mut op.buf {
                    IoBuf::Read(b) => self.read_at(b, op.off),
                    IoBuf::Write(b, fua) => self.write_at(b, op.off, *fua),
                }
            } else {
                match std::mem::replace(&mut r.res, Ok(0)) {
                    Ok(k) if k == r.len => Ok(()),
                    // A short transfer (rare for files): finish it synchronously.
                    Ok(k) => match &mut op.buf {
                        IoBuf::Read(b) => self.read_at(&mut b[k..], op.off + k as u64),
                        IoBuf::Write(b, fua) => self.write_at(&b[k..], op.off + k as u64, *fua),
                    },
                    Err(e) => Err(e),
                }
            };
        }
    }
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.pick(buf.as_ptr(), buf.len(), off).read_exact_at(buf, off)
    }

    fn write_at(&self, buf: &[u8], off: u64, fua: bool) -> io::Result<()> {
        let f = self.pick(buf.as_ptr(), buf.len(), off);
        if fua {
            Self::pwrite_dsync(f, buf, off)
        } else {
            f.write_all_at(buf, off)
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.buffered.sync_data()
    }

    fn write_zeroes(&self, off: u64, len: u64, dealloc: bool) -> io::Result<()> {
        let mode = if dealloc && !self.is_blockdev {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, off, len) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) | Some(libc::EINVAL)) => {
                self.write_zero_pages(off, len)
            }
            Err(e) => Err(e),
        }
    }

    fn deallocate(&self, off: u64, len: u64) -> io::Result<()> {
        if self.is_blockdev {
            // BLKDISCARD would need an ioctl; zeroing keeps "reads return zeroes" true.
            return self.write_zeroes(off, len, false);
        }
        match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.write_zero_pages(off, len),
            Err(e) => Err(e),
        }
    }

    fn used_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        match self.buffered.metadata() {
            Ok(m) if !self.is_blockdev => (m.blocks() * 512).min(self.size),
            _ => self.size,
        }
    }

    fn submit_batch(&self, ops: &mut [IoOp<'_>]) {
        for chunk in ops.chunks_mut(uring::RING_ENTRIES as usize) {
            self.uring_batch(chunk);
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} {} ({} bytes{})",
            if self.is_blockdev { "block device" } else { "file" },
            self.path.display(),
            self.size,
            if self.direct.is_some() { ", O_DIRECT" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_punch_and_fua() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol.img");
        let b = FileBackend::open(&p, &FileOpts { create: true, size: Some(8 << 20), direct: true }).unwrap();
        assert_eq!(b.size(), 8 << 20);
        let data = vec![0x5au8; 1 << 20];
        b.write_at(&data, 0, true).unwrap();
        b.flush().unwrap();
        let used_before = b.used_bytes();
        assert!(used_before >= 1 << 20);
        b.deallocate(0, 1 << 20).unwrap();
        let mut back = vec![1u8; 4096];
        b.read_at(&mut back, 4096).unwrap();
        assert!(back.iter().all(|&x| x == 0), "deallocated range reads as zeroes");
        assert!(b.used_bytes() < used_before, "punching a hole frees space");
        b.write_at(&data[..8192], 8192, false).unwrap();
        b.write_zeroes(8192, 4096, false).unwrap();
        b.read_at(&mut back, 8192).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        b.read_at(&mut back, 12288).unwrap();
        assert!(back.iter().all(|&x| x == 0x5a), "write zeroes stays within its range");
        // Reopening keeps the size; opening without create fails for a missing file.
        drop(b);
        let b = FileBackend::open(&p, &FileOpts { create: false, size: None, direct: false }).unwrap();
        assert_eq!(b.size(), 8 << 20);
        assert!(FileBackend::open(&dir.path().join("missing"), &FileOpts { create: false, size: None, direct: false })
            .is_err());
    }
}
