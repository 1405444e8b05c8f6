#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_fuzz::policy::run(data));
