"""server/safe_default.py: which addresses are loopback, when a start is refused, and the
repeated warning of --insecure-no-auth."""

from __future__ import annotations

import logging
import time

import pytest

from tessera.server.safe_default import is_loopback, refusal, warn_while_exposed
from tessera.server.settings import AuthSettings, ServerSettings, Settings


def _settings(host: str, **auth: bool) -> Settings:
    return Settings(server=ServerSettings(host=host), auth=AuthSettings(**auth))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.1",
                                  "no-such-host.invalid"])
def test_other_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_refused_only_on_a_non_loopback_host_without_auth_or_the_flag() -> None:
    assert refusal(_settings("127.0.0.1")) is None
    assert refusal(_settings("0.0.0.0", enabled=True)) is None
    assert refusal(_settings("0.0.0.0", insecure_no_auth=True)) is None
    message = refusal(_settings("0.0.0.0"))
    assert message is not None and "--auth" in message and "--insecure-no-auth" in message


def test_insecure_no_auth_warns_at_once_and_again_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tessera.server")
    stop = warn_while_exposed(_settings("0.0.0.0", insecure_no_auth=True), interval_s=0.05)
    time.sleep(0.3)
    stop()
    seen = len([r for r in caplog.records if "WITHOUT AUTHENTICATION" in r.getMessage()])
    assert seen >= 3
    time.sleep(0.2)
    after = len([r for r in caplog.records if "WITHOUT AUTHENTICATION" in r.getMessage()])
    assert after <= seen + 1  # stopped (one may have been on its way)


def test_no_warning_on_loopback_or_with_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tessera.server")
    warn_while_exposed(_settings("127.0.0.1"))()
    warn_while_exposed(_settings("0.0.0.0", enabled=True))()
    assert not caplog.records
