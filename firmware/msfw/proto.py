# The device protocol (version 1), served over the USB serial link: see firmware/PROTOCOL.md.
#
# One request per line (a JSON object with an integer "id" and an "op"), exactly one
# response line per request ({"id", "ok", "result"} or {"id", "ok": false, "error"}).
# Unsolicited lines carry "ev" (events, telemetry). Bulk data follows a response line as
# exactly "bin" raw bytes (device to host), or follows a request line as exactly "e"
# escaped bytes (host to device; 0x03 and 0x10 are sent as 0x10 0x13 / 0x10 0x20 so a
# byte of data can never be taken for Ctrl-C, which a board turns into KeyboardInterrupt).
#
# This module imports nothing from msfw: the host also pastes it into a bare board's raw
# REPL as the deploy agent, so a board without (working) firmware speaks the same
# protocol for files. The application adds its own operations (status, start, ...).
import gc
import json
import os
import sys

try:
    import select
except ImportError:  # pragma: no cover - every MicroPython port with a REPL has it
    select = None
try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython, for host-side tests of the pure parts
    from time import monotonic as _mono

    def ticks_ms():
        return int(_mono() * 1000)

    def ticks_diff(a, b):
        return a - b

import binascii

from micropython import const

_PROTO_VERSION = const(1)
# File operations live in msfw/protofs.py, imported on first use: a running session never
# needs them (they are refused while the output is on), so they take no heap until a host
# transfers files. The deploy agent is this module's source followed by protofs's.
_FS_OPS = const(("fs_list", "fs_put", "fs_data", "fs_end", "fs_commit", "fs_abort", "fs_get", "fs_rm"))
_BASE_OPS = const(("hello", "reset", "bye"))
_MAX_LINE = const(512)  # bytes in one request line (the longest real one is ~200)
_LINE_TIMEOUT_MS = const(1000)  # a partial line older than this is dropped (host went away)
_BIN_TIMEOUT_MS = const(2000)  # bulk bytes must keep coming at least this often
CHUNK = 1024  # largest bulk block either way
NEW = ".new"  # uploads land in <path>.new until fs_commit renames them


class Error(Exception):
    """A refused request: code, message and optional fields naming what was wrong."""

    def __init__(self, code, message, extra=None):
        super().__init__(message)
        self.code = code
        self.extra = extra


def unescape(data):
    return data.replace(b"\x10\x13", b"\x03").replace(b"\x10\x20", b"\x10")


def escape(data):
    """Host side (also usable on the device): the inverse of unescape()."""
    return data.replace(b"\x10", b"\x10\x20").replace(b"\x03", b"\x10\x13")


def crc32(data):
    return binascii.crc32(data) & 0xFFFFFFFF


class Link:
    """The serial link: non-blocking line assembly, bounded blocking bulk reads."""

    def __init__(self):
        self.inp = getattr(sys.stdin, "buffer", sys.stdin)
        self.out = getattr(sys.stdout, "buffer", sys.stdout)
        self.poller = select.poll()
        self.poller.register(sys.stdin, select.POLLIN)
        self.line = bytearray(_MAX_LINE)
        self.n = 0
        self.too_long = False
        self.t_last = 0
        self.dropped = 0  # partial lines dropped after a host went silent mid-request

    def waiting(self, timeout_ms=0):
        return bool(self.poller.poll(timeout_ms))

    def pump(self, now_ms, budget):
        """Read at most `budget` waiting bytes; return one complete line (bytes) or None."""
        if self.n and ticks_diff(now_ms, self.t_last) > _LINE_TIMEOUT_MS:
            self.n = 0
            self.too_long = False
            self.dropped += 1
        poll = self.poller.poll
        read = self.inp.read
        while budget > 0 and poll(0):
            budget -= 1
            c = read(1)
            if not c:
                return None
            self.t_last = now_ms
            b = c[0]
            if b == 10 or b == 13:
                if self.too_long:
                    self.too_long = False
                    self.n = 0
                    return b"\xff"  # reported as a request too long to read
                if self.n:
                    line = bytes(self.line[: self.n])
                    self.n = 0
                    return line
                continue
            if self.n < _MAX_LINE:
                self.line[self.n] = b
                self.n += 1
            else:
                self.too_long = True
        return None

    def read_exact(self, n):
        """n bytes that follow a request, or None if they stop coming (host gone)."""
        buf = bytearray(n)
        got = 0
        read = self.inp.read
        while got < n:
            if not self.poller.poll(_BIN_TIMEOUT_MS):
                return None
            c = read(1)
            if not c:
                return None
            buf[got] = c[0]
            got += 1
        return buf

    def write_line(self, obj):
        self.out.write(json.dumps(obj).encode() + b"\n")

    def write(self, data):
        self.out.write(data)


def _isdir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def walk(root, out):
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for name in names:
        p = (root.rstrip("/") + "/" + name) if root != "/" else "/" + name
        if _isdir(p):
            walk(p, out)
        else:
            out.append(p)
    return out


def _str(req, key, required=True):
    v = req.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise Error("bad_request", "%s: a non-empty string is required" % key, {"field": key})
    return v


def _int(req, key, lo, hi, default=None):
    v = req.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise Error("bad_request", "%s: an integer is required" % key, {"field": key, "value": v})
    if v < lo or v > hi:
        raise Error("bad_value", "%s = %d is outside %d..%d" % (key, v, lo, hi),
                    {"field": key, "value": v, "limit": [lo, hi]})
    return v


