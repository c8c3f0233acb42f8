"""Real servers for the site-mirror tests (docs/mirrors.md): nginx serving a directory
over http or https (with a CA this module makes with openssl), squid as a caching proxy
in front of it, and FaultServer, a small HTTP server of our own for what nginx cannot be
told to do (ignore Range, truncate, reset, 503, hang, flip bytes, redirect, demand basic
auth) and that counts what it served.

Rules every helper here keeps: 127.0.0.1 only, free ports picked by the kernel, private
configs and logs under the caller's directory, every wait bounded, processes stopped by
their PID (never by name).  A server that cannot be started raises: the test fails, it
does not skip.

    with serverlib.Nginx(tmp_path / "ng", root=kitdir) as ng:        # ng.url("kit.tar")
    with serverlib.Nginx(d, root=kitdir, tls=serverlib.make_ca(d2)) as ng:  # https
    with serverlib.Squid(tmp_path / "sq", ng) as sq:     # sq.proxy ("http://127.0.0.1:P")
    with serverlib.FaultServer({"/kit.tar": data}) as fs:  # fs.ignore_range = True ...
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"


# --------------------------------------------------------------------------- ports

def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None,
              what: str = "server") -> None:
    """Until something accepts on 127.0.0.1:PORT; raises after TIMEOUT seconds, or at
    once if PROC exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {HOST}:{port} after {timeout}s")


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM to PROC (by its PID), then SIGKILL if it lingers; bounded."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# --------------------------------------------------------------------------- TLS

@dataclasses.dataclass
class TLS:
    ca: Path        # the CA certificate: what --cacert / cacert= name
    cert: Path      # the server's certificate (CN and SAN 127.0.0.1, localhost)
    key: Path
    client_cert: Path | None = None  # a client certificate signed by the same CA
    client_key: Path | None = None


