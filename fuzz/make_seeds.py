#!/usr/bin/env python3
"""Write the seed corpus for the agent_input fuzz target: well-formed and malformed agent
frames of every message type, with userauth and SSHSIG payloads."""
import os, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "agent_input")
os.makedirs(out, exist_ok=True)

def s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b

def frame(body):
    return struct.pack(">I", len(body)) + body

ed_key = s("ssh-ed25519") + s(bytes(range(32)))
p256_key = s("ecdsa-sha2-nistp256") + s("nistp256") + s(b"\x04" + bytes(64))
userauth = s(bytes(32)) + b"\x32" + s("git") + s("ssh-connection") + s("publickey") + b"\x01" + s("ssh-ed25519") + s(ed_key)
hostbound = s(bytes(32)) + b"\x32" + s("git") + s("ssh-connection") + s("publickey-hostbound-v00@openssh.com") + b"\x01" + s("ssh-ed25519") + s(ed_key) + s(ed_key)
sshsig = b"SSHSIG" + s("git") + s("") + s("sha512") + s(bytes(64))
sig = s("ssh-ed25519") + s(bytes(64))
bind = s("session-bind@openssh.com") + s(ed_key) + s(bytes(32)) + s(sig) + b"\x01"

# A host certificate (the CA signature is zeros: parsing, not trust, is what is exercised).
host_cert = (s("ssh-ed25519-cert-v01@openssh.com") + s(bytes(32)) + s(bytes(range(32))) + struct.pack(">Q", 1)
             + struct.pack(">I", 2) + s("host") + s(s("host.example")) + struct.pack(">Q", 0) + struct.pack(">Q", 2**64 - 1)
             + s("") + s("") + s("") + s(ed_key) + s(sig))
bind_cert = s("session-bind@openssh.com") + s(host_cert) + s(bytes(32)) + s(sig) + b"\x01"
odd_user = s(bytes(200)) + b"\x32" + s(b"root:\xff") + s("other-service") + s("publickey") + b"\x01" + s("ssh-ed25519") + s(ed_key)
hostbound_cert = s(bytes(32)) + b"\x32" + s("git") + s("ssh-connection") + s("publickey-hostbound-v00@openssh.com") + b"\x01" + s("ssh-ed25519") + s(ed_key) + s(host_cert)
setup_json = b'{"serial":null,"slot":"9a","algorithm":"p256","pin_policy":"once","touch_policy":"never","force":false,"no_key":true,"change_pin":{"current":"123456","new":"87654321"}}'

def ext(name, details):
    return frame(b"\x1b" + s(name) + details)

seeds = {
    "session-bind-cert": frame(b"\x1b" + bind_cert),
    "bind-then-sign": frame(b"\x1b" + bind) + frame(b"\x0d" + s(ed_key) + s(hostbound) + struct.pack(">I", 0)),
    "sign-userauth-odd-user": frame(b"\x0d" + s(ed_key) + s(odd_user) + struct.pack(">I", 0)),
    "sign-hostbound-cert": frame(b"\x0d" + s(ed_key) + s(hostbound_cert) + struct.pack(">I", 0)),
    "ext-setup": ext("keytap-setup@keytap.dev", s(setup_json)),
    "ext-cert-add": ext("keytap-cert@keytap.dev", s("add") + s(host_cert) + s("x-cert.pub")),
    "ext-cert-remove": ext("keytap-cert@keytap.dev", s("remove") + s("key-id") + s("host")),
    "ext-attest": ext("keytap-attest@keytap.dev", s("9a") + struct.pack(">I", 0)),
    "ext-status": ext("keytap-status@keytap.dev", b""),
    "identities": frame(b"\x0b"),
    "sign-userauth": frame(b"\x0d" + s(ed_key) + s(userauth) + struct.pack(">I", 0)),
    "sign-hostbound": frame(b"\x0d" + s(ed_key) + s(hostbound) + struct.pack(">I", 0)),
    "sign-sshsig": frame(b"\x0d" + s(p256_key) + s(sshsig) + struct.pack(">I", 0)),
    "sign-raw-rsa-flags": frame(b"\x0d" + s(s("ssh-rsa") + s(b"\x01\x00\x01") + s(bytes(257))) + s(b"doc") + struct.pack(">I", 4)),
    "session-bind": frame(b"\x1b" + bind),
    "query": frame(b"\x1b" + s("query")),
    "lock": frame(b"\x16" + s("passphrase")),
    "unlock": frame(b"\x17" + s("passphrase")),
    "remove-all": frame(b"\x13"),
    "add-identity": frame(b"\x11" + s("ssh-ed25519") + s(bytes(32)) + s(bytes(64)) + s("comment")),
    "truncated": frame(b"\x0d" + s(ed_key))[:-3],
    "huge-length": b"\xff\xff\xff\xff\x0b",
    "two-frames": frame(b"\x0b") + frame(b"\x1b" + s("query")),
    "trailing": frame(b"\x0b\xde\xad"),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
