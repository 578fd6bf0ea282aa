"""Turning huggingface_hub failures into one clear ZooError line instead of a traceback."""

import contextlib

from zoo.errors import ZooError


class HubError(ZooError):
    """A Hub request failed: bad or missing token, unknown repo or revision, no network, offline mode."""


TOKEN_HELP = ("pass --token, set HF_TOKEN, or run `hf auth login` "
              "(create a token at https://huggingface.co/settings/tokens)")


def endpoint() -> str:
    """The Hub the client talks to (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _server_message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    message = headers.get("X-Error-Message") if hasattr(headers, "get") else None
    return message or str(exc).splitlines()[0]


@contextlib.contextmanager
def hub_errors(what: str, *, local_files_only: bool = False, token: str | None = None):
    """Re-raise huggingface_hub and network errors met while doing ``what`` as :class:`HubError`.

    ``token`` is the one passed explicitly (None: HF_TOKEN or the stored login, if any).
    """
    from huggingface_hub import errors as hf

    try:  # the HTTP library of huggingface-hub 2.x
        from httpx2 import TransportError
    except ImportError:  # pragma: no cover
        TransportError = ConnectionError

    try:
        yield
    except ZooError:
        raise
    except hf.LocalEntryNotFoundError as exc:
        raise HubError(f"{what}: the file is not in the Hugging Face cache ({cache_dir()}) and it could not be "
                       f"downloaded ({offline_reason(local_files_only)}). {str(exc).splitlines()[0]}") from None
    except hf.GatedRepoError as exc:
        raise HubError(f"{what}: the repository is gated; accept its conditions on the Hub and log in "
                       f"({TOKEN_HELP}). Server said: {_server_message(exc)}") from None
    except hf.RepositoryNotFoundError as exc:
        raise HubError(f"{what}: repository not found on {endpoint()} (a private repository needs a token with "
                       f"access: {TOKEN_HELP}). Server said: {_server_message(exc)}") from None
    except hf.RevisionNotFoundError as exc:
        raise HubError(f"{what}: revision not found. Server said: {_server_message(exc)}") from None
    except hf.RemoteEntryNotFoundError as exc:
        raise HubError(f"{what}: file not found in the repository. Server said: {_server_message(exc)}") from None
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            if token or _stored_token():
                problem = f"the Hub at {endpoint()} rejected the token"
            else:
                problem = f"no Hugging Face token was found, and the Hub at {endpoint()} refused the request"
            raise HubError(f"{what}: {problem} (401 Unauthorized: {_server_message(exc)}); {TOKEN_HELP}") from None
        if status == 403:
            raise HubError(f"{what}: the token may not do this (403 Forbidden: {_server_message(exc)}); "
                           "use a token with write access to the repository") from None
        raise HubError(f"{what}: the Hub answered {status}: {_server_message(exc)}") from None
    except hf.OfflineModeIsEnabled:
        raise HubError(f"{what}: HF_HUB_OFFLINE=1 forbids network access and the files are not cached") from None
    except (TransportError, ConnectionError) as exc:
        raise HubError(f"{what}: could not reach {endpoint()} ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        if "Consistency check failed" in str(exc):
            raise HubError(f"{what}: the download was incomplete or damaged ({str(exc).splitlines()[0]}); "
                           "nothing was kept, try again") from None
        raise


def cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline_reason(local_files_only: bool = False) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    if local_files_only:
        return "local_files_only=True"
    return f"{constants.ENDPOINT} could not be reached"


def _stored_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()
