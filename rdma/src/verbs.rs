//! Verbs objects: device list, device context, protection domain, registered
//! memory region, completion channel and completion queue.
//!
//! Ownership mirrors what the hardware needs torn down in order: a memory
//! region keeps its protection domain alive, a protection domain and a
//! completion queue keep their context alive, a completion queue keeps its
//! channel alive. Dropping in any order therefore destroys in the right one
//! and nothing is left registered.
//!
//! ```no_run
//! use rdma::verbs::{Access, Context, MemoryRegion, ProtectionDomain};
//! let ctx = Context::open(None)?; // TIDEPOOL_RDMA_DEV or the first device
//! let pd = ProtectionDomain::new(&ctx)?;
//! let mr = MemoryRegion::new(&pd, 4096, Access::LOCAL_WRITE | Access::REMOTE_READ)?;
//! mr.write_at(0, b"visible to RDMA READ")?;
//! # Ok::<(), rdma::Error>(())
//! ```

use std::alloc::Layout;
use std::ffi::CStr;
use std::fmt;
use std::ops::Range;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_sys as sys;

use crate::{Error, Result, DEVICE_ENV};

/// One RDMA device as libibverbs lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    /// Node GUID in host byte order.
    pub guid: u64,
}

/// The RDMA devices of this machine (empty where the kernel has none).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let mut n = 0;
    // SAFETY: ibv_get_device_list writes the count through a valid pointer
    // and returns a NULL-terminated array we free below, or NULL.
    let list = unsafe { sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        // ENOSYS: no kernel verbs support at all (this CI host); not an error.
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Ok(Vec::new());
        }
        return Err(Error::Os { op: "ibv_get_device_list", source: e });
    }
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: i < n entries of the array are valid device pointers
        // until ibv_free_device_list; name and GUID are copied out.
        unsafe {
            let dev = *list.add(i);
            out.push(DeviceInfo {
                name: cstr(sys::ibv_get_device_name(dev)),
                guid: u64::from_be(sys::ibv_get_device_guid(dev)),
            });
        }
    }
    // SAFETY: list came from ibv_get_device_list and is freed once; opened
    // contexts stay valid after this (libibverbs refcounts devices).
    unsafe { sys::ibv_free_device_list(list) };
    Ok(out)
}

