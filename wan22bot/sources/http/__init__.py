"""The HTTP source: a small JSON API, Prometheus metrics and a status page, on aiohttp.

Routes (all JSON unless said otherwise):

    GET    /healthz                 200 {status, model_loaded, queue_depth}         (never needs the token)
    GET    /metrics                 Prometheus text
    GET    /api/status              model, device, GPU memory, queue counts, running job + live progress,
                                    last timings
    GET    /api/jobs                list, newest first; ?state=queued,running&source=http&limit=100
    POST   /api/jobs                multipart/form-data: `photo` (file) + optional prompt, negative_prompt,
                                    frames, seed, interpolate, preset, steps -> 202 + Location
    GET    /api/jobs/{id}           one job (404 if unknown)
    DELETE /api/jobs/{id}           cancel: 200 {outcome: cancelled|cancelling}, 404 unknown, 409 final
    GET    /api/jobs/{id}/video     the MP4 (range requests work, so the page can seek)
    GET    /api/jobs/{id}/sidecar   the sidecar JSON written beside the MP4
    GET    /api/events              server-sent events: one `job` event per queue event
    GET    /v/{id}?exp=&sig=        the MP4 through a signed, expiring link (links.py), without the token
    GET    /                        the status page (wan22bot/web/); /web/{file} its assets

Auth: the server binds 127.0.0.1 by default. A bearer token is read from the environment variable
named by `http.token_env`; it is required when `http.host` is not a loopback address (the source
refuses to start without it, and when `http.public_url` is set) and enforced whenever it is set.
Then every route except /healthz, the page and its assets (which hold no data) and signed /v/ links
needs `Authorization: Bearer <token>`; `?token=<token>` in the query is accepted too, for places
that cannot send headers (`<video src>`, EventSource). Without a token, a request that came through
a proxy (forwarding headers) is refused. Before any of that, every request's Host header must name
this server (421 otherwise: DNS rebinding) and state-changing requests must come from its own origin
(403 otherwise: CSRF); see guard.py. The access log writes the path without the query string, so the
token never reaches a log.

Modules: guard (Host, Origin, proxies), auth (token, loopback), uploads (POST /api/jobs), events
(server-sent events), routes (the read/cancel handlers, signed links and the page), server
(HttpSource: app wiring and lifecycle), errors (JSON error answers).

Uploads are streamed with a size cap (413 beyond it) and a deadline for the whole body (408), at most
`http.max_concurrent_uploads` at once (503), refused when the file name holds a control character
(400), checked with `images.check_photo`, the same full decode every source runs (400 with its
sentence), and only then spooled into the queue.
Results are fetched by polling, so a finished http job counts as delivered as soon as it is final.
"""

from .auth import bearer, is_loopback, read_token
from .errors import RequestError, error_response
from .server import HttpSource
from .uploads import clean_filename

__all__ = ["HttpSource", "RequestError", "bearer", "clean_filename", "error_response",
           "is_loopback", "read_token"]
