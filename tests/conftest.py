"""Shared test set-up. Lab tests build namespaces and must run one at a time (2 cores)."""

from __future__ import annotations

import logging

logging.getLogger("sleeve.lab").setLevel(logging.INFO)
