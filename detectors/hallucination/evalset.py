"""A hand-written, labelled evaluation set for groundedness scores.

Every case is a retrieved context from one domain (billing and support,
travel, healthcare administration, software documentation, finance, HR,
shipping, insurance, education, utilities) with responses written by hand:

* ``faithful`` (label 0): paraphrases that say what the context says in
  other words, often with few shared words, numbers written differently
  ("two weeks" for "14 days", "$1,200" as "1200 dollars") or only part of
  the context;
* extracts (label 0): each of the first two context sentences quoted as
  is, because extractive answers are common and a set without them would
  reward any score that simply distrusts word overlap;
* ``hallucinated`` (label 1): responses that differ from the context by one
  thing, tagged with its type: ``number``, ``amount`` (money or
  percentage), ``date_time``, ``entity`` (a name), ``condition`` (a bound
  or exception changed, added or dropped), ``negation`` (flipped), or
  ``added_claim`` (one plausible sentence or clause the context does not
  support).

None of these responses was produced by the perturbation code used for
training (:mod:`detectors.hallucination.train`), and the contexts here share
no sentence with the training contexts (a test checks it), so the AUROC
measured on this set is not the training objective in disguise.

``data/eval.jsonl`` holds one item per line (``id``, ``domain``,
``context``, ``response``, ``label``, ``type``); :func:`write_jsonl`
regenerates it from :data:`CASES`.

>>> items = load()
>>> len(items) >= 300, sorted({i["label"] for i in items})
(True, [0, 1])
>>> items[0]["type"], items[0]["domain"]
('faithful', 'billing')
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from detectors.hallucination.text import sentences

__all__ = ["CASES", "items", "load", "write_jsonl"]

EVAL_FILE = "eval.jsonl"

# (domain, context, faithful responses, [(type, hallucinated response), ...])
Case = tuple[str, str, list[str], list[tuple[str, str]]]

CASES: list[Case] = [
    (
        "billing",
        "Annual plans can be cancelled within 30 days of purchase for a full refund. After that, "
        "the remaining months are credited to your account rather than refunded. Refunds reach "
        "the original card in 5 to 10 business days.",
        [
            "If you cancel your yearly subscription in the first thirty days, you get all your money back.",
            "Past the first month, unused time on an annual plan becomes account credit instead of cash back.",
            "Expect the money on the card you paid with after five to ten working days.",
        ],
        [
            ("number", "Annual plans can be cancelled within 60 days of purchase for a full refund."),
            ("condition", "Annual plans can be cancelled at any time for a full refund."),
            ("negation", "After that, the remaining months are not credited to your account."),
            ("added_claim", "You can cancel an annual plan within 30 days for a full refund, minus a $15 processing fee."),
            ("number", "Refunds reach the original card in 1 to 2 business days."),
            ("added_claim", "After 30 days the remaining months become account credit, which expires after six months."),
        ],
    ),
    (
        "billing",
        "Late payments incur a fee of $25 or 1.5% of the overdue balance, whichever is greater. "
        "The fee is waived once per calendar year for customers on the Business tier.",
        [
            "Paying late costs you 25 dollars or one and a half percent of what you owe, taking the higher of the two.",
            "Business-tier customers get one late fee forgiven each calendar year.",
            "Overdue balances attract a charge: whichever is larger of $25.00 and 1.5 percent of the amount.",
        ],
        [
            ("amount", "Late payments incur a fee of $35 or 1.5% of the overdue balance, whichever is greater."),
            ("amount", "Late payments incur a fee of $25 or 2.5% of the overdue balance, whichever is greater."),
            ("condition", "Late payments incur a fee of $25 or 1.5% of the overdue balance, whichever is smaller."),
            ("entity", "The fee is waived once per calendar year for customers on the Enterprise tier."),
            ("number", "The fee is waived twice per calendar year for customers on the Business tier."),
            ("added_claim", "Business-tier customers get one late fee forgiven per year, and repeat late payers are moved to prepaid billing."),
        ],
    ),
    (
        "billing",
        "Invoices are generated on the 1st of each month and are due within 15 days. "
        "We accept Visa, Mastercard and bank transfer; American Express is not accepted.",
        [
            "A new bill is issued at the start of every month, and you have fifteen days to pay it.",
            "You can pay by Visa, Mastercard or a bank transfer, but Amex cards won't work.",
            "Payment is expected no later than 15 days after the monthly invoice goes out.",
        ],
        [
            ("number", "Invoices are generated on the 1st of each month and are due within 30 days."),
            ("entity", "We accept Visa, Mastercard and PayPal; American Express is not accepted."),
            ("negation", "We accept Visa, Mastercard, bank transfer and American Express."),
            ("date_time", "Invoices are generated on the 15th of each month and are due within 15 days."),
            ("added_claim", "You can pay by Visa, Mastercard or bank transfer, and card payments get a 2% discount."),
            ("condition", "Invoices are due within 15 days, unless you pay by bank transfer, which allows 45 days."),
        ],
    ),
    (
        "support",
        "Our phone support is available Monday to Friday from 8:00 to 18:00 CET. Chat support "
        "runs around the clock for Premium subscribers only.",
        [
            "You can call us on weekdays between 8 am and 6 pm Central European Time.",
            "Round-the-clock chat is a Premium perk; other plans don't get it.",
            "Phone lines open at eight in the morning and close at six in the evening, CET, on weekdays.",
        ],
        [
            ("date_time", "Our phone support is available Monday to Friday from 9:00 to 17:00 CET."),
            ("date_time", "Our phone support is available Monday to Saturday from 8:00 to 18:00 CET."),
            ("condition", "Chat support runs around the clock for all subscribers."),
            ("entity", "Chat support runs around the clock for Enterprise subscribers only."),
            ("added_claim", "Phone support is open on weekdays from 8:00 to 18:00 CET, and callbacks are guaranteed within 2 hours."),
            ("negation", "Chat support does not run around the clock, even for Premium subscribers."),
        ],
    ),
    (
        "support",
        "Password reset links expire after 60 minutes. If you request more than 5 links in an hour, "
        "your account is locked for 24 hours to protect it.",
        [
            "A reset link stops working one hour after it is sent.",
            "Asking for over five reset emails within an hour triggers a day-long lock on the account.",
            "For safety, too many reset requests (more than 5 in 60 minutes) freeze the account for a full day.",
        ],
        [
            ("number", "Password reset links expire after 15 minutes."),
            ("number", "If you request more than 3 links in an hour, your account is locked for 24 hours."),
            ("number", "If you request more than 5 links in an hour, your account is locked for 48 hours."),
            ("condition", "If you request at least 5 links in an hour, your account is locked for 24 hours."),
            ("added_claim", "Reset links expire after 60 minutes and can only be opened on the device that requested them."),
            ("negation", "Password reset links do not expire."),
        ],
    ),
    (
        "support",
        "Data exports are available in CSV and JSON formats. Exports larger than 2 GB are split into "
        "several files and emailed as download links that stay valid for 7 days.",
        [
            "You can download your data as CSV or as JSON.",
            "Big exports, over two gigabytes, come in multiple parts; the emailed links work for a week.",
            "If an export exceeds 2 GB we break it up and send you links, which are good for one week.",
        ],
        [
            ("entity", "Data exports are available in CSV and XML formats."),
            ("number", "Exports larger than 5 GB are split into several files and emailed as download links."),
            ("number", "The download links for large exports stay valid for 30 days."),
            ("added_claim", "Exports are available in CSV and JSON, and each account can run one export per day."),
            ("condition", "Exports smaller than 2 GB are split into several files and emailed as download links."),
            ("negation", "Exports larger than 2 GB are not split and cannot be emailed."),
        ],
    ),
    (
        "travel",
        "Economy Light fares include one personal item up to 40 x 30 x 15 cm. A cabin bag can be "
        "added for EUR 20 when booking or EUR 35 at the airport.",
        [
            "On Economy Light you may bring a single small personal item measuring at most 40 by 30 by 15 cm.",
            "Adding a cabin bag costs 20 euros during booking, but 35 euros if you wait until the airport.",
            "Buying the cabin bag upfront is cheaper: €20 online versus €35 at the desk.",
        ],
        [
            ("amount", "A cabin bag can be added for EUR 25 when booking or EUR 35 at the airport."),
            ("amount", "A cabin bag can be added for EUR 20 when booking or EUR 50 at the airport."),
            ("number", "Economy Light fares include two personal items up to 40 x 30 x 15 cm."),
            ("negation", "Economy Light fares do not include a personal item."),
            ("added_claim", "Economy Light includes one personal item, and a free checked bag on long-haul routes."),
            ("entity", "Economy Flex fares include one personal item up to 40 x 30 x 15 cm."),
        ],
    ),
    (
        "travel",
        "Free cancellation is possible until 48 hours before check-in. Cancellations made later are "
        "charged the first night. No-shows are charged the full stay.",
        [
            "You can cancel at no cost as long as it is two days or more ahead of arrival.",
            "Cancel late and you pay for one night; don't turn up and you pay for every night booked.",
            "If you cancel inside the last 48 hours you lose the price of the first night.",
        ],
        [
            ("number", "Free cancellation is possible until 24 hours before check-in."),
            ("number", "Cancellations made later are charged the first two nights."),
            ("condition", "Free cancellation is possible until 48 hours after check-in."),
            ("negation", "No-shows are not charged."),
            ("added_claim", "Free cancellation is possible until 48 hours before check-in, and you can rebook once for free."),
            ("amount", "Cancellations made later are charged 50% of the first night."),
        ],
    ),
    (
        "travel",
        "The airport shuttle leaves from Terminal 2 every 20 minutes between 5:30 and 23:00. Tickets "
        "cost 4 euros one way and are free for children under 6.",
        [
            "Shuttles depart Terminal 2 three times an hour from half past five in the morning until 11 pm.",
            "A single ride is 4 EUR; kids younger than six travel for nothing.",
            "Catch the shuttle at Terminal 2; one runs every twenty minutes until 11 at night.",
        ],
        [
            ("entity", "The airport shuttle leaves from Terminal 1 every 20 minutes between 5:30 and 23:00."),
            ("number", "The airport shuttle leaves from Terminal 2 every 30 minutes between 5:30 and 23:00."),
            ("date_time", "The airport shuttle leaves from Terminal 2 every 20 minutes between 5:30 and 1:00."),
            ("amount", "Tickets cost 6 euros one way and are free for children under 6."),
            ("number", "Tickets cost 4 euros one way and are free for children under 12."),
            ("added_claim", "Tickets cost 4 euros one way, or 7 euros for a return."),
        ],
    ),
    (
        "travel",
        "Visitors from the EU can stay in the country for up to 90 days without a visa. A passport "
        "valid for at least 6 months after arrival is required.",
        [
            "EU citizens may remain visa-free for as long as three months.",
            "Your passport needs six or more months of validity left when you arrive.",
            "No visa is needed for EU travellers staying 90 days or fewer, but the passport must not expire within half a year of entry.",
        ],
        [
            ("number", "Visitors from the EU can stay in the country for up to 180 days without a visa."),
            ("number", "A passport valid for at least 3 months after arrival is required."),
            ("entity", "Visitors from Canada can stay in the country for up to 90 days without a visa."),
            ("condition", "A passport valid for at most 6 months after arrival is required."),
            ("negation", "Visitors from the EU cannot stay in the country without a visa."),
            ("added_claim", "EU visitors can stay up to 90 days without a visa but must register with the police within 3 days."),
        ],
    ),
    (
        "travel",
        "Flight 482 to Lisbon departs at 14:35 from gate B12. Boarding closes 20 minutes before departure.",
        [
            "The Lisbon flight, number 482, leaves at 2:35 pm from B12.",
            "Be at the gate in time: boarding shuts twenty minutes prior to take-off.",
            "Gate B12 is where you board flight 482 to Lisbon, which is scheduled for 14:35.",
        ],
        [
            ("date_time", "Flight 482 to Lisbon departs at 15:35 from gate B12."),
            ("entity", "Flight 482 to Porto departs at 14:35 from gate B12."),
            ("entity", "Flight 482 to Lisbon departs at 14:35 from gate C12."),
            ("number", "Flight 428 to Lisbon departs at 14:35 from gate B12."),
            ("number", "Boarding closes 40 minutes before departure."),
            ("added_claim", "Flight 482 to Lisbon departs at 14:35 from gate B12 and includes a free meal."),
        ],
    ),
    (
        "healthcare",
        "New patients should arrive 15 minutes early to complete registration. Please bring a photo ID "
        "and your insurance card. Appointments missed without 24 hours notice are billed $50.",
        [
            "First-time patients need to come a quarter of an hour ahead to fill in the forms.",
            "Bring identification with a photo plus your insurance card.",
            "If you skip a visit and don't tell us a day in advance, you'll be charged fifty dollars.",
        ],
        [
            ("number", "New patients should arrive 30 minutes early to complete registration."),
            ("amount", "Appointments missed without 24 hours notice are billed $75."),
            ("number", "Appointments missed without 48 hours notice are billed $50."),
            ("negation", "New patients do not need to bring a photo ID."),
            ("added_claim", "Please bring a photo ID, your insurance card and a list of current medications."),
            ("condition", "Appointments missed without 24 hours notice are billed $50 only for new patients."),
        ],
    ),
    (
        "healthcare",
        "Dr. Nadia Haddad sees pediatric patients on Tuesdays and Thursdays. Dr. Paul Brennan covers "
        "Mondays and Wednesdays. The clinic is closed on Sundays.",
        [
            "Children can be seen by Dr. Haddad on Tuesday or Thursday.",
            "On Mondays and Wednesdays, Dr. Brennan is the doctor on duty.",
            "There are no appointments on Sunday because the clinic doesn't open.",
        ],
        [
            ("entity", "Dr. Nadia Haddad sees pediatric patients on Mondays and Wednesdays."),
            ("entity", "Dr. Nadia Karimi sees pediatric patients on Tuesdays and Thursdays."),
            ("date_time", "Dr. Paul Brennan covers Mondays and Fridays."),
            ("negation", "The clinic is open on Sundays."),
            ("added_claim", "Dr. Paul Brennan covers Mondays and Wednesdays and also runs the allergy clinic."),
            ("date_time", "The clinic is closed on Saturdays."),
        ],
    ),
    (
        "healthcare",
        "Prescription refills can be requested through the patient portal and are ready within "
        "2 business days. Controlled substances cannot be refilled online.",
        [
            "Use the portal to ask for a refill; it will be ready in two working days or less.",
            "Refills for controlled medications have to be handled some other way, not online.",
            "Ask for repeat prescriptions on the patient portal and collect them no more than 2 business days later.",
        ],
        [
            ("number", "Prescription refills are ready within 5 business days."),
            ("negation", "Controlled substances can be refilled online."),
            ("condition", "Prescription refills are ready within 2 business days, except on Fridays."),
            ("added_claim", "Refills are ready within 2 business days and can be delivered to your home for free."),
            ("entity", "Prescription refills can be requested through the MyChart app and are ready within 2 business days."),
            ("condition", "Only controlled substances can be refilled through the patient portal."),
        ],
    ),
    (
        "healthcare",
        "Medical records requests are processed within 30 days. Copies are free for the first 20 pages "
        "and cost 25 cents per page after that.",
        [
            "We handle requests for your records in a month or less.",
            "The first twenty pages are copied at no charge; each extra page is $0.25.",
            "Beyond page 20, every copied page costs a quarter dollar.",
        ],
        [
            ("number", "Medical records requests are processed within 10 days."),
            ("number", "Copies are free for the first 50 pages."),
            ("amount", "Copies cost 50 cents per page after the first 20 pages."),
            ("negation", "Copies are not free, even for the first 20 pages."),
            ("added_claim", "Records requests are processed within 30 days, or within 48 hours for urgent cases."),
            ("condition", "Copies are free for at least the first 20 pages and then cost 25 cents per page."),
        ],
    ),
    (
        "healthcare",
        "The flu vaccination clinic runs from October 2 to November 15. Walk-ins are welcome for adults; "
        "children under 12 need an appointment.",
        [
            "Flu shots are offered between the 2nd of October and the 15th of November.",
            "Grown-ups can just turn up, but kids younger than twelve must book first.",
            "No booking is needed for adults at the flu clinic.",
        ],
        [
            ("date_time", "The flu vaccination clinic runs from October 2 to December 15."),
            ("date_time", "The flu vaccination clinic runs from September 2 to November 15."),
            ("number", "Children under 5 need an appointment."),
            ("negation", "Walk-ins are not accepted for adults."),
            ("added_claim", "Walk-ins are welcome for adults, and the vaccine is free for everyone over 65."),
            ("condition", "Walk-ins are welcome only for children under 12."),
        ],
    ),
    (
        "software",
        "The API allows 100 requests per minute per key. Requests above the limit receive HTTP 429 "
        "with a Retry-After header. The limit resets at the start of each minute.",
        [
            "Each API key may make a hundred calls a minute.",
            "Go over the cap and you'll get a 429 response telling you when to try again.",
            "Every minute the quota starts fresh.",
        ],
        [
            ("number", "The API allows 1000 requests per minute per key."),
            ("number", "Requests above the limit receive HTTP 503 with a Retry-After header."),
            ("date_time", "The API allows 100 requests per hour per key."),
            ("added_claim", "The API allows 100 requests per minute per key, and Enterprise keys have no limit."),
            ("condition", "The API allows 100 requests per minute per account, shared by all keys."),
            ("negation", "Requests above the limit are not rejected."),
        ],
    ),
    (
        "software",
        "Version 3.2 drops support for Python 3.8. The minimum supported version is now Python 3.9, "
        "and the library is tested on Linux, macOS and Windows.",
        [
            "As of release 3.2, Python 3.8 is no longer supported.",
            "You need Python 3.9 or newer from now on.",
            "CI covers Linux, macOS and Windows.",
        ],
        [
            ("number", "Version 3.2 drops support for Python 3.7."),
            ("number", "The minimum supported version is now Python 3.10."),
            ("entity", "The library is tested on Linux, macOS and FreeBSD."),
            ("negation", "Version 3.2 does not drop support for Python 3.8."),
            ("added_claim", "Version 3.2 drops support for Python 3.8 and adds native support for async iterators."),
            ("number", "Version 4.0 drops support for Python 3.8."),
        ],
    ),
    (
        "software",
        "Set the environment variable MAX_WORKERS to control concurrency; the default is 4. "
        "Values above 32 are ignored and a warning is logged.",
        [
            "Concurrency is configured with MAX_WORKERS, which is 4 unless you change it.",
            "If you put more than thirty-two in MAX_WORKERS it has no effect, and you'll see a warning in the logs.",
            "Out of the box four workers run in parallel.",
        ],
        [
            ("number", "Set the environment variable MAX_WORKERS to control concurrency; the default is 8."),
            ("number", "Values above 64 are ignored and a warning is logged."),
            ("entity", "Set the environment variable WORKER_COUNT to control concurrency; the default is 4."),
            ("negation", "Values above 32 are ignored and no warning is logged."),
            ("added_claim", "The default for MAX_WORKERS is 4, and changing it requires a restart of the scheduler."),
            ("condition", "Values below 32 are ignored and a warning is logged."),
        ],
    ),
    (
        "software",
        "Backups run nightly at 02:00 UTC and are kept for 35 days. Point-in-time restore is "
        "available for the last 7 days.",
        [
            "A backup is taken every night at 2 am UTC and retained for five weeks.",
            "You can restore to any moment within the past week.",
            "Each night's backup is stored for 35 days before deletion.",
        ],
        [
            ("date_time", "Backups run nightly at 04:00 UTC and are kept for 35 days."),
            ("number", "Backups run nightly at 02:00 UTC and are kept for 90 days."),
            ("number", "Point-in-time restore is available for the last 14 days."),
            ("date_time", "Backups run weekly at 02:00 UTC and are kept for 35 days."),
            ("added_claim", "Backups run nightly at 02:00 UTC and are encrypted with a customer-managed key."),
            ("negation", "Point-in-time restore is not available."),
        ],
    ),
    (
        "software",
        "Deleting a project is permanent and cannot be undone. Only organization owners can delete "
        "projects, and all members are notified by email.",
        [
            "Once a project is removed, there is no way to bring it back.",
            "Project deletion is restricted to owners of the organization; every member gets an email about it.",
            "You won't be able to recover a deleted project.",
        ],
        [
            ("negation", "Deleting a project can be undone within a day."),
            ("condition", "Organization owners and admins can delete projects."),
            ("entity", "Only workspace admins can delete projects."),
            ("negation", "Only organization owners can delete projects, and members are not notified."),
            ("added_claim", "Deleting a project is permanent, and its data is exported to your email first."),
            ("number", "Deleting a project is permanent after 30 days."),
        ],
    ),
    (
        "finance",
        "The savings account pays 3.1% annual interest, credited monthly. Withdrawals are limited to "
        "6 per month without a fee.",
        [
            "Interest on the savings account is 3.1 percent a year, paid into the account every month.",
            "You get up to six free withdrawals each month.",
            "Make no more than 6 withdrawals in a month and you won't pay any fee.",
        ],
        [
            ("amount", "The savings account pays 3.5% annual interest, credited monthly."),
            ("date_time", "The savings account pays 3.1% annual interest, credited quarterly."),
            ("number", "Withdrawals are limited to 3 per month without a fee."),
            ("condition", "Withdrawals are limited to at least 6 per month without a fee."),
            ("added_claim", "The account pays 3.1% interest per year, with a $100 bonus for new customers."),
            ("negation", "Withdrawals are not limited."),
        ],
    ),
    (
        "finance",
        "Wire transfers received before 4 pm Eastern are credited the same business day. "
        "International wires cost $45 and domestic wires cost $25.",
        [
            "If the wire arrives by 4 p.m. ET, the funds post that same working day.",
            "Sending money abroad by wire is 45 dollars; within the country it's 25 dollars.",
            "Domestic wire transfers carry a $25 charge.",
        ],
        [
            ("date_time", "Wire transfers received before 2 pm Eastern are credited the same business day."),
            ("amount", "International wires cost $55 and domestic wires cost $25."),
            ("amount", "International wires cost $45 and domestic wires cost $15."),
            ("condition", "Wire transfers received after 4 pm Eastern are credited the same business day."),
            ("added_claim", "Domestic wires cost $25, and they are free for Premier checking customers."),
            ("negation", "Wire transfers received before 4 pm Eastern are not credited the same day."),
        ],
    ),
    (
        "finance",
        "Contributions to the retirement plan are capped at $23,000 for 2024. Employees aged 50 or "
        "older may contribute an extra $7,500.",
        [
            "For 2024 you can put at most 23,000 dollars into the plan.",
            "Workers who are fifty and up can add another 7500 dollars on top.",
            "The 2024 ceiling on plan contributions is $23k.",
        ],
        [
            ("amount", "Contributions to the retirement plan are capped at $22,500 for 2024."),
            ("date_time", "Contributions to the retirement plan are capped at $23,000 for 2023."),
            ("number", "Employees aged 55 or older may contribute an extra $7,500."),
            ("amount", "Employees aged 50 or older may contribute an extra $6,500."),
            ("condition", "Employees younger than 50 may contribute an extra $7,500."),
            ("added_claim", "Contributions are capped at $23,000 for 2024, and the employer matches the first 6%."),
        ],
    ),
    (
        "finance",
        "Card disputes must be filed within 60 days of the statement date. A provisional credit is "
        "usually issued within 10 business days while we investigate.",
        [
            "You have two months from the statement to raise a dispute on a card charge.",
            "While the investigation runs, a temporary credit normally lands in ten working days or fewer.",
            "Dispute deadline: 60 days counted from the date on the statement.",
        ],
        [
            ("number", "Card disputes must be filed within 90 days of the statement date."),
            ("number", "A provisional credit is usually issued within 3 business days while we investigate."),
            ("condition", "Card disputes must be filed at least 60 days after the statement date."),
            ("negation", "No provisional credit is issued while we investigate."),
            ("added_claim", "Disputes must be filed within 60 days, and a $10 fee applies if the dispute is rejected."),
            ("condition", "A provisional credit is always issued within 10 business days."),
        ],
    ),
    (
        "finance",
        "Orion Bank charges no monthly fee on the Student account for customers under 25. "
        "Overdrafts are not available on this account.",
        [
            "Customers younger than twenty-five pay nothing per month for Orion Bank's Student account.",
            "You can't go into overdraft with the Student account.",
            "Orion Bank's Student account has zero monthly fees for under-25s.",
        ],
        [
            ("entity", "Northway Bank charges no monthly fee on the Student account for customers under 25."),
            ("number", "Orion Bank charges no monthly fee on the Student account for customers under 30."),
            ("negation", "Overdrafts are available on this account."),
            ("amount", "Orion Bank charges a $2 monthly fee on the Student account for customers under 25."),
            ("added_claim", "The Student account has no monthly fee for under-25s and includes free travel insurance."),
            ("entity", "Orion Bank charges no monthly fee on the Graduate account for customers under 25."),
        ],
    ),
    (
        "hr",
        "Full-time employees accrue 25 days of paid vacation per year. Up to 5 unused days can be "
        "carried over to the next year; the rest expire on March 31.",
        [
            "People working full time earn twenty-five days of paid holiday annually.",
            "You may roll at most five leftover days into the following year.",
            "Any unused days beyond the five you carry over are lost at the end of March.",
        ],
        [
            ("number", "Full-time employees accrue 30 days of paid vacation per year."),
            ("number", "Up to 10 unused days can be carried over to the next year."),
            ("date_time", "Unused days beyond the carry-over expire on June 30."),
            ("condition", "At least 5 unused days can be carried over to the next year."),
            ("added_claim", "Full-time employees get 25 vacation days per year, plus 2 extra days after five years of service."),
            ("negation", "Unused days cannot be carried over to the next year."),
        ],
    ),
    (
        "hr",
        "Parental leave is 16 weeks at full pay for the primary caregiver and 6 weeks for the "
        "secondary caregiver. Employees become eligible after 6 months of service.",
        [
            "Primary caregivers receive sixteen weeks off with their whole salary.",
            "Secondary caregivers get six weeks of leave.",
            "You qualify for parental leave once you've worked here for half a year.",
        ],
        [
            ("number", "Parental leave is 12 weeks at full pay for the primary caregiver."),
            ("number", "Parental leave is 6 weeks at full pay for the secondary caregiver and 16 weeks for the primary, after 12 months of service."),
            ("amount", "Parental leave is 16 weeks at 80% pay for the primary caregiver."),
            ("condition", "Employees become eligible immediately on their first day."),
            ("added_claim", "Secondary caregivers get 6 weeks of leave, which can be split into two blocks."),
            ("number", "Parental leave is 16 weeks for the primary caregiver and 2 weeks for the secondary caregiver."),
        ],
    ),
    (
        "hr",
        "Expense claims must be submitted within 30 days with itemized receipts. Meals are "
        "reimbursed up to $60 per day when traveling; alcohol is not reimbursed.",
        [
            "Send in your expense claim with detailed receipts no later than a month after the expense.",
            "On trips, food is covered to a maximum of sixty dollars daily, but drinks with alcohol aren't.",
            "Alcohol is never paid back.",
        ],
        [
            ("number", "Expense claims must be submitted within 90 days with itemized receipts."),
            ("amount", "Meals are reimbursed up to $80 per day when traveling."),
            ("negation", "Alcohol is reimbursed when traveling."),
            ("condition", "Meals are reimbursed at least $60 per day when traveling."),
            ("added_claim", "Meals are reimbursed up to $60 per day when traveling, and taxis need manager approval."),
            ("condition", "Expense claims must be submitted within 30 days, but receipts are only needed above $100."),
        ],
    ),
    (
        "hr",
        "Remote work is allowed up to 3 days per week with manager approval. Employees in their "
        "probation period must work from the office every day.",
        [
            "With your manager's sign-off you can work from home as many as three days a week.",
            "During probation, you're expected in the office daily.",
            "New hires still on probation can't work remotely.",
        ],
        [
            ("number", "Remote work is allowed up to 4 days per week with manager approval."),
            ("condition", "Remote work is allowed up to 3 days per week without manager approval."),
            ("negation", "Employees in their probation period do not need to work from the office."),
            ("date_time", "Remote work is allowed up to 3 days per month with manager approval."),
            ("added_claim", "Remote work is allowed up to 3 days a week with approval, and the company pays $50 a month for internet."),
            ("entity", "Remote work is allowed up to 3 days per week with HR approval."),
        ],
    ),
    (
        "hr",
        "The annual performance review takes place in November. Salary adjustments take effect on "
        "January 1 and are announced by Claire Dubois from People Operations.",
        [
            "Yearly reviews happen in November.",
            "Pay changes start on the 1st of January.",
            "Claire Dubois, People Operations, communicates the salary changes.",
        ],
        [
            ("date_time", "The annual performance review takes place in October."),
            ("date_time", "Salary adjustments take effect on April 1."),
            ("entity", "Salary adjustments are announced by Claire Martin from People Operations."),
            ("entity", "Salary adjustments are announced by Claire Dubois from Finance."),
            ("added_claim", "The performance review takes place in November and includes a 360-degree peer survey."),
            ("number", "The performance review takes place twice a year, in November and May."),
        ],
    ),
    (
        "shipping",
        "Standard shipping is free on orders over $50 and takes 3 to 5 business days. Express "
        "shipping costs $12.99 and arrives the next business day if ordered by 1 pm.",
        [
            "Spend more than fifty dollars and regular delivery costs nothing; it takes three to five working days.",
            "Order before 1 p.m. with express, at $12.99, and it shows up the next working day.",
            "Express delivery is 12.99 dollars.",
        ],
        [
            ("amount", "Standard shipping is free on orders over $35 and takes 3 to 5 business days."),
            ("number", "Standard shipping is free on orders over $50 and takes 5 to 7 business days."),
            ("amount", "Express shipping costs $9.99 and arrives the next business day if ordered by 1 pm."),
            ("date_time", "Express shipping arrives the next business day if ordered by 3 pm."),
            ("condition", "Standard shipping is free on all orders and takes 3 to 5 business days."),
            ("added_claim", "Express shipping costs $12.99, arrives the next business day, and includes Saturday delivery."),
        ],
    ),
    (
        "shipping",
        "Items can be returned within 30 days if unused and in original packaging. Swimwear and "
        "earrings cannot be returned for hygiene reasons.",
        [
            "You have a month to send back anything unworn that is still in its original box.",
            "For hygiene, swimsuits and earrings are final sale.",
            "Returns are accepted for thirty days as long as the product hasn't been used.",
        ],
        [
            ("number", "Items can be returned within 14 days if unused and in original packaging."),
            ("condition", "Items can be returned within 30 days even if used."),
            ("negation", "Swimwear and earrings can be returned."),
            ("entity", "Swimwear and sunglasses cannot be returned for hygiene reasons."),
            ("added_claim", "Items can be returned within 30 days if unused, and return shipping is always free."),
            ("condition", "Items can be returned within 30 days if unused, except for sale items."),
        ],
    ),
    (
        "shipping",
        "We ship to the United States, Canada and Mexico. Orders to Canada may incur import duties "
        "of around 5%, which the customer pays on delivery.",
        [
            "Delivery is available to the US, Canada and Mexico.",
            "Shipments to Canada can come with roughly five percent in import duty, collected from you at the door.",
            "Canadian customers should expect to pay about 5 percent duties when the parcel arrives.",
        ],
        [
            ("entity", "We ship to the United States, Canada and Brazil."),
            ("amount", "Orders to Canada may incur import duties of around 15%."),
            ("entity", "Orders to Mexico may incur import duties of around 5%, which the customer pays on delivery."),
            ("negation", "Orders to Canada do not incur import duties."),
            ("added_claim", "We ship to the United States, Canada and Mexico, with free shipping to all three."),
            ("condition", "Orders to Canada may incur import duties of around 5%, which we pay for you."),
        ],
    ),
    (
        "insurance",
        "The policy covers water damage from burst pipes but excludes flooding from rivers or heavy "
        "rain. The deductible is $1,000 per claim.",
        [
            "A pipe that bursts is covered; floods caused by rivers or storms are not.",
            "You pay the first 1000 dollars of each claim yourself.",
            "Each claim carries a one-thousand-dollar deductible.",
        ],
        [
            ("negation", "The policy covers flooding from rivers or heavy rain."),
            ("amount", "The deductible is $500 per claim."),
            ("amount", "The deductible is $1,000 per year."),
            ("condition", "The policy covers water damage from burst pipes only if the home is occupied."),
            ("added_claim", "Burst pipes are covered, and the policy also pays for hotel stays of up to 10 nights."),
            ("negation", "The policy does not cover water damage from burst pipes."),
        ],
    ),
    (
        "insurance",
        "Claims must be reported within 72 hours of the incident. Photos of the damage and a police "
        "report are required for theft claims.",
        [
            "Report a claim no later than three days after it happens.",
            "Theft claims need pictures of the damage and a report from the police.",
            "You have 72 hours from the incident to let us know.",
        ],
        [
            ("number", "Claims must be reported within 24 hours of the incident."),
            ("number", "Claims must be reported within 7 days of the incident."),
            ("condition", "A police report is required for all claims."),
            ("negation", "A police report is not required for theft claims."),
            ("added_claim", "Claims must be reported within 72 hours, and a loss adjuster visits within 5 days."),
            ("entity", "Photos of the damage and a report from your bank are required for theft claims."),
        ],
    ),
    (
        "education",
        "Course registration for the spring semester opens on January 8 and closes on January 22. "
        "Students may enroll in at most 18 credits without an advisor's approval.",
        [
            "You can sign up for spring courses from the 8th to the 22nd of January.",
            "Taking more than eighteen credits requires your advisor to approve it.",
            "The spring registration window runs two weeks, Jan 8 through Jan 22.",
        ],
        [
            ("date_time", "Course registration for the spring semester opens on January 15 and closes on January 22."),
            ("date_time", "Course registration closes on February 22."),
            ("number", "Students may enroll in at most 21 credits without an advisor's approval."),
            ("condition", "Students may enroll in at least 18 credits without an advisor's approval."),
            ("added_claim", "Registration opens on January 8, and late registration costs a $75 fee."),
            ("entity", "Students may enroll in at most 18 credits without the dean's approval."),
        ],
    ),
    (
        "education",
        "The library is open from 7:30 to 22:00 on weekdays and from 10:00 to 18:00 on weekends. "
        "Laptops can be borrowed for 4 hours with a student card.",
        [
            "On weekdays the library opens at 7:30 am and closes at 10 pm.",
            "Weekend hours are 10 in the morning until 6 in the evening.",
            "Show your student card to borrow a laptop for up to four hours.",
        ],
        [
            ("date_time", "The library is open from 8:30 to 22:00 on weekdays."),
            ("date_time", "The library is open from 10:00 to 20:00 on weekends."),
            ("number", "Laptops can be borrowed for 8 hours with a student card."),
            ("negation", "Laptops cannot be borrowed."),
            ("added_claim", "Laptops can be borrowed for 4 hours, and late returns are fined $5 per hour."),
            ("condition", "Laptops can be borrowed for 4 hours without a student card."),
        ],
    ),
    (
        "utilities",
        "Meter readings are taken every 3 months. If we cannot access your meter, the bill is "
        "estimated from your usage in the same period last year.",
        [
            "Someone reads your meter once a quarter.",
            "When the meter can't be reached, we estimate the bill based on what you used at the same time a year earlier.",
            "Readings happen four times a year.",
        ],
        [
            ("number", "Meter readings are taken every 6 months."),
            ("condition", "If we cannot access your meter, the bill is estimated from the national average usage."),
            ("negation", "If we cannot access your meter, the bill is not estimated."),
            ("added_claim", "Meter readings are taken every 3 months, and you can submit your own reading online for a $5 discount."),
            ("date_time", "Meter readings are taken every month."),
            ("amount", "If we cannot access your meter, a $20 access fee is added to the bill."),
        ],
    ),
    (
        "utilities",
        "Customers on the Green tariff pay 24 cents per kWh, fixed for 12 months. Leaving before the "
        "end of the term costs an exit fee of 30 pounds.",
        [
            "The Green tariff price is locked at 24 cents a kilowatt hour for a year.",
            "Switching away early means paying a £30 exit charge.",
            "For twelve months, Green tariff customers are billed 24 cents per kWh.",
        ],
        [
            ("amount", "Customers on the Green tariff pay 28 cents per kWh, fixed for 12 months."),
            ("number", "Customers on the Green tariff pay 24 cents per kWh, fixed for 24 months."),
            ("amount", "Leaving before the end of the term costs an exit fee of 60 pounds."),
            ("entity", "Customers on the Saver tariff pay 24 cents per kWh, fixed for 12 months."),
            ("negation", "Leaving before the end of the term does not cost an exit fee."),
            ("added_claim", "The Green tariff costs 24 cents per kWh, and all of its electricity comes from wind farms."),
        ],
    ),
]


def items() -> list[dict[str, Any]]:
    """The cases expanded to one labelled item per response, with stable ids."""
    out: list[dict[str, Any]] = []
    for c, (domain, context, faithful, hallucinated) in enumerate(CASES):
        for j, response in enumerate(faithful):
            out.append({"id": f"c{c:02d}-f{j}", "domain": domain, "context": [context],
                        "response": response, "label": 0, "type": "faithful"})
        # Extractive answers (a context sentence quoted as is) are faithful
        # too and common in retrieval apps; without them a score that simply
        # rewards low overlap would look good on this set.
        for j, response in enumerate(sentences(context)[:2]):
            out.append({"id": f"c{c:02d}-x{j}", "domain": domain, "context": [context],
                        "response": response, "label": 0, "type": "faithful"})
        for j, (kind, response) in enumerate(hallucinated):
            out.append({"id": f"c{c:02d}-h{j}", "domain": domain, "context": [context],
                        "response": response, "label": 1, "type": kind})
    return out


def write_jsonl(path: str | Path) -> int:
    """Write :func:`items` as JSON lines; the number of items written."""
    rows = items()
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def load() -> list[dict[str, Any]]:
    """The shipped ``data/eval.jsonl``."""
    text = resources.files("detectors.hallucination").joinpath("data", EVAL_FILE).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


if __name__ == "__main__":
    target = Path(__file__).with_name("data") / EVAL_FILE
    print(f"wrote {write_jsonl(target)} items to {target}")
