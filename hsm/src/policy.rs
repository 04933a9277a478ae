//! The watermark policy: when a volume is fuller than the high mark (seen
//! every `interval_secs`, and at once on a nospace event), the least
//! recently used files the rules allow are migrated until it is down to the
//! low mark. Files are found by a scan of the file system's inodes with
//! their HSM records (`dm_get_bulkall`), not by a walk of the mount; paths
//! (for include/exclude) are asked only of the files that could go.

use dmapi::types::{DmHandle, DmSessId, DmStat, DM_NO_TOKEN};
use libdmapi::Dm;

use crate::config::Policy;
use crate::record::{Record, State};
use crate::{HsmResult, ATTR};

/// A file the policy could migrate.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub handle: DmHandle,
    /// Bytes it holds on the volume (what migrating it frees).
    pub bytes: u64,
    pub size: u64,
    /// When it was last read or written (seconds).
    pub last_use: i64,
    /// Premigrated: only a release away from freed.
    pub premigrated: bool,
}

/// Calls `f` for every regular file of `fs` with its HSM record (None if
/// it has none or an unreadable one), from one `dm_get_bulkall` scan.
pub fn for_each_file(
    dm: &Dm,
    sid: DmSessId,
    fs: &DmHandle,
    mut f: impl FnMut(DmStat, Option<Record>),
) -> HsmResult<()> {
    let mut cookie = dm.dm_init_attrloc(sid, fs, DM_NO_TOKEN)?;
    loop {
        let (stats, next) = dm.dm_get_bulkall(sid, fs, DM_NO_TOKEN, ATTR, cookie, 512)?;
        for (st, attr) in stats {
            if st.mode & libc::S_IFMT == libc::S_IFREG {
                f(st, attr.and_then(|a| Record::decode(&a).ok()));
            }
        }
        if next == 0 {
            return Ok(());
        }
        cookie = next;
    }
}

/// Every regular file of `fs` that holds blocks and is not migrated.
pub fn scan(dm: &Dm, sid: DmSessId, fs: &DmHandle) -> HsmResult<Vec<Candidate>> {
    let mut out = Vec::new();
    for_each_file(dm, sid, fs, |st, rec| {
        let state = rec.map(|r| r.state);
        let Some(handle) = st.handle else { return };
        if st.blocks == 0 || state == Some(State::Migrated) {
            return;
        }
        out.push(Candidate {
            handle,
            bytes: st.blocks * 512,
            size: st.size,
            last_use: st.atime.max(st.mtime),
            premigrated: state == Some(State::Premigrated),
        });
    })?;
    Ok(out)
}

/// The files to migrate to free `need` bytes: those the rules allow, least
/// recently used first, until their blocks add up to `need`. `path_of`
/// gives a file's path on the mount (asked only when there are path rules).
pub fn choose(
    p: &Policy,
    mut cands: Vec<Candidate>,
    need: u64,
    now: i64,
    mut path_of: impl FnMut(&DmHandle) -> Option<String>,
) -> Vec<Candidate> {
    cands.retain(|c| {
        c.size >= p.min_size.0 && c.size <= p.max_size.0 && now.saturating_sub(c.last_use) >= p.min_age_secs as i64
    });
    cands.sort_by_key(|c| (c.last_use, !c.premigrated));
    let mut out = Vec::new();
    let mut freed = 0;
    for c in cands {
        if freed >= need {
            break;
        }
        if !p.include.is_empty() || !p.exclude.is_empty() {
            let Some(path) = path_of(&c.handle) else { continue };
            let inc = p.include.is_empty() || p.include.iter().any(|g| glob(g, &path));
            if !inc || p.exclude.iter().any(|g| glob(g, &path)) {
                continue;
            }
        }
        freed += c.bytes;
        out.push(c);
    }
    out
}

