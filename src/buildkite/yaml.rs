//! The pipeline YAML as Buildkite's parser (go-pipeline over yaml.v3) reads it, and back out.
//!
//! Parsing keeps mapping order, expands aliases and `<<` merges the way go-pipeline does, and
//! keeps each scalar's text and whether it was plain (only plain, untagged scalars are resolved
//! to numbers, booleans and nulls). Emitting writes block style: comments and anchors are not
//! kept, but every value reads back as the same value.

pub use yaml_rust2::parser::Event;
use yaml_rust2::parser::{Parser, Tag};
pub use yaml_rust2::scanner::TScalarStyle as ScalarStyle;

mod fast;
use yaml_rust2::scanner::TScalarStyle;

/// Refuse documents that expand past this many nodes (alias bombs).
const MAX_NODES: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: Kind,
    /// 1-based line in the input (0 for nodes keytap adds).
    pub line: usize,
    /// Where the node starts in the input, for writing signatures into the text as it is:
    /// byte offset and 0-based column in characters. A block mapping starts at its first
    /// written key, a flow mapping at its `{`. `NOWHERE` for nodes keytap adds and for
    /// copies made by aliases and merges.
    pub offset: usize,
    pub col: usize,
}

/// The offset of a node that is not at one place in the input.
pub const NOWHERE: usize = usize::MAX;

/// A parsed document and what the text-preserving writer needs to know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub root: Node,
    /// The document used an alias (so one place in the text can stand for several nodes).
    pub aliases: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Plain and untagged: resolved by the YAML core rules; otherwise always a string.
    pub plain: bool,
}

/// A scalar's value as yaml.v3 resolves it when decoding into `any`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// Above i64::MAX: go-pipeline cannot hold it in most fields.
    Uint(u64),
    Float(f64),
    Str(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct YamlError(pub String);

fn err<T>(line: usize, message: impl std::fmt::Display) -> Result<T, YamlError> {
    Err(YamlError(if line > 0 { format!("line {line}: {message}") } else { message.to_string() }))
}

impl Node {
    pub fn scalar(text: &str, plain: bool) -> Node {
        Node { kind: Kind::Scalar(Scalar { text: text.into(), plain }), line: 0, offset: NOWHERE, col: 0 }
    }

    pub fn map(entries: Vec<(Node, Node)>) -> Node {
        Node { kind: Kind::Map(entries), line: 0, offset: NOWHERE, col: 0 }
    }

    pub fn seq(items: Vec<Node>) -> Node {
        Node { kind: Kind::Seq(items), line: 0, offset: NOWHERE, col: 0 }
    }

    /// The scalar's resolved value, `None` for collections.
    pub fn value(&self) -> Option<Value> {
        match &self.kind {
            Kind::Scalar(s) if s.plain => Some(resolve(&s.text)),
            Kind::Scalar(s) => Some(Value::Str(s.text.clone())),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.value() == Some(Value::Null)
    }

    /// The value under `key` (a word, e.g. `steps`) of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        // The names asked for are words, whose canonical form is their own text, so a key's
        // string text is all there is to compare.
        debug_assert!(resolve_special(key).is_none(), "{key} is a word");
        // And a scalar whose text is such a word is that string, plain or quoted.
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| matches!(&k.kind, Kind::Scalar(s) if s.text == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A scalar's text when it is read as that string (quoted, or plain and not a null,
    /// boolean or number), without copying it.
    pub fn str_text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s) if !s.plain || resolve_special(&s.text).is_none() => Some(&s.text),
            _ => None,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// A mapping key as go-pipeline canonicalises it: booleans as true/false, integers in decimal.
pub fn map_key(key: &Node) -> Result<String, YamlError> {
    key_text(key).map(std::borrow::Cow::into_owned)
}

/// `map_key`, borrowing the text of string keys (nearly all of them).
pub fn key_text(key: &Node) -> Result<std::borrow::Cow<'_, str>, YamlError> {
    if let Some(text) = key.str_text() {
        return Ok(std::borrow::Cow::Borrowed(text));
    }
    map_key_special(key).map(std::borrow::Cow::Owned)
}

fn map_key_special(key: &Node) -> Result<String, YamlError> {
    match key.value() {
        None => err(key.line, "a mapping key must be a scalar"),
        Some(Value::Null) => err(key.line, "null is not supported as a mapping key"),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Int(i)) => Ok(i.to_string()),
        Some(Value::Uint(u)) => Ok(u.to_string()),
        Some(Value::Float(_)) => err(key.line, "a number with a fraction cannot be a mapping key here; quote it"),
        Some(Value::Str(s)) => Ok(s),
    }
}

/// Parse a YAML document (one document; an empty input is a null document).
pub fn parse(text: &str) -> Result<Node, YamlError> {
    parse_source(text).map(|p| p.root)
}

/// Parse a YAML document, keeping where each node starts in the text.
pub fn parse_source(text: &str) -> Result<Parsed, YamlError> {
    // The fast reader takes the plain block style most pipelines are written in and gives up
    // on anything else; yaml-rust2 reads everything.
    match build(&mut fast::FastEvents::new(text), text) {
        Err(Stop::Unsupported) => {}
        Err(Stop::Yaml(e)) => return Err(e),
        Ok(parsed) => return Ok(parsed),
    }
    parse_source_yaml_rust2(text)
}

/// `parse_source` with yaml-rust2 alone (the reference the fast reader is held to; for tests
/// and the benchmark).
pub fn parse_source_yaml_rust2(text: &str) -> Result<Parsed, YamlError> {
    build(&mut Rust2Events::new(text), text).map_err(|e| match e {
        Stop::Yaml(e) => e,
        Stop::Unsupported => YamlError("the YAML reader gave up on the pipeline".into()),
    })
}

/// Where an event starts: byte offset, 1-based line, 0-based column in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub offset: usize,
    pub line: usize,
    pub col: usize,
}

