"""A small Hugging Face Hub on 127.0.0.1 for tests: the real `huggingface_hub` client talks to it.

It implements the dataset-repo endpoints a push uses (create repo, repo info, tree listing,
pre-upload, commit, branch, tag, refs) with git-like state: commits with parents, branches and
tags, every file's bytes. Tokens map to the namespaces they may write; failures can be injected
per route (`fail("commit", 500)`), and every request is recorded (without its token) so tests
can assert on what arrived. Files are always "regular" uploads (inline in the commit), which is
what the real Hub does for small files; there is no LFS or Xet storage here. `SilentHub` is a
server that takes connections and never answers (a hung Hub).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        return (
            self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        )

    def add_commit(self, branch: str, parent: str | None, title: str, files: dict) -> Commit:
        oid = hashlib.sha1(f"{parent}|{title}|{len(self.commits)}".encode()).hexdigest()
        commit = Commit(oid, parent, title, files)
        self.commits[oid] = commit
        self.branches[branch] = oid
        return commit


class FakeHub:
    def __init__(self, tokens: dict[str, set[str]]):
        self.tokens = tokens  # token -> namespaces it may write
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []
        self.failures: dict[str, list[tuple[int, dict]]] = {}
        self.validated: list[dict] = []  # card metadata the client asked to validate
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test helpers ----------------------------------------------------------------------

    def fail(self, route: str, status: int, times: int = 1, headers: dict | None = None) -> None:
        """The next `times` requests to `route` answer `status` (routes: see `_route`)."""
        self.failures.setdefault(route, []).extend([(status, headers or {})] * times)

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(rev)].files)

    def commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """The commits of `branch`, oldest first (the repo's initial commit included)."""
        repo = self.repos[repo_id]
        out, oid = [], repo.branches.get(branch)
        while oid:
            out.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return out[::-1]

    def routes(self) -> list[str]:
        return [r["route"] for r in self.requests]

    # -- the server ------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        auth = req.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        route, repo_id, rest = self._route(method, parsed.path)
        with self._lock:
            self.requests.append(
                {"method": method, "path": parsed.path, "route": route, "has_token": bool(token)}
            )
            queued = self.failures.get(route)
            if queued:
                status, headers = queued.pop(0)
                return self._send(req, status, {"error": f"injected {status}"}, headers)
            if route == "unknown":
                return self._send(req, 404, {"error": f"no route {method} {parsed.path}"})
            if token not in self.tokens:
                return self._send(
                    req, 401, {"error": "Invalid credentials in Authorization header"}
                )
            namespace = (repo_id or "").split("/")[0]
            if route == "validate_yaml":
                return self._send(req, *self._validate_yaml(body))
            if route == "create":
                payload = json.loads(body or b"{}")
                namespace = payload.get("organization") or "me"
            if namespace not in self.tokens[token]:
                return self._send(req, 403, {"error": f"You don't have the rights to {namespace}"})
            try:
                status, payload = getattr(self, f"_{route}")(
                    repo_id, rest, body, parse_qs(parsed.query)
                )
            except KeyError as exc:
                status, payload = 404, {"error": f"not found: {exc}"}
            return self._send(req, status, payload)

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, str | None, str]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return "create", None, ""
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return "validate_yaml", None, ""
        if len(parts) >= 4 and parts[:2] == ["api", "datasets"]:
            repo_id = f"{parts[2]}/{parts[3]}"
            action = parts[4] if len(parts) > 4 else ""
            rest = "/".join(parts[5:])
            names = {
                ("GET", ""): "info",
                ("GET", "revision"): "info",
                ("GET", "tree"): "tree",
                ("GET", "refs"): "refs",
                ("POST", "preupload"): "preupload",
                ("POST", "commit"): "commit",
                ("POST", "tag"): "tag",
                ("POST", "branch"): "branch",
            }
            if (method, action) in names:
                return names[(method, action)], repo_id, rest
        return "unknown", None, ""

    def _send(self, req, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            req.send_header(key, str(value))
        if status >= 400:
            req.send_header("X-Error-Message", payload.get("error", ""))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)

    # -- endpoints -------------------------------------------------------------------------

    def _create(self, _repo, _rest, body, _query):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'me'}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {
                "error": "You already created this dataset repo",
                "url": self._url(repo_id),
            }
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = self.repos[repo_id] = Repo(repo_id, private)
        repo.add_commit(
            "main", None, "initial commit", {".gitattributes": b"*.parquet filter=lfs\n"}
        )
        return 200, {"url": self._url(repo_id), "name": repo_id}

    def _validate_yaml(self, body):
        """The card's YAML header must parse to a mapping whose `configs` name their files."""
        import yaml

        content = json.loads(body)["content"]
        header = content.split("---")[1] if content.startswith("---") else ""
        try:
            meta = yaml.safe_load(header) or {}
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"bad YAML: {exc}"}]}
        errors = [] if isinstance(meta, dict) else [{"message": "metadata is not a mapping"}]
        for config in meta.get("configs", []) if not errors else []:
            if "config_name" not in config or not config.get("data_files"):
                errors.append({"message": f"config without name or data_files: {config}"})
        self.validated.append(meta)
        return (400 if errors else 200), {"errors": errors, "warnings": []}

    def _url(self, repo_id: str) -> str:
        return f"{self.url}/datasets/{repo_id}"

    def _info(self, repo_id, rest, _body, _query):
        repo = self.repos[repo_id]
        oid = repo.resolve(rest or "main")
        if oid is None:
            return 404, {"error": f"Invalid rev id: {rest}"}
        files = repo.commits[oid].files
        return 200, {
            "id": repo_id,
            "sha": oid,
            "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(files)],
            "tags": [],
        }

    def _tree(self, repo_id, rest, _body, query):
        repo = self.repos[repo_id]
        rev, _, prefix = rest.partition("/")
        oid = repo.resolve(rev)
        if oid is None:
            return 404, {"error": f"Invalid rev id: {rev}"}
        recursive = query.get("recursive", ["false"])[0] in ("true", "1", "True")
        entries, dirs = [], set()
        for path, data in sorted(repo.commits[oid].files.items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            rel_parts = path.split("/")
            for i in range(1, len(rel_parts)):
                dirs.add("/".join(rel_parts[:i]))
            if recursive or "/" not in path[len(prefix) :].lstrip("/"):
                entries.append(
                    {"type": "file", "oid": git_sha1(data), "size": len(data), "path": path}
                )
        for d in sorted(dirs):
            if recursive or "/" not in d:
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
        return 200, entries

    def _refs(self, repo_id, _rest, _body, _query):
        repo = self.repos[repo_id]

        def refs(kind, items):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o} for n, o in items]

        return 200, {
            "branches": refs("heads", repo.branches.items()),
            "tags": refs("tags", repo.tags.items()),
            "converts": [],
        }

    def _preupload(self, repo_id, _rest, body, _query):
        self.repos[repo_id]  # noqa: B018 - 404 for an unknown repo
        files = json.loads(body)["files"]
        return 200, {
            "files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]
        }

    def _commit(self, repo_id, rest, body, _query):
        repo = self.repos[repo_id]
        branch = rest or "main"
        if branch not in repo.branches:
            return 404, {"error": f"Invalid rev id: {branch}"}
        head = repo.branches[branch]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != head:
            return 412, {"error": "A commit has happened since. Please refresh and try again."}
        files = dict(repo.commits[head].files)
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                return 400, {"error": f"unsupported commit operation {key}"}
        commit = repo.add_commit(branch, head, header["summary"], files)
        return 200, {
            "commitUrl": f"{self._url(repo_id)}/commit/{commit.oid}",
            "commitOid": commit.oid,
            "success": True,
        }

    def _tag(self, repo_id, rest, body, _query):
        repo = self.repos[repo_id]
        payload = json.loads(body)
        oid = repo.resolve(rest)
        if oid is None:
            return 404, {"error": f"Invalid rev id: {rest}"}
        if payload["tag"] in repo.tags:
            return 409, {"error": f"Tag {payload['tag']} already exists"}
        repo.tags[payload["tag"]] = oid
        return 200, {}

    def _branch(self, repo_id, rest, body, _query):
        repo = self.repos[repo_id]
        if rest in repo.branches:
            return 409, {"error": f"Branch {rest} already exists"}
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo.branches[rest] = repo.resolve(start)
        return 200, {}


class SilentHub:
    """A "Hub" on 127.0.0.1 that takes every connection, reads the request and never answers.

    What a hung server or a black-holing proxy looks like to a client: the TCP connection is
    made at once, then nothing comes back. `requests` holds the first line of every request
    received (e.g. "POST /api/repos/create HTTP/1.1").
    """

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> SilentHub:
        self._threads[0].start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for conn in self._connections:
            conn.close()
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.05)
            self._connections.append(conn)
            reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(reader)
            reader.start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return  # the client gave up and closed the connection
            data += chunk
            while b"\r\n\r\n" in data:  # headers of one request; a body may come before
                head, data = data.split(b"\r\n\r\n", 1)
                line = re.search(rb"(?:GET|HEAD|POST|PUT|PATCH|DELETE) \S+ HTTP/1\.\d", head)
                if line:
                    self.requests.append(line.group().decode("latin-1"))
