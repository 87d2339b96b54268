//! A fast reader for the plain block style most pipelines are written in (stub: gives up).

use super::{Event, Events, Pos, Stop};

pub struct FastEvents<'t> {
    _text: &'t str,
}

impl<'t> FastEvents<'t> {
    pub fn new(text: &'t str) -> Self {
        FastEvents { _text: text }
    }
}

impl Events for FastEvents<'_> {
    fn next_event(&mut self) -> Result<(Event, Pos), Stop> {
        Err(Stop::Unsupported)
    }
}
