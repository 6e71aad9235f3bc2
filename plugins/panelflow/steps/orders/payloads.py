"""What an order item may ask of each backend, and how its payload template is filled in.

An order item is one group action of the shared queue (``group_action_jobs``). The backends'
processors own the meaning of a payload (their ``jobs.py`` docstrings, and their strict
:class:`~panelflow.services.group_actions.Payload` reading); an order may only use the
*provisioning* actions below, and the service queue checks that the keys an action cannot do
without are present before it queues anything — an order missing one fails at once, naming the
key, instead of a job failing later. ``a|b`` means one of them. Other keys pass through as the
panel wrote them (optional keys: see the backend's docstring).

======================  ======================  =================================================
backend (processor)     action                  required payload keys
======================  ======================  =================================================
``ad`` (GroupAction     create_organization     directory_id, name
WorkAD)                 create_user             organisation_id|directory_id, sam_account_name,
                                                user_principal_name, password
                        create_group            organisation_id|directory_id, name
                        add_group_member        group, member
                        enable_user             user
``exchange``            create_mailbox          mailbox_id, password|ad_user
(GroupActionWorkEx)     set_mailbox_quota       mailbox_id
                        add_email_address       mailbox_id, address
                        add_mailbox_permission  mailbox_id, trustee, permission
                        enable_mailbox          mailbox_id
``o365``                create_user             tenant_id, user_principal_name, display_name,
(Office365Work)                                 password
                        assign_licence          tenant_id, user
                        add_group_member        tenant_id, group_id, member
                        resume_subscription     subscription_id|partner_subscription_id
``vps``                 create_vm               host, name, memory_mb, disk_gb
(GroupActionWorkVPS)    start_vm                vm_id|host
                        add_disk                vm_id|host, size_gb
``general`` (hosting,   create_site             site_id
GroupActionWorkGeneral) change_quota            site_id, disk_quota_mb
                        create_ftp_account      site_id, user, password
                        create_database         db_server, subscription_id, name
                        create_database_user    db_server, database, user, password
``sip``                 create_company          platform, domain, customer_id
(GroupActionWorkSIP)    create_subscriber       platform, domain, username, password
                        assign_number           platform, domain, username, number
                        set_channel_limit       platform, domain (channel_limit: a number or null)
``lync`` (GroupAction   enable_user             pool, ad_user, sip_address
WorkLync)               set_line_uri            sip_address (line_uri)
                        grant_voice_policy      sip_address (policy)
======================  ======================  =================================================

SharePoint and CRM have no group-action processor yet: an item for them is refused (an order
that names them fails, it never waits for a queue nobody works).

**Templates.** A string value that is exactly ``{{customer_id}}``, ``{{order_id}}`` or
``{{subscription_id}}`` becomes the order's customer, the order, or the item's subscription (a
JSON integer, as the processors require); ``{{result:<position>.<key>}}`` becomes that key of
the job result of the item at ``position`` — which must be one of the item's ``depends_on``, so
it has succeeded — e.g. an Exchange mailbox enabled for the AD user an earlier item created
(``"ad_user": "{{result:1.object_guid}}"``). Templates are resolved anywhere in the object,
lists included; any other ``{{`` in a string is refused rather than sent on.
"""

from __future__ import annotations

import re
from typing import Any

ACTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "ad": {
        "create_organization": ("directory_id", "name"),
        "create_user": ("organisation_id|directory_id", "sam_account_name", "user_principal_name", "password"),
        "create_group": ("organisation_id|directory_id", "name"),
        "add_group_member": ("group", "member"),
        "enable_user": ("user",),
    },
    "exchange": {
        "create_mailbox": ("mailbox_id", "password|ad_user"),
        "set_mailbox_quota": ("mailbox_id",),
        "add_email_address": ("mailbox_id", "address"),
        "add_mailbox_permission": ("mailbox_id", "trustee", "permission"),
        "enable_mailbox": ("mailbox_id",),
    },
    "o365": {
        "create_user": ("tenant_id", "user_principal_name", "display_name", "password"),
        "assign_licence": ("tenant_id", "user"),
        "add_group_member": ("tenant_id", "group_id", "member"),
        "resume_subscription": ("subscription_id|partner_subscription_id",),
    },
    "vps": {
        "create_vm": ("host", "name", "memory_mb", "disk_gb"),
        "start_vm": ("vm_id|host",),
        "add_disk": ("vm_id|host", "size_gb"),
    },
    "general": {
        "create_site": ("site_id",),
        "change_quota": ("site_id", "disk_quota_mb"),
        "create_ftp_account": ("site_id", "user", "password"),
        "create_database": ("db_server", "subscription_id", "name"),
        "create_database_user": ("db_server", "database", "user", "password"),
    },
    "sip": {
        "create_company": ("platform", "domain", "customer_id"),
        "create_subscriber": ("platform", "domain", "username", "password"),
        "assign_number": ("platform", "domain", "username", "number"),
        "set_channel_limit": ("platform", "domain"),
    },
    "lync": {
        "enable_user": ("pool", "ad_user", "sip_address"),
        "set_line_uri": ("sip_address",),
        "grant_voice_policy": ("sip_address",),
    },
}

_REF = re.compile(r"\{\{\s*(customer_id|order_id|subscription_id|result:(\d+)\.([A-Za-z0-9_]+))\s*\}\}")


class ItemRefused(ValueError):
    """The item cannot become a job as written: the order fails with this reason."""


def render(template: dict, *, order_id: int, customer_id: int, subscription_id: int | None,
           depends_on: list[int], results: dict[int, Any]) -> dict:
    """The job payload of an item: its template with every reference filled in (see above)."""

    def value(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: value(v) for key, v in node.items()}
        if isinstance(node, list):
            return [value(v) for v in node]
        if not isinstance(node, str) or "{{" not in node:
            return node
        match = _REF.fullmatch(node.strip())
        if match is None:
            raise ItemRefused(f"payload template {node[:80]!r} is not a known reference")
        name, position, key = match.groups()
        if name == "customer_id":
            return customer_id
        if name == "order_id":
            return order_id
        if name == "subscription_id":
            if subscription_id is None:
                raise ItemRefused("payload refers to {{subscription_id}} but the item provisions none")
            return subscription_id
        position = int(position)
        if position not in depends_on:
            raise ItemRefused(f"payload refers to item {position}, which the item does not depend on")
        result = results.get(position)
        if not isinstance(result, dict) or result.get(key) is None:
            raise ItemRefused(f"item {position}'s job result has no {key!r}")
        return result[key]

    return value(template)


def check(backend: str, action: str, payload: dict) -> None:
    """Refuse an item whose backend or action is not an order action, or which lacks a required key."""
    actions = ACTIONS.get(backend)
    if actions is None:
        raise ItemRefused(f"no group-action processor for backend {backend!r}")
    required = actions.get(action)
    if required is None:
        raise ItemRefused(f"{backend} action {action!r} is not an order action")
    for keys in required:
        if all(payload.get(key) in (None, "") for key in keys.split("|")):
            raise ItemRefused(f"{backend} {action} payload has no {' or '.join(repr(k) for k in keys.split('|'))}")
