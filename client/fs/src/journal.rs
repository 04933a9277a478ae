//! Write-ahead metadata journal (physical block logging).
//!
//! A transaction is the new images of some metadata blocks. [`Journal::commit`]
//! writes descriptor, images and commit block in one FUA write; the commit
//! block's CRC covers them all, so a transaction torn by a crash is simply
//! not there on replay. Home locations are written later, at
//! [`Journal::checkpoint`], which then advances the journal header. A
//! manager that restarts (or takes over after fencing the old one)
//! [`Journal::open`]s the journal: every committed transaction after the
//! header is written home again, in order, before anything else happens.

use super::blockdev::BlockDev;
use super::format::{
    seal, sealed_ok, JournalCommit, JournalDesc, JournalHeader, JCOMMIT_MAGIC, JDESC_MAGIC, JHDR_MAGIC, JHDR_MAX_VOID,
    JHDR_TOKENS_OUT, JHDR_VOID_OVERFLOW,
};
use super::{FsError, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// A transaction read back from the journal: where it is, and its blocks.
type ReadTx = (Live, Vec<(u64, Vec<u8>)>);

/// Where a committed transaction not yet written home sits in the ring.
struct Live {
    seq: u64,
    /// Journal position of its descriptor and its length in blocks.
    pos: u64,
    len: u64,
}

pub struct Journal {
    dev: Arc<dyn BlockDev>,
    start: u64,
    nblocks: u64,
    bs: usize,
    /// Oldest live transaction: where replay would start.
    head_seq: u64,
    head_pos: u64,
    next_seq: u64,
    /// Where the next transaction is written.
    tail: u64,
    live: VecDeque<Live>,
    /// The newest committed image of every block not yet written home:
    /// what a reader must see instead of the stale home block.
    newest: HashMap<u64, Vec<u8>>,
    /// The header's flags ([`JHDR_TOKENS_OUT`], [`JHDR_VOID_OVERFLOW`]).
    flags: u8,
    incarnation: u64,
    /// Connections of this incarnation whose sizes are void.
    void: Vec<u64>,
}

/// What the manager before this one left: its incarnation, and which of
/// its connections' sizes are void (all of them if `all_void`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prior {
    pub incarnation: u64,
    pub void: Vec<u64>,
    pub all_void: bool,
}

/// How many voided connection ids fit after the header in a block of `bs`
/// bytes (before its CRC), at most [`JHDR_MAX_VOID`].
fn void_capacity(bs: usize) -> usize {
    JHDR_MAX_VOID.min((bs - size_of::<JournalHeader>() - 4) / 8)
}

/// The largest transaction, in metadata blocks, one descriptor can name.
pub fn max_tx_blocks(bs: usize) -> usize {
    (bs - size_of::<JournalDesc>() - 4) / 8
}

impl Journal {
    /// Writes an empty journal header (mkfs).
    pub fn format(dev: &dyn BlockDev, start: u64, nblocks: u64) -> Result<()> {
        if nblocks < 8 {
            return Err(FsError::Invalid("journal needs at least 8 blocks".into()));
        }
        let bs = dev.block_size() as usize;
        let mut b = vec![0u8; bs];
        let h = JournalHeader {
            magic: JHDR_MAGIC,
            flags: 0,
            rsvd: [0; 3],
            head_seq: 1.into(),
            head_pos: 1.into(),
            incarnation: 0.into(),
            nvoid: 0.into(),
            rsvd2: 0.into(),
        };
        b[..size_of::<JournalHeader>()].copy_from_slice(h.as_bytes());
        seal(&mut b);
        dev.write(start, &b, true)
    }

