"""Outgoing email: an outbox table in PostgreSQL, delivered by SMTP or as .eml files.

Whoever decides to send an email queues it in the same transaction as the decision, under
a dedupe key (alert 7 fired, the digest of a day), so it is queued once whatever races.
The sender claims one pending row at a time (FOR UPDATE SKIP LOCKED: two senders never hold
the same row), delivers it and marks it sent in that transaction. A failed delivery stays
pending and is retried with exponential backoff and jitter, forever: never lost. The one
window for a duplicate is a crash between the SMTP server's acceptance and the commit; the
Message-ID is fixed per row so a receiving system can drop such a copy.
"""

from __future__ import annotations

import html
import logging
import random
import re
import smtplib
import ssl
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import email_outbox
from app.periods import utc_now
from app.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_SENDER = "RouteLedger <routeledger@localhost>"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # as app.schemas.NO_CONTROL
SMTP_TIMEOUT_SECONDS = 30
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=1)


@dataclass(frozen=True)
class Email:
    kind: str
    recipients: list[str]
    subject: str
    text_body: str
    html_body: str


def queue_email(conn: Connection, *, project_id: int | None, dedupe_key: str, email: Email) -> bool:
    """Queues an email once per dedupe key; False when that key was already queued."""
    now = utc_now()
    result = conn.execute(
        pg_insert(email_outbox)
        .values(
            project_id=project_id,
            dedupe_key=dedupe_key,
            kind=email.kind,
            recipients=email.recipients,
            subject=email.subject,
            text_body=email.text_body,
            html_body=email.html_body,
            created_at=now,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(email_outbox.c.id)
    )
    return result.first() is not None


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # "plain", "starttls" or "ssl"
    username: str | None
    password: str | None
    sender: str


def smtp_target(url: str) -> SmtpTarget:
    """smtp://[user:pass@]host[:port] (plain, or STARTTLS with ?starttls=true),
    smtp+starttls://... or smtps://... (SSL); ?from=... sets the sender."""
    parts = urlsplit(url)
    security = {"smtp": "plain", "smtp+starttls": "starttls", "smtps": "ssl"}.get(parts.scheme)
    if security is None:
        raise ValueError(f"SMTP_URL must start with smtp://, smtp+starttls:// or smtps://: {url!r}")
    query = parse_qs(parts.query)
    if query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes"):
        security = "starttls"
    default_port = {"plain": 25, "starttls": 587, "ssl": 465}[security]
    return SmtpTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or default_port,
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sender=query.get("from", [DEFAULT_SENDER])[0],
    )


def build_message(row, *, sender: str) -> EmailMessage:
    message = EmailMessage()
    # Names are checked for line breaks where they come in; a header never carries one.
    message["Subject"] = _CONTROL.sub(" ", row.subject)
    message["From"] = sender
    message["To"] = ", ".join(row.recipients)
    message["Date"] = format_datetime(row.created_at)
    message["Message-ID"] = f"<outbox-{row.id}@routeledger>"
    message["X-RouteLedger-Kind"] = row.kind
    message.set_content(row.text_body)
    message.add_alternative(row.html_body, subtype="html")
    return message


def send_smtp(message: EmailMessage, target: SmtpTarget) -> None:
    context = ssl.create_default_context()
    if target.security == "ssl":
        client = smtplib.SMTP_SSL(
            target.host, target.port, timeout=SMTP_TIMEOUT_SECONDS, context=context
        )
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=SMTP_TIMEOUT_SECONDS)
    with client:
        if target.security == "starttls":
            client.starttls(context=context)
        if target.username:
            client.login(target.username, target.password or "")
        client.send_message(message)


def write_eml(message: EmailMessage, folder: Path, name: str) -> Path:
    """Writes the message as folder/name.eml, atomically: a rewrite gives the same file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.eml"
    partial = folder / f".{name}.eml.partial"
    partial.write_bytes(bytes(message))
    partial.replace(path)
    return path


def deliver(row) -> None:
    settings = get_settings()
    if settings.smtp_url:
        target = smtp_target(settings.smtp_url)
        send_smtp(build_message(row, sender=target.sender), target)
    else:
        message = build_message(row, sender=DEFAULT_SENDER)
        write_eml(message, settings.outbox_dir, f"{row.created_at:%Y%m%dT%H%M%S}-{row.id}")


def retry_delay(attempts: int) -> timedelta:
    """Exponential from 30 s, at most an hour, with ±50% jitter so senders spread out."""
    delay = min(FIRST_RETRY * 2 ** (attempts - 1), LONGEST_RETRY)
    return delay * random.uniform(0.5, 1.5)


@dataclass(frozen=True)
class SendRun:
    sent: int
    failed: int


def send_pending(engine: Engine, *, limit: int = 100) -> SendRun:
    """Delivers due emails, one row and one transaction at a time."""
    sent = failed = 0
    for _ in range(limit):
        with engine.begin() as conn:
            row = conn.execute(
                text(
                    "select * from email_outbox where status = 'pending' "
                    "and next_attempt_at <= :now order by id limit 1 for update skip locked"
                ),
                {"now": utc_now()},
            ).first()
            if row is None:
                break
            try:
                deliver(row)
            except Exception as error:  # noqa: BLE001 - one bad row must not stop the others
                # Backed off (from after the delivery: it can take minutes) so the next rows
                # go first; the row stays, with the error, for the log and a retry.
                log.warning("email %s not sent (attempt %s): %r", row.id, row.attempts + 1, error)
                failed += 1
                conn.execute(
                    text(
                        "update email_outbox set attempts = attempts + 1, last_error = :error, "
                        "next_attempt_at = :next where id = :id"
                    ),
                    {
                        "id": row.id,
                        "error": repr(error)[:1000],
                        "next": utc_now() + retry_delay(row.attempts + 1),
                    },
                )
                continue
            sent += 1
            conn.execute(
                text(
                    "update email_outbox set status = 'sent', sent_at = :now, "
                    "attempts = attempts + 1, last_error = null where id = :id"
                ),
                {"id": row.id, "now": utc_now()},
            )
    return SendRun(sent=sent, failed=failed)


def report_email(
    *,
    kind: str,
    recipients: list[str],
    subject: str,
    intro: str,
    lines: list[tuple[str, str]],
    link: str,
) -> Email:
    """An email of labelled figures, as plain text and as an HTML table, with a link."""
    text_body = intro + "\n\n" + "\n".join(f"{k}: {v}" for k, v in lines)
    text_body += f"\n\nDashboard: {link}\n"
    rows = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in lines
    )
    html_body = (
        f"<p>{html.escape(intro)}</p><table>{rows}</table>"
        f"<p><a href='{html.escape(link, quote=True)}'>Open in RouteLedger</a></p>"
    )
    return Email(kind, recipients, subject, text_body, html_body)


def dashboard_url(path: str = "") -> str:
    settings = get_settings()
    base = settings.routeledger_public_url or (
        f"http://127.0.0.1:{settings.routeledger_dashboard_port}"
    )
    return base.rstrip("/") + path
