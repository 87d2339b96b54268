//! Verifying a chain-of-trust document as scriptworker does (its checks 1 to 3): the signature
//! over the exact bytes, the `cot_v1` shape, the task id, and the artifacts.
//!
//! Order matters: the size caps first, then the signature, and nothing else when the
//! signature fails (an unsigned document is never parsed and no artifact is hashed for it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::document::{self, ShapeProblem};
use super::hash::{Algorithms, Digests, Tree, LIVE_LOGS};
use super::trust::{self, CotSignature, TrustedKeys};

/// Largest document accepted. Real ones are a few KiB to a few hundred KiB (the task
/// definition dominates); this bounds the memory an unsigned flood can cost.
pub const MAX_COT_BYTES: usize = 8 << 20;
/// Largest signature file accepted (a raw `.sig` is 64 bytes, an SSHSIG under 1 KiB).
pub const MAX_SIGNATURE_BYTES: usize = 16 << 10;

/// What to check besides the signature and the shape.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub trusted: TrustedKeys,
    /// The task id the document must name (the task it was fetched for).
    pub task_id: Option<String>,
    /// The run id the document must name.
    pub run_id: Option<u64>,
    /// Who the allowed_signers line must name (as `ssh-keygen -Y verify -I`); by default
    /// `<workerId>@<workerGroup>` from the signed document. Not used for `--trusted-key`s.
    pub principal: Option<String>,
    /// Downloaded artifacts to check against the document.
    pub artifacts: Option<PathBuf>,
    /// Also require every listed artifact to be present in `artifacts`, and a task id.
    pub strict: bool,
    /// Files under `artifacts` that are not artifacts (the document and signature themselves).
    pub exclude: Vec<PathBuf>,
}

impl VerifyOptions {
    /// Refuse options that cannot give a meaningful answer; otherwise the warnings to show.
    pub fn check(&self) -> Result<Vec<String>, String> {
        let mut warnings: Vec<String> = self.trusted.ignored.clone();
        if self.task_id.is_none() {
            if self.strict {
                return Err("--strict needs --task-id: without it any genuine document of a trusted worker, for any task, would pass".into());
            }
            warnings.push(
                "no --task-id: a genuine document for ANY task run by a trusted worker is accepted (replay); pass the task id you fetched it for".into(),
            );
        }
        Ok(warnings)
    }
}

/// One reason a document is rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum Failure {
    #[error("signature: {reason}")]
    Signature { reason: String },
    #[error("document: {reason}")]
    Document { reason: String },
    #[error("taskId mismatch: the document is for {found:?}, expected {expected:?}")]
    TaskId { expected: String, found: String },
    #[error("runId mismatch: the document is for run {found}, expected {expected}")]
    RunId { expected: u64, found: u64 },
    #[error("signer: {reason}")]
    Principal { reason: String },
    #[error("artifact {artifact}: {algorithm} mismatch (listed {listed}, found {actual})")]
    DigestMismatch { artifact: String, algorithm: String, listed: String, actual: String },
    #[error("unlisted artifact {artifact}: present in the artifact directory but not in the document")]
    UnlistedArtifact { artifact: String },
    #[error("missing artifact {artifact}: listed in the document but not in the artifact directory")]
    MissingArtifact { artifact: String },
    #[error("artifacts: {reason}")]
    Artifacts { reason: String },
}

impl Failure {
    /// Stable short name, as in the JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Signature { .. } => "signature",
            Failure::Document { .. } => "document",
            Failure::TaskId { .. } => "task-id",
            Failure::RunId { .. } => "run-id",
            Failure::Principal { .. } => "principal",
            Failure::DigestMismatch { .. } => "digest-mismatch",
            Failure::UnlistedArtifact { .. } => "unlisted-artifact",
            Failure::MissingArtifact { .. } => "missing-artifact",
            Failure::Artifacts { .. } => "artifacts",
        }
    }
}

/// What a verified document says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Which trusted key made the signature.
    pub signer: String,
    pub task_id: String,
    pub run_id: u64,
    pub worker_group: String,
    pub worker_id: String,
    /// Artifacts listed in the document.
    pub listed: usize,
    /// Artifacts found in the artifact directory and matched.
    pub checked: Vec<String>,
    /// Listed artifacts not found in the directory (allowed unless strict).
    pub not_present: Vec<String>,
}