/// Why a reader stopped before the end.
#[derive(Debug, PartialEq)]
pub enum Stop {
    Yaml(YamlError),
    /// The fast reader met something it leaves to yaml-rust2.
    Unsupported,
}

/// A source of YAML events in yaml-rust2's terms, positions in bytes.
pub trait Events {
    fn next_event(&mut self) -> Result<(Event, Pos), Stop>;
}

/// yaml-rust2's parser, with its character positions turned into byte offsets.
pub struct Rust2Events<'t> {
    parser: Parser<std::str::Chars<'t>>,
    text: &'t str,
    /// Where each line starts (bytes), for text that is not all ASCII: yaml-rust2's character
    /// index runs ahead after non-ASCII text in a block scalar (it adds such a line's bytes),
    /// while its line and column stay right, so offsets are worked out from those.
    line_starts: Option<Vec<usize>>,
    /// The last position worked out (line, column, byte): events come in text order, so the
    /// next one on the same line is found from there (a long line costs linear time, not
    /// quadratic).
    last: (usize, usize, usize),
}

impl<'t> Rust2Events<'t> {
    pub fn new(text: &'t str) -> Self {
        let line_starts = (!text.is_ascii()).then(|| line_starts(text));
        Rust2Events { parser: Parser::new_from_str(text), text, line_starts, last: (0, 0, 0) }
    }
}

impl Events for Rust2Events<'_> {
    fn next_event(&mut self) -> Result<(Event, Pos), Stop> {
        let (event, mark) = self.parser.next_token().map_err(|e| Stop::Yaml(YamlError(format!("invalid YAML: {e}"))))?;
        let offset = match &self.line_starts {
            None => mark.index(),
            Some(starts) => match starts.get(mark.line().wrapping_sub(1)) {
                // The end of the stream is on a line of its own past the text.
                None => self.text.len(),
                Some(&start) => {
                    let (line_no, col) = (mark.line(), mark.col());
                    let (from_col, from) = match self.last {
                        (l, c, b) if l == line_no && c <= col => (c, b),
                        _ => (0, start),
                    };
                    let rest = &self.text[from..];
                    let rest = &rest[..rest.find(['\n', '\r']).unwrap_or(rest.len())];
                    let offset = from + rest.char_indices().nth(col - from_col).map_or(rest.len(), |(b, _)| b);
                    self.last = (line_no, col, offset);
                    offset
                }
            },
        };
        Ok((event, Pos { offset, line: mark.line(), col: mark.col() }))
    }
}

