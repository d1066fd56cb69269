"""`promptopt operator`: run the kopf operator with our handlers and settings."""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf

from promptopt_operator import handlers  # noqa: F401  (registers the handlers with kopf)
from promptopt_operator.settings import OperatorSettings, from_arguments


def run_operator(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # kopf logs every handler run at INFO ("Handler ... succeeded"): thousands of lines a minute under
        # load, and a measurable share of the operator's CPU. Transitions are in Events and our own log.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings: OperatorSettings = from_arguments(args)
    # Set by the elector when this replica loses the leader Lease: kopf stops, and the process exits non-zero so
    # that its container restarts as a follower with nothing left of the leader's in-flight work.
    # An asyncio flag: kopf waits for a threading one in an executor thread that then keeps the process from exiting.
    lost_leadership = asyncio.Event()
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        # Replicas coordinate through our Lease (leadership.py), not kopf's peering.
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None,
        stop_flag=lost_leadership,
        memo=kopf.Memo(settings=settings, lost_leadership=lost_leadership),
    )
    return 1 if lost_leadership.is_set() else 0
