"""Email addresses as the list keeps them.

An address is stored with its domain in ASCII (IDNA 2008 A-labels, lower case)
and its local part as given: RFC 5321 section 2.4 leaves the local part's case to
the receiving system, so `Ann.Lee@` is sent as `Ann.Lee@`. Two spellings that
differ only in case are still one subscriber: the list is keyed by `key`, which
folds the case of the whole address, as it always did.

A local part that is not ASCII (`zoë@`) is a valid address (RFC 6531/6532); it
needs a relay that offers SMTPUTF8, which the SMTP client asks for.
"""

from __future__ import annotations

# email_validator and idna load when an address is checked or has a Unicode domain:
# every command that opens the list keys addresses, and `run-due` (every minute from
# cron) checks none.


def normalize(address: str) -> str:
    """The address as stored: syntax checked (no DNS), the domain as lower-case
    A-labels, the local part as given (Unicode in NFC). Raises ValueError."""
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return f"{checked.local_part}@{checked.ascii_domain.lower()}"


def key(address: str) -> str:
    """What makes two addresses one subscriber: the address with its case folded.

    For an address as stored (see `normalize`) and for one from a token or a form
    that is not normalized yet; a domain in Unicode gets its A-labels first."""
    address = address.strip()
    try:
        address = ascii_domain(address)
    except ValueError:
        pass  # not a valid domain: it matches nobody anyway
    return address.lower()


def ascii_domain(address: str) -> str:
    """The address with its domain in ASCII (A-labels), the local part as it is.

    Stored addresses already are; this is for one stored before that, and for one
    typed on the command line. ValueError for a domain IDNA refuses."""
    local, at, domain = address.rpartition("@")
    if domain.isascii():
        return address
    import idna

    try:
        return f"{local}{at}{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise ValueError(f"{address}: the domain is not a valid IDNA name: {exc}") from None
