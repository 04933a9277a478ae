//! Tidepool's RDMA layer: safe types over libibverbs and librdmacm (through
//! the `rdma-sys` binding) for the NVMe/RDMA transport and DM events over
//! RDMA sends.
//!
//! All `unsafe` lives in [`verbs`] (devices, protection domains, registered
//! memory, completion queues and channels) and [`cm`] (RDMA CM listen,
//! connect, accept/reject with private data, reliable-connected queue pairs,
//! posting and disconnect). Both exist only with the `rdma` cargo feature;
//! without it the crate still builds and [`available`] says why RDMA cannot
//! be used, so callers fall back to TCP and tests skip with that reason.
//!
//! ```no_run
//! # #[cfg(feature = "rdma")] fn demo() -> Result<(), rdma::Error> {
//! use rdma::cm::{Connection, QpConfig};
//! use rdma::verbs::{Access, MemoryRegion};
//! use std::time::Duration;
//! let t = Some(Duration::from_secs(5));
//! let mut conn = Connection::resolve("10.0.2.15:7471".parse().unwrap(), &QpConfig::default(), t)?;
//! let buf = MemoryRegion::new(conn.pd(), 4096, Access::LOCAL_WRITE)?;
//! conn.post_recv(1, &buf, 0..4096)?;
//! let accepted_with = conn.connect(b"hello", t)?;
//! # let _ = accepted_with; Ok(()) }
//! ```

mod error;

#[cfg(feature = "rdma")]
pub mod cm;
#[cfg(feature = "rdma")]
pub mod verbs;

pub use error::{Error, Result};

/// Environment variable naming the RDMA device to use (`rxe0`, `mlx5_0`);
/// unset means the first device, or the one RDMA CM routes to.
pub const DEVICE_ENV: &str = "TIDEPOOL_RDMA_DEV";

/// Can this build and this machine do RDMA? `Ok(names)` lists the devices;
/// `Err` says why not (feature off, no device), for logs and test skips.
pub fn available() -> Result<Vec<String>> {
    #[cfg(feature = "rdma")]
    {
        let devs = verbs::devices()?;
        if devs.is_empty() {
            return Err(Error::NoDevice("libibverbs lists no RDMA device".into()));
        }
        Ok(devs.into_iter().map(|d| d.name).collect())
    }
    #[cfg(not(feature = "rdma"))]
    {
        Err(Error::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    /// Without the feature nothing can open a device, and the reason says
    /// how to get one; with it, the devices found are the ones the kernel
    /// lists in sysfs, and none there is a `NoDevice` error (the host here
    /// has no RDMA kernel modules; the guest tests run on soft-RoCE).
    #[test]
    fn available_explains_itself() {
        let in_sysfs = std::fs::read_dir("/sys/class/infiniband").map(|d| d.count()).unwrap_or(0);
        match super::available() {
            Ok(devs) => {
                assert!(!devs.is_empty());
                assert_eq!(devs.len(), in_sysfs, "devices found vs /sys/class/infiniband");
            }
            Err(e) => {
                let why = e.to_string();
                #[cfg(not(feature = "rdma"))]
                assert!(why.contains("`rdma` cargo feature"), "{why}");
                #[cfg(feature = "rdma")]
                {
                    assert!(matches!(e, super::Error::NoDevice(_)), "{why}");
                    assert_eq!(in_sysfs, 0, "sysfs lists devices but none opened: {why}");
                }
            }
        }
    }
}
