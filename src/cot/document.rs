//! The chain-of-trust document (Taskcluster / scriptworker `cot_v1`): building it for signing,
//! and checking the shape of one received for verification.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::hash::Digests;

/// The only version there is.
pub const CHAIN_OF_TRUST_VERSION: u64 = 1;

/// The queue's run ids are integers from 0 to 1000 (its `run-id` schema).
pub const MAX_RUN_ID: u64 = 1000;
const RUN_ID_RANGE: &str = "an integer from 0 to 1000";

/// The document, fields in generic-worker's order; serialised with a 2-space indent.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CotDocument {
    pub chain_of_trust_version: u64,
    pub artifacts: BTreeMap<String, Digests>,
    pub task: Value,
    pub task_id: String,
    pub run_id: u64,
    pub worker_group: String,
    pub worker_id: String,
    pub environment: Value,
}

impl CotDocument {
    /// The exact bytes that get written and signed (like Go's `json.MarshalIndent`: no
    /// trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a CoT document always serialises")
    }
}

/// One way a received document does not have the `cot_v1` shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeProblem {
    NotJson(String),
    Missing(&'static str),
    WrongType { field: String, expected: &'static str },
    Version(String),
    BadDigest { artifact: String, detail: String },
}

impl std::fmt::Display for ShapeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeProblem::NotJson(e) => write!(f, "not a JSON object: {e}"),
            ShapeProblem::Missing(field) => write!(f, "required field {field} is missing"),
            ShapeProblem::WrongType { field, expected } => write!(f, "field {field} must be {expected}"),
            ShapeProblem::Version(v) => write!(f, "chainOfTrustVersion is {v}; only version 1 is understood"),
            ShapeProblem::BadDigest { artifact, detail } => write!(f, "artifact {artifact}: {detail}"),
        }
    }
}

/// What verification needs from a document whose shape is right.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCot {
    pub task_id: Option<String>,
    pub run_id: Option<u64>,
    pub worker_group: Option<String>,
    pub worker_id: Option<String>,
    pub artifacts: BTreeMap<String, Digests>,
}

/// Check the `cot_v1` schema's requirements (top level and the task's required members) and
/// pull out what verification uses. Every problem is reported, not just the first.
pub fn parse(bytes: &[u8]) -> (ParsedCot, Vec<ShapeProblem>) {
    let mut problems = Vec::new();
    let mut parsed = ParsedCot { task_id: None, run_id: None, worker_group: None, worker_id: None, artifacts: BTreeMap::new() };
    let root: Map<String, Value> = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            problems.push(ShapeProblem::NotJson("the top level is not an object".into()));
            return (parsed, problems);
        }
        Err(e) => {
            problems.push(ShapeProblem::NotJson(e.to_string()));
            return (parsed, problems);
        }
    };
    let wrong = |field: &str, expected: &'static str| ShapeProblem::WrongType { field: field.to_string(), expected };

    match root.get("chainOfTrustVersion") {
        None => problems.push(ShapeProblem::Missing("chainOfTrustVersion")),
        Some(Value::Number(n)) if n.as_u64() == Some(CHAIN_OF_TRUST_VERSION) => {}
        Some(Value::Number(n)) => problems.push(ShapeProblem::Version(n.to_string())),
        Some(_) => problems.push(wrong("chainOfTrustVersion", "a number")),
    }
    // An integer written as one: -1, 1.5, 1e3 or 2^64 are refused, never read as 0.
    match root.get("runId") {
        None => problems.push(ShapeProblem::Missing("runId")),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r <= MAX_RUN_ID) => parsed.run_id = n.as_u64(),
        Some(_) => problems.push(wrong("runId", RUN_ID_RANGE)),
    }
    for (field, slot) in [("taskId", &mut parsed.task_id), ("workerGroup", &mut parsed.worker_group), ("workerId", &mut parsed.worker_id)] {
        match root.get(field) {
            None => problems.push(ShapeProblem::Missing(field)),
            Some(Value::String(s)) => *slot = Some(s.clone()),
            Some(_) => problems.push(wrong(field, "a string")),
        }
    }
    match root.get("environment") {
        None => problems.push(ShapeProblem::Missing("environment")),
        Some(Value::Object(_)) => {}
        Some(_) => problems.push(wrong("environment", "an object")),
    }
    match root.get("task") {
        None => problems.push(ShapeProblem::Missing("task")),
        Some(Value::Object(task)) => check_task(task, &mut problems),
        Some(_) => problems.push(wrong("task", "an object")),
    }
    match root.get("artifacts") {
        None => problems.push(ShapeProblem::Missing("artifacts")),
        Some(Value::Object(artifacts)) => {
            for (name, entry) in artifacts {
                match parse_digests(entry) {
                    Ok(d) => {
                        parsed.artifacts.insert(name.clone(), d);
                    }
                    Err(detail) => problems.push(ShapeProblem::BadDigest { artifact: name.clone(), detail }),
                }
            }
        }
        Some(_) => problems.push(wrong("artifacts", "an object")),
    }
    (parsed, problems)
}

