//! Harness for Tidepool tests that need a QEMU guest (the kernel's NVMe-oF
//! initiator and target, soft-RoCE) or other host facilities the plain test
//! suite cannot assume.
//!
//! [`guest`] wraps `scripts/vm/run-guest.sh`: boot a throw-away guest on the
//! host's own root file system, run a shell script in it, get its output and
//! exit code back. [`host`] starts and reaps the project's binaries on the
//! host. [`tshark`] judges NVMe/TCP captures with Wireshark's dissector.
//! Anything that cannot run here comes back as a [`Skip`] with a reason,
//! which tests print as `SKIPPED: <reason>` before returning.
//!
//! ```no_run
//! use hw_tests::guest::{Guest, Outcome};
//! let run = match Guest::new().module("nvme-tcp").run("uname -r").unwrap() {
//!     Outcome::Ran(run) => run,
//!     Outcome::Skip(why) => { println!("SKIPPED: {why}"); return; }
//! };
//! run.assert_success();
//! ```

pub mod guest;
pub mod host;
pub mod tshark;

use std::fmt;
use std::path::PathBuf;

/// Why a test could not run here (never a failure of the code under test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: String,
    /// The machine cannot do it (qemu cannot start, no packet capture), as
    /// opposed to something CI should have provided (a build, a package).
    pub environment: bool,
}

impl Skip {
    /// The machine cannot run this (qemu cannot start, capture not permitted):
    /// a skip even in CI.
    pub fn environment(reason: impl Into<String>) -> Skip {
        Skip { reason: reason.into(), environment: true }
    }

    /// Something a prepared machine has is missing (a binary not built, a
    /// package not installed): a skip locally, a failure under `CI=true`.
    pub fn missing(reason: impl Into<String>) -> Skip {
        Skip { reason: reason.into(), environment: false }
    }

    /// Should this skip fail the test instead? Under `TIDEPOOL_HW_REQUIRE=1`
    /// always; under `CI=true` unless the machine itself cannot do it.
    pub fn is_failure(&self) -> bool {
        let env_is = |k: &str, v: &str| std::env::var(k).is_ok_and(|x| x == v);
        env_is("TIDEPOOL_HW_REQUIRE", "1") || (env_is("CI", "true") && !self.environment)
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
/// `anyhow::Result<()>`: on skip, print `SKIPPED: <reason>` and return
/// `Ok(())`, or fail when [`Skip::is_failure`] says a prepared machine
/// should have been able to run it.
#[macro_export]
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(skip) => {
                let skip: $crate::Skip = skip;
                if skip.is_failure() {
                    anyhow::bail!("this test must run here (CI=true or TIDEPOOL_HW_REQUIRE=1) but cannot: {skip}");
                }
                println!("SKIPPED: {skip}");
                return Ok(());
            }
        }
    };
}
