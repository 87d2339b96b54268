//! A Buildkite pipeline as go-pipeline models it for signing: which steps are command steps,
//! and each command step's signed values (fields, defaults, stringification, plugin names,
//! matrix forms) as go-pipeline computes them. What keytap cannot reproduce exactly is refused.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use super::jcs;
use super::yaml::{emit, go_sprint, map_key, piece, splice, Flat, Insert, Kind, Node, Parsed, Value};

/// A command step: where it sits and how to name it in messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRef {
    /// Indices: into the pipeline's steps, then into a group's steps.
    pub path: Vec<usize>,
    pub name: String,
}

/// The signature a command step carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSignature {
    pub algorithm: String,
    pub signed_fields: Vec<String>,
    pub value: String,
}

/// The fields go-pipeline always signs.
pub const REQUIRED_FIELDS: [&str; 5] = ["command", "env", "matrix", "plugins", "repository_url"];
pub const ENV_PREFIX: &str = "env::";

fn top_steps(root: &Node) -> Result<Option<&Vec<Node>>, String> {
    let steps = match &root.kind {
        Kind::Seq(items) => return Ok(Some(items)),
        Kind::Map(_) => root.get("steps"),
        Kind::Scalar(_) if root.is_null() => None,
        Kind::Scalar(_) => return Err("the pipeline is neither a mapping with `steps` nor a list of steps".into()),
    };
    match steps.map(|s| &s.kind) {
        None => Ok(None),
        Some(Kind::Seq(items)) => Ok(Some(items)),
        Some(Kind::Scalar(_)) if steps.is_some_and(Node::is_null) => Ok(None),
        Some(_) => Err("`steps` must be a list".into()),
    }
}

fn top_steps_mut(root: &mut Node) -> Option<&mut Vec<Node>> {
    match &mut root.kind {
        Kind::Seq(items) => Some(items),
        Kind::Map(entries) => match &mut entries.iter_mut().find(|(k, _)| map_key(k).ok().as_deref() == Some("steps"))?.1.kind {
            Kind::Seq(items) => Some(items),
            _ => None,
        },
        Kind::Scalar(_) => None,
    }
}

/// Refuse pipeline-level settings that go-pipeline merges into every step's signature.
pub fn check_pipeline(root: &Node) -> Result<(), String> {
    for key in ["secrets", "checkout"] {
        if root.get(key).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "the pipeline sets top-level `{key}`, which Buildkite merges into each step's signature in a way keytap does not reproduce yet; move it out of the signed pipeline"
            ));
        }
    }
    Ok(())
}

/// The pipeline's top-level `env`, stringified as go-pipeline does.
pub fn pipeline_env(root: &Node) -> Result<Vec<(String, String)>, String> {
    match root.get("env") {
        None => Ok(Vec::new()),
        Some(env) => Ok(string_map(env, "pipeline `env`")?.unwrap_or_default()),
    }
}

enum StepKind {
    Command,
    Group,
    Other,
}

fn step_kind(step: &Node) -> Result<StepKind, String> {
    let other = |t: &str| matches!(t, "wait" | "waiter" | "block" | "input" | "manual" | "trigger");
    match &step.kind {
        Kind::Scalar(_) => match step.value() {
            Some(Value::Str(s)) if other(&s) && s != "trigger" => Ok(StepKind::Other),
            _ => Err(format!("line {}: a step of unknown type; refusing to sign a pipeline keytap may read wrongly", step.line)),
        },
        Kind::Map(_) => {
            if let Some(t) = step.get("type") {
                return match t.value() {
                    Some(Value::Str(s)) if s == "command" || s == "script" => Ok(StepKind::Command),
                    Some(Value::Str(s)) if s == "group" => Ok(StepKind::Group),
                    Some(Value::Str(s)) if other(&s) => Ok(StepKind::Other),
                    _ => Err(format!("line {}: unknown step `type`", step.line)),
                };
            }
            if step.has("command") || step.has("commands") || step.has("plugins") {
                Ok(StepKind::Command)
            } else if ["wait", "waiter", "block", "input", "manual", "trigger"].iter().any(|k| step.has(k)) {
                Ok(StepKind::Other)
            } else if step.has("group") {
                Ok(StepKind::Group)
            } else {
                Err(format!("line {}: a step of unknown type; refusing to sign a pipeline keytap may read wrongly", step.line))
            }
        }
        Kind::Seq(_) => Err(format!("line {}: a step cannot be a list", step.line)),
    }
}

