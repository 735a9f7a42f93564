"""A TCP proxy that can make a server slow or unreachable on command (the chaos suite puts it
between the sidecars/operator and kube-apiserver).

It forwards bytes only (TLS passes through untouched, so clients keep verifying the real
server's certificate: the API server's certificate covers 127.0.0.1 whatever the port). It
runs its own asyncio loop in a daemon thread; every method is safe to call from any thread.

Modes, switched with :meth:`set_mode`:

* ``pass`` -- forward at once;
* ``delay`` -- hold every chunk of a request ``delay`` seconds before forwarding it (a
  brownout: requests still succeed, slowly, and client timeouts start to bite);
* ``blackhole`` -- accept connections and read requests, forward nothing, answer nothing
  (the worst case for a client without timeouts); requests on connections opened before
  are held until the mode changes;
* ``reset`` -- close every new connection at once (connection refused, as far as HTTP goes).

:meth:`cut` closes every open connection (watches included) whatever the mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal

from refreshbus_testenv.procs import free_port

Mode = Literal["pass", "delay", "blackhole", "reset"]
MODES: tuple[Mode, ...] = ("pass", "delay", "blackhole", "reset")


class FaultProxy:
    """``FaultProxy(port).start()`` listens on 127.0.0.1:``listen_port`` and forwards to
    127.0.0.1:``target_port``. Always :meth:`stop` it."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host, self.target_port = target_host, target_port
        self.listen_port = free_port()
        self.mode: Mode = "pass"
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}"

    def kubeconfig_via(self, kubeconfig: str | Path, path: Path) -> Path:
        """Write to ``path`` a copy of ``kubeconfig`` whose server is this proxy."""
        config = json.loads(Path(kubeconfig).read_text())
        config["clusters"][0]["cluster"]["server"] = self.url
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch mode; ``delay`` (seconds) is used by ``delay`` mode. Connections opened in
        ``blackhole`` mode stay black holes until they are cut (as a half-dead peer's would)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "delay" and delay <= 0:
            raise ValueError("delay mode needs a delay > 0")
        self.mode, self.delay = mode, delay

    def cut(self) -> None:
        """Close every open connection (both sides)."""
        self._call(self._cut())

    # -- the loop's side ---------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            writer.close()
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            self._writers.discard(writer)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self._writers.discard(writer)
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer, delayed=True),
                             self._pipe(up_reader, writer, delayed=False))
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    delayed: bool) -> None:
        """Copy until EOF; requests (client to server) wait out the current delay chunk by
        chunk, in order, so a brownout that starts mid-stream slows a watch as well."""
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if delayed and self.mode == "delay":
                    await asyncio.sleep(self.delay)
                while self.mode == "blackhole" and delayed and not writer.is_closing():
                    await asyncio.sleep(0.1)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
