#!/usr/bin/env python3
"""An independent Buildkite step-signature verifier and signer, written from the spec
(shared reference "Buildkite signed pipelines", RFC 7515, RFC 7638, RFC 8785), not from keytap's code.

  buildkite_jws.py verify JWKS REPO PIPELINE   -> "ok N" / "bad N: why" per command step; exit 1 on any bad
  buildkite_jws.py sign ed25519|p256 REPO PIPELINE OUTDIR
                                               -> OUTDIR/signed.yml, OUTDIR/jwks.json, OUTDIR/private.pem

Uses PyYAML (YAML 1.1: keep test pipelines free of yes/no/on/off scalars), `cryptography` and the
`rfc8785` canonicaliser. Only what the tests need: command steps, groups, env, plugins, matrix.
"""
import base64
import hashlib
import json
import os
import sys

import rfc8785
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def go_string(v):
    """A YAML scalar as Go's fmt.Sprint prints it (the cases the tests use)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r
    return str(v)


def plugin_source(name):
    if name.startswith(("/", ".", "\\")) or ":" in name.split("#")[0].split("/")[0]:
        return name
    path, _, version = name.partition("#")
    parts = path.split("/")
    suffix = "-buildkite-plugin" + ("#" + version if version else "")
    if len(parts) == 1:
        return "github.com/buildkite-plugins/" + parts[0] + suffix
    if len(parts) == 2:
        return "github.com/" + parts[0] + "/" + parts[1] + suffix
    return name


def step_values(step, repo, outer_env):
    cmd = step.get("commands", step.get("command"))
    if isinstance(cmd, list):
        command = "\n".join(go_string(c) for c in cmd)
    else:
        command = go_string(cmd)
    env = {str(k): go_string(v) for k, v in (step.get("env") or {}).items()} or None
    plugins = []
    raw = step.get("plugins") or []
    if isinstance(raw, dict):
        raw = [{k: v} for k, v in raw.items()]
    for p in raw:
        if isinstance(p, str):
            plugins.append({plugin_source(p): None})
        else:
            for k, v in p.items():
                plugins.append({plugin_source(k): v})
    matrix = step.get("matrix")
    if isinstance(matrix, list):
        matrix = [go_string(x) for x in matrix] or None
    elif isinstance(matrix, dict):
        setup = matrix.get("setup")
        adjustments = []
        for a in matrix.get("adjustments") or []:
            out = {k: v for k, v in a.items() if k not in ("with", "skip")}
            w = a.get("with")
            out["with"] = {k: go_string(v) for k, v in w.items()} if isinstance(w, dict) else go_string(w)
            if a.get("skip"):
                out["skip"] = a["skip"]
            adjustments.append(out)
        if isinstance(setup, list) and not adjustments:
            matrix = [go_string(x) for x in setup]
        else:
            m = {"setup": [go_string(x) for x in setup] if isinstance(setup, list)
                 else {k: [go_string(x) for x in v] for k, v in setup.items()}}
            if adjustments:
                m["adjustments"] = adjustments
            matrix = m
    values = {
        "command": command,
        "env": env,
        "plugins": plugins or None,
        "matrix": matrix,
        "repository_url": repo,
    }
    for k, v in outer_env.items():
        if env is None or k not in env:
            values["env::" + k] = v
    return values


def command_steps(doc):
    steps = doc["steps"] if isinstance(doc, dict) else doc
    for s in steps:
        if isinstance(s, dict) and ("command" in s or "commands" in s or "plugins" in s):
            yield s
        elif isinstance(s, dict) and "group" in s:
            for g in s.get("steps") or []:
                if isinstance(g, dict) and ("command" in g or "commands" in g or "plugins" in g):
                    yield g


def thumbprint(jwk):
    members = {k: jwk[k] for k in (("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x"))}
    return b64u(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


def verify_jws(jwks, value, payload, algorithm):
    header_b64, body, sig_b64 = value.split(".")
    assert body == "", "payload must be detached"
    header = json.loads(unb64u(header_b64))
    if header.get("alg") != algorithm:
        raise InvalidSignature("header alg differs from the step's algorithm")
    key = next((k for k in jwks["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None:
        raise InvalidSignature("no key with that kid")
    if key.get("alg") != header["alg"]:
        raise InvalidSignature("key alg differs")
    signing_input = (header_b64 + "." + b64u(payload)).encode()
    sig = unb64u(sig_b64)
    if header["alg"] == "EdDSA":
        ed25519.Ed25519PublicKey.from_public_bytes(unb64u(key["x"])).verify(sig, signing_input)
    elif header["alg"] in ("ES256", "ES384"):
        curve, hash_alg, size = (ec.SECP256R1(), hashes.SHA256(), 32) if header["alg"] == "ES256" else (ec.SECP384R1(), hashes.SHA384(), 48)
        if len(sig) != 2 * size:
            raise InvalidSignature("not a raw r||s signature")
        pub = ec.EllipticCurvePublicNumbers(int.from_bytes(unb64u(key["x"]), "big"), int.from_bytes(unb64u(key["y"]), "big"), curve).public_key()
        der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
        pub.verify(der, signing_input, ec.ECDSA(hash_alg))
    else:
        raise InvalidSignature("unknown alg")


def cmd_verify(jwks_path, repo, pipeline_path):
    jwks = json.load(open(jwks_path))
    doc = yaml.safe_load(open(pipeline_path))
    outer = {str(k): go_string(v) for k, v in (doc.get("env") or {}).items()} if isinstance(doc, dict) else {}
    bad = 0
    for n, step in enumerate(command_steps(doc), 1):
        sig = step.get("signature")
        try:
            if not sig:
                raise InvalidSignature("no signature")
            values = step_values(step, repo, outer)
            signed = {f: values[f] for f in sig["signed_fields"]}
            payload = rfc8785.dumps({"alg": sig["algorithm"], "values": signed})
            verify_jws(jwks, sig["value"], payload, sig["algorithm"])
            print(f"ok {n}")
        except (InvalidSignature, KeyError, ValueError) as e:
            bad += 1
            print(f"bad {n}: {e!r}")
    sys.exit(1 if bad else 0)


def cmd_sign(kind, repo, pipeline_path, outdir):
    doc = yaml.safe_load(open(pipeline_path))
    outer = {str(k): go_string(v) for k, v in (doc.get("env") or {}).items()} if isinstance(doc, dict) else {}
    if kind == "ed25519":
        priv = ed25519.Ed25519PrivateKey.generate()
        raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw), "alg": "EdDSA", "use": "sig"}
    else:
        priv = ec.generate_private_key(ec.SECP256R1())
        nums = priv.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u(nums.x.to_bytes(32, "big")), "y": b64u(nums.y.to_bytes(32, "big")), "alg": "ES256", "use": "sig"}
    jwk["kid"] = os.environ.get("KID") or thumbprint(jwk)
    header_b64 = b64u(json.dumps({"alg": jwk["alg"], "kid": jwk["kid"]}).encode())
    for step in command_steps(doc):
        values = step_values(step, repo, outer)
        payload = rfc8785.dumps({"alg": jwk["alg"], "values": values})
        signing_input = (header_b64 + "." + b64u(payload)).encode()
        if kind == "ed25519":
            sig = priv.sign(signing_input)
        else:
            r, s = decode_dss_signature(priv.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        step["signature"] = {"algorithm": jwk["alg"], "signed_fields": sorted(values), "value": header_b64 + ".." + b64u(sig)}
    with open(os.path.join(outdir, "signed.yml"), "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    with open(os.path.join(outdir, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)


if __name__ == "__main__":
    if sys.argv[1] == "verify":
        cmd_verify(*sys.argv[2:5])
    elif sys.argv[1] == "sign":
        cmd_sign(*sys.argv[2:6])
    else:
        sys.exit("usage: buildkite_jws.py verify|sign ...")