def _path(req):
    p = _str(req, "path")
    if not p.startswith("/") or "/../" in p + "/" or p.endswith(NEW):
        raise Error("bad_value", "path %r must be absolute, without .. or %s" % (p, NEW),
                    {"field": "path", "value": p})
    return p


class Server:
    """Dispatches request lines to operations; every request gets exactly one response.

    `ops` maps op names to callables taking the request dict and returning a result dict
    (or raising Error). `bulk_ok()` says whether bulk file operations are allowed now (the
    application forbids them while the output is on: they block the loop for a while).
    """

    def __init__(self, link, info, ops=None, bulk_ok=None):
        self.link = link
        self.info = info
        self.bulk_ok = bulk_ok
        self.buf = None  # the file operations' block buffer, made on first use
        self.up = None  # the upload in progress: [path, file, size, sha256, received]
        self.pending = []  # uploaded files waiting for fs_commit
        self.done = False
        # Looked up per request, not kept as a table of bound methods: the heap is small.
        self.ops = ops  # the application's: .get(name) -> callable or None, iterable names

    # ---- dispatch --------------------------------------------------------------------
    def handle(self, line):
        rid = None
        try:
            if line == b"\xff":
                raise Error("too_long", "request longer than %d bytes" % _MAX_LINE)
            try:
                req = json.loads(line)
            except ValueError:
                raise Error("bad_json", "not a JSON object: %r" % line[:60])
            if not isinstance(req, dict):
                raise Error("bad_json", "a request is a JSON object")
            rid = req.get("id")
            if isinstance(rid, bool) or not isinstance(rid, int):
                rid = None
                raise Error("bad_request", "id: an integer is required", {"field": "id"})
            op = req.get("op")
            fn = self._op(op) if isinstance(op, str) else None
            if fn is None:
                names = list(_BASE_OPS) + list(_FS_OPS) + list(self.ops or ())
                raise Error("unknown_op", "op %r is not one of %s" % (op, ", ".join(sorted(names))),
                            {"field": "op", "value": op})
            result = fn(req)
            resp = {"id": rid, "ok": True, "result": result if result is not None else {}}
            payload = None
            if isinstance(result, dict) and "_bin" in result:
                payload = result.pop("_bin")
                result["bin"] = len(payload)
            self.link.write_line(resp)
            if payload is not None:
                self.link.write(payload)
        except Error as e:
            err = {"code": e.code, "message": e.args[0]}
            if e.extra:
                err.update(e.extra)
            try:
                self.link.write_line({"id": rid, "ok": False, "error": err})
            except MemoryError:
                gc.collect()  # unanswered (the host times out); the loop goes on
        except Exception as e:  # noqa: BLE001 - a bug must not kill the device's loop
            try:
                if isinstance(e, MemoryError):
                    # A small heap, a big answer: say so if that fits (the host may retry).
                    e = None
                    gc.collect()
                    err = {"code": "no_memory", "message": "out of heap; try again"}
                else:
                    err = {"code": "internal", "message": repr(e)}
                self.link.write_line({"id": rid, "ok": False, "error": err})
            except MemoryError:
                pass  # not even that fits: unanswered (the host times out); the loop goes on

    def _op(self, op):
        if op in _BASE_OPS:
            return getattr(self, "op_" + op)
        if op in _FS_OPS:
            return self._fs(op)
        return self.ops.get(op) if self.ops is not None else None

    def _fs(self, name):
        def call(req):
            return _fs_ops()[name](self, req)

        return call

    def _bulk(self):
        if self.bulk_ok is not None and not self.bulk_ok():
            raise Error("busy", "the output is on: stop the session before file transfers")

    # ---- generic operations ----------------------------------------------------------
    def op_hello(self, req):
        impl = sys.implementation
        out = {"proto": _PROTO_VERSION, "mpy": getattr(impl, "_mpy", 0),
               "micropython": ".".join(str(x) for x in impl.version[:3]),
               "machine": getattr(impl, "_machine", sys.platform), "chunk": CHUNK}
        out.update(self.info())
        return out

    def op_reset(self, req):
        kind = req.get("kind", "soft")
        if kind not in ("soft", "hard"):
            raise Error("bad_value", "kind = %r is not soft or hard" % (kind,), {"field": "kind"})
        self.reset_kind = kind
        self.done = True
        return {"kind": kind}

    def op_bye(self, req):
        self.done = True
        return {}

def _fs_ops():
    g = globals()
    if "fs_list" in g:  # the deploy agent: protofs's source was pasted after this module's
        return g
    from msfw import protofs

    return protofs.__dict__


def cleanup(pending=None):
    """Remove uploads that never got committed (a host that went away mid-deploy)."""
    n = 0
    for p in walk("/", []):
        if p.endswith(NEW):
            os.remove(p)
            n += 1
    return n


def after(server):
    """Perform a reset a request asked for, once its response has gone out."""
    kind = getattr(server, "reset_kind", None)
    if kind is None:
        return
    import machine

    if kind == "hard":
        machine.reset()
    machine.soft_reset()


def _agent_info():
    out = {"app": False, "board": None}
    try:
        with open("/board.json") as f:
            out["board"] = json.loads(f.read()).get("name")
    except (OSError, ValueError):
        pass
    return out


def serve(info=None):
    """The deploy agent: serve file operations until `reset` or `bye` (raw REPL use)."""
    link = Link()
    server = Server(link, info or _agent_info)
    cleanup()
    link.write_line({"ev": "agent", "proto": _PROTO_VERSION})
    while not server.done:
        if not link.waiting(1000):
            continue
        line = link.pump(ticks_ms(), _MAX_LINE + 2)
        if line is not None:
            server.handle(line)
    after(server)
