# The protocol's file operations (PROTOCOL.md: fs_*), for deploys and log pulls with the
# output off. msfw.proto imports this module on first use; the application drops it when
# a session starts. The deploy agent pastes this source after proto's, minus the import
# line below (keep it one line: the host removes it by its first words).
import binascii
import hashlib
import os

from msfw.proto import CHUNK, NEW, Error, _int, _isdir, _path, _str, cleanup, crc32, unescape, walk  # noqa: E501


def _split(path):
    i = path.rfind("/")
    return (path[:i] or "/"), path[i + 1:]


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _buf(server):
    if server.buf is None:
        server.buf = bytearray(CHUNK)
    return server.buf


def makedirs(path):
    parts = [p for p in path.split("/") if p]
    cur = ""
    for p in parts:
        cur += "/" + p
        if not _isdir(cur):
            os.mkdir(cur)


def sha256_file(path, buf):
    h = hashlib.sha256()
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return binascii.hexlify(h.digest()).decode()


def fs_list(server, req):
    server._bulk()
    root = _str(req, "root", required=False) or "/"
    files = []
    for p in walk(root, []):
        if p.endswith(NEW):
            continue
        files.append([p, os.stat(p)[6], sha256_file(p, _buf(server))])
    return {"files": files}


def fs_put(server, req):
    server._bulk()
    path = _path(req)
    size = _int(req, "size", 0, 4 * 1024 * 1024)
    digest = _str(req, "sha256")
    close_upload(server)
    d, _ = _split(path)
    makedirs(d)
    f = open(path + NEW, "wb")
    server.up = [path, f, size, digest, 0]
    return {"chunk": CHUNK}


def fs_data(server, req):
    up = server.up
    if up is None:
        raise Error("no_upload", "fs_data without fs_put")
    n = _int(req, "n", 1, CHUNK)
    e = _int(req, "e", n, 2 * CHUNK)
    crc = _int(req, "crc", 0, 0xFFFFFFFF)
    raw = server.link.read_exact(e)
    if raw is None:
        close_upload(server)
        raise Error("timeout", "the data stopped coming; upload of %s abandoned" % up[0])
    data = unescape(raw)
    if len(data) != n or crc32(data) != crc:
        # The file is not committed; the host resends this block.
        raise Error("bad_block", "block at %d arrived damaged (length %d, crc mismatch)"
                    % (up[4], len(data)), {"at": up[4]})
    if up[4] + n > up[2]:
        close_upload(server)
        raise Error("bad_value", "more data than the announced size %d" % up[2])
    up[1].write(data)
    up[4] += n
    return {"at": up[4]}


def fs_end(server, req):
    up = server.up
    if up is None:
        raise Error("no_upload", "fs_end without fs_put")
    server.up = None
    up[1].close()
    tmp = up[0] + NEW
    if up[4] != up[2]:
        os.remove(tmp)
        raise Error("bad_value", "%s: got %d of %d bytes" % (up[0], up[4], up[2]))
    got = sha256_file(tmp, _buf(server))
    if got != up[3]:
        os.remove(tmp)
        raise Error("bad_hash", "%s: sha256 of what was written is %s, expected %s"
                    % (up[0], got, up[3]))
    if up[0] not in server.pending:
        server.pending.append(up[0])
    return {"sha256": got}


def fs_commit(server, req):
    """Rename every verified upload into place (each rename is atomic on LittleFS)."""
    server._bulk()
    names = server.pending
    server.pending = []
    for p in names:
        try:
            os.remove(p)
        except OSError:
            pass
        os.rename(p + NEW, p)
    for p in req.get("remove") or []:
        if isinstance(p, str) and p.startswith("/") and _exists(p) and not _isdir(p):
            os.remove(p)
    return {"committed": names}


def fs_abort(server, req):
    close_upload(server)
    n = cleanup(server.pending)
    server.pending = []
    return {"removed": n}


def fs_get(server, req):
    server._bulk()
    path = _path(req)
    off = _int(req, "off", 0, 1 << 30, 0)
    n = _int(req, "n", 1, 4 * CHUNK, CHUNK)
    try:
        with open(path, "rb") as f:
            f.seek(off)
            data = f.read(n)
            size = f.seek(0, 2)
    except OSError:
        raise Error("not_found", "%s: no such file" % path, {"field": "path", "value": path})
    return {"size": size, "off": off, "crc": crc32(data), "_bin": data}


def fs_rm(server, req):
    server._bulk()
    path = _path(req)
    try:
        os.remove(path)
    except OSError:
        raise Error("not_found", "%s: no such file" % path, {"field": "path", "value": path})
    return {}


def close_upload(server):
    up = server.up
    server.up = None
    if up is not None:
        try:
            up[1].close()
            os.remove(up[0] + NEW)
        except OSError:
            pass
