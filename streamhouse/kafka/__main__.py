"""``python -m streamhouse.kafka --data-dir D [--metadata URL] --port P``: serve the Kafka protocol."""

from __future__ import annotations

import argparse
import logging

from streamhouse.config import Settings
from streamhouse.kafka.server import run


def main(argv: list[str] | None = None) -> None:
    """Parse flags, set up logging to stderr, serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m streamhouse.kafka", description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--metadata", help="postgresql://... or sqlite:///... (default: SQLite)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--advertised-host")
    parser.add_argument("--auto-create-topics", choices=["true", "false"])
    parser.add_argument("--default-partitions", type=int)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load(
        data_dir=args.data_dir,
        metadata=args.metadata,
        host=args.host,
        port=args.port,
        advertised_host=args.advertised_host,
        auto_create_topics=args.auto_create_topics,
        default_partitions=args.default_partitions,
    )
    run(settings)


if __name__ == "__main__":
    main()