/// Copy a C string (NULL gives "").
fn cstr(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL pointers passed here are NUL-terminated strings owned
    // by libibverbs/librdmacm that outlive this call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// An open device context (`ibv_context`).
///
/// Either opened by [`Context::open`] (closed on drop), or borrowed from an
/// RDMA CM id, in which case `keep_alive` holds that id so the context
/// librdmacm owns outlives every object made on it.
pub struct Context {
    raw: NonNull<sys::ibv_context>,
    keep_alive: Option<Arc<dyn Send + Sync>>,
}

// SAFETY: libibverbs contexts are thread-safe (the library locks internally);
// the pointer is only dereferenced through verbs calls.
unsafe impl Send for Context {}
// SAFETY: as above; &Context exposes no unsynchronised state.
unsafe impl Sync for Context {}

impl Context {
    /// Open the device named `name`, else the one named by
    /// `TIDEPOOL_RDMA_DEV`, else the first one.
    pub fn open(name: Option<&str>) -> Result<Arc<Context>> {
        let wanted = name.map(str::to_owned).or_else(|| std::env::var(DEVICE_ENV).ok().filter(|s| !s.is_empty()));
        let mut n = 0;
        // SAFETY: as in devices().
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            let e = std::io::Error::last_os_error();
            let why = if e.raw_os_error() == Some(libc::ENOSYS) { "this kernel has no RDMA support" } else { "" };
            return Err(Error::NoDevice(format!("ibv_get_device_list: {e} {why}").trim_end().to_owned()));
        }
        let mut chosen = None;
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n, the array is live until freed below.
            let dev = unsafe { *list.add(i) };
            // SAFETY: dev is a valid device of the live list.
            let dev_name = cstr(unsafe { sys::ibv_get_device_name(dev) });
            if wanted.as_deref().is_none_or(|w| w == dev_name) {
                chosen = Some((dev, dev_name));
                break;
            }
        }
        let result = match chosen {
            None => Err(Error::NoDevice(match &wanted {
                Some(w) => format!("no device named {w:?} ({n} present)"),
                None => "libibverbs lists no device".into(),
            })),
            Some((dev, dev_name)) => {
                // SAFETY: dev is valid until the list is freed; the context
                // it returns is independent of the list afterwards.
                let raw = unsafe { sys::ibv_open_device(dev) };
                match NonNull::new(raw) {
                    Some(raw) => {
                        tracing::debug!(device = %dev_name, "opened RDMA device");
                        Ok(Arc::new(Context { raw, keep_alive: None }))
                    }
                    None => Err(Error::last_os("ibv_open_device")),
                }
            }
        };
        // SAFETY: freed once, after the last use of its entries.
        unsafe { sys::ibv_free_device_list(list) };
        result
    }

    /// Wrap a context owned by librdmacm; `owner` (the CM id) keeps it valid.
    pub(crate) fn borrowed(raw: *mut sys::ibv_context, owner: Arc<dyn Send + Sync>) -> Result<Arc<Context>> {
        let raw = NonNull::new(raw).ok_or_else(|| Error::Invalid("RDMA CM id has no device yet".into()))?;
        Ok(Arc::new(Context { raw, keep_alive: Some(owner) }))
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_context {
        self.raw.as_ptr()
    }

    /// The device's name (`rxe0`, `mlx5_0`).
    pub fn device_name(&self) -> String {
        // SAFETY: a live context always points at its device.
        cstr(unsafe { sys::ibv_get_device_name((*self.raw.as_ptr()).device) })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.keep_alive.is_some() {
            return; // librdmacm owns and closes it
        }
        // SAFETY: we opened it; every object made on it holds an Arc to this
        // Context, so none is left when it closes.
        let rc = unsafe { sys::ibv_close_device(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "ibv_close_device");
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("device", &self.device_name()).finish()
    }
}

struct PdInner {
    raw: NonNull<sys::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: a PD is an immutable kernel handle; verbs on it are thread-safe.
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: every MR and QP on this PD holds a ProtectionDomain clone,
        // so this runs after all of them are gone.
        let rc = unsafe { sys::ibv_dealloc_pd(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::error!(error = %std::io::Error::from_raw_os_error(rc), "ibv_dealloc_pd");
        }
    }
}

/// A protection domain; cheap to clone (shared). Memory regions and queue
/// pairs on the same domain can be used together.
#[derive(Clone)]
pub struct ProtectionDomain(Arc<PdInner>);

impl ProtectionDomain {
    pub fn new(ctx: &Arc<Context>) -> Result<ProtectionDomain> {
        // SAFETY: ctx is a live context.
        let raw = unsafe { sys::ibv_alloc_pd(ctx.raw()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_alloc_pd"))?;
        Ok(ProtectionDomain(Arc::new(PdInner { raw, ctx: ctx.clone() })))
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.0.ctx
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_pd {
        self.0.raw.as_ptr()
    }
}

impl fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectionDomain").field("ctx", &self.0.ctx).finish()
    }
}

/// Access rights of a memory region (`IBV_ACCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// The device may write into it (needed for receives and RDMA READ targets).
    pub const LOCAL_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    pub const REMOTE_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    pub const REMOTE_READ: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// Everything a data buffer of an RDMA transport needs.
    pub const ALL: Access = Access(Self::LOCAL_WRITE.0 | Self::REMOTE_WRITE.0 | Self::REMOTE_READ.0);
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// Where a peer may RDMA READ or WRITE: address, remote key and length, as
/// exchanged in private data or messages ([`RemoteRegion::to_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRegion {
    pub addr: u64,
    pub rkey: u32,
    pub len: u32,
}

impl RemoteRegion {
    pub const WIRE_LEN: usize = 16;

    /// Little-endian addr, rkey, len.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_le_bytes());
        b[12..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<RemoteRegion> {
        let b: &[u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(RemoteRegion {
            addr: u64::from_le_bytes(b[..8].try_into().ok()?),
            rkey: u32::from_le_bytes(b[8..12].try_into().ok()?),
            len: u32::from_le_bytes(b[12..].try_into().ok()?),
        })
    }

    /// The sub-range `range` of this region (checked).
    pub fn slice(&self, range: Range<usize>) -> Result<RemoteRegion> {
        check_range(&range, self.len as usize)?;
        Ok(RemoteRegion { addr: self.addr + range.start as u64, rkey: self.rkey, len: range.len() as u32 })
    }
}

fn check_range(range: &Range<usize>, len: usize) -> Result<()> {
    if range.start > range.end || range.end > len {
        return Err(Error::OutOfRange { start: range.start, end: range.end, len });
    }
    Ok(())
}

/// A registered memory region that owns its (page-aligned, zeroed) memory.
///
/// The memory is shared with the device: work posted on a queue pair may
/// read or write it until that work completes, so the region hands out
/// copies ([`read_at`](Self::read_at), [`write_at`](Self::write_at)) rather
/// than references, and its contents are meaningful only once the
/// completion of the work that touched them has been polled. Dropping it
/// deregisters first (after which the device can no longer touch the
/// pages, and any work still naming it fails with a protection error) and
/// frees second, so a region dropped with work outstanding is not a
/// use-after-free.
pub struct MemoryRegion {
    mr: NonNull<sys::ibv_mr>,
    buf: NonNull<u8>,
    layout: Layout,
    pd: ProtectionDomain,
}

// SAFETY: the region owns its memory and MR handle; moving it to another
// thread is fine. It is deliberately not Sync: `write_at` through `&self`
// must not race with itself on another thread.
unsafe impl Send for MemoryRegion {}

impl MemoryRegion {
    /// Allocate `len` zeroed bytes (page-aligned) and register them.
    pub fn new(pd: &ProtectionDomain, len: usize, access: Access) -> Result<MemoryRegion> {
        if len == 0 || len > u32::MAX as usize {
            return Err(Error::Invalid(format!("memory region of {len} bytes")));
        }
        let layout = Layout::from_size_align(len, 4096).map_err(|e| Error::Invalid(e.to_string()))?;
        // SAFETY: layout has a non-zero size.
        let buf = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| Error::Invalid(format!("cannot allocate {len} bytes")))?;
        // SAFETY: buf points at len bytes we own until Drop, which
        // deregisters before freeing; pd is live.
        let mr = unsafe { sys::ibv_reg_mr(pd.raw(), buf.as_ptr().cast(), len, access.0 as i32) };
        match NonNull::new(mr) {
            Some(mr) => Ok(MemoryRegion { mr, buf, layout, pd: pd.clone() }),
            None => {
                let e = Error::last_os("ibv_reg_mr");
                // SAFETY: allocated above with this layout, never registered.
                unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
                Err(e)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: mr is live until Drop.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: mr is live until Drop.
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    /// The virtual address the device knows this memory by.
    pub fn addr(&self) -> u64 {
        self.buf.as_ptr() as u64
    }

    pub fn pd(&self) -> &ProtectionDomain {
        &self.pd
    }

    /// What a peer needs to RDMA READ/WRITE `range` of this region.
    pub fn remote(&self, range: Range<usize>) -> Result<RemoteRegion> {
        check_range(&range, self.len())?;
        Ok(RemoteRegion { addr: self.addr() + range.start as u64, rkey: self.rkey(), len: range.len() as u32 })
    }

    /// Copy `data` into the region at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        check_range(&(offset..offset.saturating_add(data.len())), self.len())?;
        // SAFETY: the range is inside our allocation; `data` cannot overlap
        // it (no reference into the region is ever handed out).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copy `out.len()` bytes at `offset` out of the region.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        check_range(&(offset..offset.saturating_add(out.len())), self.len())?;
        // SAFETY: as in write_at.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// A copy of `range`.
    pub fn to_vec(&self, range: Range<usize>) -> Result<Vec<u8>> {
        check_range(&range, self.len())?;
        let mut v = vec![0; range.len()];
        self.read_at(range.start, &mut v)?;
        Ok(v)
    }

    /// The scatter/gather entry for `range`, for posting.
    pub(crate) fn sge(&self, range: Range<usize>) -> Result<sys::ibv_sge> {
        check_range(&range, self.len())?;
        Ok(sys::ibv_sge { addr: self.addr() + range.start as u64, length: range.len() as u32, lkey: self.lkey() })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in new(); after dereg the device no longer
        // accesses the pages, so freeing them next is safe.
        let rc = unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
        if rc != 0 {
            // Freeing memory the device may still write would be unsound;
            // leak it instead (never seen in practice).
            tracing::error!(error = %std::io::Error::from_raw_os_error(rc), "ibv_dereg_mr failed; leaking the buffer");
            return;
        }
        // SAFETY: allocated in new() with self.layout and now unregistered.
        unsafe { std::alloc::dealloc(self.buf.as_ptr(), self.layout) };
    }
}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion").field("len", &self.len()).field("rkey", &self.rkey()).finish()
    }
}

/// A completion channel: a file descriptor that becomes readable when an
/// armed completion queue gets a completion, so an idle thread can sleep in
/// poll(2) instead of spinning.
pub struct CompletionChannel {
    raw: NonNull<sys::ibv_comp_channel>,
    _ctx: Arc<Context>,
}

// SAFETY: a kernel fd wrapper; verbs on it are thread-safe.
unsafe impl Send for CompletionChannel {}
// SAFETY: as above.
unsafe impl Sync for CompletionChannel {}

impl CompletionChannel {
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<CompletionChannel>> {
        // SAFETY: ctx is live.
        let raw = unsafe { sys::ibv_create_comp_channel(ctx.raw()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_comp_channel"))?;
        let ch = CompletionChannel { raw, _ctx: ctx.clone() };
        // Non-blocking, so draining its events never stalls a poller.
        set_nonblocking(ch.fd(), "fcntl(comp channel)")?;
        Ok(Arc::new(ch))
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: raw is live until Drop.
        unsafe { (*self.raw.as_ptr()).fd }
    }

    /// Consume pending events (each acked at once, so destroying the CQ
    /// never waits on an unacknowledged event). Returns how many.
    pub(crate) fn drain_events(&self) -> usize {
        let mut n = 0;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut cq_ctx = std::ptr::null_mut();
            // SAFETY: out-pointers are valid; the fd is non-blocking, so
            // this returns -1/EAGAIN when nothing is pending.
            let rc = unsafe { sys::ibv_get_cq_event(self.raw.as_ptr(), &mut cq, &mut cq_ctx) };
            if rc != 0 || cq.is_null() {
                return n;
            }
            // SAFETY: cq was just reported by this channel, hence live.
            unsafe { sys::ibv_ack_cq_events(cq, 1) };
            n += 1;
        }
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ attached holds an Arc to this channel, so none
        // is left.
        let rc = unsafe { sys::ibv_destroy_comp_channel(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "ibv_destroy_comp_channel");
        }
    }
}

pub(crate) fn set_nonblocking(fd: RawFd, op: &'static str) -> Result<()> {
    // SAFETY: fcntl on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::last_os(op));
    }
    Ok(())
}

/// Wait until one of `fds` is readable or `timeout` passes (None: forever).
/// Returns which were readable.
/// Waits until one of `fds` is readable or `timeout` passes; which are.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32,
        };
        // SAFETY: pfds is a valid array of pfds.len() entries.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Os { op: "poll", source: e });
        }
    }
}