fn describe(step: &Node, number: std::fmt::Arguments) -> String {
    use std::fmt::Write;
    let mut name = String::with_capacity(32);
    write!(name, "step {number} ").expect("writing to a String");
    for key in ["label", "name", "key", "identifier", "id", "group"] {
        if let Some(s) = step.get(key).and_then(Node::str_text).filter(|s| !s.is_empty()) {
            // Quoted as `{:?}` quotes; printable ASCII without `"` or `\` needs no escape.
            if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
                name.push('"');
                name.push_str(s);
                name.push('"');
            } else {
                write!(name, "{s:?}").expect("writing to a String");
            }
            return name;
        }
    }
    write!(name, "(line {})", step.line).expect("writing to a String");
    name
}

/// Every command step, also inside groups, in order. Errors on a step of unknown type.
pub fn command_steps(root: &Node) -> Result<Vec<StepRef>, String> {
    let mut out = Vec::new();
    let Some(steps) = top_steps(root)? else { return Ok(out) };
    for (i, step) in steps.iter().enumerate() {
        match step_kind(step)? {
            StepKind::Command => out.push(StepRef { path: vec![i], name: describe(step, format_args!("{}", i + 1)) }),
            StepKind::Other => {}
            StepKind::Group => {
                let inner = match step.get("steps").map(|s| &s.kind) {
                    Some(Kind::Seq(items)) => items,
                    None => continue,
                    Some(_) if step.get("steps").is_some_and(Node::is_null) => continue,
                    Some(_) => return Err(format!("line {}: a group's `steps` must be a list", step.line)),
                };
                for (j, s) in inner.iter().enumerate() {
                    match step_kind(s)? {
                        StepKind::Command => out.push(StepRef { path: vec![i, j], name: describe(s, format_args!("{}.{}", i + 1, j + 1)) }),
                        StepKind::Other => {}
                        StepKind::Group => return Err(format!("line {}: a group inside a group is not a Buildkite pipeline", s.line)),
                    }
                }
            }
        }
    }
    Ok(out)
}

pub fn step_at<'a>(root: &'a Node, path: &[usize]) -> &'a Node {
    let steps = top_steps(root).ok().flatten().expect("a path from command_steps");
    let step = &steps[path[0]];
    match path.get(1) {
        None => step,
        Some(&j) => match &step.get("steps").expect("a group").kind {
            Kind::Seq(items) => &items[j],
            _ => unreachable!("a path from command_steps"),
        },
    }
}

fn step_at_mut<'a>(root: &'a mut Node, path: &[usize]) -> &'a mut Node {
    let steps = top_steps_mut(root).expect("a path from command_steps");
    let step = &mut steps[path[0]];
    match path.get(1) {
        None => step,
        Some(&j) => {
            let Kind::Map(entries) = &mut step.kind else { unreachable!("a group is a mapping") };
            let inner = &mut entries.iter_mut().find(|(k, _)| map_key(k).ok().as_deref() == Some("steps")).expect("a group").1;
            match &mut inner.kind {
                Kind::Seq(items) => &mut items[j],
                _ => unreachable!("a path from command_steps"),
            }
        }
    }
}

/// The pipeline text with each command step's signature written in, one signature at a time
/// (so each step's text can be made while the token signs the next one): into the text as it
/// is where that can be done exactly (comments, quoting and anchors kept, each signature the
/// step's first key), otherwise the whole document written again in block style (a document
/// with aliases, a step that already has a `signature`).
pub struct SignedText<'a> {
    text: &'a str,
    parsed: &'a Parsed,
    /// What to write where; `None` once a signature cannot go into the text as it is.
    pieces: Option<Vec<(usize, String)>>,
    signatures: Vec<(Vec<usize>, StepSignature)>,
}

