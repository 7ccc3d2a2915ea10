#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessionizer_fuzz::session_cursor(data));
