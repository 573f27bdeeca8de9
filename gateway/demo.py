"""The demo installation as text: Acme's org file, its HR-export CSV and a ticketgate config.

``ticketgate init --demo`` writes :func:`demo_config_toml` at the config path and the files of
:func:`demo_org_files` beside it (``org.toml`` names ``employees.csv`` relative to itself), then
imports the org. Nothing here touches the disk.

The organisation: Acme Corporation, two branches in different time zones (Berlin, New York),
six departments with intake addresses at ``acme.example`` and two role levels each, sixteen
employees (eleven inline, five from the CSV, one of them deactivated). The gateway's own mail
domain is ``tickets.acme.example``: every employee can be reached (and Bcc'd) at
``<local part>@tickets.acme.example``.
"""

from __future__ import annotations

import json

DEMO_ORG_FILE = "org.toml"
DEMO_EMPLOYEES_CSV_FILE = "employees.csv"
DEMO_MAIL_DOMAIN = "tickets.acme.example"

DEMO_ORG_TOML = """\
# Acme Corporation -- the ticketgate demo organisation.
# Import (idempotent): ticketgate org import org.toml

[organization]
name = "Acme Corporation"
domains = ["acme.example"]
# The Slack workspace (team id) and app whose requests act for Acme (SPEC §3).
slack_team_id = "T0DEMO"
slack_app_id = "A0DEMO"
# More employees, as HR exports them (columns email,name,branch,department,role).
employees_csv = "employees.csv"

# --- categories (organisation-wide) ---------------------------------------------------------

[[categories]]
name = "Hardware"
sub_categories = ["Mouse", "Keyboard", "Laptop", "Monitor", "Printer"]

[[categories]]
name = "Software"
sub_categories = ["Installation", "Licence", "Bug", "Email"]

[[categories]]
name = "Access"
sub_categories = ["Account", "Password reset", "VPN", "Building badge"]

[[categories]]
name = "Facilities"
sub_categories = ["Desk", "Heating", "Cleaning", "Meeting room"]

[[categories]]
name = "HR"
sub_categories = ["Leave", "Payroll", "Onboarding", "Certificate"]

[[categories]]
name = "Finance"
sub_categories = ["Expenses", "Invoice", "Purchase order"]

# --- Berlin ---------------------------------------------------------------------------------
# A branch's calendar: its time zone, weekly working_hours (mon..sun, "HH:MM-HH:MM", several
# spans comma separated; a branch without working_hours works round the clock) and holidays
# (dates; optionally holiday_country/holiday_subdivision as for New York below).

[[branches]]
name = "Berlin"
timezone = "Europe/Berlin"
holidays = [
  "2026-01-01", "2026-04-03", "2026-04-06", "2026-05-01", "2026-05-14",
  "2026-05-25", "2026-10-03", "2026-12-25", "2026-12-26",
]

[branches.working_hours]
mon = "08:00-17:00"
tue = "08:00-17:00"
wed = "08:00-17:00"
thu = "08:00-17:00"
fri = "08:00-15:00"

[[branches.departments]]
name = "IT"
address = "it@acme.example"
slack_channel = "C0ITSUPPORT"
default_category = "Hardware"

[[branches.departments.roles]]
name = "Technician"
level = 1

[[branches.departments.roles]]
name = "IT Manager"
level = 2

# SLA (SPEC §4), in business hours of the department's branch (working_hours above, minus
# holidays). The first policy that fits a ticket applies: `categories` ("Top" or "Top/Sub")
# and `priorities` narrow it; a policy naming neither fits every ticket. first_response is met
# by take, reply or return; resolution by DELIVERED; the clocks stop while RETURNED, ON_HOLD
# or PENDING. Breach → each escalation step, `after` that much business time past the
# breach: ESCALATED and level + 1, and `notify` (owner | higher_authority |
# employee:<email> | department:<address>) is told; the last step also moves the ticket
# TO_HIGHER_AUTHORITY.

[[branches.departments.sla]]
name = "IT standard"
first_response = "4h"
resolution = "24h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "2h"
notify = "higher_authority"

[[branches.departments.sla.escalation]]
after = "4h"
notify = "employee:carol@acme.example"

[[branches.departments]]
name = "Facilities"
address = "facilities@acme.example"
slack_channel = "C0FACILITIES"
default_category = "Facilities"

[[branches.departments.roles]]
name = "Facilities Coordinator"
level = 1

[[branches.departments.roles]]
name = "Facilities Manager"
level = 2

[[branches.departments.sla]]
name = "Facilities urgent"
priorities = ["urgent", "high"]
first_response = "1h"
resolution = "4h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "higher_authority"

[[branches.departments.sla]]
name = "Facilities standard"
first_response = "8h"
resolution = "40h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "4h"
notify = "higher_authority"

[[branches.departments]]
name = "Engineering"
address = "engineering@acme.example"
default_category = "Software"

[[branches.departments.roles]]
name = "Developer"
level = 1

[[branches.departments.roles]]
name = "Engineering Lead"
level = 2

[[branches.departments.sla]]
name = "Engineering bugs"
categories = ["Software/Bug"]
first_response = "2h"
resolution = "16h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "2h"
notify = "higher_authority"

[[branches.departments.sla]]
name = "Engineering standard"
first_response = "8h"
resolution = "80h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "8h"
notify = "higher_authority"

# --- New York -------------------------------------------------------------------------------

[[branches]]
name = "New York"
timezone = "America/New_York"
# Public holidays of a country (and subdivision) from the `holidays` package, in addition to
# the dates listed: the calendar does not go stale in January.
holiday_country = "US"
holiday_subdivision = "NY"
holidays = [
  "2026-01-01", "2026-01-19", "2026-05-25", "2026-07-03", "2026-09-07",
  "2026-11-26", "2026-11-27", "2026-12-25",
]

[branches.working_hours]
mon = "09:00-18:00"
tue = "09:00-18:00"
wed = "09:00-18:00"
thu = "09:00-18:00"
fri = "09:00-17:00"

[[branches.departments]]
name = "HR"
address = "hr@acme.example"
default_category = "HR"

[[branches.departments.roles]]
name = "HR Specialist"
level = 1

[[branches.departments.roles]]
name = "HR Director"
level = 2

[[branches.departments.sla]]
name = "HR standard"
first_response = "8h"
resolution = "40h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "8h"
notify = "higher_authority"

[[branches.departments]]
name = "Finance"
address = "finance@acme.example"
default_category = "Finance"

[[branches.departments.roles]]
name = "Accountant"
level = 1

[[branches.departments.roles]]
name = "Finance Controller"
level = 2

[[branches.departments.sla]]
name = "Finance standard"
first_response = "4h"
resolution = "24h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "4h"
notify = "department:hr@acme.example"

[[branches.departments]]
name = "Sales"
address = "sales@acme.example"
default_category = "Software"

[[branches.departments.roles]]
name = "Account Executive"
level = 1

[[branches.departments.roles]]
name = "Sales Director"
level = 2

[[branches.departments.sla]]
name = "Sales standard"
first_response = "4h"
resolution = "16h"

[[branches.departments.sla.escalation]]
after = "0m"
notify = "owner"

[[branches.departments.sla.escalation]]
after = "2h"
notify = "higher_authority"

# --- employees (more in employees.csv) ------------------------------------------------------

[[employees]]
email = "alice@acme.example"
name = "Alice Adams"
branch = "Berlin"
department = "IT"
role = "Technician"
gateway_address = "alice@tickets.acme.example"
slack_user_id = "U0ALICE"

[[employees]]
email = "bob@acme.example"
name = "Bob Becker"
branch = "Berlin"
department = "IT"
role = "Technician"

[[employees]]
email = "carol@acme.example"
name = "Carol Schmidt"
branch = "Berlin"
department = "IT"
role = "IT Manager"
slack_user_id = "U0CAROL"

[[employees]]
email = "victor@acme.example"
name = "Victor Klein"
branch = "Berlin"
department = "IT"
role = "Technician"
active = false

[[employees]]
email = "dieter@acme.example"
name = "Dieter Fischer"
branch = "Berlin"
department = "Facilities"
role = "Facilities Coordinator"

[[employees]]
email = "eva@acme.example"
name = "Eva Wagner"
branch = "Berlin"
department = "Facilities"
role = "Facilities Manager"

[[employees]]
email = "karl@acme.example"
name = "Karl Braun"
branch = "Berlin"
department = "Engineering"
role = "Developer"
slack_user_id = "U0KARL"

[[employees]]
email = "lena@acme.example"
name = "Lena Vogel"
branch = "Berlin"
department = "Engineering"
role = "Developer"

[[employees]]
email = "mia@acme.example"
name = "Mia Hoffmann"
branch = "Berlin"
department = "Engineering"
role = "Engineering Lead"

[[employees]]
email = "frank@acme.example"
name = "Frank Miller"
branch = "New York"
department = "HR"
role = "HR Specialist"

[[employees]]
email = "grace@acme.example"
name = "Grace Lee"
branch = "New York"
department = "HR"
role = "HR Director"
"""

