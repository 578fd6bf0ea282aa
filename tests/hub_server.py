"""A local stand-in for the Hugging Face Hub, for tests.

It speaks enough of the Hub's HTTP protocol for the *unmodified* ``huggingface_hub``
client (pinned at 2.4.0) to create repos, upload with the legacy LFS path, commit, and
download through the standard cache.  Standard library only.

Usage::

    from hub_server import start_hub_server, client_env, run_client

    with start_hub_server(tokens={"hf_write": "write"}) as hub:
        env = client_env(hub, tmp_path, token="hf_write")
        out = run_client("emit(HfApi().create_repo('me/x', private=True).repo_id)", env)
        assert hub.repos[("model", "me/x")].private

Two HTTP servers run on 127.0.0.1 (ephemeral ports), each in a daemon thread:

* ``hub.url`` - the Hub itself: ``/api/...``, ``/{repo}/resolve/...``, the LFS batch API.
* ``hub.cdn_url`` - a separate origin standing in for S3/CloudFront: LFS uploads are PUT
  there and LFS downloads are redirected there, exactly like the real Hub (a different
  origin, so the client drops its ``Authorization`` header, as it does for the real CDN).

Why the client runs in a subprocess: ``huggingface_hub.constants`` reads ``HF_ENDPOINT``,
``HF_HUB_DISABLE_XET``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE`` once, at import time
(``utils._http`` also freezes the set of "Hub origins" from ``ENDPOINT``).  Changing the
environment after the first import has no effect, and patching the constants is exactly
what these tests must not do.  ``HF_TOKEN`` is the exception: it is read on every call.
``run_client`` therefore starts a fresh interpreter with the environment ``client_env``
builds.  (In-process use works for plain API calls when the endpoint is passed
explicitly, e.g. ``HfApi(endpoint=hub.url)``, but LFS uploads would then go through Xet.)

Protocol notes (observed in huggingface_hub 2.4.0's source):

* Errors carry ``X-Error-Code`` (``RepoNotFound``/``RevisionNotFound``/``EntryNotFound``) and
  ``X-Error-Message`` headers plus a ``{"error": ...}`` JSON body; the client maps the code to
  its exception classes.  Its URL regex for 401->RepositoryNotFound only matches https://
  endpoints, so on this http:// server the header is what decides.
* An unknown token gets ``401`` + ``X-Error-Message: Invalid credentials in Authorization
  header`` on every endpoint (the client raises plain ``HfHubHTTPError`` for it).
* ``/resolve`` for an LFS file answers ``302`` to the CDN with ``X-Linked-Etag`` (sha256),
  ``X-Linked-Size`` and ``X-Repo-Commit``; regular files answer ``200`` with ``ETag`` = git blob
  sha1.  The client does NOT hash downloaded bytes: it only compares sizes.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "Blob",
    "Commit",
    "Repo",
    "HubServer",
    "start_hub_server",
    "hub_server",
    "client_env",
    "run_client",
    "ClientError",
    "git_blob_sha1",
    "lfs_pointer",
    "DEFAULT_LFS_PATTERNS",
]

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

# Patterns the Hub's default .gitattributes routes to LFS (abridged).
DEFAULT_LFS_PATTERNS = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx",
    "*.pb", "*.tflite", "*.npy", "*.npz", "*.pkl", "*.pickle", "*.joblib", "*.mar",
    "*.zip", "*.gz", "*.tgz", "*.tar", "*.7z", "*.xz", "*.zst", "*.arrow", "*.parquet",
    "*.model", "*.ot", "*tfevents*",
)
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # files above 10 MiB go to LFS whatever their name

_REPO_TYPE_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"dataset": "datasets/", "space": "spaces/", "model": ""}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as ETag for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Blob:
    data: bytes
    is_lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def git_oid(self) -> str:
        """Git blob id: of the content for regular files, of the pointer file for LFS files."""
        return git_blob_sha1(self.pointer if self.is_lfs else self.data)

    @property
    def remote_oid(self) -> str:
        """What preupload reports as ``oid`` (the client compares it to decide no-op uploads)."""
        return self.sha256 if self.is_lfs else git_blob_sha1(self.data)


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    files: Mapping[str, Blob]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    create_payload: dict
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content uploaded to "S3"
    pr_count: int = 0

    def head(self, branch: str = "main") -> Commit:
        return self.commits[self.branches[branch]]

    def history(self, oid: str) -> list[Commit]:
        out = []
        cur: str | None = oid
        while cur is not None:
            commit = self.commits[cur]
            out.append(commit)
            cur = commit.parent
        return out


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # more fields for the JSON body


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: "HubServer", role: str):
        self.hub = hub
        self.role = role  # "hub" or "cdn"
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        with self._conns_lock:
            self._conns.add(sock)
        return sock, addr

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Close keep-alive connections so a stopped server really stops answering."""
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    # One entry point for every verb.
    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        # Read the whole body first so that an early error never desyncs a keep-alive connection.
        body = self._read_body() if self.command in ("POST", "PUT", "DELETE", "PATCH") else b""
        self.req = _Request(
            method=self.command,
            raw_path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers=self.headers,
            body=body,
        )
        self._status = 500
        try:
            if self.server.role == "cdn":
                hub._route_cdn(self)
            else:
                hub._route_hub(self)
        except _HttpError as err:
            self.send_error_json(err.status, err.message, code=err.code, headers=err.headers, extra=err.extra)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: report it loudly to the client
            with contextlib.suppress(OSError):
                self.send_error_json(500, f"hub_server internal error: {exc!r}")
        finally:
            hub._record(self.server.role, self.command, split.path, split.query, self._status, self.req.token)

    # ---- responses
    def send_bytes(self, status: int, data: bytes, headers: Mapping[str, str] | None = None,
                   content_type: str = "application/octet-stream") -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), headers, content_type="application/json; charset=utf-8")

    def send_error_json(self, status: int, message: str, code: str | None = None,
                        headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        hdrs = {"X-Error-Message": message}
        if code:
            hdrs["X-Error-Code"] = code
        hdrs.update(headers or {})
        self.send_json(status, {"error": message, **(extra or {})}, hdrs)


@dataclass
class _Request:
    method: str
    raw_path: str
    query: dict[str, str]
    headers: Any
    body: bytes

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        return None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as exc:
            raise _HttpError(400, f"Invalid JSON body: {exc}") from None

    @property
    def segments(self) -> list[str]:
        """Path segments, still percent-encoded (so an encoded '/' in a revision stays in one segment)."""
        return [s for s in self.raw_path.split("/") if s != ""]


# --------------------------------------------------------------------------- the fake Hub


class HubServer:
    """In-memory fake of the Hugging Face Hub.  Create it with :func:`start_hub_server`.

    Attributes tests may read (hold ``hub.lock`` when reading while a client is running):

    * ``url`` / ``cdn_url`` - base URLs (``HF_ENDPOINT`` is ``url``).
    * ``repos`` - ``{(repo_type, repo_id): Repo}``; ``Repo.private``, ``Repo.create_payload``
      (the JSON the client sent to /api/repos/create), ``branches``, ``commits``, ``lfs``.
    * ``requests`` - ``[(method, path)]`` received by the Hub origin, in order;
      ``request_log`` - dicts with ``server`` ("hub"/"cdn"), ``method``, ``path``, ``query``,
      ``status``, ``token``.
    * ``corrupted`` - ``{(repo_type, repo_id, filename): mode}``.
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | Iterable[str] = ("hf_test_write_token",),
        *,
        username: str = "zoo-tester",
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_redirect: bool = True,
        with_gitattributes: bool = True,
    ):
        if isinstance(tokens, Mapping):
            self.tokens: dict[str, str] = dict(tokens)
        else:
            self.tokens = {t: "write" for t in tokens}
        bad_roles = {r for r in self.tokens.values() if r not in ("read", "write")}
        if bad_roles:
            raise ValueError(f"token roles must be 'read' or 'write', got {bad_roles}")
        self.username = username
        self.lfs_patterns = tuple(lfs_patterns)
        self.lfs_threshold = lfs_threshold
        self.lfs_redirect = lfs_redirect
        self.with_gitattributes = with_gitattributes

        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.request_log: list[dict] = []
        self.corrupted: dict[tuple[str, str, str], str] = {}
        self._signed: dict[str, dict] = {}  # CDN signature -> what it grants
        self._commit_counter = 0

        self._hub = _Server(self, "hub")
        self._cdn = _Server(self, "cdn")
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(target=s.serve_forever, args=(0.05,), name=f"hub-server-{s.role}", daemon=True)
            for s in (self._hub, self._cdn)
        ]
        self._running = False

    # ---- lifecycle
    def start(self) -> "HubServer":
        for t in self._threads:
            t.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop both origins and close every open connection.  Idempotent."""
        if not self._running:
            return
        self._running = False
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.drop_connections()
            s.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- helpers for tests
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` of a revision, as stored (never corrupted)."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            return {p: b.data for p, b in self._resolve_commit(repo, revision).files.items()}

    def corrupt(self, repo_id: str, filename: str, *, mode: str = "flip", repo_type: str = "model") -> None:
        """Serve wrong bytes for ``filename`` from now on, still advertising the original ETag/sha256/size.

        ``mode="flip"``: same length, every byte inverted (the client cannot notice; a sha256
        check downstream must).  ``mode="truncate"``: only the first half is served (the client's
        size check raises ``OSError('Consistency check failed ...')``).
        """
        if mode not in ("flip", "truncate"):
            raise ValueError("mode must be 'flip' or 'truncate'")
        with self.lock:
            self.corrupted[(repo_type, repo_id, filename)] = mode

    def uncorrupt(self, repo_id: str | None = None, filename: str | None = None, repo_type: str = "model") -> None:
        with self.lock:
            if repo_id is None:
                self.corrupted.clear()
            else:
                self.corrupted.pop((repo_type, repo_id, filename or ""), None)

    def received(self, method: str, path_pattern: str) -> list[tuple[str, str]]:
        """Requests to the Hub origin with this method whose path fully matches the regex."""
        rx = re.compile(path_pattern)
        with self.lock:
            return [(m, p) for m, p in self.requests if m == method and rx.fullmatch(p)]

    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()
            self.request_log.clear()

    def _record(self, role: str, method: str, path: str, query: str, status: int, token: str | None) -> None:
        with self.lock:
            if role == "hub":
                self.requests.append((method, unquote(path)))
            self.request_log.append(
                {"server": role, "method": method, "path": unquote(path), "query": query,
                 "status": status, "token": token}
            )

    # ---- auth
    def _auth(self, req: _Request) -> str | None:
        """Role of the caller ("read"/"write") or None if anonymous. Unknown tokens are rejected."""
        token = req.token
        if token is None:
            return None
        role = self.tokens.get(token)
        if role is None:
            raise _HttpError(401, INVALID_CREDENTIALS)
        return role

    def _require_write(self, req: _Request, repo_scoped: bool = True) -> None:
        role = self._auth(req)
        if role is None:
            # The Hub answers anonymous writes to a repo like a missing repo.
            raise _HttpError(401, "You must be authenticated to access this resource",
                             code="RepoNotFound" if repo_scoped else None)
        if role != "write":
            raise _HttpError(403, "You don't have the rights to write to this repository: your token is read-only")

    def _get_repo(self, req: _Request, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        if write:
            self._require_write(req)
            role = "write"
        else:
            role = self._auth(req)
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and role is None):
            # Missing and private-while-anonymous look the same from outside, like on the Hub.
            raise _HttpError(401 if role is None else 404, "Repository not found", code="RepoNotFound")
        return repo

    # ---- revisions
    def _resolve_commit(self, repo: Repo, revision: str) -> Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.tags:
            return repo.commits[repo.tags[revision]]
        if revision.startswith("refs/heads/") and revision[11:] in repo.branches:
            return repo.commits[repo.branches[revision[11:]]]
        if _HEX40.match(revision) and revision in repo.commits:
            return repo.commits[revision]
        raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, Blob], title: str,
                    message: str, author: str) -> Commit:
        self._commit_counter += 1
        seed = json.dumps(
            [repo.repo_type, repo.repo_id, parent, sorted((p, b.git_oid) for p, b in files.items()),
             title, message, self._commit_counter, secrets.token_hex(8)]
        ).encode()
        oid = hashlib.sha1(seed).hexdigest()
        commit = Commit(oid=oid, parent=parent, files=dict(files), title=title, message=message,
                        author=author, date=_now())
        repo.commits[oid] = commit
        return commit

    def _upload_mode(self, path: str, size: int) -> str:
        name = path.rsplit("/", 1)[-1]
        if size > self.lfs_threshold:
            return "lfs"
        if any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(path, pat) for pat in self.lfs_patterns):
            return "lfs"
        return "regular"

    def _gitattributes(self) -> bytes:
        lines = [f"{pat} filter=lfs diff=lfs merge=lfs -text" for pat in self.lfs_patterns]
        return ("\n".join(lines) + "\n").encode()

    def _sign(self, **grant: Any) -> str:
        sig = secrets.token_urlsafe(16)
        self._signed[sig] = grant
        return sig

    def _served_bytes(self, repo: Repo, path: str, data: bytes) -> bytes:
        mode = self.corrupted.get((repo.repo_type, repo.repo_id, path))
        if mode == "flip":
            return bytes(b ^ 0xFF for b in data)
        if mode == "truncate":
            return data[: len(data) // 2]
        return data

    # ---- routing: Hub origin
    def _route_hub(self, h: _Handler) -> None:
        req = h.req
        seg = req.segments
        m = req.method
        with self.lock:
            if seg[:2] == ["api", "whoami-v2"] and m == "GET":
                return self._whoami(h)
            if seg[:2] == ["api", "validate-yaml"] and m == "POST":
                return h.send_json(200, {"errors": [], "warnings": []})
            if seg[:3] == ["api", "repos", "create"] and m == "POST":
                return self._create_repo(h)
            if seg[:3] == ["api", "repos", "delete"] and m == "DELETE":
                return self._delete_repo(h)
            if len(seg) >= 4 and seg[0] == "api" and seg[1] in _REPO_TYPE_PLURALS:
                repo_type = _REPO_TYPE_PLURALS[seg[1]]
                repo_id = f"{unquote(seg[2])}/{unquote(seg[3])}"
                return self._route_repo_api(h, repo_type, repo_id, seg[4:])
            # /[datasets/|spaces/]ns/name/resolve/rev/path  and  /[...]ns/name.git/info/lfs/objects/batch
            repo_type = "model"
            rest = seg
            if rest and rest[0] in ("datasets", "spaces") and len(rest) > 3:
                repo_type = _REPO_TYPE_PLURALS[rest[0]]
                rest = rest[1:]
            if len(rest) >= 5 and rest[2] == "resolve" and m in ("GET", "HEAD"):
                repo_id = f"{unquote(rest[0])}/{unquote(rest[1])}"
                filename = "/".join(unquote(s) for s in rest[4:])
                return self._resolve(h, repo_type, repo_id, unquote(rest[3]), filename)
            if len(rest) == 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
                repo_id = f"{unquote(rest[0])}/{unquote(rest[1][:-4])}"
                if rest[5] == "batch" and m == "POST":
                    return self._lfs_batch(h, repo_type, repo_id)
                if rest[5] == "verify" and m == "POST":
                    return self._lfs_verify(h, repo_type, repo_id)
        raise _HttpError(404, f"Not found: {m} {req.raw_path}")

    def _route_repo_api(self, h: _Handler, repo_type: str, repo_id: str, rest: list[str]) -> None:
        req, m = h.req, h.req.method
        if not rest and m == "GET":
            return self._repo_info(h, repo_type, repo_id, "main")
        if len(rest) == 2 and rest[0] == "revision" and m == "GET":
            return self._repo_info(h, repo_type, repo_id, unquote(rest[1]))
        if len(rest) == 2 and rest[0] == "preupload" and m == "POST":
            return self._preupload(h, repo_type, repo_id, unquote(rest[1]))
        if len(rest) == 2 and rest[0] == "commit" and m == "POST":
            return self._commit(h, repo_type, repo_id, unquote(rest[1]))
        if len(rest) >= 2 and rest[0] == "tree" and m == "GET":
            path = "/".join(unquote(s) for s in rest[2:])
            return self._tree(h, repo_type, repo_id, unquote(rest[1]), path)
        if rest == ["refs"] and m == "GET":
            return self._refs(h, repo_type, repo_id)
        if len(rest) == 2 and rest[0] == "commits" and m == "GET":
            return self._commits(h, repo_type, repo_id, unquote(rest[1]))
        if len(rest) == 2 and rest[0] == "branch" and m in ("POST", "DELETE"):
            return self._branch(h, repo_type, repo_id, unquote(rest[1]))
        raise _HttpError(404, f"Not found: {m} {req.raw_path}")

    # ---- endpoints
    def _whoami(self, h: _Handler) -> None:
        role = self._auth(h.req)
        if role is None:
            raise _HttpError(401, "Invalid username or password.")
        h.send_json(200, {
            "type": "user", "id": "0" * 24, "name": self.username, "fullname": self.username,
            "email": None, "emailVerified": False, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
        })

    def _create_repo(self, h: _Handler) -> None:
        self._require_write(h.req, repo_scoped=False)
        payload = h.req.json()
        name = payload.get("name")
        namespace = payload.get("organization") or self.username
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in _URL_PREFIXES:
            raise _HttpError(400, "Invalid repo name or type")
        repo_id = f"{namespace}/{name}"
        url = f"{self.url}/{_URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # The client's exist_ok=True swallows the 409 and then reads "url" from this body.
            raise _HttpError(409, f"You already created this {repo_type} repo", extra={"url": url})
        visibility = payload.get("visibility")
        private = visibility in ("private", "protected") if visibility is not None else bool(payload.get("private"))
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now(),
                    create_payload=payload)
        files = {".gitattributes": Blob(self._gitattributes(), is_lfs=False)} if self.with_gitattributes else {}
        commit = self._new_commit(repo, None, files, "initial commit", "", self.username)
        repo.branches["main"] = commit.oid
        self.repos[(repo_type, repo_id)] = repo
        h.send_json(200, {"url": url, "name": repo_id, "id": "0" * 24})

    def _delete_repo(self, h: _Handler) -> None:
        self._require_write(h.req, repo_scoped=False)
        payload = h.req.json()
        key = (payload.get("type") or "model", f"{payload.get('organization') or self.username}/{payload.get('name')}")
        if key not in self.repos:
            raise _HttpError(404, "Repository not found", code="RepoNotFound")
        del self.repos[key]
        h.send_json(200, {})

    def _repo_info(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        with_blobs = h.req.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sib.update(size=blob.size, blobId=blob.git_oid)
                if blob.is_lfs:
                    sib["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
            siblings.append(sib)
        h.send_json(200, {
            "_id": "0" * 24, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })

    def _preupload(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id, write=True)
        create_pr = h.req.query.get("create_pr") == "1"
        commit = self._resolve_commit(repo, revision)
        if not create_pr and revision not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        files = []
        for f in h.req.json().get("files", []):
            path, size = f["path"], int(f["size"])
            out = {"path": path, "uploadMode": self._upload_mode(path, size), "shouldIgnore": False}
            existing = commit.files.get(path)
            if existing is not None:
                out["oid"] = existing.remote_oid
            files.append(out)
        h.send_json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        payload = h.req.json()
        if payload.get("operation") != "upload":
            # Downloads never use the batch API in huggingface_hub; keep the fake honest.
            raise _HttpError(400, "Only the 'upload' operation is implemented")
        repo = self._get_repo(h.req, repo_type, repo_id, write=True)
        transfers = payload.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise _HttpError(400, f"Unsupported transfers {transfers}: only 'basic' is implemented")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)):
                raise _HttpError(422, f"Invalid LFS object {obj!r}")
            if oid in repo.lfs:
                objects.append({"oid": oid, "size": size})  # already there: no actions
                continue
            sig = self._sign(kind="upload", repo=(repo_type, repo_id), oid=oid, size=size)
            objects.append({
                "oid": oid, "size": size, "authenticated": True,
                "actions": {
                    "upload": {"href": f"{self.cdn_url}/upload/{oid}?X-Sig={sig}", "expires_in": 900},
                    "verify": {
                        "href": f"{self.url}/{_URL_PREFIXES[repo_type]}{repo_id}.git/info/lfs/objects/verify",
                        "header": {},
                    },
                },
            })
        h.send_json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                    headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_verify(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id, write=True)
        payload = h.req.json()
        data = repo.lfs.get(payload.get("oid", ""))
        if data is None or len(data) != payload.get("size"):
            raise _HttpError(404, f"LFS object {payload.get('oid')} was not uploaded (or has the wrong size)")
        h.send_json(200, {"success": True})

    def _commit(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id, write=True)
        create_pr = h.req.query.get("create_pr") == "1"
        if revision not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        try:
            lines = [json.loads(line) for line in h.req.body.decode().splitlines() if line.strip()]
        except ValueError as exc:
            raise _HttpError(400, f"Invalid NDJSON commit payload: {exc}") from None
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The first line of the commit payload must be the header")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise _HttpError(400, "Commit summary is required")
        head_oid = repo.branches[revision]
        parent_commit = header.get("parentCommit")
        if parent_commit and not head_oid.startswith(parent_commit):
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")

        files = dict(repo.commits[head_oid].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise _HttpError(400, f"Invalid path {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HttpError(400, "Only base64 encoding is supported")
                files[path] = Blob(base64.b64decode(value["content"]), is_lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid")
                data = repo.lfs.get(oid)
                if data is None:
                    raise _HttpError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                          f"does not exist: {path} ({oid})")
                if "size" in value and value["size"] != len(data):
                    raise _HttpError(422, f"LFS object size mismatch for {path}")
                files[path] = Blob(data, is_lfs=True)
            elif key == "deletedFile":
                if path not in files:
                    raise _HttpError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise _HttpError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}")

        author = self.username
        description = header.get("description") or ""
        pr_url = None
        target = revision
        if create_pr:
            repo.pr_count += 1
            target = f"refs/pr/{repo.pr_count}"
            pr_url = f"{self.url}/{_URL_PREFIXES[repo_type]}{repo_id}/discussions/{repo.pr_count}"
        commit = self._new_commit(repo, head_oid, files, title, description, author)
        repo.branches[target] = commit.oid
        h.send_json(200, {
            "success": True, "commitOid": commit.oid, "commitMessage": title, "hookOutput": "",
            "commitUrl": f"{self.url}/{_URL_PREFIXES[repo_type]}{repo_id}/commit/{commit.oid}",
            "pullRequestUrl": pr_url,
        })

    def _tree(self, h: _Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        recursive = h.req.query.get("recursive", "").lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        dirs: set[str] = set()
        entries: list[dict] = []
        for p, blob in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rel_parts = p[len(prefix):].split("/")
            # directories between prefix and the file
            for i in range(1, len(rel_parts)):
                if not recursive and i > 1:
                    break
                dirs.add(prefix + "/".join(rel_parts[:i]))
            if len(rel_parts) > 1 and not recursive:
                continue
            entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": p}
            if blob.is_lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
            entries.append(entry)
        if prefix and not entries and not dirs:
            raise _HttpError(404, f"Entry not found: {path}", code="EntryNotFound",
                             headers={"X-Repo-Commit": commit.oid})
        dir_entries = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                       for d in sorted(dirs)]
        h.send_json(200, dir_entries + entries)

    def _refs(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                    for n, o in repo.branches.items() if not n.startswith("refs/pr/")]
        prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in repo.branches.items() if n.startswith("refs/pr/")]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()]
        h.send_json(200, {"branches": branches, "converts": [], "tags": tags, "pullRequests": prs})

    def _commits(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        h.send_json(200, [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
            for c in repo.history(commit.oid)
        ])

    def _branch(self, h: _Handler, repo_type: str, repo_id: str, branch: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id, write=True)
        if h.req.method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise _HttpError(404 if branch != "main" else 403, f"Cannot delete branch {branch}",
                                 code="RevisionNotFound" if branch != "main" else None)
            del repo.branches[branch]
            return h.send_json(200, {})
        if branch in repo.branches:
            raise _HttpError(409, f"Reference already exists: refs/heads/{branch}")
        start = h.req.json().get("startingPoint") or "main"
        repo.branches[branch] = self._resolve_commit(repo, start).oid
        h.send_json(200, {})

    def _resolve(self, h: _Handler, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        repo = self._get_repo(h.req, repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        blob = commit.files.get(filename)
        if blob is None:
            raise _HttpError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if blob.is_lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
            if self.lfs_redirect:
                sig = self._sign(kind="download", repo=(repo_type, repo_id), path=filename, oid=blob.sha256)
                location = f"{self.cdn_url}/lfs/{blob.sha256}?X-Sig={sig}&filename={quote(filename)}"
                headers.update({"ETag": f'"{blob.git_oid}"', "Location": location})
                return h.send_bytes(302, b"", headers, content_type="text/plain; charset=utf-8")
            headers["ETag"] = f'"{blob.sha256}"'
        else:
            headers["ETag"] = f'"{blob.git_oid}"'
        # HEAD advertises the true size; only the body of a GET is corrupted.
        data = blob.data if h.command == "HEAD" else self._served_bytes(repo, filename, blob.data)
        self._send_content(h, headers, data)

    def _send_content(self, h: _Handler, headers: dict[str, str], data: bytes) -> None:
        rng = h.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip()) if rng else None
        if match and h.command == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return h.send_bytes(416, b"", headers)
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return h.send_bytes(206, data[start:end + 1], headers)
        h.send_bytes(200, data, headers)

    # ---- routing: CDN origin ("S3")
    def _route_cdn(self, h: _Handler) -> None:
        req = h.req
        seg = req.segments
        sig = req.query.get("X-Sig", "")
        with self.lock:
            grant = self._signed.get(sig)
            if len(seg) == 2 and seg[0] == "upload" and req.method == "PUT":
                if grant is None or grant["kind"] != "upload" or grant["oid"] != seg[1]:
                    raise _HttpError(403, "SignatureDoesNotMatch")
                repo = self.repos.get(grant["repo"])
                if repo is None:
                    raise _HttpError(404, "NoSuchBucket")
                data = req.body
                if len(data) != grant["size"]:
                    raise _HttpError(400, f"Size mismatch: expected {grant['size']} bytes, got {len(data)}")
                actual = hashlib.sha256(data).hexdigest()
                if actual != grant["oid"]:
                    raise _HttpError(400, f"sha256 mismatch: expected {grant['oid']}, got {actual}")
                repo.lfs[actual] = data
                return h.send_bytes(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
            if len(seg) == 2 and seg[0] == "lfs" and req.method in ("GET", "HEAD"):
                if grant is None or grant["kind"] != "download" or grant["oid"] != seg[1]:
                    raise _HttpError(403, "AccessDenied")
                repo = self.repos.get(grant["repo"])
                data = repo.lfs.get(grant["oid"]) if repo is not None else None
                if data is None:
                    raise _HttpError(404, "NoSuchKey")
                served = data if h.command == "HEAD" else self._served_bytes(repo, grant["path"], data)
                name = grant["path"].rsplit("/", 1)[-1]
                headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Accept-Ranges": "bytes",
                           "Content-Disposition": f'inline; filename="{name}"'}
                return self._send_content(h, headers, served)
        raise _HttpError(404, f"Not found: {req.method} {req.raw_path}")


def start_hub_server(tokens: Mapping[str, str] | Iterable[str] = ("hf_test_write_token",), **kwargs: Any) -> HubServer:
    """Start a fake Hub on 127.0.0.1 (free ports), serving from daemon threads.

    ``tokens``: iterable of write tokens, or ``{token: "read" | "write"}``.
    Other keyword arguments: see :class:`HubServer`.  Stop it with ``.stop()`` or use it as a
    context manager (``with start_hub_server() as hub: ...``).
    """
    return HubServer(tokens, **kwargs).start()


@contextlib.contextmanager
def hub_server(tokens: Mapping[str, str] | Iterable[str] = ("hf_test_write_token",), **kwargs: Any):
    """Context manager / pytest-fixture body: ``yield`` a running server, stop it afterwards."""
    server = start_hub_server(tokens, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- running the real client

_SCRUBBED_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_")
_SCRUBBED_ENV = {"TRANSFORMERS_OFFLINE", "DO_NOT_TRACK", "DISABLE_TELEMETRY", "XDG_CACHE_HOME"}


def client_env(
    server: HubServer | str,
    root: str | os.PathLike,
    *,
    token: str | None = None,
    offline: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a ``huggingface_hub`` process that talks to ``server`` (or a URL).

    Every ``HF_*``/``HUGGINGFACE_*`` variable of the current process is dropped first (a stray
    ``HF_TOKEN``, ``HF_HUB_OFFLINE`` or ``HF_OIDC_RESOURCE`` would change the outcome), then:

    * ``HF_ENDPOINT``               the server URL
    * ``HF_HUB_DISABLE_XET=1``      legacy LFS upload/download path (hf_xet is installed)
    * ``HF_HOME=<root>/hf_home``    token file, xet cache, etc. stay in the test's tmp dir
    * ``HF_HUB_CACHE=<root>/hub_cache``
    * ``HF_HUB_OFFLINE=0|1``
    * ``HF_TOKEN=<token>``          only if ``token`` is given
    * ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HUB_DISABLE_PROGRESS_BARS=1``,
      ``HF_HUB_DISABLE_UPDATE_CHECK=1``, ``HF_HUB_DISABLE_SYMLINKS_WARNING=1``
    * ``NO_PROXY``/``no_proxy`` extended with 127.0.0.1 and localhost.
    """
    root = Path(root)
    url = server.url if isinstance(server, HubServer) else str(server)
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(_SCRUBBED_ENV_PREFIXES) and k.upper() not in _SCRUBBED_ENV}
    env.update({
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(root / "hf_home"),
        "HF_HUB_CACHE": str(root / "hub_cache"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
    })
    if token is not None:
        env["HF_TOKEN"] = token
    for key in ("NO_PROXY", "no_proxy"):
        parts = [p for p in env.get(key, "").split(",") if p]
        env[key] = ",".join(parts + [h for h in ("127.0.0.1", "localhost") if h not in parts])
    if extra:
        env.update(extra)
    return env


_RESULT_MARKER = "@@HUB_CLIENT_RESULT@@"

_PRELUDE = f"""
import json as _json, os as _os, sys as _sys, traceback as _tb
ARGS = _json.loads(_os.environ.get("HUB_CLIENT_ARGS") or "{{}}")
_RESULT = {{"ok": True, "value": None}}
def emit(value):
    _RESULT["value"] = value
try:
    exec(compile(_os.environ["HUB_CLIENT_CODE"], "<hub-client>", "exec"), {{"ARGS": ARGS, "emit": emit, "__name__": "__hub_client__"}})
except BaseException as _e:
    _resp = getattr(_e, "response", None)
    _RESULT = {{"ok": False, "error": {{
        "type": type(_e).__name__,
        "qualname": type(_e).__module__ + "." + type(_e).__qualname__,
        "mro": [c.__name__ for c in type(_e).__mro__],
        "message": str(_e),
        "status_code": getattr(_resp, "status_code", None),
        "traceback": _tb.format_exc(),
    }}}}
_sys.stdout.write("\\n{_RESULT_MARKER}" + _json.dumps(_RESULT, default=str) + "\\n")
"""


class ClientError(AssertionError):
    """The client script raised; ``.error`` holds type, qualname, mro, message, status_code, traceback."""

    def __init__(self, error: dict):
        super().__init__(f"{error['qualname']}: {error['message']}\n{error['traceback']}")
        self.error = error


def run_client(code: str, env: Mapping[str, str], *, args: Any = None, timeout: float = 120,
               expect_error: bool = False) -> Any:
    """Run ``code`` in a fresh interpreter with ``env`` (see :func:`client_env`).

    The code sees ``ARGS`` (the JSON-decoded ``args``) and ``emit(value)``; ``emit``'s JSON-able
    value is returned.  If the code raises, :class:`ClientError` is raised here, unless
    ``expect_error=True``, in which case the error dict (``type``, ``qualname``, ``mro``,
    ``message``, ``status_code``, ``traceback``) is returned instead.
    """
    full_env = dict(env)
    full_env["HUB_CLIENT_CODE"] = code
    full_env["HUB_CLIENT_ARGS"] = json.dumps(args)
    proc = subprocess.run([sys.executable, "-c", _PRELUDE], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    marker_lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    if proc.returncode != 0 or not marker_lines:
        raise AssertionError(
            f"client process failed (rc={proc.returncode})\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    result = json.loads(marker_lines[-1][len(_RESULT_MARKER):])
    if result["ok"]:
        if expect_error:
            raise AssertionError(f"expected the client to raise, it returned {result['value']!r}")
        return result["value"]
    if expect_error:
        return result["error"]
    raise ClientError(result["error"])