/// Status of a work completion (`enum ibv_wc_status`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WcStatus(pub u32);

impl WcStatus {
    pub const SUCCESS: WcStatus = WcStatus(sys::ibv_wc_status::IBV_WC_SUCCESS);
    /// The queue pair went to the error state before this work ran: the
    /// normal fate of outstanding work when a connection is torn down.
    pub const FLUSHED: WcStatus = WcStatus(sys::ibv_wc_status::IBV_WC_WR_FLUSH_ERR);
    pub const RETRY_EXCEEDED: WcStatus = WcStatus(sys::ibv_wc_status::IBV_WC_RETRY_EXC_ERR);
    pub const REMOTE_ACCESS: WcStatus = WcStatus(sys::ibv_wc_status::IBV_WC_REM_ACCESS_ERR);
    pub const LOCAL_PROTECTION: WcStatus = WcStatus(sys::ibv_wc_status::IBV_WC_LOC_PROT_ERR);

    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    pub fn is_flush(self) -> bool {
        self == Self::FLUSHED
    }

    /// libibverbs' name for the status ("transport retry counter exceeded").
    pub fn name(self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        cstr(unsafe { sys::ibv_wc_status_str(self.0) })
    }
}

impl fmt::Debug for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What a successful completion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    Recv,
    RecvWithImm,
    Other(u32),
}

