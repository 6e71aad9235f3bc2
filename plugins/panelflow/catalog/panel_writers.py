"""The panel tables the control panel itself fills: the one list of panel-side writers.

House rule: every panel table a step reads has a producer — another built step, a migration's seed
rows, or the panel (the web application staff, resellers and customers use, or its own
provisioning code, which is not rebuilt here). A step that reads a table nothing fills does
nothing in production. ``tests/catalog/test_producers.py`` reads every built step's SQL and fails
on a table read with none of the three; this list is the third.

A table belongs here only when the panel really writes its rows — someone types them in or the
panel's own provisioning creates them — never to silence the test: a table a thread should fill
(a backend's answers, a report, a notice) gets a step instead. Each entry says what writes it and
why it is not a step. Columns a step adds to a panel row (a status, a sync time) do not make the
table a step's: the rows are still the panel's.
"""

from __future__ import annotations

PANEL_WRITERS: dict[str, str] = {
    # -- the commercial model: who buys what, at which price -------------------------------------
    "providers": "Set-up: the hosting provider's own company profile (name, billing address, currency).",
    "currencies": "Set-up: the currencies staff enable for billing.",
    "resellers": "Staff create resellers and their commission terms in the panel.",
    "customers": "Sign-up in the panel's store, or staff and resellers creating an account.",
    "customer_contacts": "Customers and staff add contacts on the account page.",
    "credentials": "The panel's login store: written when an account is created or a password is set.",
    "sessions": "The panel's web sign-in writes a session per login; SessionsMgtWork only expires them.",
    "subscriptions": "Orders placed in the panel's store or by staff (plan, price, cycle, offer).",
    "subscription_addons": "Add-ons ordered on a subscription in the panel.",
    "subscription_quotas": "The quotas of the plan a subscription is on, set when it is ordered or upgraded.",
    "payment_profiles": "The card a customer stores at checkout (a gateway token only, 0006).",
    "domains": "Domains a customer adds or orders in the panel.",
    "report_schedules": "Customers and resellers schedule their usage reports in the panel.",
    "voice_rates": "Staff maintain the voice rate cards.",
    "voice_bundles": "Voice minute bundles ordered on a subscription.",
    "ppu_rates": "The panel's price list for pay-per-use, maintained by staff per plan (0028).",
    "service_orders": "The panel's order interface: the store writes each order to provision (0028).",
    "service_order_items": "The lines of a service order, written with it by the panel's store (0028).",
    "ssl_orders": "A certificate order a customer placed in the panel's store (0030).",
    "sip_contracts": "A SIP contract the panel writes when a customer signs for SIP trunking (0022).",
    "hosted_voice_contracts": "Written by the panel when a customer signs for hosted voice (0023).",
    "o365_orders": "The panel queues an O365 subscription to provision when one is ordered (0013).",
    # -- marketing and helpdesk, configured by staff ---------------------------------------------
    "email_campaigns": "Staff compose and schedule e-mail campaigns in the panel.",
    "email_campaign_recipients": "The recipients staff select when they schedule a campaign.",
    "email_unsubscribes": "The panel's unsubscribe link records each address that opts out.",
    "helpdesk_departments": "Staff set up the helpdesk's departments.",
    "helpdesk_pop_accounts": "Staff configure the POP3 mailboxes the helpdesk reads (connection per row).",
    "helpdesk_staff": "Staff accounts allowed to act on tickets by e-mail, set in the helpdesk settings.",
    # -- the platform: servers, accounts and settings the panel provisions onto ------------------
    "exchange_servers": "Staff register each Exchange server (name, FQDN, PSRP connection) in the panel (0016).",
    "exchange_organizations": "The panel creates a hosted Exchange tenant when a customer's plan is provisioned.",
    "exchange_mailboxes": "The panel creates a mailbox row (pending) with its group action; the job completes it.",
    "exchange_owa_policies": "Staff define OWA mailbox policies in the panel; GroupActionWorkEx creates them.",
    "csp_profiles": "Staff register each Partner Center account (CSP profile) and its connection (0013).",
    "registrar_accounts": "Staff register each registrar account and its connection (0010).",
    "hyperv_hosts": "Staff register each Hyper-V host and its connection in the panel (0018).",
    "sip_platforms": "Staff register each SIP platform and its connection (0022).",
    "monitors": "Staff define what MonitoringWork watches (the demo data adds the stack's own).",
    "crm_organizations": "The customer's Dynamics environment, written by the panel when it provisions CRM (0034).",
    "sharepoint_farms": "An operator adds a SharePoint farm and the PSRP connection of one of its servers (0033).",
    "sharepoint_online_tenants": "The tenants whose SharePoint Online the panel manages, opted in by staff (0033).",
    "ingram_subscriptions": "The panel's provisioning of Ingram products records each subscription it buys (0032).",
    "ingram_cancellations": "The panel's subscription page records a cancellation someone asks for (0032).",
    "bb_uem_servers": "The panel's BlackBerry settings page registers each UEM server and its connection (0035).",
    "ad_directories": "Staff register each Active Directory domain (its connection) in the panel.",
    "ad_staff": "Staff link an employee to an AD user on the employee page (0015).",
    "ad_user_mailbox_types": "Written where the panel creates or converts a mailbox (0019).",
    "hosting_database_users": "Hostmatic database logins the panel creates for an AD user (0019).",
    "exchange_spam_filter_settings": "Staff or customers set an organisation's spam filter levels in the panel.",
    "hosting_servers": "Staff register web, database and file servers in the panel (0024).",
    "hosted_sites": "The panel inserts a site as pending with its create_site job; the job completes it (0024).",
    "white_label_urls": "A reseller's branded panel URL, entered on the reseller's settings page (0024).",
    "workfolder_users": "The Work Folders page of a subscription grants a user the share (0025).",
    "hosting_transfers": "The panel queues a site or database transfer when staff or customers move one (0026).",
    "backup_targets": "Staff register the remote backup servers (SFTP connection, folder, retention) (0026).",
    "control_peers": "Staff register the load-balanced control servers (0026).",
    "peer_sync_items": "Staff choose the files and registry keys kept equal across control servers (0026).",
    "hostmatic_domains": "The panel provisions a domain's zone on the Hostmatic DNS backend (0010).",
    "lync_pools": "The Lync/SfB pools the panel's operators register (0023).",
    "m365_tenants": "The panel links a customer's Microsoft 365 tenant (consent and connection) (0012).",
    "teams_direct_routing": "Staff enable Teams Direct Routing for a tenant in the panel (0020).",
    "teams_sbcs": "The SBCs staff configure for a tenant's Direct Routing (0020).",
    "vps_thresholds": "CPU, memory and disk alert levels staff or customers set for a VPS (0018).",
    "workflow_definitions": "Staff design workflows (named sequences of steps) in the panel (0029).",
    "workflow_steps": "The numbered steps of a workflow definition, saved with it by the panel (0029).",
    "workflows": "The panel starts a workflow instance of a definition (0029).",
    "workflow_events": "Approvals given or refused by e-mail link or in the panel (record_approval, 0029).",
    "config_templates": "Staff define configuration-studio templates (0029).",
    "config_template_settings": "The settings of a configuration-studio template, saved with it (0029).",
    "config_applications": "The panel queues a template for a server when staff apply it (0029).",
}


# Tables panelflow's own machinery writes — the task runtime and the Threads Manager, neither a
# step nor the panel — that a step reads (the daily digest of SendEmailNotificationsWork).
PANELFLOW_WRITERS: dict[str, str] = {
    "step_run_counts": "The StepOperator records each successful try's summary counts (services.run_counts, 0040).",
    "step_failures": "The failure callback (alerts.ThreadFailureNotifier) records each step failed for good (0042).",
    "failed_action_dismissals": "An operator's Dismiss in the Threads Manager's failed-actions queue (0041).",
}
