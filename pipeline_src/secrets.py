"""Keep credentials (the CDS key above all) out of logs, MLflow parameters and artifacts."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

SECRET_KEY_PATTERN = re.compile(r"(key|token|secret|password|passwd|credential|auth)", re.I)
MASK = "***"


def known_secrets() -> list[str]:
    """Secret values present on this machine: CDSAPI_KEY and the key line of the cdsapi rc file."""
    values = []
    if os.environ.get("CDSAPI_KEY"):
        values.append(os.environ["CDSAPI_KEY"])
    rc = Path(os.environ.get("CDSAPI_RC", Path.home() / ".cdsapirc"))
    try:
        for line in rc.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "key" and value.strip():
                values.append(value.strip())
    except OSError:
        pass
    # the legacy key form is UID:APIKEY; mask both the whole and the key part
    values += [v.split(":", 1)[1] for v in values if ":" in v]
    return [v for v in values if len(v) >= 6]


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """Replace every known secret value in `text` by ***."""
    for value in secrets if secrets is not None else known_secrets():
        text = text.replace(value, MASK)
    return text


def redact(obj, secrets: list[str] | None = None):
    """Copy of a nested mapping with secret-looking keys masked and secret values scrubbed."""
    secrets = known_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (MASK if SECRET_KEY_PATTERN.search(str(k)) else redact(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return scrub(obj, secrets)
    return obj


class SecretFilter(logging.Filter):
    """A logging filter that scrubs secret values from every record's final message."""

    def __init__(self):
        super().__init__()
        self.secrets = known_secrets()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = scrub(record.getMessage(), self.secrets)
            record.args = None
        return True


def install_log_filter() -> None:
    """Attach the SecretFilter to every handler of the root logger."""
    flt = SecretFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
