//! Unix-domain `SOCK_SEQPACKET` sockets, which the standard library lacks:
//! connection-oriented like a stream, but every send is one record that the
//! peer receives whole, so the local DM channel needs no length prefix to
//! find its messages, and a reader never sees half of one.
//!
//! The unsafe code here is the system calls themselves, each on a descriptor
//! this module owns and buffers it borrows for the call's duration.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

/// A listening `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: OwnedFd,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    if b.len() >= a.sun_path.len() || b.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("socket path {} is too long", path.display())));
    }
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    Ok((a, len as libc::socklen_t))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl SeqPacket {
    /// Connects to the listener bound at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<SeqPacket> {
        let fd = socket()?;
        let (a, len) = sockaddr(path.as_ref())?;
        // SAFETY: `a` is a valid sockaddr_un of `len` bytes, borrowed for the call.
        check(unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) })?;
        Ok(SeqPacket { fd })
    }

    /// A connected pair (for tests).
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a writable array of two descriptors, what socketpair(2) fills.
        check(unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        })?;
        // SAFETY: both descriptors were just created and are owned by no one else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((SeqPacket { fd: a }, SeqPacket { fd: b }))
    }

    /// Sends the concatenation of `parts` as one record.
    pub fn send_parts(&self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        // SAFETY: msghdr is plain old data; zeroes are valid for every field.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = parts.as_ptr() as *mut libc::iovec;
        m.msg_iovlen = parts.len();
        let want: usize = parts.iter().map(|p| p.len()).sum();
        loop {
            // SAFETY: `m` points at `parts`, IoSlices laid out as iovecs, borrowed for
            // the call; MSG_NOSIGNAL makes a closed peer an EPIPE rather than a signal.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // A record is sent whole or not at all.
            debug_assert_eq!(n as usize, want);
            return Ok(());
        }
    }

    /// Receives one record into `buf`: its length, 0 at end of stream. A
    /// record longer than `buf` is an error, not a silent truncation.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is writable for its length, borrowed for the call.
            // MSG_TRUNC makes the result the record's real length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a record of {n} bytes")));
            }
            return Ok(n);
        }
    }

    /// A second handle on the same socket.
    pub fn try_clone(&self) -> io::Result<SeqPacket> {
        Ok(SeqPacket { fd: self.fd.try_clone()? })
    }
}

impl SeqPacketListener {
    /// Binds and listens at `path`.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<SeqPacketListener> {
        let fd = socket()?;
        let (a, len) = sockaddr(path.as_ref())?;
        // SAFETY: `a` is a valid sockaddr_un of `len` bytes, borrowed for the call.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) })?;
        // SAFETY: listen(2) on a descriptor this function owns.
        check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(SeqPacketListener { fd })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<SeqPacket> {
        loop {
            // SAFETY: null address arguments are allowed; a non-negative result is a
            // new descriptor owned by no one else.
            let fd = unsafe {
                libc::accept4(self.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: `fd` was just returned by accept4(2).
            return Ok(SeqPacket { fd: unsafe { OwnedFd::from_raw_fd(fd) } });
        }
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_boundaries_and_oversize_ones_are_refused() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send_parts(&[IoSlice::new(b"he"), IoSlice::new(b"llo")]).unwrap();
        a.send_parts(&[IoSlice::new(b"world!")]).unwrap();
        let mut buf = [0u8; 16];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"world!");
        a.send_parts(&[IoSlice::new(&[7u8; 32])]).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap_err().kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn a_listener_accepts_at_its_path() {
        let dir = std::env::temp_dir().join(format!("tp-seqpacket-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = SeqPacketListener::bind(&dir).unwrap();
        let c = SeqPacket::connect(&dir).unwrap();
        let s = l.accept().unwrap();
        c.send_parts(&[IoSlice::new(b"ping")]).unwrap();
        let mut buf = [0u8; 8];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        let _ = std::fs::remove_file(&dir);
        assert!(SeqPacket::connect(&dir).is_err());
    }
}
