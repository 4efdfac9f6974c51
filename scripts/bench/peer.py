"""The peer: the same engines served by Ray Serve with `@serve.batch`, over HTTP.

Built on `model_manager.engines.registry.build_engine` with the very `ModelSpec`s the bus
serves, so voicebus and the peer differ in serving only: the bus's ZeroMQ agents, model
manager and cost-model batch sizes against Ray Serve's HTTP proxy, replica actor and
`@serve.batch` queue. Like the bus, the peer:
- batches up to the bus's `max_batch_size` requests, one batch at a time per model instance
  (`max_concurrent_batches` = the spec's `instances`);
- streams TTS by splitting text with the bus's own splitter (agents.services), queueing the
  first chunk alone and the rest at once when it is done, sending each as soon as it and
  those before it are done;
- runs the blocking engine call off the event loop, so requests keep queueing meanwhile.
Its batching wait (`batch_wait_timeout_s`) is a parameter, recorded in the report.

Optional: Ray comes with `pip install -e ".[peer]"` and is never needed by the tests;
`unavailable()` says why the peer cannot run.

Wire format (HTTP/1.1, keep-alive): POST /stt, body raw float32 16 kHz samples -> JSON
{"text"}; POST /tts, JSON {"text"} -> raw float32 PCM; POST /tts?stream=1 -> frames of
<u32 length><PCM>, length 0xFFFFFFFF for a failed chunk; GET /<task>/stats -> {"histogram"}.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import struct
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.load import Outcome
from bench.workload import ROOT, Mode, Task, Workload
from model_manager.config import ModelSpec

if TYPE_CHECKING:
    from model_manager.engines.base import Result
    from model_manager.engines.kokoro.engine import Speech

FAILED_CHUNK = 0xFFFFFFFF
TTS_RATE = 24_000
CLIENT_TIMEOUT_S = 180.0


def unavailable() -> str | None:
    """None when Ray Serve can be imported; else the reason and the fix."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        return f"Ray Serve is not installed ({exc.name}): pip install -e '.[peer]'"
    return None


class EngineServer:
    """The Ray Serve deployment body: one engine, batched with @serve.batch.

    Defined without Ray's decorators so that this module imports without Ray; `Peer` wraps
    `infer` in `serve.batch` and the class in `serve.deployment` at start-up.
    """

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch

        from model_manager.engines.registry import build_engine

        # Ray pins a replica to OMP_NUM_THREADS=<its num_cpus>; give it the threads the bus's
        # model manager gets, or the comparison would be about thread counts.
        torch.set_num_threads(threads)
        self.engine = build_engine(spec)
        self.histogram: Counter[int] = Counter()

    async def infer(self, requests: list[Any]) -> list[Result]:
        """Called with one request; `serve.batch` gathers the calls and passes the list."""
        self.histogram[len(requests)] += 1
        return await asyncio.to_thread(self.engine.run_batch, requests)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        if request.method == "GET":
            return JSONResponse({"histogram": {str(k): v for k, v in sorted(self.histogram.items())}})
        if self.engine.task == "stt":
            audio = np.frombuffer(await request.body(), dtype="<f4").astype(np.float32)
            result = await self.infer(self.engine.prepare({"audio": audio}))
            return JSONResponse({"text": result.text})
        from dataclasses import replace

        from model_manager.engines.kokoro.text_split import split_for_streaming

        prepared = self.engine.prepare(await request.json())
        if request.query_params.get("stream") != "1":
            result = await self.infer(prepared)
            return Response(_pcm(result), media_type="application/octet-stream")
        # As the bus does: the first chunk alone, then the rest at once (sharing batches).
        pieces = [replace(prepared, text=text) for text in split_for_streaming(prepared.text)] or [prepared]
        tasks = [asyncio.ensure_future(self.infer(pieces[0]))]

        async def frames() -> Any:
            for index in range(len(pieces)):
                try:
                    pcm = _pcm(await tasks[index])
                    frame = struct.pack("<I", len(pcm)) + pcm
                except Exception:  # a failed chunk is an error frame; later chunks still go out
                    frame = struct.pack("<I", FAILED_CHUNK)
                if index == 0:
                    tasks.extend(asyncio.ensure_future(self.infer(piece)) for piece in pieces[1:])
                yield frame

        return StreamingResponse(frames(), media_type="application/octet-stream")


