"""Errors raised in DataLoader workers, given back to the user as the error they were.

torch re-raises a worker's exception in the main process as the same type with a new message:
"Caught TooManyBadSamples in DataLoader worker process 0." and the worker's whole traceback. The user
should read the one line the data pipeline wrote (`pairs.csv: 3 of 202 samples are bad ...`), so the
original message is cut back out of that text; the wrapped one stays as `__cause__` for `--debug`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.")


def original_error(error: BaseException) -> BaseException | None:
    """The exception a worker raised, rebuilt from torch's wrapper; None when `error` is not one."""
    text = str(error)
    if not WORKER_PREFIX.match(text):
        return None
    name = type(error).__name__
    # The traceback ends with "module.Name: message" (the message may span lines); take the last one.
    matches = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}(?:: |$)", text, flags=re.MULTILINE))
    if not matches:
        return None
    message = text[matches[-1].end():].strip()
    try:
        return type(error)(message)
    except Exception:  # an exception type that takes other arguments: keep torch's
        return None


def reraise_worker_errors(batches: Iterable) -> Iterator:
    """Yield from a DataLoader; an exception from a worker comes out as the original one-line error."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as e:
            original = original_error(e)
            if original is None:
                raise
            raise original from e
        yield batch