impl<'a> SignedText<'a> {
    pub fn new(text: &'a str, parsed: &'a Parsed) -> Self {
        SignedText { text, parsed, pieces: (!parsed.aliases).then(Vec::new), signatures: Vec::new() }
    }

    pub fn add(&mut self, path: &[usize], sig: StepSignature) {
        if let Some(pieces) = &mut self.pieces {
            let step = step_at(&self.parsed.root, path);
            let insert = Insert {
                map: step,
                key: "signature",
                fields: vec![
                    ("algorithm", Flat::Str(&sig.algorithm)),
                    ("signed_fields", Flat::List(&sig.signed_fields)),
                    ("value", Flat::Str(&sig.value)),
                ],
            };
            match (!step.has("signature")).then(|| piece(self.text, &insert)).flatten() {
                Some(p) => pieces.push(p),
                None => self.pieces = None,
            }
        }
        self.signatures.push((path.to_vec(), sig));
    }

    pub fn finish(self) -> String {
        if let Some(out) = self.pieces.and_then(|pieces| splice(self.text, pieces)) {
            return out;
        }
        let mut root = self.parsed.root.clone();
        for (path, sig) in &self.signatures {
            set_signature(&mut root, path, sig);
        }
        emit(&root)
    }
}

/// Put `signature` on the step (replacing one it had), as the last key.
pub fn set_signature(root: &mut Node, path: &[usize], sig: &StepSignature) {
    let step = step_at_mut(root, path);
    let Kind::Map(entries) = &mut step.kind else { unreachable!("a command step is a mapping") };
    entries.retain(|(k, _)| map_key(k).ok().as_deref() != Some("signature"));
    let fields = sig.signed_fields.iter().map(|f| Node::scalar(f, false)).collect();
    let value = Node::map(vec![
        (Node::scalar("algorithm", false), Node::scalar(&sig.algorithm, false)),
        (Node::scalar("signed_fields", false), Node::seq(fields)),
        (Node::scalar("value", false), Node::scalar(&sig.value, false)),
    ]);
    entries.push((Node::scalar("signature", false), value));
}

/// The step's `signature`, if any.
pub fn signature_of(step: &Node) -> Result<Option<StepSignature>, String> {
    let Some(sig) = step.get("signature").filter(|s| !s.is_null()) else { return Ok(None) };
    let text = |key: &str| match sig.get(key).and_then(Node::value) {
        Some(Value::Str(s)) => Ok(s),
        _ => Err(format!("its signature has no `{key}` string")),
    };
    let signed_fields = match sig.get("signed_fields").map(|f| &f.kind) {
        Some(Kind::Seq(items)) => items
            .iter()
            .map(|i| match i.value() {
                Some(Value::Str(s)) => Ok(s),
                _ => Err("its signature's `signed_fields` holds a non-string".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("its signature has no `signed_fields` list".into()),
    };
    Ok(Some(StepSignature { algorithm: text("algorithm")?, signed_fields, value: text("value")? }))
}

/// A scalar as go-pipeline puts it in a string field.
/// `what` names the value in errors (formatted only then).
fn sprint(node: &Node, what: impl std::fmt::Display) -> Result<String, String> {
    if let Some(text) = node.str_text() {
        return Ok(text.to_string());
    }
    match node.value() {
        None => Err(format!("line {}: {what} must be a scalar", node.line)),
        Some(v) => go_sprint(&v).ok_or_else(|| format!("line {}: {what} is an integer too large for Buildkite; quote it", node.line)),
    }
}

/// A `map[string]string` field (`env`): `None` when missing, null or empty.
fn string_map(node: &Node, what: &str) -> Result<Option<Vec<(String, String)>>, String> {
    match &node.kind {
        Kind::Scalar(_) if node.is_null() => Ok(None),
        Kind::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let value = sprint(v, format_args!("a value of {what}"))?;
                out.push((map_key(k).map_err(|e| e.0)?, value));
            }
            Ok((!out.is_empty()).then_some(out))
        }
        _ => Err(format!("line {}: {what} must be a mapping of names to values", node.line)),
    }
}

/// A YAML value as go-pipeline's raw `any` marshals to JSON.
fn raw_json(node: &Node) -> Result<Json, String> {
    Ok(match &node.kind {
        Kind::Scalar(_) => match node.value().expect("a scalar") {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Int(i) => Json::from(i),
            Value::Uint(u) => Json::from(u),
            Value::Float(f) => serde_json::Number::from_f64(f)
                .map(Json::Number)
                .ok_or_else(|| format!("line {}: NaN and infinity cannot be signed (JSON has no form for them)", node.line))?,
            Value::Str(s) => Json::String(s),
        },
        Kind::Seq(items) => Json::Array(items.iter().map(raw_json).collect::<Result<_, _>>()?),
        Kind::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                m.insert(map_key(k).map_err(|e| e.0)?, raw_json(v)?);
            }
            Json::Object(m)
        }
    })
}

