"""What keeps other web pages out of the catsdogs web apps (`catsdogs serve`, `catsdogs review`).

A server on 127.0.0.1 is out of reach of other machines, not of the web pages open in the user's
browser. `protect` adds to an app:

- a Host allow-list: a page that makes its own DNS name resolve to 127.0.0.1 (DNS rebinding)
  becomes same-origin with the server, but its requests carry its name in Host, and only the
  server's own names are answered (Starlette's TrustedHostMiddleware answers in plain text and
  cannot take any IP address of the machine);
- an Origin check: a state-changing request that a browser sends from another origin (a form, a
  fetch) carries that origin and is refused. Clients that send no Origin (curl, TF Serving
  clients, Python) are not web pages and pass;
- headers on every answer: no framing (which would let a page click or type into the app), a
  Content-Security-Policy that runs the app's own scripts and no inline code (but on /docs, which
  Swagger UI needs), no MIME sniffing, no Referer;
- for review, a token: `TokenGate`.
"""

import html
import ipaddress
import re
import secrets
import urllib.parse

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

from catsdogs.apps.web.server import LOOPBACK_HOSTS
from catsdogs.config.serve import allowed_host

ANY_ADDRESS = ("0.0.0.0", "::", "")  # --host values that listen on every address of the machine
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # the methods that change nothing
TOKEN_PARAMETER = "token"

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
# The API documentation's pages need a little more: Swagger UI (/docs) is configured by an inline
# script, ReDoc (/redoc) styles itself with <style> elements it writes. ReDoc, which renders the
# description as HTML, gets no inline script at all.
PAGE_POLICIES = {"/docs": f"{CONTENT_SECURITY_POLICY}; script-src 'self' 'unsafe-inline'",
                 "/redoc": f"{CONTENT_SECURITY_POLICY}; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:"}
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")

TOKEN_PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>catsdogs review</title>
<p>This page opens from the address that <code>catsdogs review</code> printed when it started, the one that
ends in <code>?token=…</code>: open that address (in this browser, it lets you in until the browser closes).</p>
</html>
"""


def markdown_text(name):
    """A name (of a model, a run, a class) as literal text in Markdown that is rendered as HTML,
    such as the OpenAPI description /redoc shows: HTML-escaped, Markdown's punctuation backslashed.

    Args:
        name: any string; a folder name may hold `<`, a backtick or `*`.

    Returns:
        the Markdown that shows `name` as it is.
    """
    return html.escape(MARKDOWN_PUNCTUATION.sub(r"\\\1", str(name)))


def _host_name(host):
    """The host of a Host header (host[:port]), as `allowed_host` writes it; None if it is not
    host[:port]."""
    try:
        parts = urllib.parse.urlsplit(f"//{host}")
        parts.port  # a port that is not a number raises here
    except ValueError:
        return None
    if not parts.hostname or "@" in host or parts.path or parts.query or parts.fragment:
        return None
    return _ip_address(parts.hostname) or parts.hostname


def _ip_address(name):
    """An IP address in its usual form, or None for a name."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


class AllowedHosts:
    """The names a server answers to: loopback, the address it listens on, and the names allowed.

    Listening on every address (0.0.0.0, ::), it answers to any IP address: a browser sends one
    in Host only when its address bar holds it, which no rebinding page can arrange.
    """

    def __init__(self, bound_host, names=()):
        """Args:
            bound_host: the address the server listens on (--host).
            names: more host names or IP addresses, as `allowed_host` writes them.
        """
        self.any_address = bound_host in ANY_ADDRESS
        bound = () if self.any_address else (allowed_host(bound_host),)
        self.names = frozenset((*LOOPBACK_HOSTS, *bound, *names))

    def allow(self, host):
        """Whether a Host header names this server."""
        name = _host_name(host)
        return name in self.names or (self.any_address and name is not None and _ip_address(name) is not None)

    def refusal(self, host):
        """Why a request with this Host header is refused."""
        names = ", ".join(sorted(self.names))
        more = " or any IP address of this machine" if self.any_address else ""
        return (f"Host {host!r} is not one of this server's names ({names}{more}): refused, so that no web page can "
                f"reach the server under a DNS name of its own (DNS rebinding). To reach it under this name, start "
                f"it with --allowed-host {_host_name(host) or 'NAME'}")