    /// Opens the journal and replays every committed transaction after the
    /// header to its home blocks. Returns the journal and how many
    /// transactions were replayed.
    pub fn open(dev: Arc<dyn BlockDev>, start: u64, nblocks: u64) -> Result<(Journal, usize)> {
        let bs = dev.block_size() as usize;
        let mut b = vec![0u8; bs];
        dev.read(start, &mut b)?;
        if !sealed_ok(&b) {
            return Err(FsError::Corrupt { block: start, why: "journal header checksum".into() });
        }
        let h =
            JournalHeader::read_from_prefix(&b).map_err(|_| FsError::Corrupt { block: start, why: "short".into() })?.0;
        if h.magic != JHDR_MAGIC || h.head_pos.get() == 0 || h.head_pos.get() >= nblocks {
            return Err(FsError::Corrupt { block: start, why: "journal header fields".into() });
        }
        let mut j = Journal {
            dev,
            start,
            nblocks,
            bs,
            head_seq: h.head_seq.get(),
            head_pos: h.head_pos.get(),
            next_seq: h.head_seq.get(),
            tail: h.head_pos.get(),
            live: VecDeque::new(),
            newest: HashMap::new(),
            flags: h.flags,
            incarnation: h.incarnation.get(),
            void: Vec::new(),
        };
        let n = (h.nvoid.get() as usize).min(void_capacity(bs));
        let at = size_of::<JournalHeader>();
        j.void = (0..n).map(|k| u64::from_le_bytes(b[at + k * 8..at + k * 8 + 8].try_into().unwrap())).collect();
        let mut replayed = 0;
        while let Some((tx, blocks)) = j.read_tx(j.tail, j.next_seq)? {
            j.next_seq = tx.seq + 1;
            j.tail = tx.pos + tx.len;
            j.live.push_back(tx);
            j.newest.extend(blocks);
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(replayed, "journal: replaying committed transactions");
            j.checkpoint()?;
        }
        Ok((j, replayed))
    }

    /// Reads the transaction with sequence `seq` at `pos` (or, if it would
    /// not have fit there, at the start of the ring). None at the end of the log.
    fn read_tx(&self, pos: u64, seq: u64) -> Result<Option<ReadTx>> {
        for p in [pos, 1] {
            if p >= self.nblocks {
                continue;
            }
            if let Some(tx) = self.read_tx_at(p, seq)? {
                return Ok(Some(tx));
            }
            if p == 1 {
                break;
            }
        }
        Ok(None)
    }

