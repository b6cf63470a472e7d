"""uvicorn, configured so that no client can hold the server: header timeouts, a connection cap,
keep-alive and graceful-shutdown timeouts.

uvicorn has settings for the last three; for request headers it has none (a client that sends
them a byte at a time keeps its connection for ever), so `HeaderTimeoutProtocol` adds one to its
HTTP/1.1 protocol. The body's own timeout is the app's (`app.BodyLimit`), which can answer 408.
"""

import functools
import logging
import signal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses only this machine can reach


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are late.

    The clock starts when the connection opens and again after each response; if the next
    request's headers are not all in after `header_timeout` seconds, the connection is closed.
    """

    def __init__(self, *args, header_timeout, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._start_header_timer()

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_header_timer()

    def connection_lost(self, exc):
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self):
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _stop_header_timer(self):
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self):
        self._header_timer = None
        # IDLE: h11 has not seen a complete request head since the clock started. Any other state
        # means a request is being read or answered, which the app's own timeouts govern.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection whose request headers took over %s s", self.header_timeout)
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, where a second SIGTERM forces the exit (uvicorn forces it on a second
    SIGINT only), as the graceful-shutdown timeout does in any case, and which says when it listens."""

    def __init__(self, config, on_listening=None):
        """Args:
            config: `uvicorn_config`.
            on_listening: called with the port once the server listens, e.g. to log an address.
        """
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started and self.on_listening:  # not started: uvicorn has said why
            self.on_listening(self.servers[0].sockets[0].getsockname()[1])

    def handle_exit(self, sig, frame):
        if self.should_exit and sig == signal.SIGTERM:
            self.force_exit = True
        super().handle_exit(sig, frame)


def uvicorn_config(app, host, port, settings, log_level="info"):
    """The uvicorn configuration for an app and the limits of its `ServeSettings`.

    Args:
        app: the ASGI app.
        host: the address to listen on.
        port: the port; 0 picks a free one.
        settings: `ServeSettings`.
        log_level: uvicorn's log level.

    Returns:
        a `uvicorn.Config`.
    """
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        http=functools.partial(HeaderTimeoutProtocol, header_timeout=settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s)