impl WcOpcode {
    fn from_raw(op: u32) -> WcOpcode {
        use sys::ibv_wc_opcode as o;
        match op {
            o::IBV_WC_SEND => WcOpcode::Send,
            o::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            o::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            o::IBV_WC_RECV => WcOpcode::Recv,
            o::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvWithImm,
            other => WcOpcode::Other(other),
        }
    }
}

/// Which work queue a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    /// Sends, RDMA WRITEs and READs.
    Send,
    Recv,
}

/// One polled work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The caller's id, as posted.
    pub wr_id: u64,
    pub queue: WorkQueue,
    pub status: WcStatus,
    /// Only for successful completions: the verbs spec leaves the opcode
    /// of an error completion undefined, so it is not guessed here.
    pub opcode: Option<WcOpcode>,
    /// Bytes received (receives) or transferred (READs).
    pub byte_len: u32,
    pub vendor_err: u32,
}

impl Completion {
    /// A placeholder for output arrays.
    pub const EMPTY: Completion = Completion {
        wr_id: 0,
        queue: WorkQueue::Send,
        status: WcStatus::SUCCESS,
        opcode: None,
        byte_len: 0,
        vendor_err: 0,
    };
}

/// Top bit of the wr_id tags receives, so a completion's queue is known
/// even for error completions, whose opcode is undefined.
pub(crate) const RECV_TAG: u64 = 1 << 63;

