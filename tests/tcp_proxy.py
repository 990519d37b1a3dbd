"""A TCP proxy on 127.0.0.1 that can be taken down and brought back: the S3 endpoint's outage in
the fault tests and benchmarks/faults.py. moto's server keeps its buckets in memory and cannot be
restarted with them, so the proxy stands in front of it and plays the outage: `down()` closes the
listening socket (new connections are refused) and cuts every open one (kept-alive connections in
boto3's pool break mid-request, as when a NAS reboots); `up()` listens on the same port again."""

from __future__ import annotations

import asyncio
import threading


class TcpProxy:
    def __init__(self, target_port: int, port: int = 0):
        self.target_port, self.port = target_port, port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True).start()
        self.up()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def up(self) -> None:
        async def listen():
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        self._call(listen())

    def down(self) -> None:
        async def close():
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()  # a reset, not a polite close
            await self._server.wait_closed()
        self._call(close())

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._open |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        self._open -= {client_w, server_w}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()  # one side ended: end the other
