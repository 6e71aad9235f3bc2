"""VoiceSyncWork 1: every voice company with sync enabled, read from its platform into the panel.

The platform is the truth for what it runs: per platform, its companies, subscribers and numbers
are read once (three reads, whatever the number of companies), staged here with COPY, and merged
by set-based statements into the panel's rows of the companies with ``sync_enabled`` that are not
deleted:

- a company's channel limit and suspension are taken from the platform; a company the platform no
  longer has is marked deleted, with its subscribers, and its numbers removed — but a platform that
  answers no companies at all while the panel syncs some there fails instead (an empty or wrong
  database behind its connection must not delete every company: a deleted company is not revived
  by a later sync);
- subscribers the platform has and the panel does not are added, changed ones (suspended, its
  platform reference) updated, those gone marked deleted (kept for late call records; removed by
  VoiceCurrentLimitSyncWork 4 after the retention); one that reappears is live again;
- numbers are assigned, moved and removed as the platform has them.

The platform is read and merged under its sync lock (exclusive; SIP jobs hold it shared), so
a job that changes the platform meanwhile is never undone by the merge.

A company with sync disabled is left as the panel has it. A company on the platform the panel does
not know (it has no customer) is reported, never imported; a platform account whose name the
panel cannot hold is reported and skipped. Subscribers and numbers are written only when something
changed, so a rerun changes nothing; a company's ``synced_at`` says when the sync last saw it.
"""

from __future__ import annotations

from psycopg import sql

from panelflow.hooks.sip_platform import SipPlatformUnavailable
from panelflow.step import StepReport, first_line
from panelflow.steps.voice._backend import ImplausibleAnswer, Platform, for_each_platform, lock_platform, summary

_STAGE = """
CREATE TEMP TABLE sip_companies_in (domain text, channel_limit integer, suspended boolean) ON COMMIT DROP;
CREATE TEMP TABLE sip_subscribers_in (ref text, username text, domain text, suspended boolean) ON COMMIT DROP;
CREATE TEMP TABLE sip_numbers_in (number text, username text, domain text) ON COMMIT DROP;
"""

# The companies this run syncs: the platform's, with sync enabled, not deleted.
_SYNCED = """
CREATE TEMP TABLE synced_companies ON COMMIT DROP AS
    SELECT id, sip_domain FROM voice_companies
    WHERE platform_id = %(platform)s AND sync_enabled AND status <> 'deleted';
"""

_COMPANIES = """
WITH found AS (
    SELECT c.id, p.channel_limit, CASE WHEN p.suspended THEN 'suspended' ELSE 'active' END AS status,
           (c.channel_limit, c.status) IS DISTINCT FROM
               (p.channel_limit, CASE WHEN p.suspended THEN 'suspended' ELSE 'active' END) AS changed
    FROM synced_companies sc JOIN voice_companies c ON c.id = sc.id
    JOIN sip_companies_in p ON p.domain = sc.sip_domain
)
UPDATE voice_companies c SET channel_limit = f.channel_limit, status = f.status, synced_at = %(clock)s
FROM found f WHERE c.id = f.id
RETURNING f.changed
"""

# Gone from the platform: the company, its subscribers and its numbers.
_COMPANIES_GONE = """
WITH gone AS (
    UPDATE voice_companies c SET status = 'deleted', deleted_at = %(clock)s, synced_at = %(clock)s
    FROM synced_companies sc
    WHERE c.id = sc.id AND NOT EXISTS (SELECT 1 FROM sip_companies_in p WHERE p.domain = sc.sip_domain)
    RETURNING c.id
), subscribers AS (
    UPDATE voice_subscribers vs SET status = 'deleted', deleted_at = %(clock)s, synced_at = %(clock)s
    WHERE vs.company_id IN (SELECT id FROM gone) AND vs.status <> 'deleted'
    RETURNING vs.id
), numbers AS (
    DELETE FROM voice_numbers n USING voice_subscribers vs
    WHERE n.subscriber_id = vs.id AND vs.company_id IN (SELECT id FROM gone)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM subscribers), (SELECT count(*) FROM numbers)
"""

_SUBSCRIBERS = """
INSERT INTO voice_subscribers AS vs (company_id, username, external_ref, status, created_at, synced_at)
SELECT sc.id, p.username, p.ref, CASE WHEN p.suspended THEN 'suspended' ELSE 'active' END, %(clock)s, %(clock)s
FROM sip_subscribers_in p
JOIN synced_companies sc ON sc.sip_domain = p.domain
JOIN voice_companies c ON c.id = sc.id AND c.status <> 'deleted'
WHERE p.username ~ '^[A-Za-z0-9._-]{1,64}$'
ON CONFLICT (company_id, username) DO UPDATE
SET external_ref = EXCLUDED.external_ref, status = EXCLUDED.status, deleted_at = NULL, synced_at = EXCLUDED.synced_at
WHERE (vs.external_ref, vs.status) IS DISTINCT FROM (EXCLUDED.external_ref, EXCLUDED.status)
RETURNING (xmax = 0) AS added
"""

_SUBSCRIBERS_BAD = """
SELECT 'platform account whose user name the panel cannot hold', count(*),
       (array_agg(p.username || '@' || p.domain ORDER BY p.domain, p.username))[1:%(keep)s]
FROM sip_subscribers_in p JOIN synced_companies sc ON sc.sip_domain = p.domain
WHERE p.username !~ '^[A-Za-z0-9._-]{1,64}$'
HAVING count(*) > 0
"""