/// Where each line starts, with yaml-rust2's line breaks (LF, CR LF, CR).
fn line_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => {
                i += 1;
                starts.push(i + 1);
            }
            b'\r' | b'\n' => starts.push(i + 1),
            _ => {}
        }
        i += 1;
    }
    starts
}

fn stop<T>(line: usize, message: impl std::fmt::Display) -> Result<T, Stop> {
    err(line, message).map_err(Stop::Yaml)
}

fn build(events: &mut dyn Events, text: &str) -> Result<Parsed, Stop> {
    let mut builder = Builder { anchors: Vec::new(), nodes: 0, aliases: false, text };
    let mut root = None;
    loop {
        let (event, pos) = events.next_event()?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                if root.is_some() {
                    return stop(pos.line, "more than one YAML document; a pipeline is one document");
                }
                let (e, p) = events.next_event()?;
                root = Some(builder.node(events, e, p)?);
            }
            other => return stop(pos.line, format!("unexpected YAML event {other:?}")),
        }
    }
    Ok(Parsed { root: root.unwrap_or_else(|| Node::scalar("", true)), aliases: builder.aliases })
}

struct Builder<'t> {
    /// Anchor id -> node (ids start at 1).
    anchors: Vec<Option<Node>>,
    nodes: usize,
    aliases: bool,
    text: &'t str,
}

impl Builder<'_> {
    fn count(&mut self, n: usize, line: usize) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return err(line, "the document expands to too many nodes (aliases); refusing it");
        }
        Ok(())
    }

    fn anchor(&mut self, id: usize, node: &Node) {
        if id == 0 {
            return;
        }
        if self.anchors.len() <= id {
            self.anchors.resize(id + 1, None);
        }
        self.anchors[id] = Some(node.clone());
    }

    fn node(&mut self, events: &mut dyn Events, event: Event, pos: Pos) -> Result<Node, Stop> {
        let Pos { offset, line, col } = pos;
        self.count(1, line).map_err(Stop::Yaml)?;
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = match tag {
                    None => style == TScalarStyle::Plain,
                    Some(tag) if is_str_tag(&tag) => false,
                    Some(tag) => return stop(line, format!("YAML tag {}{} is not supported; remove it", tag.handle, tag.suffix)),
                };
                let node = Node { kind: Kind::Scalar(Scalar { text, plain }), line, offset, col };
                self.anchor(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, tag) => {
                refuse_tag(tag, line).map_err(Stop::Yaml)?;
                let mut items = Vec::new();
                loop {
                    let (e, p) = events.next_event()?;
                    if e == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(events, e, p)?);
                }
                let node = Node { kind: Kind::Seq(items), line, offset, col };
                self.anchor(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, tag) => {
                refuse_tag(tag, line).map_err(Stop::Yaml)?;
                // A flow mapping's event is at its `{`; a block mapping's is past its first
                // key, so the mapping is placed at that key.
                let flow = self.text.as_bytes().get(offset) == Some(&b'{');
                let mut at = pos;
                let mut raw = Vec::new();
                loop {
                    let (e, p) = events.next_event()?;
                    if e == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(events, e, p)?;
                    if raw.is_empty() && !flow {
                        at = Pos { offset: key.offset, line: key.line, col: key.col };
                    }
                    let (e, p) = events.next_event()?;
                    let value = self.node(events, e, p)?;
                    raw.push((key, value));
                }
                let node = Node { kind: Kind::Map(merge(raw, line).map_err(Stop::Yaml)?), line: at.line, offset: at.offset, col: at.col };
                self.anchor(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => {
                let Some(Some(node)) = self.anchors.get(id) else {
                    return stop(line, "alias to an unknown anchor");
                };
                let node = node.clone();
                self.count(size(&node), line).map_err(Stop::Yaml)?;
                self.aliases = true;
                Ok(node)
            }
            other => stop(line, format!("unexpected YAML event {other:?}")),
        }
    }
}

fn size(node: &Node) -> usize {
    match &node.kind {
        Kind::Scalar(_) => 1,
        Kind::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Kind::Map(entries) => 1 + entries.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
    }
}

fn is_str_tag(tag: &Tag) -> bool {
    tag.handle == "tag:yaml.org,2002:" && tag.suffix == "str"
}

