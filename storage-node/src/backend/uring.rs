//! io_uring for the file backend: a batch of reads and writes goes to the
//! kernel with one `io_uring_enter`, so a queue thread keeps a whole batch
//! in flight at the device instead of one `pread` at a time.
//!
//! Each queue thread gets its own ring (thread-local), created on first use;
//! where io_uring is unavailable the caller falls back to `pread`/`pwrite`.
//! All of the backend's `unsafe` is here.

use io_uring::{opcode, types, IoUring};
use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

/// Ring size: the largest batch a queue submits.
pub const RING_ENTRIES: u32 = 64;

thread_local! {
    static RING: RefCell<Option<Result<IoUring, ()>>> = const { RefCell::new(None) };
}

/// One operation of a batch, pointing at memory the caller keeps alive
/// and does not touch until [`run`] returns.
pub struct RawOp {
    pub fd: RawFd,
    pub write: bool,
    pub dsync: bool,
    pub ptr: *mut u8,
    pub len: usize,
    pub off: u64,
    /// Bytes transferred, or the error.
    pub res: io::Result<usize>,
}

impl RawOp {
    pub const EMPTY: RawOp =
        RawOp { fd: -1, write: false, dsync: false, ptr: std::ptr::null_mut(), len: 0, off: 0, res: Ok(0) };
}

/// Submits every op and waits for all of them. Returns false (touching
/// nothing) when this thread cannot have a ring.
///
/// # Safety
/// Each op's `ptr..ptr+len` must be valid for the whole call: writable
/// for reads, readable for writes, and not aliased by another op.
pub unsafe fn run(ops: &mut [RawOp]) -> bool {
    debug_assert!(ops.len() <= RING_ENTRIES as usize);
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let ring = slot.get_or_insert_with(|| {
            IoUring::new(RING_ENTRIES)
                .map_err(|e| tracing::warn!(error = %e, "io_uring unavailable; using pread/pwrite"))
        });
        let Ok(ring) = ring else { return false };
        {
            let mut sq = ring.submission();
            for (i, op) in ops.iter().enumerate() {
                let e = if op.write {
                    opcode::Write::new(types::Fd(op.fd), op.ptr, op.len as u32)
                        .offset(op.off)
                        .rw_flags(if op.dsync { libc::RWF_DSYNC } else { 0 })
                        .build()
                } else {
                    opcode::Read::new(types::Fd(op.fd), op.ptr, op.len as u32).offset(op.off).build()
                };
                // SAFETY: the caller guarantees the buffer outlives the
                // operation; we wait for every completion before returning.
                if unsafe { sq.push(&e.user_data(i as u64)) }.is_err() {
                    // Cannot happen with ops.len() <= RING_ENTRIES and an empty ring.
                    return false;
                }
            }
        }
        let mut left = ops.len();
        for op in ops.iter_mut() {
            op.res = Err(io::Error::other("not completed"));
        }
        while left > 0 {
            if let Err(e) = ring.submit_and_wait(left) {
                // Never return while the kernel may still own a buffer:
                // retry; only a broken ring errs other than EINTR/EAGAIN/EBUSY.
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "io_uring_enter failed; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            for cqe in ring.completion() {
                let i = cqe.user_data() as usize;
                if let Some(op) = ops.get_mut(i) {
                    let r = cqe.result();
                    op.res = if r < 0 { Err(io::Error::from_raw_os_error(-r)) } else { Ok(r as usize) };
                    left -= 1;
                }
            }
        }
        true
    })
}
