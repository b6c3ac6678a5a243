"""`podlock review`: one AdmissionReview from a file or stdin, answered like the webhook."""

from __future__ import annotations

import argparse
import sys

from webhook.config import ConfigError, load_settings
from webhook.review import MAX_BODY_BYTES, RequestError, review


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"podlock review: {err}", file=sys.stderr)
        return 2
    source = "<stdin>" if args.input == "-" else args.input
    try:
        if args.input == "-":
            raw = sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
        else:
            with open(args.input, "rb") as handle:
                raw = handle.read(MAX_BODY_BYTES + 1)
    except OSError as err:
        print(f"podlock review: {source}: cannot read: {err.strerror}", file=sys.stderr)
        return 2
    try:
        outcome = review(raw, args.endpoint, args.mode, settings)
    except RequestError as err:
        print(f"podlock review: {source}: {err.message}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(outcome.body)
    sys.stdout.flush()
    return 0
