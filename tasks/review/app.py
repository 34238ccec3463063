"""The review web app (Starlette + uvicorn + jinja2): one page, keyboard first, each decision saved at once.

``synthloop review`` calls ``serve(params)``; the flow may run ``BackgroundServer`` while its run is paused and
pass ``on_complete=tasks.review.prefect_input.resume_callback(flow_run_id)``.

Security (docs RELIABILITY.md 16–21):
- binds 127.0.0.1 by default; every request's Host header must be the bound ``host:port`` (``localhost:port`` too
  for a loopback bind), else 421 — a DNS-rebinding page cannot talk to the server;
- every POST needs the per-server CSRF token (embedded in the page) in ``X-CSRF-Token``, a JSON body, and a
  same-origin ``Origin`` when the browser sends one, else 403 and nothing changes;
- ``GET /image/<path>`` serves files that resolve inside the generate folder only (``..``, encoded ``..``,
  absolute paths, symlinks leaving the folder → 404); only these image routes answer CORS, and only to the one
  configured ``review.labelstudio_origin`` (never ``*``; the decision API never sends CORS headers);
- each save names the item version it saw (and may name the image ``sha256`` it saw); a stale one, or one about an
  image that was regenerated since, gets 409 and both attempts are in audit.jsonl;
- corrections.csv is rewritten atomically (tasks.io), the audit log is append-only (``tasks.review.ReviewStore``);
- user text reaches the page as JSON and is rendered with ``textContent``; the template is autoescaped, and a
  Content-Security-Policy forbids inline scripts.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tasks.params import Params
from tasks.review.estimates import store_estimates
from tasks.review.modes import apply_mode
from tasks.review.pages import (DEFAULT_LIMIT, batch_choices, class_keys, decide_each, error_status, item_page,
                                parse_query, undo_each)
from tasks.review.queue import flagged_classes
from tasks.review.status import review_url
from tasks.review.store import Conflict, ReviewError, ReviewStore, open_store

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent  # templates/ and static/ beside this module
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def resolve_image(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None if it leaves ``root`` (after symlinks) or is no image."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")) or "\\" in relative:
        return None
    root = root.resolve()
    try:
        target = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file() or target.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return target


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host header values the server answers: the bound host:port (and localhost:port for a loopback bind)."""
    shown = f"[{host}]" if ":" in host else host
    hosts = {f"{shown}:{port}"}
    try:
        if ipaddress.ip_address(host).is_loopback:
            hosts.add(f"localhost:{port}")
    except ValueError:
        pass
    return frozenset(hosts)