_SUBSCRIBERS_GONE = """
WITH gone AS (
    UPDATE voice_subscribers vs SET status = 'deleted', deleted_at = %(clock)s, synced_at = %(clock)s
    FROM synced_companies sc
    WHERE vs.company_id = sc.id AND vs.status <> 'deleted'
      AND NOT EXISTS (SELECT 1 FROM sip_subscribers_in p WHERE p.domain = sc.sip_domain AND p.username = vs.username)
    RETURNING vs.id
), numbers AS (
    DELETE FROM voice_numbers n WHERE n.subscriber_id IN (SELECT id FROM gone) RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM numbers)
"""

_NUMBERS = """
INSERT INTO voice_numbers AS n (platform_id, number, subscriber_id, assigned_at, synced_at)
SELECT %(platform)s, p.number, vs.id, %(clock)s, %(clock)s
FROM sip_numbers_in p
JOIN synced_companies sc ON sc.sip_domain = p.domain
JOIN voice_subscribers vs ON vs.company_id = sc.id AND vs.username = p.username AND vs.status <> 'deleted'
ON CONFLICT (platform_id, number) DO UPDATE
SET subscriber_id = EXCLUDED.subscriber_id, assigned_at = EXCLUDED.assigned_at, synced_at = EXCLUDED.synced_at
WHERE n.subscriber_id <> EXCLUDED.subscriber_id
"""

_NUMBERS_UNMATCHED = """
SELECT 'number of an account the panel does not hold', count(*),
       (array_agg(p.number || ' → ' || p.username || '@' || p.domain ORDER BY p.number))[1:%(keep)s]
FROM sip_numbers_in p JOIN synced_companies sc ON sc.sip_domain = p.domain
WHERE NOT EXISTS (SELECT 1 FROM voice_subscribers vs
                  WHERE vs.company_id = sc.id AND vs.username = p.username AND vs.status <> 'deleted')
HAVING count(*) > 0
"""

# The numbers of synced companies the platform no longer has (moved ones were updated above).
_NUMBERS_GONE = """
DELETE FROM voice_numbers n USING voice_subscribers vs, synced_companies sc
WHERE n.platform_id = %(platform)s AND n.subscriber_id = vs.id AND vs.company_id = sc.id
  AND NOT EXISTS (SELECT 1 FROM sip_numbers_in p WHERE p.number = n.number)
"""

_NOT_IN_PANEL = """
SELECT 'company on the platform that the panel does not know', count(*),
       (array_agg(p.domain ORDER BY p.domain))[1:%(keep)s]
FROM sip_companies_in p
WHERE NOT EXISTS (SELECT 1 FROM voice_companies c WHERE c.platform_id = %(platform)s AND c.sip_domain = p.domain)
HAVING count(*) > 0
"""


def _stage(conn, table: str, rows) -> None:
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
        for row in rows:
            copy.write_row(row)


def sync_voice_companies(panel_db, interval, log=None) -> dict:
    """Sync all voice companies with sync status enabled (see the module)."""
    report = StepReport().zero("companies_synced", "companies_changed", "companies_gone", "subscribers_added",
                               "subscribers_changed", "subscribers_gone", "numbers_changed", "numbers_removed")

    def work(platform: Platform) -> None:
        args = {"platform": platform.id, "clock": interval.end, "keep": report.keep}
        with conn.transaction():
            lock_platform(conn, platform, shared=False)   # no SIP job between the read and the merge
            with platform.hook() as hook:
                companies, subscribers, numbers = hook.companies(), hook.subscribers(), hook.numbers()
            conn.execute(_STAGE)
            synced = conn.execute(_SYNCED, args).rowcount
            if synced and not companies:   # an empty or wrong platform database, not every company gone
                raise ImplausibleAnswer(f"{platform.name} answered no companies at all; the panel syncs {synced}"
                                        " there: none marked deleted")
            _stage(conn, "sip_companies_in", ((c.domain, c.channel_limit, c.suspended) for c in companies))
            _stage(conn, "sip_subscribers_in", ((s.ref, s.username, s.domain, s.suspended) for s in subscribers))
            _stage(conn, "sip_numbers_in", ((n.number, n.username, n.domain) for n in numbers))
            changed = [r[0] for r in conn.execute(_COMPANIES, args).fetchall()]
            report.add("companies_synced", len(changed))
            report.add("companies_changed", sum(changed))
            gone, subscribers_gone, numbers_gone = conn.execute(_COMPANIES_GONE, args).fetchone()
            report.add("companies_gone", gone)
            report.add("subscribers_gone", subscribers_gone)
            report.add("numbers_removed", numbers_gone)
            added = [r[0] for r in conn.execute(_SUBSCRIBERS, args).fetchall()]
            report.add("subscribers_added", sum(added))
            report.add("subscribers_changed", len(added) - sum(added))
            report.add("numbers_changed", conn.execute(_NUMBERS, args).rowcount)   # moves first: not removed
            subscribers_gone, numbers_gone = conn.execute(_SUBSCRIBERS_GONE, args).fetchone()
            report.add("subscribers_gone", subscribers_gone)
            report.add("numbers_removed", numbers_gone)
            report.add("numbers_removed", conn.execute(_NUMBERS_GONE, args).rowcount)
            for check in (_NOT_IN_PANEL, _SUBSCRIBERS_BAD, _NUMBERS_UNMATCHED):
                report.skip_grouped(conn.execute(check, args).fetchall())
        # A SIP job's change whose reload failed after its DB commit (its retry finds nothing to
        # change, so nothing reloads) reaches Kamailio's domain cache at the next sync at the latest;
        # the sync itself is done whether or not the control interface answers.
        with platform.hook() as hook:
            try:
                hook.reload_domains()
            except SipPlatformUnavailable as exc:
                report.skip(f"domain cache not reloaded: {first_line(exc)}", f"SIP platform {platform.name}")

    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each platform commits on its own
        outcome = for_each_platform(conn, report, log, work)
    return summary(report, outcome)
