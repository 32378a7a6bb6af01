"""A minimal local stand-in for the Hugging Face Hub's HTTP API (loopback only), enough for
``create_repo``, ``upload_folder``/``push_to_hub`` and ``from_pretrained``/``snapshot_download``."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class MockHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", headers=None, content_type="application/json"):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def do_POST(self):  # noqa: N802
                path, body = unquote(urlparse(self.path).path), self._body()
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo = f"{data.get('organization') or 'tester'}/{data['name']}" if "/" not in data["name"] else data["name"]
                    hub.repos.setdefault(repo, {})
                    hub.commits.setdefault(repo, "0" * 40)
                    return self._send(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/(.+?)/preupload/(.+)", path)
                if m:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                m = re.fullmatch(r"/api/models/(.+?)/commit/(.+)", path)
                if m:
                    repo = m.group(1)
                    files = hub.repos.setdefault(repo, {})
                    for line in body.decode().splitlines():
                        entry = json.loads(line)
                        if entry["key"] == "file":
                            files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                        elif entry["key"] == "deletedFile":
                            files.pop(entry["value"]["path"], None)
                    sha = hashlib.sha1(json.dumps(sorted((k, len(v)) for k, v in files.items())).encode()
                                       + body).hexdigest()
                    hub.commits[repo] = sha
                    return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}",
                                            "commitOid": sha, "success": True})
                return self._send(404, {"error": f"no route {path}"})

            def _get(self):
                path = unquote(urlparse(self.path).path)
                if path == "/api/whoami-v2":
                    return self._send(200, {"type": "user", "name": "tester", "fullname": "Tester", "orgs": [],
                                            "auth": {"accessToken": {"displayName": "fake", "role": "write"}}})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if m:
                    repo = m.group(1)
                    if repo not in hub.repos:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    return self._send(200, {"id": repo, "modelId": repo, "sha": hub.commits[repo], "private": False,
                                            "siblings": [{"rfilename": f} for f in sorted(hub.repos[repo])]})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path)
                if m:
                    files = hub.repos.get(m.group(1), {})
                    return self._send(200, [{"type": "file", "path": f, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                                            for f, v in sorted(files.items())])
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    repo, filename = m.group(1), m.group(3)
                    if repo not in hub.repos:
                        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
                    if filename not in hub.repos[repo]:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    data = hub.repos[repo][filename]
                    return self._send(200, data, {"X-Repo-Commit": hub.commits[repo],
                                                  "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                      content_type="application/octet-stream")
                return self._send(404, {"error": f"no route {path}"})

            do_GET = _get  # noqa: N815
            do_HEAD = _get  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