def _run_applications(serve: Any, applications: list[tuple[Any, str]]) -> None:
    """Deploy every (application, task) at /<task>, all at once where this Ray has
    `serve.run_many` (the replicas then load their models side by side), else in turn."""
    try:
        from ray.serve.api import RunTarget
    except ImportError:
        for application, task in applications:
            serve.run(application, name=task, route_prefix=f"/{task}")
        return
    targets = [RunTarget(app, name=task, route_prefix=f"/{task}") for app, task in applications]
    serve.run_many(targets)


def _pcm(speech: Speech) -> bytes:
    return np.asarray(speech.audio, dtype="<f4").tobytes()


class Peer:
    """Ray (local, started here) serving one `EngineServer` app per task, on a free port."""

    def __init__(self, specs: dict[Task, ModelSpec], max_batch_size: int, batch_wait_s: float) -> None:
        import logging

        import ray
        import torch
        from ray import serve

        from model_manager.engines.base import resolve_device

        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        self.port = _free_port()
        threads = torch.get_num_threads()
        env = {
            # Workers must import this package (scripts/bench) and the project.
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "scripts"), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
        }
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": env},
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.apps: dict[Task, str] = {}
        applications = []
        for task, spec in specs.items():
            # A share of the GPU, so that every task's replica fits on a one-GPU machine, as
            # the bus's models do; Ray hides the GPU from an actor that asks for none.
            gpus = 1 / len(specs) if resolve_device(spec.device) == "cuda" else 0
            batched = serve.batch(
                max_batch_size=max_batch_size,
                batch_wait_timeout_s=batch_wait_s,
                max_concurrent_batches=spec.instances,
            )(EngineServer.infer)
            server = type(f"{task.upper()}Server", (EngineServer,), {"infer": batched})
            deployment = serve.deployment(
                name=f"{task}-{spec.name}",
                # Room for every client and every stream chunk, so batches form at the
                # replica instead of requests queueing in front of it.
                max_ongoing_requests=512,
                ray_actor_options={"num_cpus": 0, "num_gpus": gpus},
            )(server)
            applications.append((deployment.bind(spec, threads), task))
            self.apps[task] = spec.name
        _run_applications(serve, applications)
        self.settings = {
            "system": f"ray[serve] {ray.__version__}",
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_ms": batch_wait_s * 1000,
            "transport": "HTTP/1.1 keep-alive",
        }

    def connection(self, workload: Workload, mode: Mode) -> PeerConnection:
        return PeerConnection(self.port, workload, mode)

    def histogram(self, task: Task) -> dict[str, int]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", f"/{task}")
            return dict(json.loads(connection.getresponse().read())["histogram"])
        finally:
            connection.close()

    def stop(self) -> None:
        """Stops Ray and everything it started (the cluster is this process's own)."""
        import ray

        ray.shutdown()


class PeerConnection:
    """One HTTP keep-alive client of the peer (see load.Connection)."""

    def __init__(self, port: int, workload: Workload, mode: Mode) -> None:
        self.port = port
        self.workload = workload
        self.mode = mode
        self._http: http.client.HTTPConnection | None = None

    def call(self, item: dict[str, Any]) -> Outcome:
        if self._http is None:
            self._http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT_S)
        task = self.workload.task
        try:
            if task == "stt":
                body = np.asarray(item["audio"], dtype="<f4").tobytes()
                self._http.request("POST", "/stt", body=body)
            else:
                path = "/tts?stream=1" if self.mode == "stream" else "/tts"
                self._http.request("POST", path, body=json.dumps({"text": item["text"]}))
            response = self._http.getresponse()
            if response.status != 200:
                response.read()
                return Outcome(end=time.perf_counter(), error=f"http_{response.status}")
            if task == "stt":
                response.read()
                return Outcome(end=time.perf_counter(), audio_s=self.workload.input_audio_s(item))
            if self.mode != "stream":
                pcm = response.read()
                return Outcome(end=time.perf_counter(), audio_s=len(pcm) / 4 / TTS_RATE)
            return self._read_frames(response)
        except (OSError, http.client.HTTPException) as exc:
            self.close()  # the keep-alive connection is in an unknown state: start again
            return Outcome(end=time.perf_counter(), error=type(exc).__name__)

    @staticmethod
    def _read_frames(response: http.client.HTTPResponse) -> Outcome:
        first: float | None = None
        samples = 0
        failed = None
        while header := response.read(4):
            (length,) = struct.unpack("<I", header)
            if length == FAILED_CHUNK:
                failed = "inference_failed"
                continue
            samples += len(response.read(length)) // 4
            first = first or time.perf_counter()
        return Outcome(end=time.perf_counter(), first=first, audio_s=samples / TTS_RATE, error=failed)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
