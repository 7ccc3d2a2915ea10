#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessionizer_fuzz::feed_cursor(data));
