//! Harness for tests that need a QEMU guest.
