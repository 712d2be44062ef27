"""Publishing a built dataset version to a Hugging Face Hub dataset repository.

One push = one commit: every file of the version is added (and stale data files removed) in a
single `create_commit` with the repo's head as parent, so a failed or concurrent push never
leaves a half-updated dataset. Before committing, the remote files are compared with the local
ones (git blob sha1 for regular files, sha256 for LFS files): unchanged content makes no new
commit. Every request has a connect and a read timeout (huggingface_hub's shared HTTP client has
none), and each call is retried with backoff on time-outs, network errors, 429 and 5xx; every
other error becomes a `HubError` whose message says what to do. The token is read when a push
starts (HF_TOKEN, or `hf auth login`), so a missing one fails the push step with one sentence
instead of the run's configuration; it is scrubbed from every message this module produces.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from auf_assets.core.release import CARD, CONFIG_DIRS, MANIFEST, REPORT_DIR, verify_release

# Files a push owns in the repo: anything else (a user's own files) is left alone.
_MANAGED = (CARD, MANIFEST, *(f"{d}/" for d in (*CONFIG_DIRS.values(), REPORT_DIR)))
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Errors of the HTTP client that no retry can fix: the URL itself is wrong.
_MALFORMED_URL = ("UnsupportedProtocol", "InvalidURL", "LocalProtocolError")


class HubError(RuntimeError):
    """A push that did not happen; the message says why and what to do. Nothing local changed."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    endpoint: str
    revision: str
    commit_oid: str
    new_commit: bool
    tag: str | None
    url: str
    files_added: list[str]
    files_deleted: list[str]


@dataclass(frozen=True)
class LocalFile:
    path: str
    size: int
    sha256: str
    git_sha1: str


def local_files(folder: Path) -> dict[str, LocalFile]:
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        rel = p.relative_to(folder).as_posix()
        out[rel] = LocalFile(
            path=rel,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            git_sha1=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
        )
    return out


def _managed(path: str) -> bool:
    return any(path == m or (m.endswith("/") and path.startswith(m)) for m in _MANAGED)


