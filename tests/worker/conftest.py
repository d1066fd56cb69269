"""Fixtures of the worker's tests."""

import logging
import warnings

import pytest

from promptopt_worker.reporting import CHATTY_LOGGERS


@pytest.fixture
def logging_restored():
    """configure_logging changes the process's logging and warnings: put them back."""
    loggers = [logging.getLogger(name) for name in ("", "py.warnings", *CHATTY_LOGGERS)]
    saved = [(logger, logger.handlers[:], logger.level) for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield
        logging.captureWarnings(False)
    for logger, handlers, level in saved:
        logger.handlers[:], logger.level = handlers, level