class SameOriginGuard:
    """ASGI middleware: 403 and a JSON error for a request whose Host is not the server's, and for
    a state-changing request whose Origin is another site's."""

    def __init__(self, app, allowed_hosts):
        """Args:
            app: the ASGI app to guard.
            allowed_hosts: `AllowedHosts`.
        """
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        refusal = None
        if not self.allowed_hosts.allow(host):
            refusal = self.allowed_hosts.refusal(host)
        elif scope["method"] not in SAFE_METHODS and origin is not None and not _same_origin(origin, host):
            refusal = (f"a {scope['method']} from the web page of another origin ({origin}) is refused: the server "
                       f"takes them from its own pages and from clients that are not browsers")
        if refusal:
            return await JSONResponse({"error": refusal}, 403)(scope, receive, send)
        await self.app(scope, receive, send)


def _same_origin(origin, host):
    """Whether an Origin header is the origin that this Host header belongs to.

    A browser writes the port in both exactly when it is not its scheme's default, so the two are
    compared as written; the scheme is not compared, so that a TLS proxy in front still works.
    """
    try:
        parts = urllib.parse.urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower() and not parts.path


class SecurityHeaders:
    """ASGI middleware: `SECURITY_HEADERS` and a Content-Security-Policy on every answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = PAGE_POLICIES.get(scope["path"], CONTENT_SECURITY_POLICY)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {**SECURITY_HEADERS, "Content-Security-Policy": policy}.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenGate:
    """ASGI middleware: every route requires the token, as Jupyter's do.

    The token comes in the address printed at start-up (/?token=...); the page's address with
    the right token sets it in a cookie (HttpOnly, SameSite=Strict: never sent with a request
    another site starts) and redirects to the address without it. Scripts may send it as the
    `token` query parameter or as `Authorization: Bearer TOKEN`. Without it: 403, a JSON error, or
    for the page a short HTML page that says which address to open.
    """

    def __init__(self, app, token):
        """Args:
            app: the ASGI app to guard.
            token: the secret (`secrets.token_urlsafe`).
        """
        self.app = app
        self.token = token.encode()

    def matches(self, given):
        return given is not None and secrets.compare_digest(given.encode(), self.token)  # constant time

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = HTTPConnection(scope)
        # Cookies are shared by every port of a host: one per port, for reviews on several ports.
        cookie = f"catsdogs-review-{(scope.get('server') or ('', 'default'))[1]}"
        in_query = request.query_params.get(TOKEN_PARAMETER)
        if scope["path"] == "/" and scope["method"] == "GET" and self.matches(in_query):
            query = request.url.remove_query_params(TOKEN_PARAMETER).query
            response = RedirectResponse(f"/?{query}" if query else "/", 303)
            response.set_cookie(cookie, self.token.decode(), httponly=True, samesite="strict")
            return await response(scope, receive, send)
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if any(self.matches(given) for given in (request.cookies.get(cookie), in_query,
                                                 bearer if scheme.lower() == "bearer" else None)):
            return await self.app(scope, receive, send)
        if scope["path"] == "/":
            return await HTMLResponse(TOKEN_PAGE, 403)(scope, receive, send)
        error = (f"this review server needs its token: open the address it printed (…/?{TOKEN_PARAMETER}=…) in the "
                 f"browser, or send ?{TOKEN_PARAMETER}=TOKEN or 'Authorization: Bearer TOKEN'")
        await JSONResponse({"error": error}, 403)(scope, receive, send)


def protect(app, host, allowed_hosts=(), token=None):
    """Adds the Host allow-list, the Origin check, the security headers and, with a token, the
    token to an app. Call it after the app's other middleware: these run before them.

    Args:
        app: the FastAPI app.
        host: the address the server listens on (--host).
        allowed_hosts: more names it answers to (`ServeSettings.allowed_hosts`).
        token: the token every request needs (`TokenGate`), or None.
    """
    if token is not None:
        app.add_middleware(TokenGate, token=token)
    app.add_middleware(SameOriginGuard, allowed_hosts=AllowedHosts(host, allowed_hosts))
    app.add_middleware(SecurityHeaders)