fn refuse_tag(tag: Option<Tag>, line: usize) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) => err(line, format!("YAML tag {}{} is not supported; remove it", t.handle, t.suffix)),
    }
}

fn is_merge_key(key: &Node) -> bool {
    matches!(&key.kind, Kind::Scalar(s) if s.plain && s.text == "<<")
}

/// Apply `<<` merges as go-pipeline does: keys written in the mapping win over merged ones,
/// earlier merged mappings win over later ones, and merged keys take the merge's place.
fn merge(raw: Vec<(Node, Node)>, line: usize) -> Result<Vec<(Node, Node)>, YamlError> {
    let mut seen = std::collections::HashSet::new();
    for (k, _) in raw.iter().filter(|(k, _)| !is_merge_key(k)) {
        if !seen.insert(key_text(k)?) {
            return err(k.line, format!("duplicate mapping key {:?}", map_key(k)?));
        }
    }
    if !raw.iter().any(|(k, _)| is_merge_key(k)) {
        return Ok(raw);
    }
    let mut seen: std::collections::HashSet<String> = seen.into_iter().map(std::borrow::Cow::into_owned).collect();
    let mut out = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        if !is_merge_key(&k) {
            out.push((k, v));
            continue;
        }
        let sources: Vec<&Node> = match &v.kind {
            Kind::Map(_) => vec![&v],
            Kind::Seq(items) => items.iter().collect(),
            Kind::Scalar(_) => return err(line, "`<<` must merge a mapping or a list of mappings"),
        };
        for source in sources {
            let Kind::Map(entries) = &source.kind else {
                return err(line, "`<<` must merge a mapping or a list of mappings");
            };
            for (mk, mv) in entries {
                if seen.insert(map_key(mk)?) {
                    out.push((mk.clone(), mv.clone()));
                }
            }
        }
    }
    Ok(out)
}

// ---- scalar resolution (yaml.v3's `resolve` for a plain scalar decoded into `any`) ----

/// Resolve a plain scalar. Timestamps stay strings (yaml.v3 keeps them as text in `any`).
pub fn resolve(text: &str) -> Value {
    resolve_special(text).unwrap_or_else(|| Value::Str(text.into()))
}

