"""A Hugging Face Hub on 127.0.0.1 for tests: the part of its HTTP API that huggingface_hub uses to resolve
and download, answered from repositories held in memory, so `huggingface_hub` itself does the work.

- GET /api/models/{repo}[/revision/{rev}]: model_info (commit sha, file list);
- HEAD and GET /{repo}/resolve/{rev}/{path}: a file, with X-Repo-Commit, ETag and Content-Length;
- unknown repositories, revisions and files: 404 with the Hub's X-Error-Code.

`commit(repo, files)` adds a commit on `main`; `replace(repo, path, data)` changes a file's bytes in place
(what a compromised or rewritten upstream would serve under the same commit)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self) -> None:
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> path -> bytes
        self.requests: list[str] = []  # "METHOD path" of every request, in order
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                hub._answer(self, body=True)

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def commit(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        sha = hashlib.sha1(repr(sorted((p, hashlib.sha256(d).hexdigest()) for p, d in files.items())).encode()
                           + str(len(self.commits.get(repo, {}))).encode()).hexdigest()
        self.commits.setdefault(repo, {})[sha] = dict(files)
        self.refs.setdefault(repo, {})[branch] = sha
        return sha

    def replace(self, repo: str, path: str, data: bytes) -> None:
        for files in self.commits[repo].values():
            if path in files:
                files[path] = data

    def _commit_of(self, repo: str, revision: str) -> str | None:
        if revision in self.refs.get(repo, {}):
            return self.refs[repo][revision]
        return revision if revision in self.commits.get(repo, {}) else None

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        info = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
        resolve = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if info and handler.command == "GET":
            repo, revision = info.group(1), info.group(2) or "main"
            if repo not in self.commits:
                return self._error(handler, "RepoNotFound", body)
            sha = self._commit_of(repo, revision)
            if sha is None:
                return self._error(handler, "RevisionNotFound", body)
            data = json.dumps({"id": repo, "modelId": repo, "sha": sha, "private": False,
                               "siblings": [{"rfilename": p} for p in sorted(self.commits[repo][sha])]}).encode()
            return self._send(handler, data, {"Content-Type": "application/json"}, body)
        if resolve:
            repo, revision, name = resolve.groups()
            if repo not in self.commits:
                return self._error(handler, "RepoNotFound", body)
            sha = self._commit_of(repo, revision)
            if sha is None:
                return self._error(handler, "RevisionNotFound", body)
            if name not in self.commits[repo][sha]:
                return self._error(handler, "EntryNotFound", body)
            data = self.commits[repo][sha][name]
            return self._send(handler, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                              "Content-Type": "application/octet-stream"}, body)
        return self._error(handler, "RepoNotFound", body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, data: bytes, headers: dict[str, str], body: bool) -> None:
        handler.send_response(200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def _error(handler: BaseHTTPRequestHandler, code: str, body: bool) -> None:
        data = json.dumps({"error": code}).encode()
        handler.send_response(404)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)
