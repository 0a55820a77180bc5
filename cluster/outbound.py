"""This process's outbound policy: the `outbound_allow` of its settings, which
`cluster.netguard` enforces.

It lives apart from netguard because it reads the settings, while the settings' field
(`netguard.OutboundAllow`) is checked by netguard: netguard sits below the settings, this
lookup above them.
"""

from __future__ import annotations

import logging
import os

from cluster.netguard import OutboundPolicy, split_entries
from cluster.settings import Settings, load_settings

log = logging.getLogger(__name__)


def outbound_policy(settings: Settings | None) -> OutboundPolicy:
    """The policy of `settings`, else of this process's settings (`DAFNCK_*`, its file).

    When this process's settings do not load, `DAFNCK_OUTBOUND_ALLOW` alone is read, and
    when that does not parse either, nothing beyond public addresses is allowed.
    """
    if settings is not None:
        return OutboundPolicy.from_entries(settings.outbound_allow)
    try:
        return OutboundPolicy.from_entries(load_settings().outbound_allow)
    except Exception:  # another setting of this process is bad: read ours alone
        log.warning("this process's settings do not load; reading DAFNCK_OUTBOUND_ALLOW alone")
    try:
        return OutboundPolicy.from_entries(
            split_entries(os.environ.get("DAFNCK_OUTBOUND_ALLOW", ""))
        )
    except (ValueError, TypeError):
        log.error("DAFNCK_OUTBOUND_ALLOW does not parse: only public addresses are reached")
        return OutboundPolicy()


__all__ = ["outbound_policy"]