fn command(step: &Node) -> Result<String, String> {
    if step.has("command") && step.has("commands") {
        return Err("it has both `command` and `commands`; keep one".into());
    }
    let Some(c) = step.get("commands").or_else(|| step.get("command")) else { return Ok(String::new()) };
    match &c.kind {
        Kind::Seq(items) => Ok(items.iter().map(|i| sprint(i, "a command")).collect::<Result<Vec<_>, _>>()?.join("\n")),
        Kind::Map(_) => Err(format!("line {}: the command must be a string or a list of strings", c.line)),
        Kind::Scalar(_) => sprint(c, "the command"),
    }
}

/// Plugin sources as go-pipeline expands them (`docker#v5` to the buildkite-plugins repo).
pub fn full_source(source: &str) -> Result<String, String> {
    let refuse = || Err(format!("plugin {source:?}: keytap cannot expand this name exactly as Buildkite does; write its full form (github.com/ORG/NAME-buildkite-plugin#VERSION)"));
    if source.is_empty() || source.chars().any(|c| c.is_whitespace() || c.is_control() || c == '%' || c == '?') {
        return refuse();
    }
    if source.starts_with(['/', '.', '\\']) {
        return Ok(source.into());
    }
    let (path, fragment) = match source.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (source, None),
    };
    // A colon before the first slash is a URL scheme (or a parse error): used as written.
    let first_segment = path.split('/').next().unwrap_or("");
    if first_segment.contains(':') {
        return Ok(source.into());
    }
    let segments: Vec<&str> = path.split('/').collect();
    let last = |name: &str| match fragment {
        Some(f) if !f.is_empty() => format!("{name}-buildkite-plugin#{f}"),
        _ => format!("{name}-buildkite-plugin"),
    };
    let joined = match segments.as_slice() {
        [one] => format!("github.com/buildkite-plugins/{}", last(one)),
        [org, name] => format!("github.com/{org}/{}", last(name)),
        _ => return Ok(source.into()),
    };
    // Go's path.Join would clean these; refuse rather than guess.
    if joined.split('/').any(|s| s.is_empty() || s == "." || s == "..") || fragment.is_some_and(|f| f.contains('#')) {
        return refuse();
    }
    Ok(joined)
}

fn plugins(step: &Node) -> Result<Json, String> {
    let Some(p) = step.get("plugins").filter(|p| !p.is_null()) else { return Ok(Json::Null) };
    let mut list = Vec::new();
    let add_map = |list: &mut Vec<Json>, entries: &[(Node, Node)]| -> Result<(), String> {
        for (k, v) in entries {
            let source = map_key(k).map_err(|e| e.0)?;
            list.push(Json::Object(Map::from_iter([(full_source(&source)?, raw_json(v)?)])));
        }
        Ok(())
    };
    match &p.kind {
        Kind::Seq(items) => {
            for item in items {
                match (&item.kind, item.value()) {
                    (Kind::Map(entries), _) => add_map(&mut list, entries)?,
                    (_, Some(Value::Str(s))) => list.push(Json::Object(Map::from_iter([(full_source(&s)?, Json::Null)]))),
                    _ => return Err(format!("line {}: a plugin must be a name or a mapping of name to config", item.line)),
                }
            }
        }
        Kind::Map(entries) => add_map(&mut list, entries)?,
        Kind::Scalar(_) => return Err(format!("line {}: `plugins` must be a list", p.line)),
    }
    Ok(if list.is_empty() { Json::Null } else { Json::Array(list) })
}

