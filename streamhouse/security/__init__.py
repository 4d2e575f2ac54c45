"""Security: SASL credentials (SCRAM, checked by PLAIN too)."""
