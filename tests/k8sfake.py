"""A small local fake of the Kubernetes API for custom objects (TrainJob, PyTorchJob): create, get, delete under
``/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]``, on 127.0.0.1, speaking the JSON the ``kubernetes`` client
sends and reads. Its "controller" is a function the test gives: called with the stored object on every GET, it
sets the object's status (a script of states, or a real run of the job's command: :class:`LocalNodes`).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
                  r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$")


class FakeKube:
    def __init__(self, controller: Callable[[dict], None] | None = None):
        self.objects: dict[tuple, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.controller = controller or (lambda obj: None)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                m = PATH.match(self.path)
                fake.requests.append((self.command, self.path))
                if not m:
                    self._send(404, {"kind": "Status", "code": 404, "message": f"no route {self.path}"})
                    return None
                return m

            def _key(self, m, name=None):
                return m["group"], m["version"], m["ns"], m["plural"], name or m["name"]

            def do_POST(self):
                m = self._route()
                if m is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self._key(m, body["metadata"]["name"])
                with fake.lock:
                    if key in fake.objects:
                        self._send(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                        return
                    body.setdefault("status", {})
                    fake.objects[key] = body
                self._send(201, body)

            def do_GET(self):
                m = self._route()
                if m is None:
                    return
                with fake.lock:
                    obj = fake.objects.get(self._key(m))
                    if obj is not None:
                        fake.controller(obj)
                if obj is None:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                else:
                    self._send(200, obj)

            def do_DELETE(self):
                m = self._route()
                if m is None:
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with fake.lock:
                    obj = fake.objects.pop(self._key(m), None)
                self._send(200 if obj else 404, {"kind": "Status", "code": 200 if obj else 404})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api_client(self):
        from kubernetes import client

        cfg = client.Configuration(host=self.host)
        return client.ApiClient(cfg)


def condition(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message}


class Script:
    """A controller that moves each object one status further on every GET (the last one stays)."""

    def __init__(self, statuses: list[dict]):
        self.statuses, self.seen = statuses, 0

    def __call__(self, obj: dict) -> None:
        obj["status"] = self.statuses[min(self.seen, len(self.statuses) - 1)]
        self.seen += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalNodes:
    """A controller that runs a TrainJob's trainer command for real, as ``numNodes`` "nodes" on this machine:
    one process per node with the rendezvous environment a Trainer pod gets (PET_NNODES, PET_NODE_RANK,
    PET_MASTER_ADDR, PET_MASTER_PORT), the trainer's env (``secretKeyRef`` entries resolved from ``secrets``) and
    ``extra_env``; status Running while they run, then Complete or Failed with the exit codes."""

    def __init__(self, secrets: dict[str, dict[str, str]], extra_env: dict[str, str], cwd: str, log_dir,
                 paths: dict[str, str] | None = None):
        self.secrets, self.extra_env, self.cwd, self.log_dir = secrets, extra_env, cwd, log_dir
        self.paths = paths or {}  # a pod's own paths (its private /tmp) -> where these "nodes" keep them
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.commands: dict[str, list[str]] = {}

    def _env(self, entries: list[dict]) -> dict[str, str]:
        env = {}
        for e in entries:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env

    def __call__(self, obj: dict) -> None:
        name = obj["metadata"]["name"]
        trainer = obj["spec"]["trainer"]
        if name not in self.procs:
            nodes, port = trainer["numNodes"], free_port()
            base = {**os.environ, **self.extra_env, **self._env(trainer.get("env", []))}
            # the image's `python` is this interpreter here
            command = [sys.executable if trainer["command"][0] == "python" else trainer["command"][0],
                       *trainer["command"][1:]]
            for pod_path, here in self.paths.items():
                command = [c.replace(pod_path, here) for c in command]
            self.commands[name] = command
            self.procs[name] = [subprocess.Popen(
                command, cwd=self.cwd, stdout=open(self.log_dir / f"{name}-node{rank}.log", "w"),
                stderr=subprocess.STDOUT,
                env={**base, "PET_NNODES": str(nodes), "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1",
                     "PET_MASTER_PORT": str(port)}) for rank in range(nodes)]
        procs = self.procs[name]
        codes = [p.poll() for p in procs]
        if any(c is None for c in codes):
            obj["status"] = {"jobsStatus": [{"name": "node", "ready": 0, "active": sum(c is None for c in codes),
                                             "succeeded": 0, "failed": 0, "suspended": 0}]}
            return
        if all(c == 0 for c in codes):
            obj["status"] = {"conditions": [condition("Complete", "JobsCompleted", "jobs completed")]}
        else:
            obj["status"] = {"conditions": [condition("Failed", "JobsFailed", f"exit codes {codes}")]}