fn string_list(node: &Node, what: &str) -> Result<Vec<String>, String> {
    match &node.kind {
        Kind::Seq(items) => items.iter().map(|i| sprint(i, what)).collect(),
        Kind::Scalar(_) => Ok(vec![sprint(node, what)?]),
        Kind::Map(_) => Err(format!("line {}: {what} must be a list of values", node.line)),
    }
}

/// go-pipeline's isEmptyValue, for `skip` (omitempty).
fn is_empty_json(v: &Json) -> bool {
    match v {
        Json::Null => true,
        Json::Bool(b) => !b,
        Json::Number(n) => n.as_f64() == Some(0.0),
        Json::String(s) => s.is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(_) => false,
    }
}

fn adjustment(node: &Node) -> Result<Json, String> {
    let Kind::Map(entries) = &node.kind else {
        return Err(format!("line {}: a matrix adjustment must be a mapping", node.line));
    };
    let with_scalar = |v: &Node| match v.value() {
        Some(Value::Bool(_) | Value::Int(_) | Value::Str(_)) => Ok(go_sprint(&v.value().expect("a scalar")).expect("not a Uint")),
        _ => Err(format!("line {}: an adjustment's `with` values must be strings, integers or booleans", v.line)),
    };
    let mut out = Map::new();
    for (k, v) in entries {
        let key = map_key(k).map_err(|e| e.0)?;
        match key.as_str() {
            "with" => {
                let with = match &v.kind {
                    Kind::Map(dims) => {
                        let mut m = Map::new();
                        for (dk, dv) in dims {
                            m.insert(map_key(dk).map_err(|e| e.0)?, Json::String(with_scalar(dv)?));
                        }
                        if m.len() == 1 && m.contains_key("") {
                            m.remove("").expect("present")
                        } else {
                            Json::Object(m)
                        }
                    }
                    Kind::Scalar(_) => Json::String(with_scalar(v)?),
                    Kind::Seq(_) => return Err(format!("line {}: an adjustment's `with` must be a value or a mapping", v.line)),
                };
                out.insert(key, with);
            }
            "skip" => {
                let skip = raw_json(v)?;
                if !is_empty_json(&skip) {
                    out.insert(key, skip);
                }
            }
            _ => {
                out.insert(key, raw_json(v)?);
            }
        }
    }
    out.entry("with").or_insert(Json::Null);
    Ok(Json::Object(out))
}