/// Shell-style matching of a path: `*` is any run within one component,
/// `**` any run at all, `?` one character other than `/`.
pub fn glob(pat: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| go(rest, &s[i..])),
            [b'*', rest @ ..] => {
                let stop = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
                (0..=stop).any(|i| go(rest, &s[i..]))
            }
            [b'?', rest @ ..] => matches!(s, [c, tail @ ..] if *c != b'/' && go(rest, tail)),
            [c, rest @ ..] => matches!(s, [d, tail @ ..] if d == c && go(rest, tail)),
        }
    }
    go(pat.as_bytes(), path.as_bytes())
}

/// A volume's size and the bytes in use, as `df` shows them.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub total: u64,
    pub used: u64,
}

impl Usage {
    pub fn of(mount: &std::path::Path) -> std::io::Result<Usage> {
        let st = statvfs(mount)?;
        Ok(Usage { total: st.0, used: st.0 - st.1 })
    }

    pub fn percent(&self) -> u64 {
        (self.used * 100).checked_div(self.total).unwrap_or(0)
    }

    /// Bytes to free to be at `pct` percent used.
    pub fn above(&self, pct: u8) -> u64 {
        self.used.saturating_sub(self.total / 100 * pct as u64)
    }
}

/// (total, free) bytes of the file system holding `p`.
fn statvfs(p: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs is plain integers, valid all zero; the call gets a
    // NUL-terminated path and an out-structure of its own type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_blocks as u64 * st.f_frsize as u64, st.f_bfree as u64 * st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;
    use dmapi::types::FsId;

    fn cand(ino: u64, mb: u64, last_use: i64, premigrated: bool) -> Candidate {
        Candidate { handle: DmHandle::file(FsId(1), ino, 1), bytes: mb << 20, size: mb << 20, last_use, premigrated }
    }

    #[test]
    fn least_recently_used_first_until_enough() {
        let p = Policy::default();
        let c = vec![cand(1, 10, 300, false), cand(2, 10, 100, false), cand(3, 10, 200, false), cand(4, 10, 50, false)];
        let got: Vec<u64> = choose(&p, c, 15 << 20, 1000, |_| None).iter().map(|c| c.handle.ino().unwrap()).collect();
        assert_eq!(got, [4, 2]);
    }

    #[test]
    fn rules_on_size_age_and_path() {
        let p = Policy {
            min_size: Size(2 << 20),
            max_size: Size(50 << 20),
            min_age_secs: 100,
            include: vec!["/data/**".into()],
            exclude: vec!["**.tmp".into()],
            ..Policy::default()
        };
        let c = vec![
            cand(1, 1, 0, false),    // too small
            cand(2, 60, 0, false),   // too large
            cand(3, 10, 950, false), // too recent
            cand(4, 10, 10, false),  // outside /data
            cand(5, 10, 20, false),  // excluded
            cand(6, 10, 30, false),  // taken
        ];
        let paths = |h: &DmHandle| {
            Some(match h.ino().unwrap() {
                4 => "/home/x".to_string(),
                5 => "/data/a/b.tmp".into(),
                n => format!("/data/f{n}"),
            })
        };
        let got: Vec<u64> = choose(&p, c, u64::MAX, 1000, paths).iter().map(|c| c.handle.ino().unwrap()).collect();
        assert_eq!(got, [6]);
    }

    #[test]
    fn globs() {
        for (p, s, m) in [
            ("/data/**", "/data/a/b", true),
            ("/data/*", "/data/a/b", false),
            ("/data/*", "/data/a", true),
            ("**.tmp", "/x/y.tmp", true),
            ("*.tmp", "/x/y.tmp", false),
            ("/f?", "/f1", true),
            ("/f?", "/f/", false),
            ("/a", "/ab", false),
        ] {
            assert_eq!(glob(p, s), m, "{p} {s}");
        }
    }

    #[test]
    fn usage_arithmetic() {
        let u = Usage { total: 1000 << 20, used: 950 << 20 };
        assert_eq!(u.percent(), 95);
        assert_eq!(u.above(80), (950 << 20) - (1000 << 20) / 100 * 80);
        assert_eq!(Usage { total: 100, used: 10 }.above(80), 0);
    }
}
