//! Frames, requests, session-bind (plain and certificate host keys, then the binding rules
//! for the signatures that follow), purpose parsing and the bodies of keytap's extensions
//! on arbitrary client bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keytap::agent::exercise_decoders(data);
});