/// Verify a document's exact bytes against its detached signature (file contents).
/// Every failure is collected; `Ok` only when there are none. When the signature does not
/// verify, that is the only failure: nothing else of an unsigned document is looked at.
pub fn verify_cot(cot: &[u8], signature: &[u8], opts: &VerifyOptions) -> Result<Report, Vec<Failure>> {
    if cot.len() > MAX_COT_BYTES {
        return Err(vec![Failure::Document {
            reason: format!("{} bytes or more, over the {MAX_COT_BYTES}-byte limit for a chain-of-trust document", cot.len()),
        }]);
    }
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(vec![Failure::Signature {
            reason: format!("the signature file is {} bytes or more, over the {MAX_SIGNATURE_BYTES}-byte limit", signature.len()),
        }]);
    }
    let signer = match CotSignature::parse(signature).and_then(|s| trust::verify_signature(cot, &s, &opts.trusted)) {
        Ok(signer) => signer,
        Err(reason) => return Err(vec![Failure::Signature { reason }]),
    };
    let mut failures = Vec::new();
    let (parsed, problems) = document::parse(cot);
    let not_json = problems.iter().any(|p| matches!(p, ShapeProblem::NotJson(_)));
    failures.extend(problems.into_iter().map(|p| Failure::Document { reason: p.to_string() }));
    if !signer.lines.is_empty() {
        let principal = opts.principal.clone().or_else(|| match (&parsed.worker_id, &parsed.worker_group) {
            (Some(id), Some(group)) => Some(format!("{id}@{group}")),
            _ => None,
        });
        match principal {
            Some(p) if signer.allows_principal(&p) => {}
            Some(p) => failures.push(Failure::Principal {
                reason: format!(
                    "the allowed_signers line(s) for {} name {}, not {p:?}; list the key for that principal or pass --principal",
                    signer.lines[0].key.fingerprint(ssh_key::HashAlg::Sha256),
                    signer.lines.iter().map(|l| format!("{:?}", l.principals)).collect::<Vec<_>>().join(", ")
                ),
            }),
            None => failures.push(Failure::Principal {
                reason: "the document names no workerId@workerGroup to match allowed_signers principals; pass --principal".into(),
            }),
        }
    }
    if let (Some(expected), Some(found)) = (&opts.task_id, &parsed.task_id) {
        if expected != found {
            failures.push(Failure::TaskId { expected: expected.clone(), found: found.clone() });
        }
    }
    if let (Some(expected), Some(found)) = (opts.run_id, parsed.run_id) {
        if expected != found {
            failures.push(Failure::RunId { expected, found });
        }
    }
    let mut checked = Vec::new();
    let mut not_present = Vec::new();
    if let (Some(dir), false) = (&opts.artifacts, not_json) {
        match check_artifacts(dir, &opts.exclude, &parsed.artifacts, opts.strict, &mut failures) {
            Ok((c, n)) => {
                checked = c;
                not_present = n;
            }
            Err(reason) => failures.push(Failure::Artifacts { reason }),
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    Ok(Report {
        signer: signer.name,
        task_id: parsed.task_id.unwrap_or_default(),
        run_id: parsed.run_id.unwrap_or_default(),
        worker_group: parsed.worker_group.unwrap_or_default(),
        worker_id: parsed.worker_id.unwrap_or_default(),
        listed: parsed.artifacts.len(),
        checked,
        not_present,
    })
}

/// Every file in `dir` must be listed and match every listed digest; with `strict`, every
/// listed artifact must also be there. The live logs at Taskcluster's names may be present
/// unlisted; a listed file is always checked, whatever its name.
fn check_artifacts(
    dir: &std::path::Path,
    exclude: &[PathBuf],
    listed: &BTreeMap<String, Digests>,
    strict: bool,
    failures: &mut Vec<Failure>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let tree = Tree::open(dir).map_err(|e| e.to_string())?;
    let files = tree.collect(exclude).map_err(|e| e.to_string())?;
    let mut to_hash = Vec::new();
    for f in files {
        if listed.contains_key(&f.name) {
            to_hash.push(f);
        } else if !LIVE_LOGS.contains(&f.name.as_str()) {
            failures.push(Failure::UnlistedArtifact { artifact: f.name });
        }
    }
    let needs_512 = to_hash.iter().any(|f| listed[&f.name].sha512.is_some());
    let algorithms = Algorithms { sha256: true, sha512: needs_512 };
    let found = tree.hash_all(&to_hash, algorithms).map_err(|e| e.to_string())?;
    let mut checked = Vec::new();
    for (name, actual) in &found {
        let want = &listed[name];
        let mut ok = true;
        for (alg, listed_digest, actual_digest) in
            [("sha256", &want.sha256, &actual.sha256), ("sha512", &want.sha512, &actual.sha512)]
        {
            if let (Some(l), Some(a)) = (listed_digest, actual_digest) {
                if l != a {
                    ok = false;
                    failures.push(Failure::DigestMismatch {
                        artifact: name.clone(),
                        algorithm: alg.into(),
                        listed: l.clone(),
                        actual: a.clone(),
                    });
                }
            }
        }
        if ok {
            checked.push(name.clone());
        }
    }
    let mut not_present = Vec::new();
    for name in listed.keys().filter(|n| !found.contains_key(*n)) {
        if strict {
            failures.push(Failure::MissingArtifact { artifact: name.clone() });
        } else {
            not_present.push(name.clone());
        }
    }
    Ok((checked, not_present))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> VerifyOptions {
        let mut trusted = TrustedKeys::default();
        trusted.add_raw_base64("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").unwrap();
        // A directory that does not exist: any attempt to look at artifacts would say so.
        VerifyOptions { trusted, artifacts: Some(PathBuf::from("/nonexistent/keytap-artifacts")), ..Default::default() }
    }

    #[test]
    fn a_bad_signature_is_the_only_failure_reported() {
        let errs = verify_cot(b"not even json", &[0u8; 64], &opts()).unwrap_err();
        assert_eq!(errs, [Failure::Signature { reason: "the Ed25519 signature does not verify with any trusted key".into() }]);
        let errs = verify_cot(b"{}", b"short", &opts()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].code(), "signature");
    }

    #[test]
    fn caps_come_before_the_signature() {
        let big = vec![b' '; MAX_COT_BYTES + 1];
        let errs = verify_cot(&big, &[0u8; 64], &opts()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(matches!(&errs[0], Failure::Document { reason } if reason.contains("over the 8388608-byte limit")), "{errs:?}");
        let errs = verify_cot(b"{}", &vec![0u8; MAX_SIGNATURE_BYTES + 1], &opts()).unwrap_err();
        assert!(matches!(&errs[..], [Failure::Signature { reason }] if reason.contains("over the 16384-byte limit")), "{errs:?}");
    }

    #[test]
    fn strict_needs_a_task_id_and_its_absence_is_warned() {
        let mut o = opts();
        assert!(o.check().unwrap()[0].starts_with("no --task-id"));
        o.strict = true;
        assert!(o.check().unwrap_err().starts_with("--strict needs --task-id"));
        o.task_id = Some("T".into());
        assert_eq!(o.check().unwrap(), Vec::<String>::new());
    }
}
