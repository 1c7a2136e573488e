"""A small fake Hugging Face Hub HTTP server on 127.0.0.1 for push tests without the network.

It implements the endpoints that huggingface_hub 2.4's ``whoami``, ``create_repo``, ``repo_info``,
``update_repo_settings`` and ``create_commit`` call, so tests run the real client and its real
request path (httpx2):

    GET  /api/whoami-v2
    POST /api/repos/create
    GET  /api/{models|datasets}/{ns}/{name}[/revision/{rev}]
    PUT  /api/{models|datasets}/{ns}/{name}/settings
    POST /api/validate-yaml
    POST /api/{models|datasets}/{ns}/{name}/preupload/{rev}
    POST /api/{models|datasets}/{ns}/{name}/commit/{rev}       (NDJSON, base64 inline files)

Every file is answered as a "regular" (inline) upload; files over ``LFS_THRESHOLD`` bytes are
answered "lfs", which this server cannot receive, so tests keep their files small. A commit applies
all of its files at once or none (``fail_commits`` makes the next N commits answer HTTP 500 without
applying anything), as the Hub does. Tokens not in ``tokens`` get HTTP 401 like an expired token.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

LFS_THRESHOLD = 10 * 1024 * 1024
_REPO = r"/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: object = False
    commits: list[dict] = dataclasses.field(default_factory=list)  # {"oid", "message", "files": {path: bytes}}

    @property
    def files(self) -> dict[str, bytes]:
        """The tree of the default revision (the last commit)."""
        return dict(self.commits[-1]["files"]) if self.commits else {}


class FakeHub:
    """Start with ``with FakeHub() as hub:``; ``hub.endpoint`` is the URL to give HfApi / HF_ENDPOINT."""

    def __init__(self, tokens: dict[str, str] | None = None, user: str = "tester", role: str = "write"):
        self.tokens = tokens if tokens is not None else {"hf_fake_write_token": user}
        self.role = role
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.bodies: list[bytes] = []
        self.fail_commits = 0
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_POST(self):
                hub._dispatch(self, "POST")

            def do_PUT(self):
                hub._dispatch(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # -- plumbing ---------------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((method, path))
            self.bodies.append(body)
            auth = h.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else None
            user = self.tokens.get(token)
            if user is None:
                return self._send(h, 401, {"error": "Invalid credentials in Authorization header"},
                                  {"X-Error-Message": "Invalid credentials in Authorization header"})
            try:
                status, payload, headers = self._route(method, path, body, user)
            except Exception as e:  # a bug here should show as a 500, not hang the client
                status, payload, headers = 500, {"error": f"fake hub error: {e!r}"}, {}
            self._send(h, status, payload, headers)

    @staticmethod
    def _send(h, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _not_found(self):
        return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}

    def _route(self, method: str, path: str, body: bytes, user: str):
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": user, "auth": {"type": "access_token",
                                                                  "accessToken": {"role": self.role}}}, {}
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body), user)
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        m = re.fullmatch(_REPO + r"(?:/revision/(?P<rev>[^/]+))?", path)
        if method == "GET" and m:
            return self._info(m["kind"][:-1], m["repo"])
        m = re.fullmatch(_REPO + r"/settings", path)
        if method == "PUT" and m:
            return self._settings(m["kind"][:-1], m["repo"], json.loads(body))
        m = re.fullmatch(_REPO + r"/preupload/(?P<rev>[^/]+)", path)
        if method == "POST" and m:
            return self._preupload(m["kind"][:-1], m["repo"], json.loads(body))
        m = re.fullmatch(_REPO + r"/commit/(?P<rev>[^/]+)", path)
        if method == "POST" and m:
            return self._commit(m["kind"][:-1], m["repo"], body)
        return 404, {"error": f"fake hub has no route {method} {path}"}, {}

    # -- endpoints --------------------------------------------------------------------------------
    def _create(self, payload: dict, user: str):
        kind = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if repo_id.split("/")[0] != user:
            return 403, {"error": "You don't have the rights to create a repo in this namespace"}, {}
        if (kind, repo_id) in self.repos:
            return 409, {"error": "You already created this repo", "url": f"{self.endpoint}/{repo_id}"}, {}
        # The Hub makes a repo public when no visibility is given.
        self.repos[(kind, repo_id)] = Repo(kind, repo_id, private=payload.get("visibility") == "private")
        prefix = "" if kind == "model" else f"{kind}s/"
        return 200, {"url": f"{self.endpoint}/{prefix}{repo_id}", "name": repo_id}, {}

    def _info(self, kind: str, repo_id: str):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return self._not_found()
        sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
        return 200, {"id": repo_id, "private": repo.private, "gated": repo.gated, "sha": sha,
                     "siblings": [{"rfilename": p} for p in sorted(repo.files)]}, {}

    def _settings(self, kind: str, repo_id: str, payload: dict):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return self._not_found()
        if "gated" in payload:
            repo.gated = payload["gated"]
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        return 200, {}, {}

    @staticmethod
    def _validate_yaml(payload: dict):
        content = payload.get("content", "")
        errors = []
        try:
            meta = yaml.safe_load(content.split("---", 2)[1]) if content.startswith("---") else {}
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"YAML error: {e}"}]}, {}
        if not isinstance(meta, dict):
            errors.append({"message": "metadata must be a mapping"})
        elif payload.get("repoType") == "model" and "base_model" in meta and not isinstance(meta["base_model"], (str, list)):
            errors.append({"message": f"base_model must be a repo id, got {meta['base_model']!r}"})
        return (400 if errors else 200), {"errors": errors, "warnings": []}, {}

    def _preupload(self, kind: str, repo_id: str, payload: dict):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return self._not_found()
        files = []
        for f in payload["files"]:
            old = repo.files.get(f["path"])
            oid = hashlib.sha1(b"blob %d\0" % len(old) + old).hexdigest() if old is not None else None
            mode = "lfs" if f["size"] > LFS_THRESHOLD else "regular"
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": repo.commits[-1]["oid"] if repo.commits else None}, {}

    def _commit(self, kind: str, repo_id: str, body: bytes):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return self._not_found()
        if self.fail_commits > 0:
            self.fail_commits -= 1
            return 500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}, {}
        tree = repo.files
        header = None
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                assert item["value"]["encoding"] == "base64"
                tree[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                tree.pop(item["value"]["path"], None)
            else:
                return 400, {"error": f"fake hub cannot take {item['key']!r} operations"}, {}
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append({"oid": oid, "message": header["summary"], "files": tree})
        prefix = "" if kind == "model" else f"{kind}s/"
        return 200, {"commitUrl": f"{self.endpoint}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}, {}
