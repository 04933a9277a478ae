//! Who is on the other end of a local API connection: `SO_PEERCRED` (uid, gid, pid,
//! set by the kernel at connect time, so a client cannot lie about them) plus the
//! supplementary groups from `/proc/<pid>/status`; and whether it hung up. This
//! module holds the daemon's only `unsafe` blocks.

use std::os::fd::AsRawFd;

use dmapi::session::Caller;

/// The credentials of the process that connected `s`.
pub fn peer_caller(s: &impl AsRawFd) -> std::io::Result<(Caller, i32)> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a properly aligned, writable `ucred` and `len` holds its exact
    // size, which is what SO_PEERCRED writes; the fd is open for the call's duration
    // because `s` is borrowed.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut gids = vec![cred.gid];
    // Supplementary groups are best effort: the process may already have exited.
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", cred.pid)) {
        if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
            gids.extend(line.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    Ok((Caller { uid: cred.uid, gids }, cred.pid))
}

/// Whether the peer of `s` has closed its end, waiting up to `timeout_ms` for it.
/// Pending request bytes are not consumed (`poll`, not `read`).
pub fn peer_hung_up(s: &impl AsRawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: `p` is one valid pollfd and nfds is 1; the fd stays open while `s` is
    // borrowed.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    rc > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socketpair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (c, pid) = peer_caller(&a).unwrap();
        assert_eq!(pid as u32, std::process::id());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(c.uid, std::fs::metadata("/proc/self").unwrap().uid());
    }

    #[test]
    fn hang_up_is_seen_and_data_is_not_mistaken_for_it() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        assert!(!peer_hung_up(&a, 10));
        drop(b);
        assert!(peer_hung_up(&a, 1000));
    }
}
