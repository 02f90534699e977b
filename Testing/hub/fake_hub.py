"""A minimal Hugging Face hub served on 127.0.0.1, standing in for the hub's servers in tests.

It serves the requests that huggingface_hub 2.4.0 makes, with the headers it reads:
- HEAD/GET /{repo_id}/resolve/{revision}/{path}: JSON and other small files return 200 with
  ETag (the git blob SHA-1), X-Repo-Commit and Content-Length; safetensors files are stored
  like LFS files and return 302 to a second server on another port (the "CDN", which the client
  does not follow on HEAD because the origin differs), with X-Linked-Etag (the SHA-256),
  X-Linked-Size and X-Repo-Commit. Unknown repos, revisions and files return 404 with the
  X-Error-Code values RepoNotFound, RevisionNotFound and EntryNotFound.
- POST /api/repos/create, /api/models/{repo_id}/preupload/{revision},
  /api/models/{repo_id}/commit/{revision} and /api/validate-yaml, for upload_folder. Every
  file is declared "regular", so its content travels base64-encoded inside the commit.

Every request to either server is recorded in `requests`, so tests can count them.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

RESOLVE_ROUTE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
API_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit)/(?P<revision>[^/]+)$")
LFS_SUFFIXES = (".safetensors",)


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeRepo:
    """Commits (commit hash to file contents) and refs (branch name to commit hash)."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    server: str
    method: str
    path: str


class FakeHub:
    """Two HTTP servers on 127.0.0.1 (hub and CDN) over in-memory repos."""

    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[RecordedRequest] = []
        # SHA-256 of a stored file to the bytes the CDN sends instead, to simulate corruption in transit.
        self.replacements: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._commit_counter = 0
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class("cdn"))
        # A short poll interval (in seconds) makes stop() return quickly.
        self._threads = [threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                         for server in (self._hub, self._cdn)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> "FakeHub":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # Repo content -------------------------------------------------------------------------------

    def push(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit `files` on top of `branch` (creating the repo when needed) and return the commit hash."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, FakeRepo())
            parent = repo.refs.get(branch)
            content = dict(repo.commits[parent]) if parent else {}
            content.update(files)
            self._commit_counter += 1
            digest = hashlib.sha1(f"{repo_id} {parent} {self._commit_counter}".encode())
            for name in sorted(content):
                digest.update(name.encode() + hashlib.sha256(content[name]).digest())
            commit = digest.hexdigest()
            repo.commits[commit] = content
            repo.refs[branch] = commit
            return commit

    def push_folder(self, repo_id: str, folder: Path, branch: str = "main") -> str:
        files = {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()}
        return self.push(repo_id, files, branch)

    def corrupt(self, content: bytes) -> None:
        """Make the CDN send altered bytes of the same length for the stored file `content`."""
        altered = bytearray(content)
        altered[len(altered) // 2] ^= 0xFF
        self.replacements[hashlib.sha256(content).hexdigest()] = bytes(altered)

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def find_blob(self, sha256: str) -> bytes | None:
        for repo in self.repos.values():
            for files in repo.commits.values():
                for content in files.values():
                    if hashlib.sha256(content).hexdigest() == sha256:
                        return content
        return None

    def _handler_class(self, server_name: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - the base class names it so
                pass

            def do_HEAD(self):
                hub._record(server_name, "HEAD", self.path)
                hub._route_get(self, server_name, send_body=False)

            def do_GET(self):
                hub._record(server_name, "GET", self.path)
                hub._route_get(self, server_name, send_body=True)

            def do_POST(self):
                hub._record(server_name, "POST", self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                hub._route_post(self, body)

        return Handler

    def _record(self, server: str, method: str, path: str) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(server, method, path))

    # GET and HEAD -------------------------------------------------------------------------------

    def _route_get(self, handler, server_name: str, send_body: bool) -> None:
        path = urlsplit(handler.path).path
        if server_name == "cdn":
            match = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
            content = self.find_blob(match.group(1)) if match else None
            if content is None:
                return _send(handler, 404, b"not found")
            content = self.replacements.get(match.group(1), content)
            return _send(handler, 200, content, {"Content-Type": "application/octet-stream"}, send_body)

        match = RESOLVE_ROUTE.match(path)
        if not match:
            return _send_error(handler, 404, "RepoNotFound", "no such route")
        repo = self.repos.get(unquote(match.group("repo")))
        if repo is None:
            return _send_error(handler, 404, "RepoNotFound", "Repository not found")
        revision = unquote(match.group("revision"))
        commit = repo.refs.get(revision) or (revision if revision in repo.commits else None)
        if commit is None:
            return _send_error(handler, 404, "RevisionNotFound", "Invalid rev id")
        name = unquote(match.group("path"))
        content = repo.commits[commit].get(name)
        if content is None:
            return _send_error(handler, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})

        if name.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(content).hexdigest()
            headers = {"X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content)),
                       "ETag": f'"{git_blob_sha1(content)}"', "Location": f"{self.cdn_url}/blobs/{sha256}"}
            return _send(handler, 302, b"", headers, send_body)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(content)}"',
                   "Content-Type": "application/json" if name.endswith(".json") else "text/plain"}
        return _send(handler, 200, content, headers, send_body)

    # POST ---------------------------------------------------------------------------------------

    def _route_post(self, handler, body: bytes) -> None:
        path = urlsplit(handler.path).path
        if path == "/api/validate-yaml":
            return _send_json(handler, 200, {"errors": [], "warnings": []})
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo_id in self.repos:
                return _send_json(handler, 409, {"error": "You already created this model repo"})
            self.repos[repo_id] = FakeRepo()
            return _send_json(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

        match = API_ROUTE.match(path)
        if not match or unquote(match.group("repo")) not in self.repos:
            return _send_error(handler, 404, "RepoNotFound", "Repository not found")
        repo_id = unquote(match.group("repo"))
        branch = unquote(match.group("revision"))
        if match.group("action") == "preupload":
            files = json.loads(body)["files"]
            modes = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                     for item in files]
            return _send_json(handler, 200, {"files": modes, "commitOid": self.repos[repo_id].refs.get(branch)})

        files = {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":
                return _send_json(handler, 400, {"error": f"operation {item['key']} is not supported here"})
        commit = self.push(repo_id, files, branch)
        return _send_json(handler, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                                         "pullRequestUrl": None})


def _send(handler, status: int, body: bytes, headers: dict[str, str] | None = None, send_body: bool = True) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if send_body:
        handler.wfile.write(body)


def _send_json(handler, status: int, data: dict) -> None:
    _send(handler, status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def _send_error(handler, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    _send(handler, status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                  "Content-Type": "application/json", **(headers or {})}, send_body=handler.command != "HEAD")