DEMO_EMPLOYEES_CSV = """\
email,name,branch,department,role
henry@acme.example,Henry Ortiz,New York,Finance,Accountant
irene@acme.example,Irene Chen,New York,Finance,Accountant
james@acme.example,James Walker,New York,Finance,Finance Controller
nora@acme.example,Nora Davis,New York,Sales,Account Executive
paula@acme.example,Paula Garcia,New York,Sales,Sales Director
"""


def demo_org_files() -> dict[str, str]:
    """File name → text of the demo org, to be written side by side (the config's folder)."""
    return {DEMO_ORG_FILE: DEMO_ORG_TOML, DEMO_EMPLOYEES_CSV_FILE: DEMO_EMPLOYEES_CSV}


def _toml_string(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def demo_config_toml(secret: str) -> str:
    """The demo's ticketgate.toml; paths in it are relative to the file's own folder."""
    return f"""\
# ticketgate demo configuration, written by `ticketgate init --demo`.
# Every key, with its default, is explained in config.example.toml. Relative paths are
# relative to this file's folder. Any key can be overridden from the environment:
# TICKETGATE__SECTION__KEY, e.g. TICKETGATE__SMTP__PORT=2526.

[database]
url = "sqlite:///ticketgate.db"

[org]
file = "{DEMO_ORG_FILE}"

[smtp]
enabled = true
host = "127.0.0.1"
port = 2525

[mail]
domain = "{DEMO_MAIL_DOMAIN}"
# HMAC key for reply addresses: keep it secret; rotating it revokes every reply address.
secret = {_toml_string(secret)}
default_department = "it@acme.example"

[outbound]
# Mail is written to this Maildir instead of being relayed: look in var/outbox/new/.
transport = "maildir"
maildir = "var/outbox"

[imap]
enabled = false

[slack]
enabled = false

[scheduler]
enabled = true
tick_seconds = 30

[http]
enabled = true
host = "127.0.0.1"
port = 8025
"""
