"""Integrations with what apps already run; each imports its library only when used."""
