//! Every raw pointer the C ABI touches, behind small checked types: a null
//! pointer where XDSM needs one is `EFAULT`, never a crash. The rest of the C
//! ABI is safe Rust over these.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use dmapi::types::DmHandle;
use dmapi::{DmError, DmResult};

fn fault() -> DmError {
    DmError::Fault("a null pointer where XDSM needs one")
}

/// Sets the calling thread's `errno`.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid
    // for the thread's lifetime.
    unsafe { *libc::__errno_location() = e }
}

/// Runs a C entry point's body: `Ok(v)` is returned as is, an error sets errno
/// and returns `fail`; a panic (a bug) becomes EIO rather than unwinding into C.
pub fn call<T>(fail: T, f: impl FnOnce() -> DmResult<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_errno(e.errno());
            fail
        }
        Err(_) => {
            set_errno(libc::EIO);
            fail
        }
    }
}

/// A caller's output buffer of `len` bytes.
#[derive(Clone, Copy)]
pub struct Buf {
    ptr: *mut u8,
    len: usize,
}

impl Buf {
    pub fn new(ptr: *mut c_void, len: usize) -> Buf {
        Buf { ptr: ptr.cast(), len }
    }

    /// Copies `src` to the start of the buffer (`src` must fit: callers check
    /// and report E2BIG first).
    pub fn write(&self, src: &[u8]) -> DmResult<()> {
        if src.is_empty() {
            return Ok(());
        }
        if self.ptr.is_null() || src.len() > self.len {
            return Err(fault());
        }
        // SAFETY: XDSM's contract: the caller passes a buffer of `len` writable
        // bytes; we write `src.len() <= len` of them, and `src` is our own memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, src.len()) };
        Ok(())
    }
}

/// A caller's output variable.
pub struct Out<T> {
    ptr: *mut T,
}

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}

impl<T> Out<T> {
    /// Refuses a null pointer up front, before the call does anything.
    pub fn new(ptr: *mut T) -> DmResult<Out<T>> {
        if ptr.is_null() {
            return Err(fault());
        }
        Ok(Out { ptr })
    }

    pub fn set(&self, v: T) -> DmResult<()> {
        // SAFETY: the caller passes a pointer to a writable T (XDSM output
        // argument); null was refused above. write() does not read the old value.
        unsafe { self.ptr.write_unaligned(v) };
        Ok(())
    }
}

/// `len` bytes the caller passes in; `len` 0 may come with any pointer.
pub fn bytes_in<'a>(ptr: *const c_void, len: usize) -> DmResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(fault());
    }
    // SAFETY: the caller passes `len` readable bytes at `ptr` for the duration
    // of the call; the slice does not outlive the C function that made it.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// A value the caller passes by pointer.
pub fn value_in<T: Copy>(ptr: *const T) -> DmResult<T> {
    if ptr.is_null() {
        return Err(fault());
    }
    // SAFETY: the caller passes a pointer to a readable T; unaligned reads are
    // allowed for it.
    Ok(unsafe { ptr.read_unaligned() })
}

/// An array of `n` values the caller passes.
pub fn array_in<T: Copy>(ptr: *const T, n: usize) -> DmResult<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(fault());
    }
    // SAFETY: the caller passes `n` readable T at `ptr`, read one by one
    // without assuming alignment.
    Ok((0..n).map(|i| unsafe { ptr.add(i).read_unaligned() }).collect())
}

/// A NUL-terminated string the caller passes.
pub fn cstr_in<'a>(ptr: *const c_char) -> DmResult<&'a [u8]> {
    if ptr.is_null() {
        return Err(fault());
    }
    // SAFETY: the caller passes a NUL-terminated string that lives for the call.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// The handle `(hanp, hlen)` names: `DM_GLOBAL_HANP`/`DM_GLOBAL_HLEN` is the
/// global handle; anything malformed is EBADF.
pub fn handle_in(hanp: *const c_void, hlen: usize) -> DmResult<DmHandle> {
    if hanp as usize == 1 && hlen == 1 {
        return Ok(DmHandle::global());
    }
    if hanp.is_null() || hlen == 0 {
        return Err(DmError::BadF("no handle"));
    }
    DmHandle::from_bytes(bytes_in(hanp, hlen)?)
}

/// Gives the caller a copy of `h` in memory of its own (freed with
/// `dm_handle_free`, which is `free`).
pub fn handle_out(h: &DmHandle, hanpp: *mut *mut c_void, hlenp: *mut usize) -> DmResult<()> {
    let (pp, lp) = (Out::new(hanpp)?, Out::new(hlenp)?);
    let b = h.as_bytes();
    // SAFETY: malloc of a non-zero size; the result is checked for null.
    let p = unsafe { libc::malloc(b.len()) };
    if p.is_null() {
        return Err(DmError::NoMem("out of memory"));
    }
    Buf::new(p, b.len()).write(b)?;
    pp.set(p)?;
    lp.set(b.len())
}

/// `dm_handle_free`: what [`handle_out`] allocated.
pub fn handle_free(hanp: *mut c_void) {
    if hanp.is_null() || hanp as usize == 1 {
        return;
    }
    // SAFETY: the handle came from handle_out's malloc (XDSM: only handles the
    // library returned may be freed).
    unsafe { libc::free(hanp) }
}

/// The `st_dev`/`st_ino` of an open descriptor.
pub fn fstat(fd: c_int) -> DmResult<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes a struct stat to the pointer we own.
    let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if r != 0 {
        return Err(DmError::BadF("not an open file descriptor"));
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}
