"""The Sendmail/Postfix milter protocol, version 6 (reference/milter.md)."""
