//! Harness for Tidepool tests that need a QEMU guest (the kernel's NVMe-oF
//! initiator and target, soft-RoCE) or other host facilities the plain test
//! suite cannot assume.
//!
//! [`guest`] wraps `scripts/vm/run-guest.sh`: boot a throw-away guest on the
//! host's own root file system, run a shell script in it, get its output and
//! exit code back. [`host`] starts and reaps the project's binaries on the
//! host. [`tshark`] judges NVMe/TCP captures with Wireshark's dissector.
//! Anything that cannot run here comes back as a [`Skip`] with a reason,
//! which [`or_skip!`] hands to `test_support::skip` (the one skip rule).
//!
//! ```no_run
//! use hw_tests::guest::{Guest, Outcome};
//! let run = match Guest::new().module("nvme-tcp").run("uname -r").unwrap() {
//!     Outcome::Ran(run) => run,
//!     Outcome::Skip(why) => return test_support::skip::skip(why),
//! };
//! run.assert_success();
//! ```

pub mod guest;
pub mod host;
pub mod tshark;

#[doc(hidden)]
pub use test_support;

use std::fmt;
use std::path::PathBuf;

/// Why a test could not run here (never a failure of the code under test).
/// Whether it may skip is [`test_support::skip`]'s decision, as for every
/// other test: under `CI=true` only a reason in the allow-list may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: String,
}

impl Skip {
    pub fn new(reason: impl Into<String>) -> Skip {
        Skip { reason: reason.into() }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Unwrap a `Result<T, Skip>`-like value inside a test returning
/// `anyhow::Result<()>`: on skip, return `Ok(())` after
/// [`test_support::skip::decide`] printed and recorded the reason, or fail
/// when it says this machine must run the test.
#[macro_export]
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(skip) => {
                let skip: $crate::Skip = skip;
                if let Err(msg) = $crate::test_support::skip::decide(&skip.reason) {
                    anyhow::bail!("{msg}");
                }
                return Ok(());
            }
        }
    };
}
