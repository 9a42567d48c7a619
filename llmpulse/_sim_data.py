"""The simulated support app's knowledge base: passages, questions, answers.

Plain data for :mod:`llmpulse.simulate`. Each fact is one help-centre passage
with slots (``{plan}``, ``{days}`` ...) filled from :data:`SLOTS`, the
questions customers ask about it, and answers that paraphrase it.

Answers mark the phrases a hallucination may flip with
``[[neg:faithful|flipped]]`` (a negation) or ``[[cond:faithful|changed]]``
(a condition); the faithful answer renders the left side.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BASE_INTENT_MIX",
    "CLAIMS",
    "COMMENTS_BAD",
    "COMMENTS_ERROR",
    "COMMENTS_GOOD",
    "COMMENTS_HALLUCINATION",
    "DRIFT_INTENT_MIX",
    "FABRICATED",
    "FACTS",
    "Fact",
    "INTENTS",
    "OPENERS",
    "CLOSERS",
    "PREFIXES",
    "REFUSALS",
    "SLOTS",
    "SUFFIXES",
]


class Fact(NamedTuple):
    intent: str
    passage: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


# Slot kinds name the specific a hallucination changes: number, date, name.
SLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plan": ("name", ("Starter", "Team", "Business")),
    "sso_plan": ("name", ("Business", "Enterprise")),
    "price": ("number", ("$18", "$24", "$29", "$32")),
    "annual_price": ("number", ("$12", "$15", "$16", "$20")),
    "day": ("date", ("1st", "5th", "15th", "28th")),
    "net": ("number", ("14", "30", "45")),
    "retries": ("number", ("3", "4", "5")),
    "retry_window": ("number", ("7", "10", "21")),
    "days": ("number", ("14", "30", "60")),
    "return_days": ("number", ("15", "30", "45")),
    "refund_days": ("number", ("5", "7", "10")),
    "fee": ("number", ("$15", "$25", "$40")),
    "country": ("name", ("Germany", "France", "the United States", "Spain", "Japan")),
    "std_days": ("number", ("2-4", "3-5", "5-7")),
    "threshold": ("number", ("$50", "$75", "$100")),
    "carrier": ("name", ("DHL Express", "UPS", "FedEx")),
    "exp_days": ("number", ("1-2", "2")),
    "exp_price": ("number", ("$9.90", "$14.50", "$19")),
    "cutoff": ("date", ("2 pm", "3 pm", "5 pm")),
    "region_name": ("name", ("Canada", "Switzerland", "Norway", "the UK")),
    "warehouse": ("name", ("Rotterdam", "Leipzig", "Reno", "Dublin")),
    "track_hours": ("number", ("12", "24", "48")),
    "stuck_days": ("number", ("5", "7", "10")),
    "investigate_days": ("number", ("10", "14", "21")),
    "verify_hours": ("number", ("24", "48", "72")),
    "restore_days": ("number", ("14", "30", "90")),
    "free_seats": ("number", ("3", "5", "10")),
    "free_storage": ("number", ("2 GB", "5 GB", "10 GB")),
    "err_code": ("number", ("E1042", "E2019", "E3307")),
    "os_list": ("name", ("Windows 10 and 11 and macOS 12+", "Windows 11 and macOS 13+")),
    "min_version": ("number", ("4.2", "4.8", "5.1")),
    "max_upload": ("number", ("100 MB", "250 MB")),
    "max_upload_paid": ("number", ("2 GB", "5 GB", "10 GB")),
    "upload_timeout": ("number", ("30", "60", "90")),
    "history_days": ("number", ("30", "90", "180")),
    "rate_limit": ("number", ("300", "600", "1,200")),
    "token_days": ("number", ("90", "180", "365")),
    "wh_retries": ("number", ("5", "8", "10")),
    "wh_hours": ("number", ("24", "48", "72")),
    "wh_timeout": ("number", ("5", "10", "15")),
    "export_hours": ("number", ("6", "24", "48")),
    "link_days": ("number", ("3", "7", "14")),
    "eu_dc": ("name", ("Frankfurt", "Dublin", "Paris")),
    "backup_days": ("number", ("30", "35", "90")),
    "renewal_date": ("date", ("March 1", "June 30", "September 15", "December 31")),
}

FACTS: tuple[Fact, ...] = (
    Fact(
        "billing",
        "The {plan} plan costs {price} per user per month when billed monthly, or "
        "{annual_price} per user per month when billed annually. Prices exclude VAT, "
        "which is added at checkout for customers in the EU.",
        (
            "How much does the {plan} plan cost?",
            "What's the price of {plan} if I pay yearly instead of monthly?",
            "Is VAT included in the {plan} price?",
        ),
        (
            "The {plan} plan is {price} per user each month on monthly billing, and "
            "{annual_price} per user per month if you pay annually. VAT [[neg:isn't|is]] "
            "included in those prices; it's added at checkout for EU customers.",
            "On monthly billing {plan} costs {price} per user. Switching to annual billing "
            "brings it down to {annual_price} per user per month. EU customers "
            "[[neg:pay VAT on top|don't pay any VAT]] at checkout.",
        ),
    ),
    Fact(
        "billing",
        "Invoices are issued on the {day} of each month and payment is due within {net} "
        "days. If a card payment fails, we retry {retries} times over {retry_window} days "
        "before the workspace is downgraded to the Free plan.",
        (
            "When do I get invoiced and when is payment due?",
            "My card payment failed, what happens now?",
            "Will my workspace be downgraded straight away if my card is declined?",
        ),
        (
            "Your invoice is generated on the {day} of every month and you have {net} days "
            "to pay it. If your card is declined we'll try again {retries} times over "
            "{retry_window} days, and [[cond:only after that|right away]] is the workspace "
            "moved to the Free plan.",
            "Payment is due {net} days after the invoice date, which is the {day} of the "
            "month. A failed card charge is retried {retries} times across {retry_window} "
            "days [[cond:before any downgrade happens|and the downgrade happens in parallel]].",
        ),
    ),
    Fact(
        "billing",
        "Annual subscriptions renew automatically on {renewal_date}. We send a reminder "
        "email {net} days before renewal. Seats removed before the renewal date are not "
        "charged.",
        (
            "When does my annual subscription renew?",
            "Will I get a reminder before I'm charged for the renewal?",
        ),
        (
            "Your annual subscription renews automatically on {renewal_date}, and we'll email "
            "you a reminder {net} days beforehand. Any seats you remove before that date "
            "[[neg:won't|will still]] be charged.",
            "Renewal is automatic on {renewal_date}; expect a reminder email {net} days "
            "ahead. If you drop seats before then, you [[neg:aren't|are]] billed for them.",
        ),
    ),
    Fact(
        "refund",
        "Annual subscriptions can be refunded in full within {days} days of purchase. "
        "Monthly subscriptions are not refundable, but you can cancel at any time and keep "
        "access until the end of the billing period.",
        (
            "Can I get a refund on my subscription?",
            "I bought the annual plan by mistake, can I get my money back?",
            "Do you refund monthly plans if I cancel?",
        ),
        (
            "You can get a full refund on an annual subscription if you ask within {days} "
            "days of buying it. Monthly plans [[neg:can't be refunded|can be refunded too]], "
            "though you can cancel whenever you like and keep access until the period ends.",
            "Annual plans are fully refundable for {days} days after purchase. For monthly "
            "subscriptions we [[neg:don't offer|also offer]] refunds; cancelling stops the "
            "next charge and you keep access until the end of the current period.",
        ),
    ),
    Fact(
        "refund",
        "Hardware returns are accepted within {return_days} days of delivery if the device "
        "is in its original packaging. Opened devices are subject to a {fee} restocking "
        "fee. Refunds go back to the original payment method within {refund_days} business "
        "days after we inspect the return.",
        (
            "How do I return the device I ordered?",
            "I opened the box but don't want the device, can I still return it?",
            "How long until I get my refund for a returned device?",
        ),
        (
            "You can return the device within {return_days} days of delivery "
            "[[cond:as long as it's in the original packaging|in any packaging, even without "
            "the original box]]. If it's been opened there's a {fee} restocking fee, and the "
            "refund lands on your original payment method within {refund_days} business days "
            "of our inspection.",
            "Returns are accepted for {return_days} days after delivery. Opened devices carry "
            "a {fee} restocking fee. Once we've inspected the return, the money goes back to "
            "your original payment method within {refund_days} business days.",
        ),
    ),
    Fact(
        "shipping",
        "Standard shipping within {country} takes {std_days} business days and is free on "
        "orders over {threshold}. Express shipping with {carrier} takes {exp_days} business "
        "days and costs {exp_price}. Orders placed after {cutoff} ship the next business day.",
        (
            "How long does shipping to {country} take?",
            "Is shipping free? And how much is express?",
            "If I order this evening, when will it ship?",
        ),
        (
            "Standard delivery in {country} takes {std_days} business days and is free once "
            "your order is over {threshold}. If you need it sooner, express via {carrier} "
            "takes {exp_days} business days for {exp_price}. Anything ordered after {cutoff} "
            "goes out the next business day.",
            "Orders above {threshold} ship free within {country} and arrive in {std_days} "
            "business days. Express with {carrier} costs {exp_price} and takes {exp_days} "
            "business days. Orders placed after {cutoff} are dispatched the next business day.",
        ),
    ),
    Fact(
        "shipping",
        "We do not ship to P.O. boxes. Orders to {region_name} are dispatched from our "
        "{warehouse} warehouse, and customs duties are paid by the recipient.",
        (
            "Can you deliver to my P.O. box?",
            "Do I have to pay customs for an order to {region_name}?",
        ),
        (
            "We [[neg:can't|can]] deliver to P.O. boxes, so please use a street address. "
            "Orders to {region_name} ship from our {warehouse} warehouse, and "
            "[[cond:any customs duties are paid by you as the recipient|we cover all customs "
            "duties for you]].",
            "Orders to {region_name} leave from our {warehouse} warehouse and customs duties "
            "are [[cond:the recipient's responsibility|already included in the price]]. Note "
            "that P.O. boxes [[neg:aren't|are]] supported as delivery addresses.",
        ),
    ),
    Fact(
        "shipping",
        "A tracking number is emailed within {track_hours} hours of dispatch. If a parcel "
        "shows no movement for {stuck_days} days, we open an investigation with the carrier "
        "and send a replacement if it is not found within {investigate_days} days.",
        (
            "Where is my tracking number?",
            "My parcel hasn't moved in days, what can you do?",
            "My order seems lost. Will you send a new one?",
        ),
        (
            "You'll get the tracking number by email within {track_hours} hours of dispatch. "
            "If the parcel doesn't move for {stuck_days} days we open an investigation with "
            "the carrier, and if it isn't found within {investigate_days} days we send you a "
            "replacement.",
            "Tracking numbers go out within {track_hours} hours after dispatch. Once a parcel "
            "has been stuck for {stuck_days} days we start an investigation, and "
            "[[cond:a replacement ships if it's still missing after {investigate_days} days|a "
            "replacement ships immediately]].",
        ),
    ),
    Fact(
        "account",
        "Workspace owners can reset two-factor authentication for members from Settings > "
        "Security. If the owner has lost access to their own second factor, support can "
        "reset it after identity verification, which takes up to {verify_hours} hours.",
        (
            "I lost my phone and can't log in with 2FA. Help?",
            "How do I reset two-factor authentication for a team member?",
        ),
        (
            "A workspace owner can reset two-factor authentication for any member under Settings > Security. If "
            "you're the owner and lost your own second factor, we can reset it "
            "[[cond:once we've verified your identity|without any verification]], which takes "
            "up to {verify_hours} hours.",
            "Owners reset members' two-factor authentication from Settings > Security. For "
            "the owner's own account, support resets it after an identity check that takes "
            "up to {verify_hours} hours.",
        ),
    ),
    Fact(
        "account",
        "Deleted workspaces can be restored within {restore_days} days. After that, all data "
        "is permanently erased and cannot be recovered. Only the workspace owner can request "
        "a restore.",
        (
            "I deleted our workspace by accident. Can it be restored?",
            "Can a regular member ask you to restore a deleted workspace?",
        ),
        (
            "A deleted workspace can be brought back within {restore_days} days, "
            "[[cond:but only the workspace owner can ask for it|and any member can request the "
            "restore]]. Past that point the data is permanently erased and [[neg:can't|can "
            "still]] be recovered.",
            "You have {restore_days} days to restore a deleted workspace; the request has to "
            "come from the workspace owner. After {restore_days} days everything is erased "
            "for good.",
        ),
    ),
    Fact(
        "account",
        "The Free plan includes up to {free_seats} members and {free_storage} of storage. "
        "Adding more members requires upgrading to {plan}.",
        (
            "How many people can I invite on the Free plan?",
            "I hit the storage limit on Free. What are my options?",
        ),
        (
            "The Free plan allows up to {free_seats} members and {free_storage} of storage. "
            "To add more members you'd need to upgrade to {plan}.",
            "On Free you get {free_seats} members and {free_storage} of storage; going beyond "
            "{free_seats} members [[cond:requires an upgrade to {plan}|is possible by buying "
            "single extra seats]].",
        ),
    ),
    Fact(
        "technical",
        "If the desktop app shows error {err_code}, sign out, clear the cache from Help > "
        "Troubleshooting, and sign back in. The app supports {os_list} only; version "
        "{min_version} or later is required.",
        (
            "The desktop app keeps showing error {err_code}. How do I fix it?",
            "Does the desktop app work on my computer?",
        ),
        (
            "For error {err_code}, sign out, clear the cache under Help > Troubleshooting, "
            "then sign back in. Make sure you're on version {min_version} or newer; the app "
            "runs on {os_list}.",
            "Error {err_code} is usually fixed by signing out, clearing the cache (Help > "
            "Troubleshooting) and signing in again. You need app version {min_version} or "
            "later, and it's supported on {os_list} [[cond:only|as well as Linux]].",
        ),
    ),
    Fact(
        "technical",
        "File uploads are limited to {max_upload} per file on the Free plan and "
        "{max_upload_paid} on paid plans. Uploads time out after {upload_timeout} minutes "
        "on slow connections.",
        (
            "What's the maximum file size I can upload?",
            "My upload keeps failing halfway. Is there a limit?",
        ),
        (
            "Each file can be up to {max_upload} on the Free plan and {max_upload_paid} on "
            "paid plans. On slow connections an upload times out after {upload_timeout} "
            "minutes, so very large files may fail.",
            "The per-file limit is {max_upload} for Free and {max_upload_paid} on paid plans, "
            "and uploads [[cond:time out after {upload_timeout} minutes|never time out]] on "
            "slow connections.",
        ),
    ),
    Fact(
        "technical",
        "Sync conflicts are resolved by keeping both copies; the older copy is renamed with "
        "a (conflict) suffix. Version history is kept for {history_days} days on the {plan} "
        "plan.",
        (
            "Two people edited the same file offline. Which version wins?",
            "How far back does version history go on {plan}?",
        ),
        (
            "When there's a sync conflict we keep both copies and rename the older one with "
            "a (conflict) suffix, so [[neg:nothing is|some edits are]] lost. On {plan}, "
            "version history goes back {history_days} days.",
            "Both versions are kept: the older copy gets a (conflict) suffix. You can also "
            "go back up to {history_days} days in version history on the {plan} plan.",
        ),
    ),
    Fact(
        "integration",
        "The REST API allows {rate_limit} requests per minute per workspace on the {plan} "
        "plan. Requests over the limit receive HTTP 429 with a Retry-After header. API "
        "tokens expire after {token_days} days and must be rotated from Settings > Developer.",
        (
            "We're calling your REST API from our backend and started getting HTTP 429 "
            "responses during our nightly sync job (roughly 40k calls over an hour). The "
            "response has a Retry-After: 30 header. What exactly is the limit on {plan} and "
            "how should we handle it so the job doesn't fail?",
            "Our integration suddenly returns 401 on every request since this morning, the "
            "token was created about half a year ago by a colleague who left. Log line: "
            "'HTTP 401 invalid_token: token expired'. Do API tokens expire and where do we "
            "rotate them?",
        ),
        (
            "On the {plan} plan the API allows {rate_limit} requests per minute per "
            "workspace. Past that you get HTTP 429 with a Retry-After header, so back off "
            "for that many seconds and spread the nightly job out. Tokens expire after "
            "{token_days} days; rotate them under Settings > Developer.",
            "The limit is {rate_limit} requests per minute per workspace on {plan}. A 429 "
            "means you went over; honour the Retry-After header before retrying. API tokens "
            "[[cond:expire after {token_days} days|never expire]] and are rotated from "
            "Settings > Developer.",
        ),
    ),
    Fact(
        "integration",
        "Webhooks are retried {wh_retries} times with exponential backoff over {wh_hours} "
        "hours. Endpoints must respond within {wh_timeout} seconds with a 2xx status, "
        "otherwise the delivery counts as failed. Webhook payloads are signed with "
        "HMAC-SHA256.",
        (
            "Our webhook endpoint was down for maintenance for about six hours last night "
            "(nginx returned 502 for every delivery). Will the events be re-sent, and how do "
            "we verify the payloads are really from you once it's back up?",
            "We see 'delivery failed' in the webhook log although our handler returns 200. "
            "The handler writes to our database and then calls a third-party service, it "
            "takes around 20 seconds. Is there a timeout on your side?",
        ),
        (
            "Failed webhook deliveries are retried {wh_retries} times with exponential "
            "backoff over {wh_hours} hours. Your endpoint has to answer with a 2xx within "
            "{wh_timeout} seconds or the attempt counts as failed. Payloads are signed with "
            "HMAC-SHA256, so verify the signature header.",
            "We retry each delivery {wh_retries} times over {wh_hours} hours. Respond within "
            "{wh_timeout} seconds with a 2xx status; do slow work asynchronously after "
            "acknowledging. Every payload [[neg:is|isn't]] signed with HMAC-SHA256.",
        ),
    ),
    Fact(
        "integration",
        "SAML single sign-on is available on the {sso_plan} plan only. SCIM provisioning is "
        "supported for Okta and Azure AD; Google Workspace is not supported for SCIM.",
        (
            "We're rolling out SSO for about 300 employees and want to provision accounts "
            "automatically from our identity provider (we use Google Workspace for email but "
            "Okta for apps). Which plan do we need for SAML and does SCIM work with our setup?",
        ),
        (
            "SAML SSO is included on the {sso_plan} plan only. For automatic provisioning, "
            "SCIM works with Okta and Azure AD, so use Okta; Google Workspace "
            "[[neg:isn't|is]] supported for SCIM.",
            "You'll need the {sso_plan} plan for SAML single sign-on. SCIM provisioning is "
            "supported with Okta and Azure AD but not Google Workspace.",
        ),
    ),
    Fact(
        "privacy",
        "Data exports are generated as ZIP archives within {export_hours} hours and the "
        "download link stays valid for {link_days} days. Exports include files, comments "
        "and audit logs but not deleted items.",
        (
            "Our legal team needs a full export of the workspace for an audit, including "
            "audit logs and comments, and possibly things we deleted last quarter. How long "
            "does an export take and how long can we download it?",
        ),
        (
            "Exports are prepared as ZIP archives within {export_hours} hours, and the "
            "download link works for {link_days} days. They include files, comments and "
            "audit logs, but deleted items [[neg:aren't|are]] included.",
            "An export is ready within {export_hours} hours as a ZIP file; download it within "
            "{link_days} days. Files, comments and audit logs are in it; deleted items are "
            "not.",
        ),
    ),
    Fact(
        "privacy",
        "Customer data for EU workspaces is stored in {eu_dc}. Backups are retained for "
        "{backup_days} days. We sign a Data Processing Agreement on request for paid plans; "
        "it is not available on the Free plan.",
        (
            "Our DPO is asking where exactly our data is hosted (we're an EU company with "
            "about 80 seats), how long backups are kept after deletion, and whether you can "
            "sign a DPA with us. We're currently on the Free plan while we evaluate.",
        ),
        (
            "Data for EU workspaces is stored in {eu_dc}, and backups are kept for "
            "{backup_days} days. We sign a Data Processing Agreement on request for paid "
            "plans, [[cond:so you'd need to upgrade from Free first|including the Free plan]].",
            "EU workspace data lives in {eu_dc}; backups are retained {backup_days} days. A "
            "DPA is available on request on paid plans only, not on Free.",
        ),
    ),
)

INTENTS: tuple[str, ...] = (
    "billing",
    "refund",
    "shipping",
    "account",
    "technical",
    "integration",
    "privacy",
)

BASE_INTENT_MIX: tuple[float, ...] = (0.24, 0.16, 0.22, 0.17, 0.17, 0.025, 0.015)
"""Everyday traffic: consumer questions, a trickle of developer/legal ones."""
DRIFT_INTENT_MIX: tuple[float, ...] = (0.04, 0.02, 0.02, 0.04, 0.08, 0.5, 0.3)
"""A new customer segment arrives: developers and compliance teams."""

# Plausible extra claims the context does not support, one per intent.
CLAIMS: dict[str, tuple[str, ...]] = {
    "billing": (
        "You'll also get a 20% loyalty discount automatically at your next renewal.",
        "Students and non-profits get the first 3 months free.",
    ),
    "refund": (
        "We can also refund you as store credit with a 10% bonus on top.",
        "Refunds are processed within 24 hours for all customers.",
    ),
    "shipping": (
        "All orders also come with free returns via a prepaid label.",
        "We offer Saturday delivery at no extra cost.",
    ),
    "account": (
        "You can also recover the account yourself by answering your security questions.",
        "Owners get an extra 50 GB of storage for free.",
    ),
    "technical": (
        "A fix for this is included in version 6.0, which ships next week.",
        "The web app has no file size limit at all.",
    ),
    "integration": (
        "Enterprise customers can request the limit to be removed entirely.",
        "We also support SCIM for OneLogin since last month.",
    ),
    "privacy": (
        "Backups are stored on-premises at your site on request.",
        "We are certified under ISO 27701 and HIPAA for all plans.",
    ),
}

# Whole answers stating a policy the help centre does not have, one set per intent.
FABRICATED: dict[str, tuple[str, ...]] = {
    "billing": (
        "Under our fair-billing policy you can pause your subscription for up to three months, "
        "and paused months are credited to your next invoice.",
        "Customers who pay by bank transfer get a permanent 8% discount on every plan.",
    ),
    "refund": (
        "Our satisfaction guarantee lets you keep the item and still get a full refund if you "
        "send us a photo of the problem.",
        "Refund requests made on weekends are handled by the priority desk and paid out the same day.",
    ),
    "shipping": (
        "Every parcel is insured for up to $2,000 and lost parcels are replaced within 24 hours "
        "without a claim.",
        "Orders placed before 8 am are delivered the same afternoon anywhere in the country.",
    ),
    "account": (
        "Deleted accounts can be restored at any time for up to five years by calling our "
        "recovery hotline.",
        "Each account can have one guest login that doesn't need two-factor authentication.",
    ),
    "technical": (
        "Our uptime guarantee credits you a full month of service for any outage longer than "
        "ten minutes.",
        "Older versions keep receiving security updates for seven years after their release.",
    ),
    "integration": (
        "Partners in our developer programme get unlimited API calls and a dedicated sandbox "
        "cluster free of charge.",
        "Webhooks that fail are stored forever and can be replayed from the dashboard at any time.",
    ),
    "privacy": (
        "Under our data-residency promise your data never leaves the city you signed up in.",
        "You can ask for an independent audit of your workspace once a quarter at no cost.",
    ),
}

PREFIXES: tuple[str, ...] = (
    "",
    "",
    "Hi, ",
    "Hello! ",
    "Quick question: ",
    "Hi there, ",
    "hey, ",
)
SUFFIXES: tuple[str, ...] = (
    "",
    "",
    " Thanks!",
    " Thank you.",
    " thx",
    " It's urgent, please.",
    " My account email is on file.",
)

OPENERS: tuple[str, ...] = (
    "",
    "",
    "Thanks for reaching out! ",
    "Happy to help. ",
    "Good question. ",
    "Sorry for the trouble. ",
)
CLOSERS: tuple[str, ...] = (
    "",
    " Is there anything else I can help you with?",
    " Let me know if you have any other questions.",
    " I hope this helps!",
    " If anything is unclear, just reply here and I'll explain further.",
)

REFUSALS: tuple[str, ...] = (
    "I'm sorry, I can't help with that here. I've escalated your ticket to a support "
    "specialist, who will reply by email within one business day.",
    "I'm not able to answer that reliably. Let me connect you with a human agent.",
    "Sorry, I couldn't find this in our help centre. I've passed your question on to our "
    "support team.",
)

COMMENTS_GOOD: tuple[str, ...] = (
    "Thanks, that solved it.",
    "Quick and clear answer.",
    "Exactly what I needed.",
    "helpful",
)
COMMENTS_BAD: tuple[str, ...] = (
    "This didn't answer my question.",
    "Too generic, I had to contact a human anyway.",
    "I asked something else.",
    "not helpful",
)
COMMENTS_HALLUCINATION: tuple[str, ...] = (
    "That's not what your help centre says.",
    "The numbers in this answer are wrong.",
    "The bot made this up.",
    "Wrong information, support told me the opposite.",
)
COMMENTS_ERROR: tuple[str, ...] = (
    "It just spun and then gave an error.",
    "No answer at all.",
)
