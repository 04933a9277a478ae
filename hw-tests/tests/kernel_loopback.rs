//! Validates the guest harness itself: the kernel's nvmet-tcp target and
//! nvme-tcp initiator in one guest must move data intact. If this fails, the
//! other hw-tests' failures say nothing about Tidepool.

mod common;

use hw_tests::guest::Guest;
use hw_tests::or_skip;

#[test]
fn kernel_loopback_sanity() -> anyhow::Result<()> {
    common::init_tracing();
    let run = or_skip!(Guest::new()
        .module("nvmet")
        .module("nvmet-tcp")
        .module("nvme-tcp")
        .timeout(common::GUEST_TIMEOUT)
        .run(include_str!("../guest/kernel_loopback.sh"))?
        .into_result());
    eprintln!("{}", run.transcript());
    run.assert_checks(3);
    Ok(())
}