class HubDataset(dg.ConfigurableResource):
    """A dataset repository on the Hugging Face Hub (or a self-hosted / mirrored Hub)."""

    repo_id: str = Field(default="", description="namespace/name of the dataset repository")
    private: bool = Field(default=True, description="create the repo private (if it is new)")
    token: str | None = Field(
        default=None,
        description="write token; empty: read when the push starts (HF_TOKEN, `hf auth login`); "
        "in run config only as dg.EnvVar('HF_TOKEN'), never as plain text",
    )
    endpoint: str = Field(
        default="", description="Hub URL; empty: huggingface_hub's default (HF_ENDPOINT or hf.co)"
    )
    revision: str = Field(default="main", description="branch to commit to (created if missing)")
    commit_message: str = Field(
        default="{version}: {pairs} preference pairs from {rounds} round(s)",
        description="template; fields: version, pairs, rounds, first_round, last_round",
    )
    max_retries: int = Field(
        default=4, ge=0, description="retries of a call on 5xx/429/time-outs/network errors"
    )
    retry_backoff_s: float = Field(default=2.0, ge=0.0, description="first wait; doubles")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="seconds to wait for the Hub to take a connection"
    )
    read_timeout_s: float = Field(
        default=60.0, gt=0, description="seconds to wait for each answer (and each upload write)"
    )
    max_file_bytes: int = Field(
        default=50 * 10**9, ge=1, description="largest file the Hub accepts (50 GB)"
    )

    # -- checks that need no network ---------------------------------------------------------

    def checked_repo_id(self) -> str:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        repo = self.repo_id.strip()
        if not repo:
            raise HubError(
                "no Hub repository set: give the hub resource a repo_id (namespace/name), e.g. "
                "`auf publish --repo your-name/my-preferences`"
            )
        try:
            validate_repo_id(repo)
        except HFValidationError as exc:
            raise HubError(f"repo id {repo!r} is malformed: {exc}") from None
        if repo.count("/") != 1:
            raise HubError(
                f"repo id {repo!r} is malformed: expected namespace/name (your user or "
                "organisation, a slash, the dataset name)"
            )
        return repo

    def commit_title(self, manifest: dict) -> str:
        rounds = manifest.get("rounds", [])
        fields = {
            "version": manifest.get("version", ""),
            "pairs": sum(manifest.get("rows", {}).get("default", {}).values()),
            "rounds": len(rounds),
            "first_round": rounds[0] if rounds else "",
            "last_round": rounds[-1] if rounds else "",
        }
        try:
            return self.commit_message.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise HubError(
                f"commit_message template {self.commit_message!r} is invalid ({exc!r}); "
                f"fields: {', '.join(fields)}"
            ) from None

    def plan(self, folder: Path) -> dict[str, Any]:
        """What a push of `folder` would send (no network): repo, files, sizes, message."""
        manifest = verify_release(folder)
        files = local_files(folder)
        too_big = [f for f in files.values() if f.size > self.max_file_bytes]
        if too_big:
            f = too_big[0]
            raise HubError(
                f"{f.path} is {f.size:,} bytes, over the {self.max_file_bytes:,}-byte limit for "
                "one file: build the dataset with a smaller max_shard_mb"
            )
        return {
            "repo_id": self.checked_repo_id(),
            "revision": self.revision,
            "private": self.private,
            "endpoint": self.endpoint_url(),
            "version": manifest["version"],
            "commit_message": self.commit_title(manifest),
            "files": {p: f.size for p, f in files.items()},
            "bytes": sum(f.size for f in files.values()),
        }

    def resolved_token(self) -> str | None:
        """The configured token, else huggingface_hub's own (HF_TOKEN, or `hf auth login`).

        The fallback matters in the launchpad: run config for this resource replaces its whole
        configuration, so a run that sets only `repo_id` would otherwise lose the token.
        """
        if self.token:
            return self.token
        from huggingface_hub import get_token

        return get_token()

    def endpoint_url(self) -> str:
        """The Hub's base URL; a malformed one is refused here, before anything is sent."""
        from huggingface_hub import constants

        url = (self.endpoint or constants.ENDPOINT).strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HubError(
                f"endpoint {url!r} is not a URL: give the Hub's address as http(s)://host[:port], "
                "e.g. https://huggingface.co; nothing was sent"
            )
        return url

    # -- the push ----------------------------------------------------------------------------

    def publish(self, folder: Path, log: Callable[[str], None] = print) -> PushResult:
        """Push the version in `folder` as one commit and tag it; idempotent."""
        with _online(), _timeouts(self.connect_timeout_s, self.read_timeout_s):
            return self._publish(folder, log)

    def _publish(self, folder: Path, log: Callable[[str], None]) -> PushResult:
        plan = self.plan(folder)
        token = self.resolved_token()
        if not token:
            raise HubError(
                "no Hugging Face token: set the HF_TOKEN environment variable to a token with "
                "write access (huggingface.co/settings/tokens); nothing was sent"
            )
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

        repo, revision, endpoint = plan["repo_id"], self.revision, plan["endpoint"]
        api = HfApi(endpoint=endpoint, token=token, library_name="active-ultrafeedback")
        files = local_files(folder)
        log(f"pushing {plan['version']} ({len(files)} files, {plan['bytes']:,} bytes) to {repo}")
        self._call(
            "create the repository",
            lambda: api.create_repo(repo, repo_type="dataset", private=self.private, exist_ok=True),
            log,
        )
        if revision != "main":
            self._call(
                "create the branch",
                lambda: api.create_branch(
                    repo, repo_type="dataset", branch=revision, exist_ok=True
                ),
                log,
            )
        for attempt in range(self.max_retries + 1):
            head = self._call(
                "read the repository", lambda: api.dataset_info(repo, revision=revision).sha, log
            )
            remote = self._remote_files(api, repo, revision, log)
            adds = [p for p, f in files.items() if not _same(f, remote.get(p))]
            deletes = sorted(p for p in remote if _managed(p) and p not in files)
            if not adds and not deletes:
                log(f"{repo}@{revision} already holds this version: no new commit")
                commit, new = head, False
                break
            log(f"one commit: {len(adds)} files added or changed, {len(deletes)} removed")
            operations = [
                CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(Path(folder) / p))
                for p in adds
            ] + [CommitOperationDelete(path_in_repo=p) for p in deletes]
            try:
                info = self._call(
                    "commit",
                    lambda ops=operations, h=head: api.create_commit(
                        repo,
                        operations=ops,
                        commit_message=plan["commit_message"],
                        repo_type="dataset",
                        revision=revision,
                        parent_commit=h,
                    ),
                    log,
                )
            except _Conflict:
                if attempt == self.max_retries:
                    raise HubError(
                        f"{repo}@{revision} kept changing while pushing (another push at the "
                        "same time?); run the push again"
                    ) from None
                log("the branch moved while pushing: comparing again")
                continue
            commit, new = info.oid, True
            break
        tag = self._tag(api, repo, plan["version"], commit, log)
        url = f"{endpoint}/datasets/{repo}/tree/{tag or revision}"
        log(f"{'pushed' if new else 'unchanged'}: {url} (commit {commit[:12]})")
        return PushResult(
            repo_id=repo,
            endpoint=endpoint,
            revision=revision,
            commit_oid=commit,
            new_commit=new,
            tag=tag,
            url=url,
            files_added=adds,
            files_deleted=deletes,
        )

    def _remote_files(self, api, repo: str, revision: str, log) -> dict[str, Any]:
        from huggingface_hub.hf_api import RepoFile

        def listing():
            tree = api.list_repo_tree(repo, repo_type="dataset", revision=revision, recursive=True)
            return {f.path: f for f in tree if isinstance(f, RepoFile)}

        return self._call("list the repository's files", listing, log)

    def _tag(self, api, repo: str, version: str, commit: str, log) -> str:
        """Tag the commit with the version name; a name taken by other content gets a suffix."""
        refs = self._call(
            "read the tags", lambda: api.list_repo_refs(repo, repo_type="dataset"), log
        )
        tags = {t.name: t.target_commit for t in refs.tags}
        for name in (version, f"{version}-{commit[:8]}"):
            if tags.get(name) == commit:
                return name
            if name not in tags:
                self._call(
                    "tag the version",
                    lambda n=name: api.create_tag(
                        repo,
                        repo_type="dataset",
                        tag=n,
                        revision=commit,
                        tag_message=f"auf dataset version {version}",
                    ),
                    log,
                )
                return name
        raise HubError(f"tags {version!r} and {version}-{commit[:8]!r} name other commits")

    def _call(self, what: str, fn: Callable[[], Any], log: Callable[[str], None]) -> Any:
        """Run one Hub call with bounded retries; map its errors to clear messages."""
        delay = self.retry_backoff_s
        tries = self.max_retries + 1
        for attempt in range(1, tries + 1):
            try:
                return fn()
            except Exception as exc:
                status = _status(exc)
                transient = status in _TRANSIENT_STATUS or (status is None and _network(exc))
                if status in (409, 412) and what == "commit":
                    raise _Conflict() from None
                if not transient:
                    raise HubError(self._scrub(self._explain(what, status, exc))) from None
                why = self._why(exc)
                if attempt == tries:
                    raise HubError(
                        self._scrub(
                            f"could not {what} on {self.endpoint_url()} after {tries} tries "
                            f"({why}): the Hub or the network is down; nothing was changed "
                            "locally, run the push again later"
                        )
                    ) from None
                wait = _retry_after(exc) or delay
                log(
                    self._scrub(
                        f"could not {what} ({why}): try {attempt + 1} of {tries} in {wait:g} s"
                    )
                )
                time.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    def _why(self, exc: Exception) -> str:
        """What went wrong with a call, in words (a time-out says how long it waited)."""
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "ConnectTimeout" in names:
            return f"no connection within {self.connect_timeout_s:g} s"
        if "TimeoutException" in names or isinstance(exc, TimeoutError):
            return f"no answer within {self.read_timeout_s:g} s"
        return _short(exc)

    def _explain(self, what: str, status: int | None, exc: Exception) -> str:
        repo = self.repo_id
        if status == 401:
            return (
                f"the Hub at {self.endpoint_url()} rejected the token (401) while trying to "
                f"{what}: HF_TOKEN is invalid or expired; create a new write token"
            )
        if status == 403:
            return (
                f"the token has no write access to {repo} (403) while trying to {what}: use a "
                "token with write rights for that namespace, or another repo_id"
            )
        if status == 404:
            return (
                f"{repo} or revision {self.revision!r} was not found (404) while trying to {what}"
            )
        if status == 413:
            return f"the Hub refused a file as too large (413) while trying to {what}"
        return f"could not {what} on {self.endpoint_url()}: {_short(exc)}"

    def _scrub(self, text: str) -> str:
        token = self.resolved_token()
        return text.replace(token, "***") if token else text