def _openssl(*args, cwd=None):
    subprocess.run(["openssl", *map(str, args)], check=True, cwd=cwd, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(d: Path, client: bool = False) -> TLS:
    """A throw-away CA under D and a server certificate it signed for 127.0.0.1 (and, with
    CLIENT, a client certificate), made with the openssl CLI."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    ca, cakey = d / "ca.pem", d / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", cakey, "-out", ca, "-days", "2", "-subj", "/CN=stellafs test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(name, ext):
        key, csr, crt, extf = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
        extf.write_text(ext)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey, "-CAcreateserial",
                 "-out", crt, "-days", "2", "-extfile", extf)
        return crt, key

    cert, key = leaf("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "extendedKeyUsage=serverAuth\n")
    t = TLS(ca=ca, cert=cert, key=key)
    if client:
        t.client_cert, t.client_key = leaf("client", "extendedKeyUsage=clientAuth\n")
    return t


# --------------------------------------------------------------------------- nginx

_LOG_FORMAT = '$request_method $uri $status $body_bytes_sent "$http_range"'
_LOG_RE = re.compile(r'^(\S+) (\S+) (\d+) (\d+) "(.*)"$')


@dataclasses.dataclass
class LogEntry:
    method: str
    path: str
    status: int
    bytes: int
    range: str


def _read_log(path: Path) -> list[LogEntry]:
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        m = _LOG_RE.match(line)
        if m:
            out.append(LogEntry(m[1], m[2], int(m[3]), int(m[4]), "" if m[5] == "-" else m[5]))
    return out


class Nginx:
    """nginx serving ROOT on 127.0.0.1 (http, or https with TLS from make_ca), its config,
    pid and logs under D.  With BASIC=(user, password) every request needs those
    credentials; with CLIENT_CERT (needs TLS) a client certificate signed by the CA.
    log() lists what it served (method, path, status, body bytes, Range)."""

    def __init__(self, d: Path, root: Path, tls: TLS | None = None, basic=None,
                 client_cert: bool = False):
        self.d, self.root, self.tls = Path(d), Path(root), tls
        self.basic, self.client_cert = basic, client_cert
        self.port = 0
        self.proc = None

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def origin(self):
        return f"{self.scheme}://{HOST}:{self.port}"

    def url(self, name: str = "", userinfo: str | None = None) -> str:
        host = f"{userinfo}@{HOST}" if userinfo else HOST
        return f"{self.scheme}://{host}:{self.port}/{name}"

    def log(self) -> list[LogEntry]:
        return _read_log(self.d / "access.log")

    def bytes_served(self, name: str | None = None) -> int:
        return sum(e.bytes for e in self.log() if name is None or e.path == "/" + name)

    def _conf(self) -> str:
        self.d.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        listen = f"{HOST}:{self.port}" + (" ssl" if self.tls else "")
        extra = ""
        if self.tls:
            extra += (f"ssl_certificate {self.tls.cert};\n"
                      f"ssl_certificate_key {self.tls.key};\n")
            if self.client_cert:
                extra += (f"ssl_client_certificate {self.tls.ca};\n"
                          "ssl_verify_client on;\n")
        if self.basic:
            user, pw = self.basic
            h = subprocess.run(["openssl", "passwd", "-apr1", pw], check=True, timeout=30,
                               capture_output=True, text=True).stdout.strip()
            (self.d / "htpasswd").write_text(f"{user}:{h}\n")
            extra += f'auth_basic "stella"; auth_basic_user_file {self.d / "htpasswd"};\n'
        d = self.d
        return f"""
user root;
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format stella '{_LOG_FORMAT}';
    access_log {d}/access.log stella;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    keepalive_timeout 30;
    server {{
        listen {listen};
        server_name localhost;
        root {self.root};
        {extra}
        location / {{ }}
    }}
}}
"""

    def start(self) -> "Nginx":
        for _ in range(3):  # a port taken between free_port() and bind: try another
            self.port = free_port()
            conf = self.d / "nginx.conf"
            self.d.mkdir(parents=True, exist_ok=True)
            conf.write_text(self._conf())
            errf = open(self.d / "stderr", "wb")
            self.proc = subprocess.Popen(["nginx", "-p", str(self.d), "-c", str(conf)],
                                         stdin=subprocess.DEVNULL, stdout=errf, stderr=errf)
            errf.close()
            try:
                wait_port(self.port, 15, self.proc, "nginx")
                return self
            except RuntimeError:
                _stop(self.proc)
                self.proc = None
        raise RuntimeError("nginx did not start: " + (self.d / "stderr").read_text(errors="replace")
                           + (self.d / "error.log").read_text(errors="replace")
                           if (self.d / "error.log").exists() else "")

    def stop(self):
        # nginx's master answers SIGTERM by stopping its workers first
        _stop(self.proc)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


# --------------------------------------------------------------------------- squid

_SQUID_LOG_RE = re.compile(r'^\S+\s+\d+\s+\S+\s+(\S+)/(\d+)\s+(\d+)\s+(\S+)\s+(\S+)')


class Squid:
    """squid 5 as a caching forward proxy on 127.0.0.1, in front of whatever the client
    asks for (use proxy=, --proxy or http_proxy=self.proxy).  Configured so that range
    requests are cached: range_offset_limit -1 makes a miss fetch the whole object from
    the origin once (the client's range is cut from it), a big maximum_object_size keeps
    a kit, collapsed_forwarding merges concurrent misses on one object into one fetch.
    Cache and logs under D.  log() lists (squid result code, status, bytes, url)."""

    def __init__(self, d: Path, cache_mb: int = 2048, max_object_mb: int = 4096):
        # squid drops to the proxy user, who cannot reach into a test's 0700 tmp
        # directory: its files live in a directory of its own under /tmp, removed by
        # stop(), and D links to it (D/squid) for a look after a failure
        self.top = Path(d)
        self.d = None
        self.cache_mb, self.max_object_mb = cache_mb, max_object_mb
        self.port = 0
        self.proc = None

    @property
    def proxy(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _conf(self) -> str:
        d = self.d
        return f"""
http_port {HOST}:{self.port}
acl lo src 127.0.0.1/32
acl to_lo dst 127.0.0.1/32
http_access allow lo to_lo
http_access deny all
cache_effective_user proxy
cache_effective_group proxy
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log squid
cache_store_log none
coredump_dir {d}/cache
cache_dir ufs {d}/cache {self.cache_mb} 16 64
cache_mem 64 MB
maximum_object_size {self.max_object_mb} MB
maximum_object_size_in_memory 8 MB
range_offset_limit -1
quick_abort_min -1 KB
collapsed_forwarding on
refresh_pattern . 60 100% 4320
via off
forwarded_for delete
pinger_enable off
shutdown_lifetime 1 seconds
dns_nameservers 127.0.0.1
visible_hostname stella-test-squid
"""

    def log(self):
        out = []
        try:
            text = ((self.d or self.top) / "access.log").read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            m = _SQUID_LOG_RE.match(line)
            if m:
                out.append((m[1], int(m[2]), int(m[3]), m[5]))
        return out

    def start(self) -> "Squid":
        import tempfile
        self.top.mkdir(parents=True, exist_ok=True)
        self.d = Path(tempfile.mkdtemp(prefix="stella-squid-"))
        os.chmod(self.d, 0o700)
        (self.top / "squid").symlink_to(self.d)
        (self.d / "cache").mkdir(exist_ok=True)
        shutil.chown(self.d, "proxy", "proxy")
        shutil.chown(self.d / "cache", "proxy", "proxy")
        err = ""
        for _ in range(3):
            self.port = free_port()
            conf = self.d / "squid.conf"
            conf.write_text(self._conf())
            # -z: create the cache's swap directories, then exit
            z = subprocess.run(["squid", "-N", "-z", "-f", str(conf)], timeout=60,
                               capture_output=True, text=True)
            if z.returncode != 0:
                raise RuntimeError(f"squid -z failed: {z.stderr}")
            errf = open(self.d / "stderr", "wb")
            self.proc = subprocess.Popen(["squid", "-N", "-f", str(conf)],
                                         stdin=subprocess.DEVNULL, stdout=errf, stderr=errf)
            errf.close()
            try:
                wait_port(self.port, 30, self.proc, "squid")
                return self
            except RuntimeError as ex:
                err = str(ex)
                _stop(self.proc)
                self.proc = None
        log = (self.d / "cache.log").read_text(errors="replace") if (self.d / "cache.log").exists() else ""
        raise RuntimeError(f"squid did not start: {err}\n{log[-2000:]}")

    def stop(self):
        _stop(self.proc, timeout=20)
        self.proc = None
        if self.d is not None:
            # keep the logs beside the test's other files
            for f in ("access.log", "cache.log", "squid.conf", "stderr"):
                if (self.d / f).exists():
                    shutil.copy(self.d / f, self.top / ("squid-" + f))
            shutil.rmtree(self.d, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


# --------------------------------------------------------------------------- fault server

@dataclasses.dataclass
class Request:
    method: str
    path: str
    range: str | None
    headers: dict
    status: int = 0
    sent: int = 0
    at: float = 0.0


class FaultServer:
    """A small HTTP/1.1 server on 127.0.0.1 serving FILES ({"/kit.tar": bytes}), with
    Range, ETag and Last-Modified (and If-None-Match / If-Modified-Since), in threads of
    this process.  Set its attributes, per test, to misbehave:

      ignore_range   answer 200 with the whole body where a range was asked
      truncate       send only this many body bytes of each answer, then close
      reset          close each connection with a TCP reset instead of answering
      reset_after    send this many body bytes, then reset
      status         answer every request with this status (e.g. 503)
      hang           sleep this many seconds before answering
      flip           (offset, length): those file bytes are sent inverted
      flips          a list of (offset, length): those bytes inverted in range answers
                     (only the range is copied, so a large file stays cheap)
      redirect       a URL prefix: answer 302 to redirect + path (another server)
      redirect_loop  answer 302 to itself, for ever
      auth           (user, password): 401 unless the request carries them (basic)
      bearer         a token: 401 (WWW-Authenticate: Bearer ...) unless the request
                     carries "Authorization: Bearer TOKEN"
      fail_first     misbehave (status/reset/hang...) for only this many requests
      fail_after     misbehave only from this many requests on (the first answered)
      delay_per_mib  seconds of sleep per MiB sent (a slow mirror)
      etag, last_modified   the validators sent (None: a default; "": none)

    and read: requests (a list of Request: method, path, range, headers, status, sent,
    at: time.monotonic() when it arrived),
    count (how many), bytes_sent (body bytes).  reset_faults() clears every fault.
    """

    FAULTS = dict(ignore_range=False, truncate=None, reset=False, reset_after=None, status=None,
                  hang=0.0, flip=None, flips=(), redirect=None, redirect_loop=False, auth=None, bearer=None,
                  fail_first=None, fail_after=None, delay_per_mib=0.0, etag=None, last_modified=None)

    def __init__(self, files: dict | None = None):
        self.files = dict(files or {})
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.reset_faults()
        self.server = None
        self.thread = None
        self.port = 0
        self._stopping = threading.Event()

    def reset_faults(self):
        for k, v in self.FAULTS.items():
            setattr(self, k, v)

    @property
    def origin(self):
        return f"http://{HOST}:{self.port}"

    def url(self, name: str = "", userinfo: str | None = None) -> str:
        host = f"{userinfo}@{HOST}" if userinfo else HOST
        return f"http://{host}:{self.port}/{name.lstrip('/')}"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    @property
    def bytes_sent(self) -> int:
        with self.lock:
            return sum(r.sent for r in self.requests)

    def clear_log(self):
        with self.lock:
            self.requests.clear()

    # the fault applies to this request (fail_first counts requests)
    def _faulty(self, nth: int) -> bool:
        return ((self.fail_first is None or nth < self.fail_first)
                and (self.fail_after is None or nth >= self.fail_after))

    def start(self) -> "FaultServer":
        fs = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # a silent client does not keep a thread for good

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._answer(head=True)

            def do_GET(self):
                self._answer(head=False)

            def _reset(self):
                # SO_LINGER 0: close() sends a RST, not a FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                try:
                    self.connection.close()
                except OSError:
                    pass

            def _send(self, code, headers, body=b"", head=False, req=None):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if head or not body:
                    return
                faulty = fs._faulty(req.nth)
                limit = len(body)
                if faulty and fs.truncate is not None:
                    limit = min(limit, fs.truncate)
                if faulty and fs.reset_after is not None:
                    limit = min(limit, fs.reset_after)
                step = 64 * 1024
                pos = 0
                try:
                    while pos < limit:
                        if fs._stopping.is_set():
                            break
                        chunk = body[pos:min(pos + step, limit)]
                        self.wfile.write(chunk)
                        pos += len(chunk)
                        with fs.lock:
                            req.sent += len(chunk)
                        if fs.delay_per_mib:
                            time.sleep(fs.delay_per_mib * len(chunk) / (1 << 20))
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True
                    return
                if limit < len(body):
                    if faulty and fs.reset_after is not None:
                        self._reset()
                    else:
                        self.close_connection = True

            def _answer(self, head):
                rng = self.headers.get("Range")
                req = Request(self.command, self.path, rng, dict(self.headers.items()), at=time.monotonic())
                with fs.lock:
                    req.nth = len(fs.requests)
                    fs.requests.append(req)
                faulty = fs._faulty(req.nth)
                if fs.hang and faulty:
                    fs._stopping.wait(fs.hang)
                if fs.reset and faulty:
                    return self._reset()
                if fs.auth is not None:
                    want = "Basic " + base64.b64encode(f"{fs.auth[0]}:{fs.auth[1]}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        req.status = 401
                        return self._send(401, [("WWW-Authenticate", 'Basic realm="stella"'),
                                                ("Content-Length", "0")], head=head, req=req)
                if fs.bearer is not None and self.headers.get("Authorization") != "Bearer " + fs.bearer:
                    req.status = 401
                    return self._send(401, [("WWW-Authenticate",
                                             f'Bearer realm="{fs.origin}/token",service="stella"'),
                                            ("Content-Length", "0")], head=head, req=req)
                if fs.status is not None and faulty:
                    req.status = fs.status
                    body = f"{fs.status} fault\n".encode()
                    return self._send(fs.status, [("Content-Length", str(len(body)))], body,
                                      head=head, req=req)
                path = self.path.split("?", 1)[0]
                if fs.redirect_loop:
                    req.status = 302
                    return self._send(302, [("Location", fs.url(path)), ("Content-Length", "0")],
                                      head=head, req=req)
                if fs.redirect:
                    req.status = 302
                    return self._send(302, [("Location", fs.redirect.rstrip("/") + path),
                                            ("Content-Length", "0")], head=head, req=req)
                data = fs.files.get(path)
                if data is None:
                    req.status = 404
                    return self._send(404, [("Content-Length", "0")], head=head, req=req)
                # etag / last_modified: None a default, "" none sent
                etag = fs.etag if fs.etag is not None else \
                    '"%x-%x"' % (len(data), hash(data[:4096]) & 0xffffffff)
                lm = fs.last_modified if fs.last_modified is not None else \
                    "Wed, 15 Jan 2025 00:00:00 GMT"
                common = [("Accept-Ranges", "bytes")]
                if etag:
                    common.append(("ETag", etag))
                if lm:
                    common.append(("Last-Modified", lm))
                inm = self.headers.get("If-None-Match")
                ims = self.headers.get("If-Modified-Since")
                if (inm is not None and etag and inm == etag) or \
                        (inm is None and ims is not None and lm and ims == lm):
                    req.status = 304
                    return self._send(304, common, head=True, req=req)
                if fs.flip is not None and faulty:
                    off, n = fs.flip
                    b = bytearray(data)
                    for i in range(off, min(off + n, len(b))):
                        b[i] ^= 0xFF
                    data = bytes(b)
                size = len(data)
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
                if m and not (fs.ignore_range and faulty):
                    if m[1] == "":
                        start = max(0, size - int(m[2] or 0))
                        end = size - 1
                    else:
                        start = int(m[1])
                        end = min(int(m[2]), size - 1) if m[2] else size - 1
                    if start >= size or start > end:
                        req.status = 416
                        return self._send(416, [("Content-Range", f"bytes */{size}"),
                                                ("Content-Length", "0")], head=head, req=req)
                    body = data[start:end + 1]
                    if fs.flips and faulty:
                        b = bytearray(body)
                        for off, n in fs.flips:
                            for i in range(max(off, start), min(off + n, end + 1)):
                                b[i - start] ^= 0xFF
                        body = bytes(b)
                    req.status = 206
                    return self._send(206, common + [
                        ("Content-Range", f"bytes {start}-{end}/{size}"),
                        ("Content-Length", str(len(body)))], body, head=head, req=req)
                req.status = 200
                return self._send(200, common + [("Content-Length", str(size))], data,
                                  head=head, req=req)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True      # a hanging handler never holds stop()
            allow_reuse_address = True

        self._stopping.clear()
        self.server = Server((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        wait_port(self.port, 5, what="fault server")
        return self

    def stop(self):
        if self.server is None:
            return
        self._stopping.set()   # wakes hanging handlers
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


# --------------------------------------------------------------------------- self-check

def _selfcheck(tmp: Path) -> None:
    """python3 tests/serverlib.py: start each server once and fetch through it with curl."""
    root = tmp / "www"
    root.mkdir(parents=True)
    data = os.urandom(3 * 1024 * 1024 + 17)
    (root / "kit.tar").write_bytes(data)

    def curl(*args):
        return subprocess.run(["curl", "-sS", "--noproxy", "", *args], check=True,
                              capture_output=True, timeout=30).stdout

    with Nginx(tmp / "ng", root) as ng:
        assert curl("-r", "10-19", ng.url("kit.tar")) == data[10:20]
        tls = make_ca(tmp / "ca")
        with Nginx(tmp / "ngs", root, tls=tls) as ngs:
            assert curl("--cacert", str(tls.ca), "-r", "0-3", ngs.url("kit.tar")) == data[:4]
        with Squid(tmp / "sq") as sq:
            for _ in range(3):
                assert curl("-x", sq.proxy, "-r", "1000-1999", ng.url("kit.tar")) == data[1000:2000]
            time.sleep(0.5)
            served = ng.bytes_served("kit.tar")
            assert served <= len(data) + 4096, (served, ng.log(), sq.log())
            print("squid: origin served", served, "for 3 range reads;", sq.log())
    with FaultServer({"/kit.tar": data}) as fs:
        assert curl("-r", "5-9", fs.url("kit.tar")) == data[5:10]
        fs.flip = (6, 2)
        got = curl("-r", "5-9", fs.url("kit.tar"))
        assert got[0] == data[5] and got[1] == data[6] ^ 0xFF
        fs.reset_faults()
        fs.ignore_range = True
        assert curl("-r", "5-9", fs.url("kit.tar")) == data
        print("fault server: ", fs.count, "requests", fs.bytes_sent, "bytes")
    print("ok")


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        _selfcheck(Path(t))
