"""Downloading a URL with a size limit and an overall deadline (httpx)."""

from __future__ import annotations

import time

import httpx

from langgraph_taskcraft import __version__
from langgraph_taskcraft.loaders.base import DEFAULT_SETTINGS, LoadError, LoadSettings

USER_AGENT = f"langgraph-taskcraft/{__version__} (document loader)"
_ACCEPT = "text/html,application/xhtml+xml,application/pdf,image/*,text/plain;q=0.9,*/*;q=0.5"


def is_url(source: str) -> bool:
    """Whether a source is an http(s) URL (anything else is a path)."""
    return source.lower().startswith(("http://", "https://"))


def fetch_url(url: str, settings: LoadSettings = DEFAULT_SETTINGS) -> tuple[bytes, str]:
    """Download `url` (following redirects) and return its bytes and content type.

    The whole download, from connecting to the last byte, must finish within
    `settings.timeout` seconds and stay within `settings.max_bytes`. Raises
    `LoadError("http_error")` for error statuses (with code and reason), DNS failures,
    refused connections and timeouts, and `LoadError("too_large")` for oversized bodies.
    """
    deadline = time.monotonic() + settings.timeout
    try:
        with (
            httpx.Client(
                follow_redirects=True,
                timeout=settings.timeout,
                headers={"User-Agent": USER_AGENT, "Accept": _ACCEPT},
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.is_error:
                reason = response.reason_phrase or "error"
                raise LoadError("http_error", f"HTTP {response.status_code} {reason}", source=url)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > settings.max_bytes:
                raise LoadError(
                    "too_large",
                    f"the response declares {int(declared):,} bytes, more than the limit of "
                    f"{settings.max_bytes:,}",
                    source=url,
                )
            body = bytearray()
            for piece in response.iter_bytes():
                body.extend(piece)
                if len(body) > settings.max_bytes:
                    raise LoadError(
                        "too_large",
                        f"the response exceeds the limit of {settings.max_bytes:,} bytes",
                        source=url,
                    )
                if time.monotonic() > deadline:
                    raise LoadError(
                        "http_error",
                        f"the download did not finish within {settings.timeout:g} s",
                        source=url,
                    )
            content_type = response.headers.get("content-type", "")
    except httpx.TimeoutException as exc:
        raise LoadError(
            "http_error",
            f"timed out after {settings.timeout:g} s ({type(exc).__name__})",
            source=url,
        ) from exc
    except httpx.TooManyRedirects as exc:
        raise LoadError("http_error", "too many redirects", source=url) from exc
    except httpx.ConnectError as exc:
        raise LoadError("http_error", f"cannot connect ({_reason(exc)})", source=url) from exc
    except httpx.InvalidURL as exc:
        raise LoadError("http_error", f"invalid URL ({_reason(exc)})", source=url) from exc
    except httpx.HTTPError as exc:  # protocol errors, dropped connections, bad schemes
        raise LoadError(
            "http_error", f"request failed ({type(exc).__name__}: {_reason(exc)})", source=url
        ) from exc
    return bytes(body), content_type


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
