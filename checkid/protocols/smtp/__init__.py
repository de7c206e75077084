"""checkid's ESMTP front door: an SMTP server for the Internet side that decides each
transaction and relays it live to the MTA behind it (docs/front-door.md)."""
