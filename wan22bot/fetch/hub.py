"""The two things fetch-models asks the Hugging Face Hub: a file's size and sha256, and its bytes from an offset.

Both go through huggingface_hub's session and URL helpers, so `HF_ENDPOINT`, `HF_TOKEN` and proxy
settings apply as they do for every other Hub client on the machine. Every failure becomes one
sentence naming the file or repository, the Hub address and what to do.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from huggingface_hub import RepoFile, constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session

from ..errors import ModelError
from .catalog import SeedFile

# huggingface_hub 1.x speaks through httpx and 2.x through its fork httpx2 (same API): take the
# exception and timeout classes from whichever its session is made of.
http = importlib.import_module(type(get_session()).__module__.partition(".")[0])
TransportError: type[Exception] = http.TransportError
# A stalled connection must end in an error rather than a hang; 60 s without a byte is generous
# for a CDN, and a resumed run loses nothing.
TIMEOUT = http.Timeout(connect=20.0, read=60.0, write=60.0, pool=20.0)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class HubError(ModelError):
    """The Hub could not be reached, refused, or answered something unusable."""


class RangeRefused(Exception):
    """The server answered 416 to a resume request: the partial file does not fit the remote file."""


@dataclass(frozen=True)
class RemoteFile:
    seed: SeedFile
    size: int
    sha256: str


def endpoint() -> str:
    return constants.ENDPOINT


def unreachable(exc: BaseException, what: str) -> HubError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return HubError(
        f"cannot reach the Hugging Face Hub at {endpoint()} while {what} ({type(exc).__name__}: {reason}); "
        "check this machine's network and proxy settings (or HF_ENDPOINT), then run fetch-models again"
    )


def _status_error(status: int, what: str) -> HubError:
    where = f"the Hugging Face Hub at {endpoint()}"
    if status == 401:
        return HubError(
            f"{where} refused {what} (401 Unauthorized); these repositories are public, so the token in "
            "HF_TOKEN or from a Hub login is probably invalid: unset or renew it"
        )
    if status == 403:
        return HubError(f"{where} refused {what} (403 Forbidden); check the token in HF_TOKEN (or unset it)")
    if status == 404:
        return HubError(
            f"{what} was not found on {where} (404); the repository may have renamed or removed it: "
            "download it by hand into the same folder layout, or update wan22bot"
        )
    if status == 429:
        return HubError(f"{where} is rate-limiting requests (429) for {what}; wait a few minutes and run fetch-models again")
    if status >= 500:
        return HubError(f"{where} failed ({status}) for {what}; it is probably a passing outage: run fetch-models again later")
    return HubError(f"{where} answered HTTP {status} for {what}")


def fetch_metadata(files: tuple[SeedFile, ...] | list[SeedFile]) -> list[RemoteFile]:
    """Size and LFS sha256 of each file, from each repository's paths-info (one request per repository)."""
    if constants.is_offline_mode():
        raise HubError("HF_HUB_OFFLINE is set, and fetch-models needs the Hugging Face Hub; unset it and run again")
    by_repo: dict[tuple[str, str], list[SeedFile]] = {}
    for f in files:
        by_repo.setdefault((f.repo_id, f.revision), []).append(f)

    found: dict[SeedFile, RemoteFile] = {}
    for (repo_id, revision), wanted in by_repo.items():
        what = f"the file list of {repo_id} (revision {revision})"
        url = f"{endpoint()}/api/models/{repo_id}/paths-info/{revision}"
        try:
            response = get_session().post(
                url,
                data={"paths": [f.path_in_repo for f in wanted], "expand": False},
                headers=build_hf_headers(),
                timeout=TIMEOUT,
            )
        except TransportError as exc:
            raise unreachable(exc, f"asking for {what}") from None
        if response.status_code == 404:
            raise HubError(
                f"repository {repo_id} (revision {revision}) was not found on the Hugging Face Hub at {endpoint()} "
                "(404); it may have been renamed: download the files by hand into the same folder layout, or update wan22bot"
            )
        if response.status_code >= 400:
            raise _status_error(response.status_code, what)
        try:
            entries = [RepoFile(**e) for e in response.json() if e.get("type") == "file"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HubError(f"{endpoint()} answered {what} with something that is not the Hub's file list ({exc})") from None
        by_path = {e.path: e for e in entries}
        for f in wanted:
            entry = by_path.get(f.path_in_repo)
            if entry is None:
                raise HubError(
                    f"{f.path_in_repo} is not in {repo_id} (revision {revision}) on the Hugging Face Hub at {endpoint()}; "
                    "the repository may have renamed or removed it: download it by hand into "
                    f"<dest>/{f.relpath}, or update wan22bot"
                )
            sha = entry.lfs.sha256 if entry.lfs is not None else None
            if not sha or not _SHA256.match(sha):
                raise HubError(
                    f"the Hub lists {repo_id}/{f.path_in_repo} without an LFS sha256, so its download could not be "
                    "checked; refusing to fetch it"
                )
            size = entry.lfs.size if entry.lfs is not None else entry.size
            found[f] = RemoteFile(seed=f, size=int(size), sha256=sha)
    return [found[f] for f in files]


@dataclass
class Body:
    """An open response: where its bytes start in the file, and the bytes."""

    start: int
    chunks: Iterator[bytes]


@contextmanager
def open_file(remote: RemoteFile, offset: int) -> Iterator[Body]:
    """GET the file from `offset` (a Range request when offset > 0).

    A server that ignores the Range answers 200 with the whole file: `Body.start` is then 0 and the
    caller starts over. A 416 raises RangeRefused.
    """
    seed = remote.seed
    url = hf_hub_url(seed.repo_id, seed.path_in_repo, revision=seed.revision)
    headers = build_hf_headers()
    # compressed bodies would make byte offsets meaningless for resuming
    headers["Accept-Encoding"] = "identity"
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    what = f"{seed.repo_id}/{seed.path_in_repo}"
    # transport errors (connection refused, reset, timeout) reach the caller, which resumes or reports
    with get_session().stream("GET", url, headers=headers, timeout=TIMEOUT, follow_redirects=True) as response:
        if response.status_code == 416 and offset > 0:
            raise RangeRefused()
        if response.status_code >= 400:
            raise _status_error(response.status_code, what)
        start = 0
        if response.status_code == 206:
            m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                raise HubError(
                    f"{endpoint()} answered a resume request for {what} with the wrong range "
                    f"({response.headers.get('Content-Range')!r} for bytes={offset}-)"
                )
            start = offset
        yield Body(start=start, chunks=response.iter_bytes())
