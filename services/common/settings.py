"""Settings every gRPC server shares; each has an env var (UNIGAP_...) and a CLI flag (--kebab-case)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, SettingsConfigDict

from unigap.store.records import default_checkpoint_cache

MiB = 1 << 20


class ServerSettings(BaseSettings):
    # Attribute docstrings become the --help text.
    model_config = SettingsConfigDict(env_prefix="UNIGAP_", extra="ignore", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 0
    """gRPC port; 0 = an ephemeral port (the bound port is logged)."""
    metrics_port: int | None = None
    """Prometheus /metrics HTTP port; 0 = ephemeral, none = off."""
    token: str | None = Field(default=None, repr=False)  # a secret: kept out of logs
    """Bearer token every RPC except health and reflection must carry; none = open."""
    token_file: Path | None = None
    """File holding the token (e.g. a mounted secret); wins over --token."""
    tls_cert: Path | None = None
    """PEM certificate chain; TLS needs --tls-cert and --tls-key together."""
    tls_key: Path | None = None
    """PEM private key."""
    max_message_bytes: int = 64 * MiB
    """Largest gRPC message sent or received."""
    max_batch: int = 256
    """Most images or prompts in one request."""
    max_prompt_chars: int = 512
    """Longest prompt."""
    max_n: int = 64
    """Most candidates per prompt."""
    grace_s: float = 10.0
    """On SIGTERM, in-flight RPCs get this long to finish."""
    store: str | None = None
    """Preference store URL (a folder path, or s3://bucket/prefix) for checkpoint references."""
    follow_s: float | None = None
    """Check the store's serving record (the promoted model) this often, in seconds, and reload when
    it changes; a replica that starts also serves it. None = only ReloadModel changes the model."""
    cache_dir: Path = Field(default_factory=default_checkpoint_cache)
    """Where checkpoints fetched from the store go (stable, so restarts reuse them; verified on reuse);
    default: per user, $XDG_CACHE_HOME/unigap/checkpoints or ~/.cache/unigap/checkpoints."""

    @model_validator(mode="after")
    def _resolve(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.token_file is not None:
            try:
                self.token = self.token_file.read_text().strip()
            except OSError as e:
                raise ValueError(f"token_file {self.token_file} cannot be read ({e.strerror})") from None
        if self.token is not None and not self.token:
            raise ValueError("token is empty")
        if self.follow_s is not None and (self.follow_s <= 0 or not self.store):
            raise ValueError("follow_s needs a store and must be > 0")
        for name in ("max_batch", "max_prompt_chars", "max_n", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        return self


S = TypeVar("S", bound=BaseSettings)


def parse_settings(cls: type[S], argv: Sequence[str] | None = None, prog: str | None = None) -> S:
    """Settings from flags, then env vars, then defaults; a bad value exits 2 with one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        source = CliSettingsSource(cls, cli_prog_name=prog, cli_kebab_case=True, cli_parse_none_str="none")
        return CliApp.run(cls, cli_args=argv, cli_settings_source=source)
    except ValidationError as e:
        reasons = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        print(f"error: {reasons}", file=sys.stderr)
        raise SystemExit(2) from None