/// A completion queue, optionally attached to a [`CompletionChannel`].
pub struct CompletionQueue {
    raw: NonNull<sys::ibv_cq>,
    channel: Option<Arc<CompletionChannel>>,
    _ctx: Arc<Context>,
}

// SAFETY: CQ verbs are thread-safe in libibverbs providers; the handle is
// owned.
unsafe impl Send for CompletionQueue {}

impl CompletionQueue {
    /// A CQ for at least `depth` completions.
    pub fn new(ctx: &Arc<Context>, depth: u32, channel: Option<Arc<CompletionChannel>>) -> Result<CompletionQueue> {
        let ch = channel.as_ref().map_or(std::ptr::null_mut(), |c| c.raw.as_ptr());
        // SAFETY: ctx and the channel (if any) are live and outlive the CQ
        // through the Arcs stored beside it.
        let raw = unsafe { sys::ibv_create_cq(ctx.raw(), depth as i32, std::ptr::null_mut(), ch, 0) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_cq"))?;
        Ok(CompletionQueue { raw, channel, _ctx: ctx.clone() })
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_cq {
        self.raw.as_ptr()
    }

    pub fn channel(&self) -> Option<&Arc<CompletionChannel>> {
        self.channel.as_ref()
    }

    /// Poll up to `out.len()` completions without blocking.
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize> {
        const BATCH: usize = 16;
        let mut wc: [std::mem::MaybeUninit<sys::ibv_wc>; BATCH] = [const { std::mem::MaybeUninit::uninit() }; BATCH];
        let want = out.len().min(BATCH);
        // SAFETY: wc has room for `want` entries; the provider writes n of
        // them, which are read below only up to n.
        let n = unsafe { sys::ibv_poll_cq(self.raw.as_ptr(), want as i32, wc.as_mut_ptr().cast()) };
        if n < 0 {
            return Err(Error::errno("ibv_poll_cq", n));
        }
        for (slot, wc) in out.iter_mut().zip(&wc[..n as usize]) {
            // SAFETY: the first n entries were initialised by ibv_poll_cq.
            let wc = unsafe { wc.assume_init_ref() };
            let status = WcStatus(wc.status);
            let queue = if wc.wr_id & RECV_TAG != 0 { WorkQueue::Recv } else { WorkQueue::Send };
            *slot = Completion {
                wr_id: wc.wr_id & !RECV_TAG,
                queue,
                status,
                opcode: status.is_success().then(|| WcOpcode::from_raw(wc.opcode)),
                byte_len: wc.byte_len,
                vendor_err: wc.vendor_err,
            };
        }
        Ok(n as usize)
    }

    /// Ask for a channel event on the next completion.
    pub fn arm(&self) -> Result<()> {
        // SAFETY: raw is live.
        let rc = unsafe { sys::ibv_req_notify_cq(self.raw.as_ptr(), 0) };
        if rc != 0 {
            return Err(Error::errno("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Poll; if nothing is there, sleep on the completion channel (no
    /// spinning) until something arrives or `timeout` passes. Returns 0 on
    /// timeout. Needs a channel.
    pub fn wait(&self, out: &mut [Completion], timeout: Option<Duration>) -> Result<usize> {
        let ch = self.channel.as_ref().ok_or_else(|| Error::Invalid("CQ has no completion channel".into()))?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            self.arm()?;
            // A completion that landed between the poll and the arm raised
            // no event; poll once more so it is not slept through.
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(0);
            }
            wait_readable(&[ch.fd()], left)?;
            ch.drain_events();
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        if let Some(ch) = &self.channel {
            ch.drain_events(); // destroy_cq waits for unacked events
        }
        // SAFETY: queue pairs using this CQ are destroyed before it (the
        // connection owning both drops its QP first).
        let rc = unsafe { sys::ibv_destroy_cq(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::error!(error = %std::io::Error::from_raw_os_error(rc), "ibv_destroy_cq");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_region_round_trips_and_slices() {
        let r = RemoteRegion { addr: 0x1122_3344_5566_7788, rkey: 0xdead_beef, len: 8192 };
        assert_eq!(RemoteRegion::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(RemoteRegion::from_bytes(&[0; 15]), None);
        let s = r.slice(4096..6144).unwrap();
        assert_eq!((s.addr, s.len, s.rkey), (r.addr + 4096, 2048, r.rkey));
        assert!(matches!(r.slice(4096..8193), Err(Error::OutOfRange { .. })));
    }

    #[test]
    fn status_names_come_from_libibverbs() {
        assert!(WcStatus::FLUSHED.is_flush());
        assert!(WcStatus::FLUSHED.name().to_lowercase().contains("flush"), "{}", WcStatus::FLUSHED.name());
        assert!(WcStatus::SUCCESS.is_success());
    }

    /// Where a device exists, open, register and read back; where the
    /// kernel lists none (this host; the guest tests cover the device path
    /// on soft-RoCE), opening says `NoDevice` and nothing else.
    #[test]
    fn device_path_where_the_kernel_has_a_device() {
        let in_sysfs = std::fs::read_dir("/sys/class/infiniband").map(|d| d.count()).unwrap_or(0);
        match Context::open(None) {
            Err(Error::NoDevice(why)) => assert_eq!(in_sysfs, 0, "sysfs lists devices but none opened: {why}"),
            Err(e) => panic!("opening a device failed unexpectedly: {e}"),
            Ok(ctx) => {
                let pd = ProtectionDomain::new(&ctx).unwrap();
                let mr = MemoryRegion::new(&pd, 8192, Access::ALL).unwrap();
                mr.write_at(100, b"tidepool").unwrap();
                assert_eq!(mr.to_vec(100..108).unwrap(), b"tidepool");
                assert!(mr.write_at(8190, b"xyz").is_err());
                let ch = CompletionChannel::new(&ctx).unwrap();
                let cq = CompletionQueue::new(&ctx, 16, Some(ch)).unwrap();
                let mut out = [Completion::EMPTY; 4];
                assert_eq!(cq.wait(&mut out, Some(Duration::from_millis(10))).unwrap(), 0);
            }
        }
    }
}