fn matrix(step: &Node) -> Result<Json, String> {
    let Some(m) = step.get("matrix").filter(|m| !m.is_null()) else { return Ok(Json::Null) };
    // setup: None = absent (nil); dims: name -> values (None = null).
    let mut setup: Option<Vec<(String, Option<Vec<String>>)>> = None;
    let mut adjustments = Vec::new();
    let mut rest = Map::new();
    match &m.kind {
        Kind::Seq(_) => setup = Some(vec![(String::new(), Some(string_list(m, "a matrix value")?))]),
        Kind::Scalar(_) => return Err(format!("line {}: `matrix` must be a list or a mapping", m.line)),
        Kind::Map(entries) => {
            for (k, v) in entries {
                let key = map_key(k).map_err(|e| e.0)?;
                match key.as_str() {
                    "setup" => {
                        setup = Some(match &v.kind {
                            Kind::Seq(_) => vec![(String::new(), Some(string_list(v, "a matrix value")?))],
                            Kind::Map(dims) => {
                                let mut out = Vec::new();
                                for (dk, dv) in dims {
                                    let values = if dv.is_null() { None } else { Some(string_list(dv, "a matrix value")?) };
                                    out.push((map_key(dk).map_err(|e| e.0)?, values));
                                }
                                out
                            }
                            Kind::Scalar(_) => return Err(format!("line {}: a matrix `setup` must be a list or a mapping", v.line)),
                        })
                    }
                    "adjustments" => match &v.kind {
                        Kind::Seq(items) => {
                            for item in items {
                                adjustments.push(adjustment(item)?);
                            }
                        }
                        Kind::Scalar(_) if v.is_null() => {}
                        _ => return Err(format!("line {}: matrix `adjustments` must be a list", v.line)),
                    },
                    _ => {
                        rest.insert(key, raw_json(v)?);
                    }
                }
            }
        }
    }
    let dims = setup.as_ref().map_or(0, Vec::len);
    if dims == 0 && adjustments.is_empty() && rest.is_empty() {
        return Ok(Json::Null);
    }
    let simple_list = match setup.as_deref() {
        Some([(name, Some(values))]) if name.is_empty() && !values.is_empty() => Some(values.clone()),
        _ => None,
    };
    if let Some(values) = &simple_list {
        if adjustments.is_empty() && rest.is_empty() {
            return Ok(Json::from(values.clone()));
        }
    }
    let setup_json = match (&simple_list, &setup) {
        (Some(values), _) => Json::from(values.clone()),
        (None, None) => Json::Null,
        (None, Some(dims)) => Json::Object(
            dims.iter().map(|(name, values)| (name.clone(), values.as_ref().map_or(Json::Null, |v| Json::from(v.clone())))).collect(),
        ),
    };
    let mut out = rest;
    out.insert("setup".into(), setup_json);
    if !adjustments.is_empty() {
        out.insert("adjustments".into(), Json::Array(adjustments));
    }
    Ok(Json::Object(out))
}

/// Does a string hold a `$` interpolation (or an escape) that Buildkite's backend rewrites?
pub fn has_interpolation(s: &str) -> bool {
    // Most values hold no `$` at all (a plain loop beats a searcher on short strings).
    if !s.bytes().any(|b| b == b'$') {
        return false;
    }
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'$' && b.get(i + 1).is_some_and(|&n| n.is_ascii_alphabetic() || n == b'_' || n == b'{' || n == b'$'))
            || (c == b'\\' && b.get(i + 1) == Some(&b'$'))
    })
}

fn json_has_interpolation(v: &Json) -> bool {
    match v {
        Json::String(s) => has_interpolation(s),
        Json::Array(a) => a.iter().any(json_has_interpolation),
        Json::Object(m) => m.iter().any(|(k, v)| has_interpolation(k) || json_has_interpolation(v)),
        _ => false,
    }
}

/// The values go-pipeline signs for a command step, by field name (sorted), with the outer
/// (pipeline or job) env added as `env::NAME` where the step's own env does not set NAME.
pub fn signed_values(step: &Node, repo: &str, outer_env: &[(String, String)]) -> Result<BTreeMap<String, Json>, String> {
    for key in ["secrets", "checkout"] {
        if step.get(key).is_some_and(|v| !v.is_null()) {
            return Err(format!("it sets `{key}`, which keytap cannot sign yet (Buildkite's agents of 2026 reject some such signatures); sign this step with buildkite-agent or drop `{key}`"));
        }
    }
    let env = match step.get("env") {
        None => None,
        Some(e) => string_map(e, "the step's `env`")?,
    };
    let mut values = BTreeMap::new();
    for (k, v) in outer_env {
        if env.as_ref().is_some_and(|pairs| pairs.iter().any(|(sk, _)| sk == k)) {
            continue;
        }
        values.insert(format!("{ENV_PREFIX}{k}"), Json::String(v.clone()));
    }
    let env_json = match env {
        None => Json::Null,
        Some(pairs) => Json::Object(pairs.into_iter().map(|(k, v)| (k, Json::String(v))).collect()),
    };
    values.insert("command".to_string(), Json::String(command(step)?));
    values.insert("env".to_string(), env_json);
    values.insert("plugins".to_string(), plugins(step)?);
    values.insert("matrix".to_string(), matrix(step)?);
    values.insert("repository_url".to_string(), Json::String(repo.to_string()));
    Ok(values)
}

