"""On-call notification of alert events: webhook, Slack, PagerDuty, e-mail.

``Notifier(channels).send(event)`` fans an
:class:`~llmpulse.streams.alerting.AlertEvent` out to the configured channels, sends
each alert state once per channel, retries transient failures with
exponential backoff and records the rest in ``stats()``; it never raises.
Channels are configured in the ``notify`` section of the rules file
(see ``docs/rules.md``); their secrets are :class:`Secret` values that print
as ``***``.
"""

from __future__ import annotations

from llmpulse.secret import Secret, scrub
from llmpulse.streams.notify.channels import (
    CHANNEL_TYPES,
    PAGERDUTY_EVENTS_URL,
    SEVERITIES,
    SIGNATURE_HEADER,
    Channel,
    DeliveryError,
    EmailChannel,
    LogChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
    build_channels,
    channel_from_config,
    sign,
)
from llmpulse.streams.notify.format import alert_view, text_message
from llmpulse.streams.notify.notifier import ChannelStats, Notifier, Retry

__all__ = [
    "CHANNEL_TYPES",
    "PAGERDUTY_EVENTS_URL",
    "SEVERITIES",
    "SIGNATURE_HEADER",
    "Channel",
    "ChannelStats",
    "DeliveryError",
    "EmailChannel",
    "LogChannel",
    "Notifier",
    "PagerDutyChannel",
    "Retry",
    "Secret",
    "SlackChannel",
    "WebhookChannel",
    "alert_view",
    "build_channels",
    "channel_from_config",
    "scrub",
    "sign",
    "text_message",
]