@contextlib.contextmanager
def _timeouts(connect_s: float, read_s: float) -> Iterator[None]:
    """Connect and read time-outs on huggingface_hub's shared HTTP client, for the push alone.

    Its default client has none (`timeout=None`): a Hub that takes the connection and never
    answers would hold a push forever. Every HfApi call goes through this client (`get_session`).
    """
    from huggingface_hub.utils import get_session

    session = get_session()
    before = session.timeout
    session.timeout = type(before)(read_s, connect=connect_s)  # the client's own Timeout class
    try:
        yield
    finally:
        session.timeout = before


@contextlib.contextmanager
def _online() -> Iterator[None]:
    """Lift HF_HUB_OFFLINE for the push alone.

    `make` and `auf` set it so that models are never fetched from a hub at run time; a push is
    the one step that is meant to reach the Hub, and the user asked for it.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class _Conflict(Exception):
    """The branch moved since it was read (parent_commit no longer the head)."""


def _same(local: LocalFile, remote: Any) -> bool:
    if remote is None or remote.size != local.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.blob_id == local.git_sha1


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _network(exc: Exception) -> bool:
    """Connection refused/reset, DNS failure, time-outs: worth another try (a bad URL is not)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & set(_MALFORMED_URL):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    return bool(names & {"TransportError", "TimeoutException", "NetworkError"})


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


def _short(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