class HostGuard:
    """ASGI middleware: refuse a foreign Host header (421) and add security headers to every response."""

    def __init__(self, app: Any, hosts: frozenset[str]):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        if host not in self.hosts:
            log.warning("refused request with Host %r (expected one of %s)", host, sorted(self.hosts))
            await PlainTextResponse("misdirected request: wrong Host header", status_code=421)(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# One class of ~130 lines: the routes are one table over one store, one CSRF token and one completion hook;
# each handler is a few lines, and splitting the table would hide which requests change state.
class ReviewApp:
    """Request handlers around one ReviewStore; ``starlette()`` builds the ASGI app."""

    def __init__(self, params: Params, store: ReviewStore, *, host: str, port: int, reviewer: str | None,
                 on_complete: Callable[[dict[str, Any]], None] | None):
        self.params = params
        self.store = store
        self.url = review_url(host, port)
        self.hosts = allowed_hosts(host, port)
        self.reviewer = reviewer or ""
        self.on_complete = on_complete
        self.completed = False
        self.csrf_token = secrets.token_urlsafe(32)
        self.image_root = Path(params.paths.generate)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS / "templates"),
                                            autoescape=jinja2.select_autoescape(["html"]))
        # predict's quality gate: a banner per class whose generated images lie outside the real manifold.
        self.quality_flags = flagged_classes(params.paths.predict, store.classes)

    def starlette(self) -> Any:
        routes = [
            Route("/", self.page),
            Route("/api/items", self.items),
            Route("/api/status", self.status),
            Route("/api/decide", self.decide, methods=["POST"]),
            Route("/api/decide-batch", self.decide_batch, methods=["POST"]),
            Route("/api/undo", self.undo, methods=["POST"]),
            Route("/api/undo-batch", self.undo_batch, methods=["POST"]),
            Route("/api/accept-confident", self.accept_confident, methods=["POST"]),
            Route("/image/{path:path}", self.image, methods=["GET", "HEAD", "OPTIONS"]),
            Mount("/static", StaticFiles(directory=ASSETS / "static"), name="static"),
        ]
        return HostGuard(Starlette(routes=routes), self.hosts)

    # ---- reads
    async def page(self, request: Request) -> Response:
        classes = list(self.store.classes)
        config = {"classes": classes, "keys": class_keys(classes), "mode": self.params.review.mode,
                  "threshold": self.params.review.confidence_threshold, "blind": self.params.review.blind,
                  "page_size": DEFAULT_LIMIT}
        budget = await run_in_threadpool(store_estimates, self.store, self.params)
        html = self.templates.get_template("review.html").render(
            csrf_token=self.csrf_token, config=config, default_reviewer=self.reviewer,
            threshold=self.params.review.confidence_threshold, budget_line=budget["budget_line"],
            quality_flags=self.quality_flags)
        return HTMLResponse(html)

    async def items(self, request: Request) -> Response:
        """One page of item views (``pages.item_page``): never the whole queue."""
        try:
            query = parse_query(request.query_params, self.store.classes)
        except ReviewError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        page = await run_in_threadpool(item_page, self.store, query)
        return JSONResponse({**page, "progress": self.store.progress()})

    async def status(self, request: Request) -> Response:
        est = await run_in_threadpool(store_estimates, self.store, self.params)  # budget, audited error (REVIEW-A)
        budget = {k: est[k] for k in ("budget", "budget_items", "decided_in_budget", "beyond_budget_policy",
                                      "budget_line")}
        return JSONResponse({**self.store.progress(), "url": self.url, "mode": self.params.review.mode,
                             "budget": {**budget, "remaining_error": est["audit"]["remaining"]}})

    async def image(self, request: Request) -> Response:
        cors = self._cors(request)
        if request.method == "OPTIONS":  # a preflight: only the allowed origin learns it may GET
            return Response(status_code=204 if "access-control-allow-origin" in cors else 403, headers=cors)
        path = resolve_image(self.image_root, request.path_params["path"])
        if path is None:
            return PlainTextResponse("not found", status_code=404, headers=cors)
        return FileResponse(path, headers=cors)

    def _cors(self, request: Request) -> dict[str, str]:
        """CORS headers for an image request from the configured Label Studio origin; none for anyone else."""
        origin, allowed = request.headers.get("origin"), self.params.review.labelstudio_origin
        headers = {"vary": "Origin"}
        if allowed and origin == allowed:
            headers.update({"access-control-allow-origin": allowed, "access-control-allow-methods": "GET, HEAD",
                            "cross-origin-resource-policy": "cross-origin"})
        return headers

    # ---- writes
    async def decide(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        seen_sha = body.get("sha256")  # the image the page showed: 409 if it changed since (when the page sends it)
        return await self._apply(body, lambda: self.store.decide(
            str(body.get("file_name", "")), str(body.get("label", "")), version=_version(body),
            reviewer=body.get("reviewer"), note=body.get("note") or "",
            sha256=None if seen_sha is None else str(seen_sha), context=_context(body, "single")))

    async def decide_batch(self, request: Request) -> Response:
        """Several decisions (the grid's selection): each item saved or refused on its own, one result each."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            choices = batch_choices(body)
        except ReviewError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return await self._apply(body, lambda: decide_each(self.store, choices, reviewer=body.get("reviewer"),
                                                           context=_context(body, "grid")), key=None)

    async def undo_batch(self, request: Request) -> Response:
        """Undo several items (the grid's last batch); each undone or refused on its own, one result each."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        entries = body.get("items")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return JSONResponse({"error": "items must be a list of {file_name, version}"}, status_code=400)

        return await self._apply(body, lambda: undo_each(self.store, entries, reviewer=body.get("reviewer")),
                                 key=None)

    async def undo(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        return await self._apply(body, lambda: self.store.undo(
            str(body.get("file_name", "")), version=_version(body), reviewer=body.get("reviewer")))

    async def accept_confident(self, request: Request) -> Response:
        """Accept the prediction of every waiting item with confidence >= threshold (the page confirms first)."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            threshold = float(body.get("threshold"))
        except (TypeError, ValueError):
            return JSONResponse({"error": "threshold must be a number"}, status_code=400)
        if not 0.0 <= threshold <= 1.0:
            return JSONResponse({"error": "threshold must lie in [0, 1]"}, status_code=400)

        def bulk() -> dict[str, Any]:
            store = self.store
            # calibrated confidence; audit-sample items always get a look of their own (tasks.review.budget)
            picks = [(f, store.items[f]["pred_label"], store.versions.get(f, 0)) for f in store.waiting()
                     if float(store.items[f]["confidence_calibrated"]) >= threshold and not store.items[f]["audit"]]
            store.decide_many(picks, reviewer=body.get("reviewer"), action="bulk-accept",
                              note=f"bulk accept: calibrated confidence >= {threshold}")
            return {"accepted": len(picks)}

        return await self._apply(body, bulk, key=None)

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        """The JSON body of a state-changing request, or a 403/400 response (CSRF, origin, content type)."""
        token = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            return JSONResponse({"error": "missing or invalid CSRF token"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and origin.removeprefix("http://") not in self.hosts:
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "expected application/json"}, status_code=403)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        return body

    async def _apply(self, body: dict[str, Any], change: Callable[[], Any], key: str | None = "item") -> Response:
        try:
            result = await run_in_threadpool(change)
        except Conflict as err:
            return JSONResponse({"error": str(err), "item": err.item}, status_code=409)
        except ReviewError as err:
            return JSONResponse({"error": str(err)}, status_code=error_status(err))
        progress = self.store.progress()
        payload = {key: result, "progress": progress} if key else {**result, "progress": progress}
        return JSONResponse(payload, background=self._completion_task(progress, body.get("reviewer")))

    def _completion_task(self, progress: dict[str, int], reviewer: Any) -> BackgroundTask | None:
        """Run on_complete once, after the response, when the last waiting item has been decided."""
        if progress["waiting"] or self.completed or self.on_complete is None:
            return None
        self.completed = True
        summary = {**progress, "reviewer": str(reviewer or ""), "url": self.url}
        return BackgroundTask(run_in_threadpool, _safe_call, self.on_complete, summary)




def _context(body: dict[str, Any], view: str) -> dict[str, Any]:
    """How the person decided, for the audit entry: blind (labels hidden) or not, one item or the grid."""
    return {"blind": body.get("blind") is True, "view": view}


def _version(body: dict[str, Any]) -> int:
    try:
        return int(body.get("version"))
    except (TypeError, ValueError):
        raise ReviewError("version (the item version you saw) must be an integer") from None


def _safe_call(callback: Callable[[dict[str, Any]], None], summary: dict[str, Any]) -> None:
    try:
        callback(summary)
    except Exception:  # the review itself is saved; a failed resume must not turn into a 500 for the person
        log.exception("on_complete callback failed; resume the flow run from the Prefect UI")


def create_app(params: Params, *, reviewer: str | None = None,
               on_complete: Callable[[dict[str, Any]], None] | None = None,
               host: str | None = None, port: int | None = None) -> Any:
    """The review ASGI app for ``params`` (queue from predictions, decisions under params.paths.review).

    ``host``/``port`` default to ``params.review``; they must be the address the server is bound to (Host check).
    In accept-confident mode the confident, agreeing items are accepted first, so the page shows only the rest.
    """
    store = open_store(params, predictions=params.paths.predict, generated=params.paths.generate,
                       out_dir=params.paths.review)
    if params.review.mode == "accept-confident":
        apply_mode(store, params, params.paths.generate)
    app = ReviewApp(params, store, host=host or params.review.host,
                    port=params.review.port if port is None else port, reviewer=reviewer, on_complete=on_complete)
    return app.starlette()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class BackgroundServer:
    """The review app served by uvicorn in a daemon thread (for the paused flow and for tests)."""

    def __init__(self, params: Params, *, host: str | None = None, port: int | None = None,
                 reviewer: str | None = None, on_complete: Callable[[dict[str, Any]], None] | None = None):
        host = host or params.review.host
        self._sock = _bind(host, params.review.port if port is None else port)
        self.port = self._sock.getsockname()[1]  # port 0 → the free port the OS picked
        self.url = review_url(host, self.port)
        app = create_app(params, reviewer=reviewer, on_complete=on_complete, host=host, port=self.port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"review server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(params: Params, host: str | None = None, port: int | None = None, *, reviewer: str | None = None,
          on_complete: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Serve the review app until Ctrl-C (``synthloop review``); prints the URL to open."""
    host = host or params.review.host
    sock = _bind(host, params.review.port if port is None else port)
    url = review_url(host, sock.getsockname()[1])
    app = create_app(params, reviewer=reviewer, on_complete=on_complete, host=host, port=sock.getsockname()[1])
    # The person needs the URL on their terminal whatever the log level: this is an entry point, like the CLI.
    print(f"synthloop review: open {url}  (Ctrl-C to stop; then `dvc repro` or resume the flow)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
