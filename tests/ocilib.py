"""OCI registries for the registry tests (docs/mirrors.md, "OCI registries"):
Registry, Debian's docker-registry (CNCF distribution) with a private config, plain or
with TLS and htpasswd (bcrypt) auth; and FakeRegistry, a small registry of our own for
what distribution cannot be made to show (bearer tokens and their expiry, blob
redirects to a storage server and presigned URLs that expire, refused multi-range
requests, manifests that lie).

Same rules as serverlib: 127.0.0.1 only, free ports, configs and storage under the
caller's directory, bounded waits, stopped by PID, and a server that cannot start
raises (the test fails, never skips).
"""

from __future__ import annotations

import base64
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt   # bcrypt for htpasswd: distribution accepts no other hash
import hashlib
import http.server
import json
import os
import re
import socketserver
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import serverlib
from serverlib import HOST, free_port

REGISTRY_BIN = "/usr/bin/docker-registry"
KIT_TYPE = "application/vnd.stellaops.offline-kit.v1"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def auth_file(path: Path, registry: str, user: str, password: str) -> Path:
    """A docker config.json with basic credentials for REGISTRY (host:port)."""
    tok = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": tok}}}))
    return path


class Registry:
    """docker-registry on 127.0.0.1:free port; storage under D/storage.  tls: a
    serverlib.TLS; users: {name: password} for htpasswd (bcrypt) auth; client_cas (set
    before start): demand client certificates."""

    def __init__(self, d: Path, tls: serverlib.TLS | None = None, users: dict | None = None):
        self.d = Path(d)
        self.d.mkdir(parents=True, exist_ok=True)
        self.tls, self.users = tls, users
        self.client_cas = False  # with tls: demand a client certificate signed by its CA
        self.port = free_port()
        self.proc = None
        self.storage = self.d / "storage"

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def ref(self, repo_tag: str) -> str:
        return f"oci://{self.host}/{repo_tag}"

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (distribution's filesystem driver)."""
        hexd = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data")

    def _conf(self) -> str:
        lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
                 f"    rootdirectory: {self.storage}", "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.host}", "  secret: stellafs-test-secret"]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls.cert}", f"    key: {self.tls.key}"]
            if self.client_cas:
                lines += ["    clientcas:", f"      - {self.tls.ca}"]
        if self.users:
            htp = self.d / "htpasswd"
            htp.write_text("".join(f"{u}:{crypt.crypt(p, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
                                   for u, p in self.users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: stellafs-test", f"    path: {htp}"]
        return "\n".join(lines) + "\n"

    def start(self) -> "Registry":
        if not os.access(REGISTRY_BIN, os.X_OK):
            raise RuntimeError(f"{REGISTRY_BIN} is missing (scripts/deps.sh installs docker-registry)")
        conf = self.d / "config.yml"
        conf.write_text(self._conf())
        self.log = open(self.d / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            serverlib.wait_port(self.port, 15, self.proc, "docker-registry")
        except Exception:
            self.stop()
            raise RuntimeError("docker-registry did not start: " +
                               (self.d / "registry.log").read_text(errors="replace")[-2000:])
        return self

    def stop(self):
        serverlib._stop(self.proc)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


# --------------------------------------------------------------------------- fake registry

class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def body_in(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


def _serve_range(h, data: bytes, extra=()):
    """One byte range, as registries and storage serve blobs; several ranges in one
    request are refused (416), as some registries do."""
    rng = h.headers.get("Range")
    if not rng:
        return h.send(200, data, [("Content-Type", "application/octet-stream"), *extra])
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
    if not m:
        h.server.owner.multirange_refused += 1
        return h.send(416, b"multiple ranges are not supported\n")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else len(data) - 1
    b = min(b, len(data) - 1)
    if a >= len(data):
        return h.send(416, b"", [("Content-Range", f"bytes */{len(data)}")])
    h.send(206, data[a:b + 1], [("Content-Range", f"bytes {a}-{b}/{len(data)}"),
                                ("Content-Type", "application/octet-stream"), *extra])


class _InProcess:
    """A server of ours on 127.0.0.1 in this process: start() builds its handler class
    and hands it to _serve; stop() ends it."""

    def _serve(self, handler):
        self.srv = socketserver.ThreadingTCPServer((HOST, 0), handler)
        self.srv.daemon_threads = True
        self.srv.owner = self
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


class Storage(_InProcess):
    """Object storage a FakeRegistry redirects blob reads to: presigned URLs that expire
    (403 after), and a log of the Authorization headers it was sent."""

    def __init__(self):
        self.blobs = {}
        self.auth_seen = []        # Authorization header of every request ("" if none)
        self.expired = 0
        self.gets = 0
        self.multirange_refused = 0
        self.challenge = None      # a WWW-Authenticate to answer reads with (401) ...
        self.challenge_after = 0   # ... once this many were served

    def start(self):
        owner = self

        class H(_Quiet):
            def do_GET(self):
                owner.auth_seen.append(self.headers.get("Authorization", ""))
                if owner.challenge and owner.gets >= owner.challenge_after:
                    return self.send(401, b"no", [("WWW-Authenticate", owner.challenge)])
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                digest = u.path.rsplit("/", 1)[-1]
                if float(q.get("expires", ["0"])[0]) < time.time():
                    owner.expired += 1
                    return self.send(403, b"<Error><Code>AccessDenied</Code>Request has expired</Error>")
                if digest not in owner.blobs:
                    return self.send(404)
                owner.gets += 1
                _serve_range(self, owner.blobs[digest])

        return self._serve(H)


class FakeRegistry(_InProcess):
    """A registry of our own on 127.0.0.1 (plain http).  auth: None, "bearer", "basic" or
    "nochallenge" (401 with no WWW-Authenticate); users: {user: password} the token
    service (bearer) or the registry (basic) accepts; token_ttl: a token's life in
    seconds (the registry refuses it after); storage: a Storage to redirect blob reads
    to, with presign_ttl seconds of validity.  Pushes (uploads, manifests) are kept in
    memory.  manifests[(repo, ref)] = bytes may be set directly to serve anything;
    digest_header: a Docker-Content-Digest to send instead of the right one; delay: seconds
    before answering any request (a slow registry), token_delay: seconds more the token
    service takes."""

    def __init__(self, auth=None, users=None, token_ttl=300, storage: Storage | None = None,
                 presign_ttl=60, token_uses=None, blob_delay=0.0, token_len=24, service="fake-registry"):
        self.auth, self.users, self.token_ttl = auth, users or {}, token_ttl
        self.token_uses = token_uses   # a token is refused after this many requests
        self.blob_delay = blob_delay   # seconds before answering a blob request
        self.token_len = token_len     # characters in a token (real JWTs: 1-2 KiB)
        self.service = service         # the challenge's service=, which the token service checks
        self.token_delay = 0.0         # seconds the token service takes to answer
        self.delay = 0.0               # seconds before answering any request (a slow registry)
        self.storage, self.presign_ttl = storage, presign_ttl
        self.blobs, self.manifests, self.uploads = {}, {}, {}
        self.tokens = {}           # token -> expiry
        self.uses = {}             # token -> requests it authorised
        self.token_requests = []   # (Authorization header, query)
        self.log = []              # (method, path, Authorization, Range)
        self.refused = 0
        self.multirange_refused = 0
        self.digest_header = None
        self.lock = threading.Lock()

    @property
    def host(self):
        return f"{HOST}:{self.port}"

    def ref(self, repo_tag):
        return f"oci://{self.host}/{repo_tag}"

    def put_kit(self, repo, tag, manifest: bytes, blob: bytes | None = None, blob_digest=None):
        """Serve MANIFEST under TAG (and its digest); BLOB under BLOB_DIGEST (default: its
        own digest)."""
        if blob is not None:
            self.blobs[blob_digest or sha256_digest(blob)] = blob
            if self.storage:
                self.storage.blobs[blob_digest or sha256_digest(blob)] = blob
        self.manifests[(repo, tag)] = manifest
        self.manifests[(repo, sha256_digest(manifest))] = manifest

    def _authorized(self, h) -> bool:
        a = h.headers.get("Authorization", "")
        if self.auth is None:
            return True
        if self.auth == "basic":
            return any(a == "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()
                       for u, p in self.users.items())
        if self.auth == "bearer" and a.startswith("Bearer "):
            with self.lock:
                exp = self.tokens.get(a[7:])
                if exp is None or exp <= time.time():
                    return False
                if self.token_uses is not None:
                    self.uses[a[7:]] = self.uses.get(a[7:], 0) + 1
                    return self.uses[a[7:]] <= self.token_uses
                return True
        return False

    def _challenge(self, h, scope):
        self.refused += 1
        if self.auth == "basic":
            return h.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                          [("WWW-Authenticate", 'Basic realm="fake"')])
        if self.auth == "bearer":
            return h.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                          [("WWW-Authenticate", f'Bearer realm="http://{self.host}/token",'
                                                f'service="{self.service}",scope="{scope}"')])
        return h.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}')

    def _token(self, h):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        a = h.headers.get("Authorization", "")
        with self.lock:
            self.token_requests.append((a, q))
        time.sleep(self.token_delay)
        if q.get("service") != [self.service]:
            return h.send(400, b'{"details":"wrong service"}')
        if self.users and not any(a == "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()
                                  for u, p in self.users.items()):
            return h.send(401, b'{"details":"wrong credentials"}')
        tok = base64.urlsafe_b64encode(os.urandom(self.token_len)).decode()[:self.token_len]
        with self.lock:
            self.tokens[tok] = time.time() + self.token_ttl
        h.send(200, json.dumps({"token": tok, "expires_in": self.token_ttl}).encode(),
               [("Content-Type", "application/json")])

    def start(self) -> "FakeRegistry":
        owner = self

        class H(_Quiet):
            def route(self):
                u = urllib.parse.urlsplit(self.path)
                owner.log.append((self.command, u.path, self.headers.get("Authorization", ""),
                                  self.headers.get("Range", "")))
                time.sleep(owner.delay)
                if u.path == "/token":
                    return owner._token(self)
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", u.path) or \
                    re.fullmatch(r"/v2/(.+)/blobs/(uploads)/([^/]*)", u.path)
                repo = m.group(1) if m else ""
                push = self.command in ("POST", "PUT", "PATCH")
                scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
                if not owner._authorized(self):
                    return owner._challenge(self, scope)
                if u.path == "/v2/":
                    return self.send(200, b"{}")
                if not m:
                    return self.send(404)
                kind, ref = m.group(2), m.group(3)
                if kind == "manifests":
                    if self.command == "PUT":
                        body = self.body_in()
                        owner.put_kit(repo, ref, body)
                        return self.send(201, b"", [("Docker-Content-Digest", sha256_digest(body))])
                    body = owner.manifests.get((repo, ref))
                    if body is None:
                        return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN",'
                                              b'"message":"manifest unknown"}]}')
                    return self.send(200, body, [("Content-Type", MANIFEST_TYPE),
                                                 ("Docker-Content-Digest",
                                                  owner.digest_header or sha256_digest(body))])
                if kind == "uploads":
                    q = urllib.parse.parse_qs(u.query)
                    if self.command == "POST":
                        uid = base64.urlsafe_b64encode(os.urandom(9)).decode()
                        owner.uploads[uid] = b""
                        return self.send(202, b"", [("Location", f"/v2/{repo}/blobs/uploads/{uid}")])
                    if ref not in owner.uploads:
                        return self.send(404)
                    owner.uploads[ref] += self.body_in()
                    if self.command == "PATCH":
                        return self.send(202, b"", [("Location", f"/v2/{repo}/blobs/uploads/{ref}")])
                    data = owner.uploads.pop(ref)
                    if sha256_digest(data) != q.get("digest", [""])[0]:
                        return self.send(400, b'{"errors":[{"code":"DIGEST_INVALID","message":"x"}]}')
                    owner.blobs[sha256_digest(data)] = data
                    if owner.storage:
                        owner.storage.blobs[sha256_digest(data)] = data
                    return self.send(201)
                time.sleep(owner.blob_delay)
                data = owner.blobs.get(ref)
                if data is None:
                    return self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
                if owner.storage and self.command == "GET":
                    exp = time.time() + owner.presign_ttl
                    return self.send(307, b"", [("Location", f"http://{HOST}:{owner.storage.port}"
                                                             f"/bucket/{ref}?expires={exp}&sig=x")])
                if self.command == "HEAD":
                    return self.send(200, b"", [("Content-Length", str(len(data)))])
                _serve_range(self, data, [("Docker-Content-Digest", ref)])

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = route

        return self._serve(H)


def kit_manifest(blob: bytes, media=KIT_TYPE + ".tar", artifact=KIT_TYPE, size=None, layers=None,
                 digest=None) -> bytes:
    """A registry manifest for a kit layer BLOB (fields overridable to make bad ones)."""
    layer = {"mediaType": media, "digest": digest or sha256_digest(blob),
             "size": len(blob) if size is None else size,
             "annotations": {"org.opencontainers.image.title": "kit.tar"}}
    m = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
         "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": 2},
         "layers": [layer] if layers is None else layers}
    if artifact:
        m["artifactType"] = artifact
    return json.dumps(m).encode()
