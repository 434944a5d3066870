"""Reading what comes back from a campaign: bounces, complaints and auto-replies.

    reports     what a mail system's report says (RFC 3464 DSN, RFC 5965 ARF)
    heuristics  what the text of a non-standard bounce says (flufl.bounce)
    classify    one message (bytes) -> zero or more Bounce reports, the one way in
    ingest      classify, then record each report in the ledger (ledger/bounces.record)
    fetch       every message of the [bounces] IMAP mailbox, ingested and moved away

`newsletter bounces ingest` (a Postfix pipe, Exim, a file) and `newsletter bounces
fetch` (cron) go through `ingest.ingest`, so a report counts the same whichever way it
came, and once: its event_key is unique in the ledger.
"""
