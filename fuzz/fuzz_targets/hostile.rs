//! The hostile-program interpreter of tests/hostile (which lists the ops and
//! the properties checked after every step), run on both heaps with a
//! program read from the fuzzer's bytes. Any failed check, crash or missed
//! re-entry deadline is a finding. Run: `cargo +nightly fuzz run hostile`.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/hostile/mod.rs"]
mod hostile;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hostile::run_both(&hostile::Program::from_bytes(data));
});
