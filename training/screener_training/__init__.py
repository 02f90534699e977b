"""Headless training of Screener's descriptor, condition and density models."""
