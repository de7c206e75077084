"""Postfix SMTPD access policy delegation (also spoken by Exim's ``${readsocket}``)."""
