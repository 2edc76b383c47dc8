//! The conformance suite (tests/conformance) through the pcsc driver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod conformance;

use conformance::rigs::*;

tapstack_reader_conformance_suite!(PcscRig::new());