/// The task definition's members the `cot_v1` schema requires.
fn check_task(task: &Map<String, Value>, problems: &mut Vec<ShapeProblem>) {
    let wrong = |field: &str, expected: &'static str| ShapeProblem::WrongType { field: field.to_string(), expected };
    for field in ["dependencies", "scopes"] {
        let name = if field == "scopes" { "task.scopes" } else { "task.dependencies" };
        match task.get(field) {
            None => problems.push(ShapeProblem::Missing(name)),
            Some(Value::Array(items)) => {
                let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                match strings {
                    None => problems.push(wrong(name, "an array of strings")),
                    Some(mut s) => {
                        let n = s.len();
                        s.sort_unstable();
                        s.dedup();
                        if s.len() != n {
                            problems.push(wrong(name, "an array of unique strings"));
                        }
                    }
                }
            }
            Some(_) => problems.push(wrong(name, "an array of strings")),
        }
    }
    if !task.contains_key("payload") {
        problems.push(ShapeProblem::Missing("task.payload"));
    }
    for (field, name) in [("taskGroupId", "task.taskGroupId"), ("workerType", "task.workerType")] {
        match task.get(field) {
            None => problems.push(ShapeProblem::Missing(name)),
            Some(Value::String(_)) => {}
            Some(_) => problems.push(wrong(name, "a string")),
        }
    }
}

fn parse_digests(entry: &Value) -> Result<Digests, String> {
    let Value::Object(m) = entry else { return Err("entry is not an object".into()) };
    let mut d = Digests::default();
    for (alg, len, slot) in [("sha256", 64, &mut d.sha256), ("sha512", 128, &mut d.sha512)] {
        match m.get(alg) {
            None => {}
            Some(Value::String(h)) if h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                *slot = Some(h.to_ascii_lowercase())
            }
            Some(_) => return Err(format!("{alg} is not {len} hex digits")),
        }
    }
    if d.sha256.is_none() && d.sha512.is_none() {
        return Err("lists neither sha256 nor sha512".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task() -> Value {
        json!({"dependencies": ["a"], "payload": {}, "scopes": [], "taskGroupId": "g", "workerType": "w", "provisionerId": "p"})
    }

    #[test]
    fn built_document_has_generic_worker_layout_and_parses_cleanly() {
        let mut artifacts = BTreeMap::new();
        artifacts.insert("public/x".to_string(), Digests { sha256: Some("ab".repeat(32)), sha512: None });
        let doc = CotDocument {
            chain_of_trust_version: 1,
            artifacts,
            task: task(),
            task_id: "T".into(),
            run_id: 0,
            worker_group: "g".into(),
            worker_id: "w".into(),
            environment: json!({}),
        };
        let bytes = doc.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("{\n  \"chainOfTrustVersion\": 1,\n  \"artifacts\": {\n    \"public/x\": {\n      \"sha256\": \"abab"), "{text}");
        let (parsed, problems) = parse(&bytes);
        assert_eq!(problems, []);
        assert_eq!(parsed.task_id.as_deref(), Some("T"));
        assert_eq!(parsed.artifacts["public/x"].sha256.as_deref(), Some("ab".repeat(32).as_str()));
    }

    #[test]
    fn every_shape_problem_is_named() {
        let doc = json!({"chainOfTrustVersion": 2, "artifacts": {"a": {"md5": "x"}, "b": {"sha256": "zz"}},
            "task": {"dependencies": ["a", "a"], "scopes": [1]}, "runId": "0", "workerGroup": 1, "environment": []});
        let (_, problems) = parse(&serde_json::to_vec(&doc).unwrap());
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for expected in [
            "chainOfTrustVersion is 2; only version 1 is understood",
            "field runId must be an integer from 0 to 1000",
            "required field taskId is missing",
            "field workerGroup must be a string",
            "required field workerId is missing",
            "field environment must be an object",
            "field task.dependencies must be an array of unique strings",
            "field task.scopes must be an array of strings",
            "required field task.payload is missing",
            "required field task.taskGroupId is missing",
            "required field task.workerType is missing",
            "artifact a: lists neither sha256 nor sha512",
            "artifact b: sha256 is not 64 hex digits",
        ] {
            assert!(text.iter().any(|t| t == expected), "missing {expected:?} in {text:?}");
        }
        assert_eq!(parse(b"[1]").1, [ShapeProblem::NotJson("the top level is not an object".into())]);
    }

    #[test]
    fn run_ids_are_integers_in_range() {
        let doc = |run: &str| {
            let text = format!(
                r#"{{"chainOfTrustVersion": 1, "artifacts": {{}}, "task": {}, "taskId": "T", "runId": {run}, "workerGroup": "g", "workerId": "w", "environment": {{}}}}"#,
                task()
            );
            parse(text.as_bytes())
        };
        assert_eq!(doc("0").0.run_id, Some(0));
        assert_eq!(doc("1000").0.run_id, Some(1000));
        for bad in ["-1", "1.5", "1e3", "1.0", "1001", "18446744073709551616", "\"3\"", "null"] {
            let (parsed, problems) = doc(bad);
            assert_eq!(parsed.run_id, None, "{bad}");
            assert_eq!(problems, [ShapeProblem::WrongType { field: "runId".into(), expected: RUN_ID_RANGE }], "{bad}");
        }
    }
}
