"""DNS lookups through a configurable resolver (dnspython).

The resolver is an Airflow connection (``dns_resolver``, type ``dns``): host = one or more
name-server addresses separated by commas, port, and extras ``timeout`` / ``lifetime``
(seconds). Without the connection the system resolver is used. A timeout is an error of the
lookup (reported, retried next run); "no such record" is an answer.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number


class DnsLookupError(Exception):
    """The resolver did not answer (timeout, refused): nothing is known about the record."""


class DnsResolverHook(BaseHook):
    conn_name_attr = "dns_conn_id"
    default_conn_name = "dns_resolver"
    conn_type = "dns"
    hook_name = "DNS resolver"

    def __init__(self, dns_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.dns_conn_id = dns_conn_id
        self._resolver = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": ["schema", "login", "password"],
                "relabeling": {"host": "Name servers (comma separated)"},
                "placeholders": {"extra": '{"timeout": 2, "lifetime": 4}'}}

    def get_conn(self):
        if self._resolver is None:
            import dns.resolver
            from airflow.exceptions import AirflowNotFoundException

            try:
                conn = self.get_connection(self.dns_conn_id)
            except AirflowNotFoundException:
                self._resolver = dns.resolver.Resolver()
            else:
                r = dns.resolver.Resolver(configure=False)
                r.nameservers = [h.strip() for h in (conn.host or "").split(",") if h.strip()]
                if conn.port:
                    r.port = conn.port
                extra = conn.extra_dejson
                r.timeout = extra_number(self.dns_conn_id, extra, "timeout", 2.0)
                r.lifetime = extra_number(self.dns_conn_id, extra, "lifetime", 4.0)
                self._resolver = r
        return self._resolver

    def txt_records(self, name: str) -> list[str]:
        """The TXT strings of ``name`` (each record's strings joined); [] when there are none."""
        import dns.exception
        import dns.resolver

        try:
            answer = self.get_conn().resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsLookupError(f"{name}: {type(exc).__name__}: {exc}") from exc
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
