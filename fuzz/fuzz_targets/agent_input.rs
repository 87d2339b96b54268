//! Frames, requests, session-bind and purpose parsing on arbitrary client bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keytap::agent::exercise_decoders(data);
});
