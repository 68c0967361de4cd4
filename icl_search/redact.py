"""The one credential redactor: storage URLs (Optuna storages, bundles' provenance, every
error message that names a storage) lose their user, password and secret query parameters."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

_SECRET_PARAMS = {"password", "passwd", "pwd", "sslpassword", "secret", "token", "api_key",
                  "apikey", "access_key", "secret_key", "auth", "key"}


def redact_url(url: str | None) -> str | None:
    """A storage URL without credentials: user and password are dropped from the authority
    and secret-looking query parameters are removed.

    >>> redact_url("postgresql+psycopg://optuna:s3cret@db.example:5432/studies?sslmode=require")
    'postgresql+psycopg://db.example:5432/studies?sslmode=require'
    >>> redact_url("sqlite:///studies/demo.db")
    'sqlite:///studies/demo.db'
    """
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not a URL we can parse: keep nothing that might be a secret.
        return url.split("://", 1)[0] + "://<redacted>" if "://" in url else "<redacted>"
    params = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in params if k.lower() not in _SECRET_PARAMS]
    if "@" not in parts.netloc and len(kept) == len(params):
        return url  # nothing to strip: keep the URL byte for byte (e.g. sqlite:///x.db)
    netloc = parts.netloc.rpartition("@")[2]  # a password may itself contain '@'
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if kept:
        out += "?" + urlencode(kept)
    return out + (f"#{parts.fragment}" if parts.fragment else "")