/// What a plain scalar resolves to when that is not its own text as a string; `None` for
/// strings (most scalars, read without copying them).
fn resolve_special(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        ".nan" | ".NaN" | ".NAN" => return Some(Value::Float(f64::NAN)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(Value::Float(f64::INFINITY)),
        "-.inf" | "-.Inf" | "-.INF" => return Some(Value::Float(f64::NEG_INFINITY)),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if first == b'.' {
        if let Some(f) = go_parse_float(text) {
            return Some(Value::Float(f));
        }
        return None;
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return None;
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    if let Some(i) = go_parse_int(&plain) {
        return Some(Value::Int(i));
    }
    if !plain.starts_with(['+', '-']) {
        if let Some(u) = go_parse_uint(&plain) {
            return Some(Value::Uint(u));
        }
    }
    if yaml_style_float(&plain) {
        if let Some(f) = go_parse_float(&plain) {
            return Some(Value::Float(f));
        }
    }
    None
}

/// Go's `strconv.ParseUint(s, 0, 64)` (prefixes 0x, 0o, 0b and a bare leading 0 for octal).
fn go_parse_uint(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let (base, digits) = if b[0] == b'0' && b.len() >= 3 && matches!(b[1], b'x' | b'X') {
        (16, &s[2..])
    } else if b[0] == b'0' && b.len() >= 3 && matches!(b[1], b'o' | b'O') {
        (8, &s[2..])
    } else if b[0] == b'0' && b.len() >= 3 && matches!(b[1], b'b' | b'B') {
        (2, &s[2..])
    } else if b[0] == b'0' {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let mut n: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(base)?;
        n = n.checked_mul(base as u64)?.checked_add(d as u64)?;
    }
    Some(n)
}

/// Go's `strconv.ParseInt(s, 0, 64)`; `None` for a syntax error or out of range.
fn go_parse_int(s: &str) -> Option<i64> {
    let (neg, rest) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let u = go_parse_uint(rest)?;
    if neg {
        (u <= 1u64 << 63).then(|| (u as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(u).ok()
    }
}

/// yaml.v3's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go's `strconv.ParseFloat` for the decimal forms reaching it here; out of range is an error.
fn go_parse_float(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    // Go also reads "inf", "nan" and hex floats, which never reach here except ".inf" forms
    // handled above; Rust would read "inf" and "infinity" too, so require a digit.
    if !body.bytes().next().is_some_and(|c| c.is_ascii_digit() || c == b'.') || !yaml_style_float(s) {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    f.is_finite().then_some(f)
}

/// Shortest round-trip decimal digits and the decimal point position of a finite, non-zero
/// `f.abs()`: value = 0.DIGITS x 10^point.
pub fn shortest_digits(f: f64) -> (String, i32) {
    let e = format!("{:e}", f.abs());
    let (mantissa, exp) = e.split_once('e').expect("LowerExp has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    (digits, exp + 1)
}

/// Go's `fmt.Sprint` of a float64 (`%v`: the shortest `%g`, an exponent below -4 or from 6 on
/// printed as `%e`).
pub fn go_sprint_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0");
    }
    let (digits, point) = shortest_digits(f);
    let exp = point - 1;
    // strconv's %g with the shortest precision switches to %e when exp < -4 || exp >= 6.
    if !(-4..6).contains(&exp) {
        let mut m = digits[..1].to_string();
        if digits.len() > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{esign}{:02}", exp.abs());
    }
    format!("{sign}{}", place_point(&digits, point))
}

/// Digits with the decimal point at `point` (no exponent).
pub fn place_point(digits: &str, point: i32) -> String {
    let n = digits.len() as i32;
    if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if point >= n {
        format!("{}{}", digits, "0".repeat((point - n) as usize))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    }
}

/// Go's `fmt.Sprint` of a resolved scalar, as go-pipeline turns YAML scalars into strings;
/// `None` for values it cannot turn into a string field (integers above i64::MAX).
pub fn go_sprint(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(_) => return None,
        Value::Float(f) => go_sprint_float(*f),
        Value::Str(s) => s.clone(),
    })
}

// ---- emitting ----

/// Write the document in block style.
pub fn emit(root: &Node) -> String {
    let mut out = String::new();
    match &root.kind {
        Kind::Map(e) if !e.is_empty() => emit_map(e, 0, &mut out),
        Kind::Seq(s) if !s.is_empty() => emit_seq(s, 0, &mut out),
        _ => {
            out.push_str(&inline_value(root, 0));
            out.push('\n');
        }
    }
    out
}

/// A value `insert_first_entry` writes: a string or a list of strings.
pub enum Flat<'a> {
    Str(&'a str),
    List(&'a [String]),
}

/// One entry to put first in a mapping: `key` holding a mapping of `fields`.
pub struct Insert<'a> {
    pub map: &'a Node,
    pub key: &'a str,
    pub fields: Vec<(&'a str, Flat<'a>)>,
}

/// What to write where for one insert: `None` when its mapping is not at one place in the
/// text (keytap's own, or copied by an alias) or does not start the way the insertion relies
/// on: a flow mapping at its `{`, a block mapping at its first key with only indentation and
/// `- ` before it on its line.
pub fn piece(text: &str, insert: &Insert) -> Option<(usize, String)> {
    let map = insert.map;
    let Kind::Map(_) = &map.kind else { return None };
    let offset = map.offset;
    if offset >= text.len() || !text.is_char_boundary(offset) {
        return None;
    }
    let mut piece = String::with_capacity(512);
    if text.as_bytes()[offset] == b'{' {
        // After the `{`: `key: {field: value, ...}, ` in flow style, plain words and
        // everything else quoted (so flow indicators in it are harmless).
        push_flow_string(&mut piece, insert.key);
        piece.push_str(": {");
        for (i, (name, value)) in insert.fields.iter().enumerate() {
            if i > 0 {
                piece.push_str(", ");
            }
            push_flow_string(&mut piece, name);
            piece.push_str(": ");
            match value {
                Flat::Str(v) => push_flow_string(&mut piece, v),
                Flat::List(items) => {
                    piece.push('[');
                    for (j, item) in items.iter().enumerate() {
                        if j > 0 {
                            piece.push_str(", ");
                        }
                        push_flow_string(&mut piece, item);
                    }
                    piece.push(']');
                }
            }
        }
        piece.push_str("}, ");
        return Some((offset + 1, piece));
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let prefix = &text.as_bytes()[line_start..offset];
    let plain_prefix = prefix.iter().enumerate().all(|(i, &b)| b == b' ' || (b == b'-' && prefix.get(i + 1) == Some(&b' ')));
    if !plain_prefix || prefix.len() != map.col {
        return None;
    }
    // Block style at the mapping's column, then the first key again at that column.
    let col = map.col;
    push_string(&mut piece, insert.key);
    piece.push_str(":\n");
    for (name, value) in &insert.fields {
        pad(&mut piece, col + 2);
        push_string(&mut piece, name);
        piece.push(':');
        match value {
            Flat::Str(v) => {
                piece.push(' ');
                push_string(&mut piece, v);
                piece.push('\n');
            }
            Flat::List([]) => piece.push_str(" []\n"),
            Flat::List(items) => {
                piece.push('\n');
                for item in *items {
                    pad(&mut piece, col + 4);
                    piece.push_str("- ");
                    push_string(&mut piece, item);
                    piece.push('\n');
                }
            }
        }
    }
    pad(&mut piece, col);
    Some((offset, piece))
}

/// The text with each piece written at its offset; `None` if two share an offset.
pub fn splice(text: &str, mut pieces: Vec<(usize, String)>) -> Option<String> {
    pieces.sort_by_key(|(offset, _)| *offset);
    if pieces.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + pieces.iter().map(|(_, p)| p.len()).sum::<usize>());
    let mut copied = 0;
    for (offset, piece) in pieces {
        out.push_str(&text[copied..offset]);
        out.push_str(&piece);
        copied = offset;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// A string in flow context: plain for words and base64url (nothing a flow collection or a
/// key could take for its own), double-quoted otherwise.
fn push_flow_string(out: &mut String, t: &str) {
    let word = t.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) && t.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if word && resolve_special(t).is_none() {
        out.push_str(t);
    } else {
        out.push_str(&double_quoted(t));
    }
}

/// A string on one line in block context: plain where it reads back as the same string.
fn push_string(out: &mut String, t: &str) {
    if string_reads_back_plain(t) {
        out.push_str(t);
    } else {
        out.push_str(&double_quoted(t));
    }
}

/// Whether the string `t`, written plain in block context, reads back as that string.
fn string_reads_back_plain(t: &str) -> bool {
    // Words, base64url and field names like `env::NAME` pass in one cheap pass.
    let word = t.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && !t.ends_with(':')
        && t.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'));
    (word || plain_safe(t)) && resolve_special(t).is_none()
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat(' ').take(n));
}

fn emit_map(entries: &[(Node, Node)], indent: usize, out: &mut String) {
    for (k, v) in entries {
        pad(out, indent);
        out.push_str(&scalar_key(k));
        out.push(':');
        emit_value_after(v, indent, out);
    }
}

fn emit_seq(items: &[Node], indent: usize, out: &mut String) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match &item.kind {
            Kind::Map(e) if !e.is_empty() => {
                let mut inner = String::new();
                emit_map(e, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            Kind::Seq(s) if !s.is_empty() => {
                let mut inner = String::new();
                emit_seq(s, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            _ => emit_value_after(item, indent, out),
        }
    }
}

/// A value after `key:` or `-` at `indent`.
fn emit_value_after(v: &Node, indent: usize, out: &mut String) {
    match &v.kind {
        Kind::Map(e) if !e.is_empty() => {
            out.push('\n');
            emit_map(e, indent + 2, out);
        }
        Kind::Seq(s) if !s.is_empty() => {
            out.push('\n');
            emit_seq(s, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline_value(v, indent));
            out.push('\n');
        }
    }
}

/// A scalar or empty collection on the current line (a literal block continues below it).
fn inline_value(v: &Node, indent: usize) -> String {
    match &v.kind {
        Kind::Map(_) => "{}".into(),
        Kind::Seq(_) => "[]".into(),
        Kind::Scalar(s) => scalar_text(s, indent),
    }
}

fn scalar_key(k: &Node) -> String {
    match &k.kind {
        Kind::Scalar(s) if !s.text.contains('\n') => scalar_text(s, 0),
        Kind::Scalar(s) => double_quoted(&s.text),
        _ => "\"\"".into(),
    }
}

fn scalar_text(s: &Scalar, indent: usize) -> String {
    if s.plain {
        if s.text.is_empty() {
            return "~".into();
        }
        if plain_safe(&s.text) {
            return s.text.clone();
        }
        if !matches!(resolve(&s.text), Value::Str(_)) {
            return s.text.clone();
        }
        // A plain string that cannot be written plain again (a folded multi-line one) reads
        // the same quoted.
    } else if string_reads_back_plain(&s.text) {
        return s.text.clone();
    }
    if let Some(block) = literal_block(&s.text, indent + 2) {
        return block;
    }
    double_quoted(&s.text)
}

/// Text that a YAML parser reads back unchanged as a plain scalar in block context.
fn plain_safe(t: &str) -> bool {
    let Some(first) = t.chars().next() else { return false };
    if ",[]{}#&*!|>'\"%@`".contains(first) || first.is_whitespace() || t.starts_with("---") || t.starts_with("...") {
        return false;
    }
    // `-`, `?` and `:` start a plain scalar only when a non-space follows.
    if "-?:".contains(first) && !t[1..].starts_with(|c: char| !c.is_whitespace()) {
        return false;
    }
    if t.ends_with(|c: char| c.is_whitespace() || c == ':') {
        return false;
    }
    if t == "<<" {
        return false;
    }
    // One pass: no `: `, ` #` (or with tabs), no control characters; the rest only for
    // text that is not ASCII.
    let b = t.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let next = b.get(i + 1).copied();
        match c {
            b':' if matches!(next, Some(b' ' | b'\t')) => return false,
            b' ' | b'\t' if next == Some(b'#') => return false,
            c if c < 0x20 || c == 0x7f => return false,
            _ => {}
        }
    }
    t.is_ascii() || t.chars().all(|c| !c.is_control() && !matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'))
}

/// `|` block for multi-line text whose lines survive a literal block unchanged.
fn literal_block(t: &str, content_indent: usize) -> Option<String> {
    if !t.contains('\n') {
        return None;
    }
    let body = t.trim_end_matches('\n');
    let trailing = t.len() - body.len();
    if body.is_empty() {
        return None;
    }
    for c in t.chars() {
        if (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') {
            return None;
        }
    }
    let lines: Vec<&str> = body.split('\n').collect();
    // The first non-empty line sets the block's indentation, so it must not start with white space;
    // later lines may (indented scripts). Lines of only white space are left to quoting.
    let first = lines.iter().find(|l| !l.is_empty()).expect("the body is not empty");
    if first.starts_with([' ', '\t']) || lines.iter().any(|l| !l.is_empty() && l.trim().is_empty()) {
        return None;
    }
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{chomp}");
    for l in &lines {
        out.push('\n');
        if !l.is_empty() {
            pad(&mut out, content_indent);
            out.push_str(l);
        }
    }
    for _ in 1..trailing.max(1) {
        out.push('\n');
    }
    Some(out)
}

fn double_quoted(t: &str) -> String {
    let mut out = String::with_capacity(t.len() + 2);
    out.push('"');
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            '\u{feff}' => out.push_str("\\ufeff"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        go_sprint(&resolve(v)).unwrap()
    }

    #[test]
    fn scalars_resolve_and_print_as_go_pipeline_does() {
        assert_eq!(s("1.50"), "1.5");
        assert_eq!(s("0x1F"), "31");
        assert_eq!(s("010"), "8");
        assert_eq!(s("0o17"), "15");
        assert_eq!(s("0b101"), "5");
        assert_eq!(s("-0x10"), "-16");
        assert_eq!(s("1_000"), "1000");
        assert_eq!(s("08"), "8");
        assert_eq!(s("1e3"), "1000");
        assert_eq!(s("1e6"), "1e+06");
        assert_eq!(s("123456789.0"), "1.23456789e+08");
        assert_eq!(s("0.0001"), "0.0001");
        assert_eq!(s("0.00001"), "1e-05");
        assert_eq!(s("-.5"), "-0.5");
        assert_eq!(s(".5"), "0.5");
        assert_eq!(s("1."), "1");
        assert_eq!(s("-0.0"), "-0");
        assert_eq!(s("true"), "true");
        assert_eq!(s("True"), "true");
        assert_eq!(s("yes"), "yes");
        assert_eq!(s("on"), "on");
        assert_eq!(s("~"), "");
        assert_eq!(s("3"), "3");
        assert_eq!(s(".inf"), "+Inf");
        assert_eq!(s("2001-12-14"), "2001-12-14");
        assert_eq!(s("0x"), "0x");
        assert_eq!(s("1e400"), "1e400");
        assert_eq!(s("+5"), "5");
        assert_eq!(resolve("18446744073709551615"), Value::Uint(u64::MAX));
        assert_eq!(resolve("-9223372036854775808"), Value::Int(i64::MIN));
        assert_eq!(resolve("99999999999999999999"), Value::Float(1e20));
        assert_eq!(resolve("_1"), Value::Str("_1".into()));
    }

    #[test]
    fn quoted_and_tagged_scalars_are_strings() {
        let doc = parse("a: '010'\nb: !!str 010\nc: 010\nd: |\n  x\n").unwrap();
        assert_eq!(doc.get("a").unwrap().value(), Some(Value::Str("010".into())));
        assert_eq!(doc.get("b").unwrap().value(), Some(Value::Str("010".into())));
        assert_eq!(doc.get("c").unwrap().value(), Some(Value::Int(8)));
        assert_eq!(doc.get("d").unwrap().value(), Some(Value::Str("x\n".into())));
        assert!(parse("a: !custom 1\n").unwrap_err().0.contains("not supported"));
    }

    #[test]
    fn merges_follow_go_pipeline_precedence() {
        let doc = parse("base: &b {x: 1, y: 2}\nother: &o {y: 3, z: 4}\nm:\n  y: 0\n  <<: [*b, *o]\n  w: 5\n").unwrap();
        let m = doc.get("m").unwrap();
        let Kind::Map(entries) = &m.kind else { panic!() };
        let keys: Vec<String> = entries.iter().map(|(k, _)| map_key(k).unwrap()).collect();
        assert_eq!(keys, ["y", "x", "z", "w"]);
        assert_eq!(m.get("y").unwrap().value(), Some(Value::Int(0)));
        assert!(parse("a: 1\na: 2\n").unwrap_err().0.contains("duplicate"));
        assert!(parse("a: &a [*a]\n").is_err());
    }

    #[test]
    fn emitting_reads_back_as_the_same_document() {
        let text = "script: |\n  if true; then\n    echo in\n\n  fi\nenv:\n  A: 010\n  B: '010'\n  C: \"x: y\"\nsteps:\n  - command: |\n      echo one\n      echo two\n    label: \"#1\"\n  - wait\n  - commands: [a, 'b', \"\\ttab\"]\n    env: {}\n    x: []\n    y: ''\n    z:\n    q: \"  lead\\n  more\\n\"\n    r: \"\\n  late lead\\n\"\n  - - nested\n    - 2\nlast: \"it's\"\n";
        let doc = parse(text).unwrap();
        let out = emit(&doc);
        assert_eq!(semantic(&parse(&out).unwrap()), semantic(&doc), "{out}");
        assert!(out.contains("command: |\n      echo one\n      echo two\n"), "{out}");
        assert!(out.contains("A: 010\n"), "{out}");
        assert!(out.starts_with("script: |\n  if true; then\n    echo in\n\n  fi\n"), "{out}");
        assert!(out.contains("B: '010'\n") || out.contains("B: \"010\"\n"), "{out}");
    }

    /// The document as values: what a reader sees, whatever the scalar styles.
    #[derive(Debug, PartialEq)]
    enum Sem {
        V(Value),
        L(Vec<Sem>),
        M(Vec<(String, Sem)>),
    }

    fn semantic(n: &Node) -> Sem {
        match &n.kind {
            Kind::Scalar(_) => Sem::V(n.value().unwrap()),
            Kind::Seq(items) => Sem::L(items.iter().map(semantic).collect()),
            Kind::Map(e) => Sem::M(e.iter().map(|(k, v)| (map_key(k).unwrap(), semantic(v))).collect()),
        }
    }
}