    fn read_tx_at(&self, pos: u64, seq: u64) -> Result<Option<ReadTx>> {
        let bs = self.bs;
        let mut d = vec![0u8; bs];
        self.dev.read(self.start + pos, &mut d)?;
        let Ok((desc, rest)) = JournalDesc::read_from_prefix(&d) else { return Ok(None) };
        let count = desc.count.get() as usize;
        if desc.magic != JDESC_MAGIC || desc.seq.get() != seq || count == 0 || count > max_tx_blocks(bs) {
            return Ok(None);
        }
        let len = count as u64 + 2;
        if pos + len > self.nblocks {
            return Ok(None);
        }
        let mut body = vec![0u8; (count + 1) * bs];
        self.dev.read(self.start + pos + 1, &mut body)?;
        let (images, commit) = body.split_at(count * bs);
        let Ok((c, _)) = JournalCommit::read_from_prefix(commit) else { return Ok(None) };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&d), images);
        if c.magic != JCOMMIT_MAGIC || c.seq.get() != seq || c.count.get() as usize != count || c.tx_crc.get() != crc {
            return Ok(None);
        }
        let homes = rest.chunks_exact(8).take(count).map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])));
        let blocks = homes.zip(images.chunks_exact(bs)).map(|(h, img)| (h, img.to_vec())).collect();
        Ok(Some((Live { seq, pos, len }, blocks)))
    }

    /// Makes the new images of `blocks` durable. Each image must be one
    /// file-system block. Returns the transaction's sequence number.
    pub fn commit<B: AsRef<[u8]>>(&mut self, blocks: &[(u64, B)]) -> Result<u64> {
        let bs = self.bs;
        let count = blocks.len();
        if count == 0 || count > max_tx_blocks(bs) || blocks.iter().any(|(_, b)| b.as_ref().len() != bs) {
            return Err(FsError::Invalid(format!("a transaction is 1..={} whole blocks", max_tx_blocks(bs))));
        }
        let len = count as u64 + 2;
        if len > self.nblocks - 1 {
            return Err(FsError::Invalid("transaction larger than the journal".into()));
        }
        // Wrap to the start of the ring when it does not fit before the end.
        let mut pos = if self.tail + len > self.nblocks { 1 } else { self.tail };
        // Never overwrite a live transaction: write older ones home first.
        if self.live.iter().any(|t| pos < t.pos + t.len && t.pos < pos + len) {
            self.checkpoint()?;
            pos = if self.tail + len > self.nblocks { 1 } else { self.tail };
        }
        let seq = self.next_seq;
        let mut buf = vec![0u8; (count + 2) * bs];
        let desc = JournalDesc { magic: JDESC_MAGIC, count: (count as u32).into(), seq: seq.into() };
        buf[..16].copy_from_slice(desc.as_bytes());
        for (i, (home, img)) in blocks.iter().enumerate() {
            buf[16 + i * 8..24 + i * 8].copy_from_slice(&home.to_le_bytes());
            buf[(i + 1) * bs..(i + 2) * bs].copy_from_slice(img.as_ref());
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..bs]), &buf[bs..(count + 1) * bs]);
        let mut c = JournalCommit::new_zeroed();
        c.magic = JCOMMIT_MAGIC;
        c.count = (count as u32).into();
        c.seq = seq.into();
        c.tx_crc = crc.into();
        buf[(count + 1) * bs..(count + 1) * bs + 24].copy_from_slice(c.as_bytes());
        self.dev.write(self.start + pos, &buf, true)?;
        self.live.push_back(Live { seq, pos, len });
        for (h, b) in blocks {
            self.newest.insert(*h, b.as_ref().to_vec());
        }
        self.next_seq = seq + 1;
        self.tail = pos + len;
        Ok(seq)
    }

    /// The newest committed image of `block` if it is not written home yet.
    pub fn newest(&self, block: u64) -> Option<&[u8]> {
        self.newest.get(&block).map(|v| &v[..])
    }

    /// Writes the newest image of every journaled block home, makes them
    /// durable, then moves the journal header past them.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.live.is_empty() {
            return Ok(());
        }
        for (home, img) in &self.newest {
            self.dev.write(*home, img, false)?;
        }
        self.dev.flush()?;
        self.live.clear();
        self.newest.clear();
        self.head_seq = self.next_seq;
        self.head_pos = if self.tail >= self.nblocks { 1 } else { self.tail };
        self.write_header()
    }

    fn write_header(&self) -> Result<()> {
        let mut b = vec![0u8; self.bs];
        let h = JournalHeader {
            magic: JHDR_MAGIC,
            flags: self.flags,
            rsvd: [0; 3],
            head_seq: self.head_seq.into(),
            head_pos: self.head_pos.into(),
            incarnation: self.incarnation.into(),
            nvoid: (self.void.len() as u32).into(),
            rsvd2: 0.into(),
        };
        b[..size_of::<JournalHeader>()].copy_from_slice(h.as_bytes());
        let at = size_of::<JournalHeader>();
        for (k, c) in self.void.iter().enumerate() {
            b[at + k * 8..at + k * 8 + 8].copy_from_slice(&c.to_le_bytes());
        }
        seal(&mut b);
        self.dev.write(self.start, &b, true)
    }

    /// Applies `change` to the header's fields and writes the header (FUA);
    /// if the write fails, the fields are as they were.
    fn rewrite_header(&mut self, change: impl FnOnce(&mut Self)) -> Result<()> {
        let saved = (self.flags, self.incarnation, self.void.clone());
        change(self);
        let r = self.write_header();
        if r.is_err() {
            (self.flags, self.incarnation, self.void) = saved;
        }
        r
    }

    /// A manager opens the file system: a new incarnation, recorded (FUA).
    /// Returns what the one before left.
    pub fn begin_incarnation(&mut self) -> Result<Prior> {
        let prior = Prior {
            incarnation: self.incarnation,
            void: self.void.clone(),
            all_void: self.flags & JHDR_VOID_OVERFLOW != 0,
        };
        self.rewrite_header(|j| {
            j.incarnation += 1;
            j.void.clear();
            j.flags &= !JHDR_VOID_OVERFLOW;
        })?;
        Ok(prior)
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Records (FUA) that sizes set under connection `conn`'s tokens are
    /// void: they were taken from it. Once the list is full, every
    /// connection's are ([`JHDR_VOID_OVERFLOW`]).
    pub fn void_conn(&mut self, conn: u64) -> Result<()> {
        if self.void.contains(&conn) || self.flags & JHDR_VOID_OVERFLOW != 0 {
            return Ok(());
        }
        let full = self.void.len() >= void_capacity(self.bs);
        self.rewrite_header(|j| {
            if full {
                j.flags |= JHDR_VOID_OVERFLOW;
            } else {
                j.void.push(conn);
            }
        })
    }

    /// Whether the last manager left tokens out ([`JHDR_TOKENS_OUT`]).
    pub fn tokens_out(&self) -> bool {
        self.flags & JHDR_TOKENS_OUT != 0
    }

    /// Records on the volume (FUA) whether tokens are out.
    pub fn set_tokens_out(&mut self, out: bool) -> Result<()> {
        if self.tokens_out() == out {
            return Ok(());
        }
        self.rewrite_header(|j| j.flags ^= JHDR_TOKENS_OUT)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDev;

    const JS: u64 = 10;
    const JN: u64 = 40;

    fn dev() -> Arc<MemDev> {
        let d = Arc::new(MemDev::new(4096, 4096 * 200));
        Journal::format(&*d, JS, JN).unwrap();
        d
    }

    fn img(tag: u8) -> Vec<u8> {
        vec![tag; 4096]
    }

    fn home(d: &MemDev, b: u64) -> u8 {
        let mut x = vec![0u8; 4096];
        d.read(b, &mut x).unwrap();
        assert!(x.iter().all(|&v| v == x[0]));
        x[0]
    }

    #[test]
    fn committed_transactions_replay_after_a_crash() {
        let d = dev();
        let (mut j, n) = Journal::open(d.clone(), JS, JN).unwrap();
        assert_eq!(n, 0);
        j.commit(&[(100, &img(1)), (101, &img(2))]).unwrap();
        j.commit(&[(100, &img(3))]).unwrap();
        // Crash: nothing was written home.
        assert_eq!(home(&d, 100), 0);
        drop(j);
        let (j, n) = Journal::open(d.clone(), JS, JN).unwrap();
        assert_eq!(n, 2);
        assert_eq!((home(&d, 100), home(&d, 101)), (3, 2), "replayed in order");
        assert_eq!(j.next_seq(), 3);
        // Replaying again finds nothing new.
        let (_, n) = Journal::open(d.clone(), JS, JN).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_torn_transaction_is_ignored() {
        let d = dev();
        let (mut j, _) = Journal::open(d.clone(), JS, JN).unwrap();
        j.commit(&[(100, &img(1))]).unwrap();
        let before = d.snapshot();
        j.commit(&[(100, &img(9)), (102, &img(9))]).unwrap();
        // Tear the second transaction: its second image never reached the disk.
        let mut torn = d.snapshot();
        let at = ((JS + 3 + 2) * 4096) as usize;
        torn[at..at + 4096].copy_from_slice(&before[at..at + 4096]);
        d.restore(&torn);
        drop(j);
        let (_, n) = Journal::open(d.clone(), JS, JN).unwrap();
        assert_eq!(n, 1);
        assert_eq!((home(&d, 100), home(&d, 102)), (1, 0));
    }

    #[test]
    fn the_ring_wraps_and_checkpoints_instead_of_overwriting() {
        let d = dev();
        let (mut j, _) = Journal::open(d.clone(), JS, JN).unwrap();
        // Transactions of 3 to 7 blocks in a 39-block ring: many wraps,
        // each leaving a different gap at the end.
        for i in 0..100u64 {
            let extra: Vec<(u64, Vec<u8>)> = (0..i % 5).map(|k| (150 + k, img(i as u8))).collect();
            let first = img(i as u8);
            let mut tx: Vec<(u64, &[u8])> = vec![(100 + i % 5, &first)];
            tx.extend(extra.iter().map(|(h, b)| (*h, &b[..])));
            j.commit(&tx).unwrap();
        }
        drop(j);
        let (_, _) = Journal::open(d.clone(), JS, JN).unwrap();
        for i in 95..100u64 {
            assert_eq!(home(&d, 100 + i % 5), i as u8, "block {}", 100 + i % 5);
        }
        // Blocks 150..154 hold the last transaction that wrote each.
        assert_eq!((home(&d, 150), home(&d, 153)), (99, 99));
    }

    #[test]
    fn bad_arguments_and_a_corrupt_header_are_refused() {
        let d = dev();
        let (mut j, _) = Journal::open(d.clone(), JS, JN).unwrap();
        assert!(j.commit::<&[u8]>(&[]).is_err());
        assert!(j.commit(&[(1, &[0u8; 10][..])]).is_err());
        let mut raw = d.snapshot();
        raw[(JS * 4096) as usize + 9] ^= 1;
        d.restore(&raw);
        assert!(matches!(Journal::open(d.clone(), JS, JN), Err(FsError::Corrupt { .. })));
    }
}