/// Refuse values the backend would rewrite before an agent sees them.
pub fn check_interpolation(values: &BTreeMap<String, Json>) -> Result<(), String> {
    for (field, v) in values {
        if field == "repository_url" {
            continue;
        }
        if has_interpolation(field) || json_has_interpolation(v) {
            return Err(format!(
                "its `{field}` holds a $VARIABLE interpolation (or a $$ or \\$ escape); Buildkite interpolates those before agents verify, so the signature could never verify: set the value literally (or sign after interpolation)"
            ));
        }
    }
    Ok(())
}

/// The canonical payload: JCS of `{"alg": ALG, "values": VALUES}`.
pub fn payload(alg: &str, values: &BTreeMap<String, Json>) -> Result<Vec<u8>, String> {
    // "alg" < "values", so the outer object is written in order, without copying the values.
    let mut out = String::with_capacity(512);
    out.push_str("{\"alg\":");
    jcs::string(alg, &mut out);
    out.push_str(",\"values\":");
    jcs::write_object(values.iter(), &mut out).ok_or_else(|| "a value cannot be written as JSON".to_string())?;
    out.push('}');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkite::yaml::parse;

    #[test]
    fn plugin_names_expand_as_go_pipeline_does() {
        let cases = [
            ("docker#v5.9.0", "github.com/buildkite-plugins/docker-buildkite-plugin#v5.9.0"),
            ("docker", "github.com/buildkite-plugins/docker-buildkite-plugin"),
            ("org/x", "github.com/org/x-buildkite-plugin"),
            ("org/x#main", "github.com/org/x-buildkite-plugin#main"),
            ("docker#feature/branch", "github.com/buildkite-plugins/docker-buildkite-plugin#feature/branch"),
            ("github.com/org/x-buildkite-plugin#v1", "github.com/org/x-buildkite-plugin#v1"),
            ("ssh://git@example.com/x.git#v1", "ssh://git@example.com/x.git#v1"),
            ("./local/plugin", "./local/plugin"),
            ("git@github.com:org/x.git", "git@github.com:org/x.git"),
            ("a//b", "a//b"),
        ];
        for (short, full) in cases {
            assert_eq!(full_source(short).unwrap(), full, "{short}");
        }
        for bad in ["", "my plugin", "x%20y", "docker#v1/../x", "docker#a#b", "a/#v1/"] {
            assert!(full_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interpolations_are_found() {
        for s in ["$HOME", "${X}", "a $$b", "\\$x", "${X:-y}"] {
            assert!(has_interpolation(s), "{s}");
        }
        for s in ["echo $1", "cost: 5$", "a $ b", "plain"] {
            assert!(!has_interpolation(s), "{s}");
        }
    }

    /// The tree as values (without positions or quoting), with each mapping's `signature`
    /// moved to its end.
    fn normalised(node: &Node) -> Node {
        let kind = match &node.kind {
            Kind::Scalar(_) => Kind::Scalar(crate::buildkite::yaml::Scalar { text: format!("{:?}", node.value()), plain: false }),
            Kind::Seq(items) => Kind::Seq(items.iter().map(normalised).collect()),
            Kind::Map(entries) => {
                let (rest, sig): (Vec<_>, Vec<_>) = entries.iter().partition(|(k, _)| k.str_text() != Some("signature"));
                Kind::Map(rest.into_iter().chain(sig).map(|(k, v)| (normalised(k), normalised(v))).collect())
            }
        };
        Node { kind, line: 0, offset: crate::buildkite::yaml::NOWHERE, col: 0 }
    }

    fn signed_text(text: &str, parsed: &Parsed, signatures: &[(Vec<usize>, StepSignature)]) -> String {
        let mut writer = SignedText::new(text, parsed);
        for (path, sig) in signatures {
            writer.add(path, sig.clone());
        }
        writer.finish()
    }

    fn sign_all(text: &str) -> (String, Node) {
        let parsed = crate::buildkite::yaml::parse_source(text).unwrap();
        let sigs: Vec<(Vec<usize>, StepSignature)> = command_steps(&parsed.root)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let sig = StepSignature {
                    algorithm: "ES256".into(),
                    signed_fields: vec!["command".into(), "env::A B".into(), "env::#x".into(), "env::x: y".into()],
                    value: format!("eyJhbGciOiJFUzI1NiJ9..sig-{i}_x"),
                };
                (r.path, sig)
            })
            .collect();
        let mut expected = parsed.root.clone();
        for (path, sig) in &sigs {
            set_signature(&mut expected, path, sig);
        }
        (signed_text(text, &parsed, &sigs), expected)
    }

    #[test]
    fn signatures_are_written_into_the_text_as_it_is() {
        let cases = [
            "# top comment\nenv:\n  A: 1 # why\nsteps:\n  - label: \"a\" # keep\n    command: make\n\n  # between\n  - wait\n  - group: g\n    steps:\n      - command: x\n        matrix: [a, b]\n",
            "steps:\n- command: indentless\n- {command: flow, env: {A: b}}\n-\n  command: own line\n-   command: wide\n    label: w\n",
            "- command: top-level list\n  plugins: [docker#v1]\n- label: é ünïcode\n  commands:\n    - |\n      echo a\n      echo b\n",
            "steps:\n  - \"command\": quoted key\n  - 'label': q\n    command: 'single'\n  - type: script\n    label: s\n  - {\n      command: multi-line flow,\n    }\n",
            "steps:\n  - <<: {env: {A: b}}\n    command: merged inline\n",
        ];
        for text in cases {
            let (out, expected) = sign_all(text);
            // Nothing of the original is lost: every original line still ends a line, in order
            // (a flow mapping gets its signature after its `{`).
            let mut lines = out.lines();
            for line in text.lines() {
                let tail = line.split_once('{').map_or(line.trim_start_matches(['-', ' ']), |(_, t)| t);
                assert!(lines.any(|l| l.ends_with(tail)), "{line:?} lost in\n{out}");
            }
            let reread = parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
            assert_eq!(normalised(&reread), normalised(&expected), "\n{out}");
        }
    }

    #[test]
    fn documents_the_text_writer_cannot_take_are_written_again_whole() {
        let cases = [
            // Aliases: one place in the text stands for several steps.
            "x: &s\n  command: a\nsteps:\n  - *s\n  - command: b\n",
            // A step signed before: its old signature is replaced.
            "steps:\n  - command: a\n    signature: {algorithm: EdDSA, signed_fields: [command], value: old}\n",
        ];
        for text in cases {
            let (out, expected) = sign_all(text);
            // Written again whole: the anchor is expanded, the old signature gone.
            assert!(!out.contains("&s") && !out.contains("old"), "{out}");
            assert_eq!(normalised(&parse(&out).unwrap()), normalised(&expected), "\n{out}");
        }
    }

    #[test]
    fn step_types() {
        let doc = parse("steps:\n  - wait\n  - command: a\n  - block: ok\n  - group: g\n    steps:\n      - commands: [b]\n      - wait: ~\n  - plugins: [docker#v1]\n  - type: script\n    label: s\n").unwrap();
        let steps = command_steps(&doc).unwrap();
        let paths: Vec<Vec<usize>> = steps.iter().map(|s| s.path.clone()).collect();
        assert_eq!(paths, [vec![1], vec![3, 0], vec![4], vec![5]]);
        assert_eq!(steps[3].name, "step 6 \"s\"");
        assert!(command_steps(&parse("steps:\n  - something: x\n").unwrap()).is_err());
        assert!(command_steps(&parse("steps:\n  - nonsense\n").unwrap()).is_err());
    }
}
