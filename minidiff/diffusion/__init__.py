"""Noise schedules, samplers and training objectives."""
